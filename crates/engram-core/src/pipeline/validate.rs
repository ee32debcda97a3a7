//! A model's facts are checked before they touch the store. Small local
//! models loop, attribute the assistant's words to the user, invent dates and
//! entities; each rule here refuses or repairs one such failure and counts
//! what it caught (the job result's `checks`, and
//! `engram_llm_facts_checked_total{rule}`).
//!
//! - empty facts and facts longer than the messages they come from are refused;
//! - a sentence a fact repeats is cut, and a fact repeating an earlier one is refused;
//! - the speaker is set to who said the source sentence when that is unambiguous;
//! - entities whose name the conversation never mentions are dropped;
//! - a `valid_at` is dropped unless the new messages mention a time, and
//!   an unparseable one always;
//! - a fact naming no entity of the conversation and sharing few of its
//!   words is *suspect*: kept, but counted.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::json;

use super::Fact;
use crate::ports::ChatMessage;

/// What the checks caught in one extraction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FactChecks {
    /// Facts the model returned.
    pub returned: usize,
    pub empty: usize,
    pub too_long: usize,
    /// Facts repeating an earlier fact, or with a sentence repeated inside.
    pub repeated: usize,
    pub speaker_fixed: usize,
    pub entities_dropped: usize,
    pub suspect: usize,
    /// `valid_at` given with no time in the messages.
    pub valid_at_dropped: usize,
    /// `valid_at` that is not a time.
    pub malformed: usize,
}

impl FactChecks {
    pub fn add(&mut self, o: FactChecks) {
        self.returned += o.returned;
        self.empty += o.empty;
        self.too_long += o.too_long;
        self.repeated += o.repeated;
        self.speaker_fixed += o.speaker_fixed;
        self.entities_dropped += o.entities_dropped;
        self.suspect += o.suspect;
        self.valid_at_dropped += o.valid_at_dropped;
        self.malformed += o.malformed;
    }

    fn publish(&self) {
        for (rule, n) in [
            ("empty", self.empty),
            ("too_long", self.too_long),
            ("repeated", self.repeated),
            ("speaker_fixed", self.speaker_fixed),
            ("entities_dropped", self.entities_dropped),
            ("suspect", self.suspect),
            ("valid_at_dropped", self.valid_at_dropped),
            ("malformed", self.malformed),
        ] {
            if n > 0 {
                metrics::counter!("engram_llm_facts_checked_total", "rule" => rule)
                    .increment(n as u64);
            }
        }
    }
}

/// Output tokens an extraction of `input_chars` characters may take: about
/// twice the input's tokens plus room for the JSON, never the provider's
/// whole window (a looping model stops early and cheaply).
pub fn extraction_budget(input_chars: usize) -> u32 {
    (200 + input_chars / 2).clamp(256, 2000) as u32
}

/// Output tokens a consolidation of `facts` facts may take.
pub fn consolidation_budget(facts: usize) -> u32 {
    (100 + 80 * facts).clamp(200, 2000) as u32
}

/// Words that say when, besides weekdays, months and digits.
const TIME_WORDS: &[&str] = &[
    "today",
    "yesterday",
    "tomorrow",
    "tonight",
    "ago",
    "last",
    "next",
    "week",
    "weekend",
    "month",
    "year",
    "morning",
    "evening",
    "afternoon",
    "since",
    "until",
    "heute",
    "gestern",
    "morgen",
    "hier",
    "demain",
    "aujourd'hui",
    "hoy",
    "ayer",
    "mañana",
];

