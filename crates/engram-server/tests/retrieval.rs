//! Retrieval behaviour of the default settings that issue 18 chose on the
//! LoCoMo dev set (docs/eval.md): a question about a person ranks that
//! person's own turns higher (the speaker signal), and a turn that only asks
//! a question ranks below the turn that answers it. Real model, real store
//! (SQLite, and Postgres with `ENGRAM_TEST_STORE=postgres`): both backends
//! rank the same.

use engram_core::config::RetrievalConfig;
use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::memory::Scope;
use engram_core::service::{AddInput, Content, MemoryService, Message, SearchInput};

mod common;

async fn said(memory: &MemoryService, user: &str, turns: &[(&str, &str)]) {
    let messages = turns
        .iter()
        .map(|(who, text)| Message {
            role: "user".into(),
            content: (*text).into(),
            name: Some((*who).into()),
        })
        .collect();
    let scope = Scope {
        user_id: Some(user.into()),
        ..Default::default()
    };
    memory
        .add(
            &RequestCtx::operator("test"),
            AddInput::new(Content::Messages(messages), scope),
        )
        .await
        .unwrap();
}

async fn ask(memory: &MemoryService, user: &str, q: &str) -> Vec<(String, Option<f32>)> {
    let filter = Filter::from_scope(&Scope {
        user_id: Some(user.into()),
        ..Default::default()
    });
    let out = memory
        .search(
            &RequestCtx::operator("test"),
            SearchInput {
                query: q.into(),
                filter,
                top_k: Some(5),
                threshold: None,
                token_budget: Some(0),
                explain: true,
            },
        )
        .await
        .unwrap();
    out.hits
        .into_iter()
        .map(|h| (h.memory.text, h.explanation.and_then(|e| e.signals.speaker)))
        .collect()
}

#[tokio::test]
async fn a_question_about_a_person_prefers_what_that_person_said() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, memory) = common::open(dir.path()).await;
    said(
        &memory,
        "pair",
        &[
            (
                "Caroline",
                "I have been painting sunsets at the lake all summer.",
            ),
            (
                "Melanie",
                "I have been painting horses at the farm all summer.",
            ),
        ],
    )
    .await;
    let hits = ask(&memory, "pair", "What has Melanie been painting?").await;
    assert_eq!(
        hits[0].0, "Melanie: I have been painting horses at the farm all summer.",
        "{hits:?}"
    );
    assert_eq!(
        hits[0].1,
        Some(1.0),
        "the explanation shows the speaker signal"
    );
    let caroline = hits.iter().find(|h| h.0.starts_with("Caroline")).unwrap();
    assert_eq!(caroline.1, Some(0.0));
    // Naming the other speaker turns it around.
    let hits = ask(&memory, "pair", "What has Caroline been painting?").await;
    assert!(hits[0].0.starts_with("Caroline:"), "{hits:?}");
}

#[tokio::test]
async fn a_turn_that_only_asks_counts_less_than_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, memory) = common::open(dir.path()).await;
    said(
        &memory,
        "qa",
        &[
            ("Jon", "Where did you go camping last weekend?"),
            (
                "Gina",
                "We went camping last weekend in the redwood forest.",
            ),
        ],
    )
    .await;
    let scores = |m: MemoryService| async move {
        let filter = Filter::from_scope(&Scope {
            user_id: Some("qa".into()),
            ..Default::default()
        });
        let out = m
            .search(
                &RequestCtx::operator("test"),
                SearchInput {
                    query: "camping in the forest".into(),
                    filter,
                    top_k: Some(5),
                    threshold: None,
                    token_budget: Some(0),
                    explain: true,
                },
            )
            .await
            .unwrap();
        let mut v: Vec<(String, f32)> = out
            .hits
            .into_iter()
            .map(|h| (h.memory.text, h.score))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let default = scores(memory.clone()).await;
    let off = scores(memory.with_retrieval(RetrievalConfig {
        question_factor: 1.0,
        ..memory.retrieval_config().clone()
    }))
    .await;
    assert_eq!(default.len(), 2);
    let (q, a) = (&default[1], &default[0]);
    assert!(q.0.starts_with("Jon:") && a.0.starts_with("Gina:"));
    assert!(
        (q.1 - 0.9 * off[1].1).abs() < 1e-4,
        "the question ×0.9: {default:?} vs {off:?}"
    );
    assert!((a.1 - off[0].1).abs() < 1e-6, "the answer unchanged");
}
