//! Precision and recall of the rule-based entity tagger on a hand-labelled set
//! of conversational sentences. The figures are printed (run with
//! `--nocapture`) and recorded in docs/eval.md; the assertions keep them from
//! regressing.

use engram_core::memory::entity_key;
use engram_core::text::tag_entities;

/// (sentence, entities a careful reader would index).
const LABELLED: &[(&str, &[&str])] = &[
    ("I moved to Lisbon last spring.", &["Lisbon"]),
    (
        "Caroline went to the LGBTQ support group yesterday.",
        &["Caroline", "LGBTQ"],
    ),
    (
        "Melanie painted a sunrise over Lake Tahoe on 8 May 2023.",
        &["Melanie", "Lake Tahoe", "8 May 2023"],
    ),
    (
        "My sister works at Google in Zurich.",
        &["Google", "Zurich"],
    ),
    (
        "We watched \"The Grand Budapest Hotel\" again.",
        &["The Grand Budapest Hotel"],
    ),
    ("The rent is 1,450 euros a month.", &["1,450"]),
    (
        "Bob's flight to New York leaves at 7.",
        &["Bob", "New York", "7"],
    ),
    ("Thanks! That sounds great.", &[]),
    (
        "I'm reading Sapiens by Yuval Noah Harari.",
        &["Sapiens", "Yuval Noah Harari"],
    ),
    (
        "She joined the Bank of America in 2019.",
        &["Bank of America", "2019"],
    ),
    ("My daughter turns 5 in June.", &["5"]),
    ("Dr. Patel said my blood pressure is fine.", &["Patel"]),
    (
        "Jon and Gina opened a dance studio downtown.",
        &["Jon", "Gina"],
    ),
    ("The meeting moved to 2024-03-05.", &["2024-03-05"]),
    ("Yesterday I finally fixed the Python build.", &["Python"]),
    (
        "Maria recommended the book \"Atomic Habits\".",
        &["Maria", "Atomic Habits"],
    ),
    (
        "We drove from Porto to Madrid in one day.",
        &["Porto", "Madrid"],
    ),
    (
        "Audrey adopted two dogs from the shelter.",
        &["Audrey", "2"],
    ),
    ("Wow, that is awesome news!", &[]),
    (
        "I started learning Japanese for our trip to Kyoto in October 2024.",
        &["Japanese", "Kyoto", "October 2024"],
    ),
    (
        "Tim loves the Harry Potter books.",
        &["Tim", "Harry Potter"],
    ),
    (
        "Our team uses Kubernetes and Postgres.",
        &["Kubernetes", "Postgres"],
    ),
];

#[test]
fn tagger_precision_and_recall() {
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    let mut misses = Vec::new();
    for (sentence, want) in LABELLED {
        let got: Vec<String> = tag_entities(sentence)
            .iter()
            .map(|e| entity_key(&e.name))
            .collect();
        let want: Vec<String> = want.iter().map(|w| entity_key(w)).collect();
        for g in &got {
            if want.contains(g) {
                tp += 1;
            } else {
                fp += 1;
                misses.push(format!("extra `{g}` in: {sentence}"));
            }
        }
        for w in &want {
            if !got.contains(w) {
                fn_ += 1;
                misses.push(format!("missed `{w}` in: {sentence}"));
            }
        }
    }
    let precision = tp as f64 / (tp + fp).max(1) as f64;
    let recall = tp as f64 / (tp + fn_).max(1) as f64;
    eprintln!(
        "entity tagger on {} sentences: precision {precision:.3}, recall {recall:.3} (tp {tp}, fp {fp}, fn {fn_})",
        LABELLED.len()
    );
    for m in &misses {
        eprintln!("  {m}");
    }
    assert!(precision >= 0.85, "precision {precision:.3}");
    assert!(recall >= 0.85, "recall {recall:.3}");
}