/// Whether a text says when something happened (English and a few common
/// words of German, French and Spanish; any digit counts).
pub fn mentions_time(text: &str) -> bool {
    text.chars().any(|c| c.is_ascii_digit())
        || words(text).any(|w| {
            TIME_WORDS.contains(&w.as_str())
                || crate::text::is_weekday(&w)
                || crate::text::month_number(&w).is_some()
        })
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Words of four letters or more: a crude content-word set, language-neutral.
fn content_words(text: &str) -> HashSet<String> {
    words(text).filter(|w| w.chars().count() >= 4).collect()
}

/// The sentences of `text` up to the first one it repeats; `None` when nothing repeats.
pub fn cut_loop(text: &str) -> Option<String> {
    let mut seen = HashSet::new();
    for (start, sentence) in sentences(text) {
        let key = sentence.trim().to_lowercase();
        if !key.is_empty() && !seen.insert(key) {
            return Some(text[..start].trim().to_owned());
        }
    }
    None
}

/// Sentences with their byte offsets, split after `.`, `!` or `?`.
fn sentences(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?') {
            let end = i + c.len_utf8();
            out.push((start, &text[start..end]));
            start = end;
        }
    }
    if start < text.len() {
        out.push((start, &text[start..]));
    }
    out
}

/// Who said the sentences a fact comes from, when only one side did.
fn source_speaker(fact: &str, messages: &[ChatMessage]) -> Option<&'static str> {
    let fw = content_words(fact);
    if fw.is_empty() {
        return None;
    }
    let mut best: Option<(f32, &'static str)> = None;
    let mut tied = false;
    for m in messages {
        let role = match m.role.as_str() {
            "user" => "user",
            "assistant" => "assistant",
            _ => continue,
        };
        let mw = content_words(&m.content);
        let overlap = fw.intersection(&mw).count() as f32 / fw.len() as f32;
        if overlap < 0.5 {
            continue;
        }
        match best {
            Some((b, r)) if (overlap - b).abs() < 1e-6 && r != role => tied = true,
            Some((b, _)) if overlap <= b => {}
            _ => {
                best = Some((overlap, role));
                tied = false;
            }
        }
    }
    if tied { None } else { best.map(|(_, r)| r) }
}

