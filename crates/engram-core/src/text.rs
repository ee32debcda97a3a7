//! Text handling for the no-LLM ingest path and for keyword queries:
//! sentence splitting and chunking, a rule-based entity tagger, and the
//! keyword terms of a query.

use std::collections::HashSet;

use unicode_segmentation::UnicodeSegmentation;

use crate::memory::Entity;

/// Splits text into sentences (Unicode sentence boundaries), trimmed, empty ones dropped.
pub fn sentences(text: &str) -> Vec<&str> {
    text.split_sentence_bounds()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Splits `text` into chunks of whole sentences of at most `max_tokens`
/// tokens each (as counted by `count`). A text that fits is returned whole;
/// a single sentence longer than the limit becomes its own chunk (the
/// embedder truncates it; nothing is dropped from the stored text).
pub fn chunk(text: &str, max_tokens: usize, count: &dyn Fn(&str) -> usize) -> Vec<String> {
    let text = text.trim();
    if text.is_empty() {
        return Vec::new();
    }
    if max_tokens == 0 || count(text) <= max_tokens {
        return vec![text.to_owned()];
    }
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut current_tokens = 0;
    for sentence in sentences(text) {
        let n = count(sentence);
        if !current.is_empty() && current_tokens + n > max_tokens {
            chunks.push(std::mem::take(&mut current));
            current_tokens = 0;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(sentence);
        current_tokens += n;
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// English function words, dropped from keyword queries and never tagged as
/// entities when they start a sentence.
pub const STOPWORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "s",
    "t",
    "don",
    "ve",
    "ll",
    "re",
    "m",
    "d",
    "also",
    "yes",
    "yeah",
    "oh",
    "wow",
    "hey",
    "hi",
    "hello",
    "thanks",
    "thank",
    "really",
    "much",
    "many",
    "like",
    "get",
    "got",
    "let",
    "us",
    "im",
];

fn is_stopword(word: &str) -> bool {
    STOPWORDS.binary_search(&word).is_ok() || STOPWORDS.contains(&word)
}

/// Lower-cased alphanumeric words of a query minus stopwords, deduplicated, in order.
pub fn keyword_terms(query: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    query
        .unicode_words()
        .map(|w| w.trim_matches('\'').to_lowercase())
        .map(|w| w.strip_suffix("'s").map(str::to_owned).unwrap_or(w))
        .filter(|w| !w.is_empty() && !is_stopword(w) && w.chars().any(char::is_alphanumeric))
        .filter(|w| seen.insert(w.clone()))
        .collect()
}

/// The speaker of a memory stored from a named message: the verbatim add
/// writes each piece of a turn with a `name` as `"{name}: {text}"`
/// (`"Melanie: I love pottery"` → `Melanie`). `None` for other texts; a
/// capitalised label of up to four words (`"Time: 12:30"`) reads as a
/// speaker too, which matters only when a query names it.
pub fn speaker(text: &str) -> Option<&str> {
    let (name, rest) = text.split_once(": ")?;
    let plausible = !rest.trim().is_empty()
        && name.len() <= 64
        && name.split_whitespace().count() <= 4
        && name.chars().next().is_some_and(char::is_uppercase)
        && !name.contains(['.', '!', '?', ':', '"', ','])
        && name.trim() == name;
    plausible.then_some(name)
}

/// The lower-case words of a query, possessives stripped, for matching names.
pub fn query_words(query: &str) -> HashSet<String> {
    query
        .unicode_words()
        .map(|w| w.trim_matches('\'').to_lowercase())
        .map(|w| w.strip_suffix("'s").map(str::to_owned).unwrap_or(w))
        .collect()
}

/// Whether a query with `words` ([`query_words`]) names `speaker` (every word of it).
pub fn names_speaker(words: &HashSet<String>, speaker: &str) -> bool {
    speaker
        .split_whitespace()
        .all(|w| words.contains(&w.to_lowercase()))
}

/// Most entities tagged in one text (a list of 3,000 numbers is not 3,000 entities).
pub const MAX_ENTITIES: usize = 64;

const MONTHS: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
];
const WEEKDAYS: &[&str] = &[
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
/// Whether `word` names a day of the week, case-insensitively.
pub fn is_weekday(word: &str) -> bool {
    WEEKDAYS.contains(&word.to_lowercase().as_str())
}

/// The month (1-12) a month name or its abbreviation names, case-insensitively.
pub fn month_number(word: &str) -> Option<i8> {
    let w = word.to_lowercase();
    // MONTHS lists the twelve full names first; abbreviations are their prefixes.
    let prefix = w.get(..3)?;
    MONTHS[..12]
        .iter()
        .position(|m| m.starts_with(prefix) && m.starts_with(w.as_str()))
        .map(|i| i as i8 + 1)
}

/// Capitalised words that start sentences or are pronouns/greetings rather than names.
const NOT_NAMES: &[&str] = &[
    "i",
    "i'm",
    "i've",
    "i'll",
    "i'd",
    "it's",
    "that's",
    "there's",
    "what's",
    "let's",
    "ok",
    "okay",
    "sure",
    "great",
    "awesome",
    "cool",
    "nice",
    "well",
    "anyway",
    "sorry",
    "please",
    "maybe",
    "also",
    "btw",
    "lol",
    "congrats",
    "congratulations",
    "absolutely",
    "definitely",
    "totally",
    "exactly",
    "wow",
    "yep",
    "nope",
    "haha",
    "today",
    "tomorrow",
    "yesterday",
    "tonight",
    "last",
    "next",
    "every",
    "hey",
    "thanks",
    "dear",
    "mr",
    "mrs",
    "ms",
    "dr",
];

/// Tags entities with rules: capitalised spans (not sentence-initial
/// function words), quoted names, dates (month names, ISO dates, years) and
/// numbers. Deterministic and cheap; used when no LLM extracts entities.
pub fn tag_entities(text: &str) -> Vec<Entity> {
    let mut out: Vec<Entity> = Vec::new();
    let mut keys: HashSet<String> = HashSet::new();
    let mut quoted: Vec<String> = Vec::new();
    let mut push = |name: &str, kind: &str| {
        let name = name.trim_matches(|c: char| !c.is_alphanumeric());
        if name.is_empty() || out.len() >= MAX_ENTITIES {
            return;
        }
        let key = crate::memory::entity_key(name);
        // Skip repeats, and capitalised spans inside a quoted title already tagged.
        if keys.contains(&key) || quoted.iter().any(|q| q.contains(&key)) {
            return;
        }
        if kind == "quoted" {
            quoted.push(key.clone());
        }
        keys.insert(key);
        out.push(Entity {
            name: name.to_owned(),
            kind: kind.to_owned(),
        });
    };

    // Quoted spans: "Becoming Nicole", “Charlotte's Web”.
    for (open, close) in [('"', '"'), ('“', '”')] {
        let mut rest = text;
        while let Some(start) = rest.find(open) {
            let after = &rest[start + open.len_utf8()..];
            let Some(end) = after.find(close) else { break };
            let inner = after[..end].trim();
            let words = inner.split_whitespace().count();
            if (1..=8).contains(&words) && inner.len() <= 80 {
                push(inner, "quoted");
            }
            rest = &after[end + close.len_utf8()..];
        }
    }

    // Walk words with their sentence position.
    for sentence in sentences(text) {
        let words: Vec<&str> = sentence.split_whitespace().collect();
        let mut i = 0;
        while i < words.len() {
            let raw = words[i];
            let word = raw.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'');
            let bare = word
                .strip_suffix("'s")
                .or_else(|| word.strip_suffix("’s"))
                .unwrap_or(word);
            let lower = bare.to_lowercase();

            // Dates: "May 7, 2023", "7 May 2023", "May 2023", ISO 2023-05-07.
            if MONTHS.contains(&lower.as_str())
                && bare.chars().next().is_some_and(char::is_uppercase)
            {
                let mut span = vec![bare.to_owned()];
                let mut j = i + 1;
                while j < words.len() && span.len() < 3 {
                    let w = words[j].trim_matches(|c: char| !c.is_alphanumeric());
                    if !w.is_empty() && w.chars().all(|c| c.is_ascii_digit()) && w.len() <= 4 {
                        span.push(w.to_owned());
                        j += 1;
                    } else {
                        break;
                    }
                }
                if i > 0 {
                    let prev = words[i - 1].trim_matches(|c: char| !c.is_alphanumeric());
                    let prev = prev.trim_end_matches(|c: char| c.is_alphabetic());
                    if !prev.is_empty()
                        && prev.len() <= 2
                        && prev.chars().all(|c| c.is_ascii_digit())
                    {
                        span.insert(0, prev.to_owned());
                    }
                }
                if span.len() > 1 {
                    push(&span.join(" "), "date");
                }
                i = j;
                continue;
            }
            if is_iso_date(word) {
                push(word, "date");
                i += 1;
                continue;
            }
            if !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
            {
                let next_is_month = words.get(i + 1).is_some_and(|w| {
                    MONTHS.contains(
                        &w.trim_matches(|c: char| !c.is_alphanumeric())
                            .to_lowercase()
                            .as_str(),
                    )
                });
                if next_is_month && word.len() <= 2 {
                    // "7 May 2023": the month handler takes the day with it.
                    i += 1;
                    continue;
                }
                let digits = word.chars().filter(char::is_ascii_digit).count();
                if digits >= 4
                    && word.len() == 4
                    && (word.starts_with("19") || word.starts_with("20"))
                {
                    push(word, "date");
                } else if digits > 0 {
                    push(word, "number");
                }
                i += 1;
                continue;
            }

            // Capitalised spans, allowing connectors between capitalised words.
            if is_capitalised(bare) && !WEEKDAYS.contains(&lower.as_str()) {
                let mut span = vec![bare];
                let mut j = i + 1;
                let mut ended_by_punct =
                    raw.ends_with([',', '.', '!', '?', ';', ':']) || bare.len() != word.len();
                while j < words.len() && !ended_by_punct {
                    let raw_next = words[j];
                    let next = raw_next.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'');
                    let next_bare = next
                        .strip_suffix("'s")
                        .or_else(|| next.strip_suffix("’s"))
                        .unwrap_or(next);
                    let connector = matches!(
                        next,
                        "of" | "de" | "van" | "von" | "da" | "del" | "la" | "le"
                    );
                    if connector
                        && j + 1 < words.len()
                        && is_capitalised(words[j + 1].trim_matches(|c: char| !c.is_alphanumeric()))
                    {
                        span.push(next);
                        j += 1;
                        continue;
                    }
                    if is_capitalised(next_bare)
                        && !MONTHS.contains(&next_bare.to_lowercase().as_str())
                    {
                        span.push(next_bare);
                        ended_by_punct = raw_next.ends_with([',', '.', '!', '?', ';', ':'])
                            || next_bare.len() != next.len();
                        j += 1;
                    } else {
                        break;
                    }
                }
                // A lone capitalised word is only a name if it is not a common word
                // (sentence starts, pronouns, greetings).
                let single_common =
                    span.len() == 1 && (is_stopword(&lower) || NOT_NAMES.contains(&lower.as_str()));
                if !single_common {
                    let mut span = span;
                    while span.len() > 1 && {
                        let first = span[0].to_lowercase();
                        is_stopword(&first) || NOT_NAMES.contains(&first.as_str())
                    } {
                        span.remove(0);
                    }
                    let rest = span.join(" ").to_lowercase();
                    if !(span.len() == 1
                        && (is_stopword(&rest) || NOT_NAMES.contains(&rest.as_str())))
                    {
                        push(&span.join(" "), "name");
                    }
                }
                i = j;
                continue;
            }
            i += 1;
        }
    }
    out
}

fn is_capitalised(word: &str) -> bool {
    let mut chars = word.chars();
    match chars.next() {
        Some(c) if c.is_uppercase() => {
            word.chars().any(char::is_alphabetic) && word.len() > 1 || word == "I"
        }
        _ => false,
    }
}

fn is_iso_date(word: &str) -> bool {
    let b = word.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Removes `<memories>…</memories>` blocks (memories retrieved and injected
/// into the prompt by the caller); an unclosed block runs to the end. Both
/// the LLM pipeline and the verbatim add drop them: they are memories
/// already stored, not something the user just said.
pub fn strip_injected(text: &str) -> String {
    const OPEN: &str = "<memories>";
    const CLOSE: &str = "</memories>";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        match rest[start..].find(CLOSE) {
            Some(end) => rest = &rest[start + end + CLOSE.len()..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        tag_entities(text)
            .into_iter()
            .map(|e| format!("{}:{}", e.kind, e.name))
            .collect()
    }

    #[test]
    fn stopwords_sorted_for_binary_search() {
        // `is_stopword` falls back to a linear scan, but keep the list sorted-ish for readers.
        assert!(is_stopword("the") && is_stopword("you") && !is_stopword("lisbon"));
    }

    #[test]
    fn month_names() {
        assert_eq!(month_number("May"), Some(5));
        assert_eq!(month_number("sept"), Some(9));
        assert_eq!(month_number("December"), Some(12));
        assert_eq!(month_number("Ma"), None);
        assert_eq!(month_number("Mayday"), None);
    }

    #[test]
    fn chunking_respects_sentences() {
        let words = |s: &str| s.split_whitespace().count();
        let text = "One two three. Four five six. Seven eight nine ten.";
        assert_eq!(chunk(text, 100, &words), vec![text.to_owned()]);
        assert_eq!(
            chunk(text, 6, &words),
            vec!["One two three. Four five six.", "Seven eight nine ten."]
        );
        assert_eq!(chunk("   ", 6, &words), Vec::<String>::new());
        // A single over-long sentence is kept whole.
        assert_eq!(
            chunk("a b c d e f g h.", 3, &words),
            vec!["a b c d e f g h.".to_owned()]
        );
    }

    #[test]
    fn speakers_of_named_turns() {
        assert_eq!(speaker("Melanie: I love pottery."), Some("Melanie"));
        assert_eq!(speaker("Mary Ann: hi there"), Some("Mary Ann"));
        for none in [
            "I love pottery.",
            "note: buy milk",
            "Wait. He said: no",
            "Bob:",
            "A, b: c",
        ] {
            assert_eq!(speaker(none), None, "{none}");
        }
        let w = query_words("What did Melanie's kids like? Ask Mary Ann");
        assert!(names_speaker(&w, "Melanie") && names_speaker(&w, "Mary Ann"));
        assert!(!names_speaker(&w, "Caroline"));
    }

    #[test]
    fn keyword_terms_drop_stopwords() {
        assert_eq!(
            keyword_terms("What did Caroline research in May?"),
            vec!["caroline", "research", "may"]
        );
        assert_eq!(
            keyword_terms("Melanie's kids, kids!"),
            vec!["melanie", "kids"]
        );
        assert!(keyword_terms("what is the").is_empty());
    }

    #[test]
    fn tags_names_dates_numbers_quotes() {
        assert_eq!(
            names("I moved to New York City last May."),
            vec!["name:New York City"]
        );
        assert_eq!(
            names("Caroline went to the LGBTQ support group on 7 May 2023."),
            vec!["name:Caroline", "name:LGBTQ", "date:7 May 2023"]
        );
        assert_eq!(
            names("We read \"Becoming Nicole\" by Amy Ellis Nutt."),
            vec!["quoted:Becoming Nicole", "name:Amy Ellis Nutt"]
        );
        assert_eq!(
            names("The meeting is on 2024-03-05 and costs 1,200 dollars."),
            vec!["date:2024-03-05", "number:1,200"]
        );
        assert_eq!(names("Thanks! I love it."), Vec::<String>::new());
        assert_eq!(
            names("She joined the Bank of America in 2019."),
            vec!["name:Bank of America", "date:2019"]
        );
    }
}