/// Checks and repairs `facts` against the `new` messages (and the earlier
/// `context` ones): returns the facts to keep and what each rule caught.
pub fn check_facts(
    facts: Vec<Fact>,
    new: &[ChatMessage],
    context: &[ChatMessage],
) -> (Vec<Fact>, FactChecks) {
    let mut checks = FactChecks {
        returned: facts.len(),
        ..Default::default()
    };
    let source: String = new
        .iter()
        .chain(context)
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let source_lower = source.to_lowercase();
    let new_text: String = new
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let longest = new.iter().map(|m| m.content.chars().count()).sum::<usize>();
    let dated = mentions_time(&new_text);
    let convo_entities: Vec<String> = crate::text::tag_entities(&new_text)
        .into_iter()
        .map(|e| e.name.to_lowercase())
        .collect();
    let source_words = content_words(&source);
    let mut seen: HashSet<String> = HashSet::new();
    let mut kept = Vec::new();
    for mut f in facts {
        f.text = f.text.trim().to_owned();
        if f.text.is_empty() {
            checks.empty += 1;
            continue;
        }
        if let Some(cut) = cut_loop(&f.text) {
            checks.repeated += 1;
            if cut.is_empty() {
                continue;
            }
            f.text = cut;
        }
        // Longer than everything it could come from (with room for a rewording).
        if f.text.chars().count() > (longest + longest / 2).max(200) {
            checks.too_long += 1;
            continue;
        }
        if !seen.insert(f.text.to_lowercase()) {
            checks.repeated += 1;
            continue;
        }
        if let Some(who) = source_speaker(&f.text, new)
            && f.speaker.as_deref() != Some(who)
        {
            checks.speaker_fixed += 1;
            f.speaker = Some(who.to_owned());
        }
        let before = f.entities.len();
        f.entities
            .retain(|e| !e.name.trim().is_empty() && source_lower.contains(&e.name.to_lowercase()));
        checks.entities_dropped += before - f.entities.len();
        if let Some(v) = &f.valid_at {
            if crate::filter::parse_timestamp(&json!(v), "valid_at").is_err() {
                checks.malformed += 1;
                f.valid_at = None;
            } else if !dated {
                checks.valid_at_dropped += 1;
                f.valid_at = None;
            }
        }
        let lower = f.text.to_lowercase();
        let names_one = convo_entities.iter().any(|e| lower.contains(e.as_str()))
            || f.entities
                .iter()
                .any(|e| lower.contains(&e.name.to_lowercase()));
        let fw = content_words(&f.text);
        let shared = fw.intersection(&source_words).count();
        if !names_one && !fw.is_empty() && (shared as f32) < 0.3 * fw.len() as f32 {
            checks.suspect += 1;
        }
        kept.push(f);
    }
    checks.publish();
    (kept, checks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Entity;

    fn fact(text: &str, speaker: &str) -> Fact {
        Fact {
            text: text.into(),
            kind: Some("semantic".into()),
            entities: Vec::new(),
            valid_at: None,
            speaker: Some(speaker.into()),
        }
    }

    #[test]
    fn budgets_follow_the_input() {
        assert_eq!(extraction_budget(100), 256);
        assert_eq!(extraction_budget(1000), 700);
        assert_eq!(extraction_budget(1_000_000), 2000);
        assert_eq!(consolidation_budget(1), 200);
        assert_eq!(consolidation_budget(5), 500);
    }

    #[test]
    fn loops_are_cut() {
        assert_eq!(
            cut_loop("I am allergic to penicillin. I am allergic to penicillin. I am allergic"),
            Some("I am allergic to penicillin.".into())
        );
        assert_eq!(cut_loop("Likes tea. Lives in Oslo."), None);
        assert!(mentions_time("I flew to Rome yesterday"));
        assert!(!mentions_time("I like Rome"));
        assert!(mentions_time("Born in 1990"));
    }

    #[test]
    fn each_rule_catches_its_failure() {
        let new = vec![
            ChatMessage::user("I am Dana, a nurse at Mercy Hospital in Boston."),
            ChatMessage::assistant("You should read Middlemarch by George Eliot."),
        ];
        let mut invented = fact("Dana is a nurse at Mercy Hospital", "user");
        invented.valid_at = Some("2021-01-01".into());
        invented.entities = vec![
            Entity {
                name: "Mercy Hospital".into(),
                kind: "organization".into(),
            },
            Entity {
                name: "Chicago".into(),
                kind: "place".into(),
            },
        ];
        let mut malformed = fact("Works in Boston", "user");
        malformed.valid_at = Some("three years ago-ish".into());
        let facts = vec![
            invented,
            fact("  ", "user"),
            fact("Dana is a nurse at Mercy Hospital", "user"),
            fact("Should read Middlemarch by George Eliot", "user"),
            fact("I am Dana. I am Dana. I am Dana.", "user"),
            fact(&"very long ".repeat(60), "user"),
            malformed,
            fact("Enjoys quantum chromodynamics lectures", "user"),
        ];
        let (kept, c) = check_facts(facts, &new, &[]);
        let texts: Vec<&str> = kept.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "Dana is a nurse at Mercy Hospital",
                "Should read Middlemarch by George Eliot",
                "I am Dana.",
                "Works in Boston",
                "Enjoys quantum chromodynamics lectures",
            ]
        );
        assert_eq!(kept[0].valid_at, None, "no time in the messages");
        assert_eq!(
            kept[0].entities.len(),
            1,
            "Chicago is not in the conversation"
        );
        assert_eq!(kept[1].speaker.as_deref(), Some("assistant"));
        assert_eq!(
            c,
            FactChecks {
                returned: 8,
                empty: 1,
                too_long: 1,
                repeated: 2,
                speaker_fixed: 1,
                entities_dropped: 1,
                suspect: 1,
                valid_at_dropped: 1,
                malformed: 1,
            }
        );
    }

    #[test]
    fn a_dated_message_keeps_the_valid_at() {
        let new = vec![ChatMessage::user("Yesterday I flew to Rome.")];
        let mut f = fact("Flew to Rome", "user");
        f.valid_at = Some("2026-03-01".into());
        let (kept, c) = check_facts(vec![f], &new, &[]);
        assert_eq!(kept[0].valid_at.as_deref(), Some("2026-03-01"));
        assert_eq!(c.valid_at_dropped, 0);
    }
}
