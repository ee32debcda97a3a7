//! Is a near-duplicate the same statement, a correction of it, or another
//! statement? The verbatim add (no LLM) asks this of a new text and its
//! nearest memory when their vectors are almost identical: embeddings barely
//! move when "July 11" becomes "July 12", "Google" becomes "Meta" or "I eat
//! meat" becomes "I don't eat meat", yet those are exactly the changes a
//! memory must not swallow.
//!
//! The rule is lexical and deliberately narrow. Both texts are split into
//! words and aligned (longest common subsequence). Words that only fill
//! (articles, "really", "actually") are ignored. If nothing else differs, the
//! texts say the same thing ([`Comparison::Same`]). If every difference is a
//! *salient* token — one holding a digit, a month or weekday, a number word,
//! a negation, or a capitalised name in mid-sentence — the new text restates
//! the old one with those details changed ([`Comparison::Corrects`], with the
//! changed spans for the history reason). Any other changed word makes it a
//! different statement ([`Comparison::Different`]): stored as its own memory,
//! never silently merged.

use crate::text;

/// How a new text relates to a near-identical stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// The same statement (case, punctuation or filler words aside).
    Same,
    /// The same statement with salient details changed: `(old, new)` spans
    /// in order, either side possibly empty ("" → "not").
    Corrects(Vec<(String, String)>),
    /// A different statement.
    Different,
}

impl Comparison {
    /// The history reason for a correction, e.g. `corrected without an LLM: "11" → "12"`.
    pub fn reason(&self) -> Option<String> {
        let Comparison::Corrects(changes) = self else {
            return None;
        };
        let parts: Vec<String> = changes
            .iter()
            .map(|(old, new)| format!("{old:?} → {new:?}"))
            .collect();
        Some(format!("corrected without an LLM: {}", parts.join(", ")))
    }
}

/// Longer texts are not compared word by word (the alignment is quadratic);
/// they keep the plain near-duplicate rule.
const MAX_WORDS: usize = 160;

/// Words whose presence or absence changes nothing a memory should keep.
const FILLERS: &[&str] = &[
    "a",
    "an",
    "the",
    "really",
    "actually",
    "just",
    "very",
    "so",
    "quite",
    "indeed",
    "basically",
    "well",
    "oh",
    "um",
    "uh",
    "like",
    "also",
    "too",
    "still",
    "yes",
    "yeah",
    "ok",
    "okay",
];

/// Negations and the auxiliaries that carry them ("I do not eat meat").
const NEGATIONS: &[&str] = &[
    "not", "no", "never", "nor", "none", "nothing", "nobody", "nowhere", "neither", "cannot",
    "longer", "anymore", "without", "ne", "pas", "nicht", "kein", "keine", "nie", "nunca",
    "jamais",
];
const AUXILIARIES: &[&str] = &[
    "do", "does", "did", "am", "is", "are", "was", "were", "have", "has", "had", "will", "would",
    "can", "could", "should", "must",
];

/// Days named relative to today; weekdays and months come from `text`.
const RELATIVE_DAYS: &[&str] = &["today", "tomorrow", "yesterday", "tonight"];
const NUMBER_WORDS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "seventy",
    "eighty",
    "ninety",
    "hundred",
    "thousand",
    "million",
    "billion",
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "once",
    "twice",
    "dozen",
    "half",
];

/// One word: its text as written, its lowercase form, and whether it starts
/// a sentence (where a capital letter says nothing).
#[derive(Debug)]
struct Word<'a> {
    text: &'a str,
    lower: String,
    starts_sentence: bool,
}

fn words(text: &str) -> Vec<Word<'_>> {
    let mut out = Vec::new();
    let mut starts_sentence = true;
    let mut start: Option<usize> = None;
    let is_word_char = |c: char| c.is_alphanumeric() || c == '\'' || c == '’';
    let mut push = |s: usize, e: usize, starts: &mut bool| {
        let raw = text[s..e].trim_matches(['\'', '’']);
        if !raw.is_empty() {
            out.push(Word {
                text: raw,
                lower: raw.to_lowercase().replace('’', "'"),
                starts_sentence: *starts,
            });
            *starts = false;
        }
    };
    for (i, c) in text.char_indices() {
        if is_word_char(c) {
            start.get_or_insert(i);
            continue;
        }
        if let Some(s) = start.take() {
            push(s, i, &mut starts_sentence);
        }
        if matches!(c, '.' | '!' | '?' | ':' | ';' | '\n' | '"' | '“' | '(') {
            starts_sentence = true;
        }
    }
    if let Some(s) = start {
        push(s, text.len(), &mut starts_sentence);
    }
    out
}

fn is_negation(w: &Word) -> bool {
    NEGATIONS.contains(&w.lower.as_str()) || w.lower.ends_with("n't")
}

fn is_salient(w: &Word) -> bool {
    let l = w.lower.as_str();
    w.text.chars().any(|c| c.is_ascii_digit())
        || text::month_number(l).is_some()
        || text::is_weekday(l)
        || RELATIVE_DAYS.contains(&l)
        || NUMBER_WORDS.contains(&l)
        || is_negation(w)
        || (!w.starts_sentence && l != "i" && w.text.chars().next().is_some_and(char::is_uppercase))
}

/// The differing runs of an alignment: `(old words, new words)` per run.
fn diff<'a, 'b>(
    old: &'a [Word<'b>],
    new: &'a [Word<'b>],
) -> Vec<(Vec<&'a Word<'b>>, Vec<&'a Word<'b>>)> {
    let (n, m) = (old.len(), new.len());
    // lcs[i][j]: the longest common subsequence of old[i..] and new[j..].
    let mut lcs = vec![vec![0u16; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if old[i].lower == new[j].lower {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut runs = Vec::new();
    let (mut i, mut j) = (0, 0);
    let mut run: (Vec<&Word>, Vec<&Word>) = (Vec::new(), Vec::new());
    while i < n || j < m {
        if i < n && j < m && old[i].lower == new[j].lower {
            if !run.0.is_empty() || !run.1.is_empty() {
                runs.push(std::mem::take(&mut run));
            }
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            run.1.push(&new[j]);
            j += 1;
        } else {
            run.0.push(&old[i]);
            i += 1;
        }
    }
    if !run.0.is_empty() || !run.1.is_empty() {
        runs.push(run);
    }
    runs
}

/// How `new` relates to `old`, two texts whose vectors are near-identical.
pub fn compare(old: &str, new: &str) -> Comparison {
    let (old_words, new_words) = (words(old), words(new));
    if old_words.len() > MAX_WORDS || new_words.len() > MAX_WORDS {
        return Comparison::Same;
    }
    let mut changes = Vec::new();
    for (gone, came) in diff(&old_words, &new_words) {
        let meaningful = |w: &&Word| !FILLERS.contains(&w.lower.as_str());
        let gone: Vec<&Word> = gone.into_iter().filter(meaningful).collect();
        let came: Vec<&Word> = came.into_iter().filter(meaningful).collect();
        if gone.is_empty() && came.is_empty() {
            continue;
        }
        let negated = gone.iter().chain(&came).any(|w| is_negation(w));
        // Only dropping a detail ("Take care, John, bye!" → "Take care, bye!")
        // says less, not something else: the stored text stands.
        if came.is_empty() && !negated {
            if gone.iter().all(|w| is_salient(w)) {
                continue;
            }
            return Comparison::Different;
        }
        let allowed =
            |w: &&Word| is_salient(w) || (negated && AUXILIARIES.contains(&w.lower.as_str()));
        if !gone.iter().chain(&came).all(allowed) {
            return Comparison::Different;
        }
        let join = |ws: &[&Word]| ws.iter().map(|w| w.text).collect::<Vec<_>>().join(" ");
        changes.push((join(&gone), join(&came)));
    }
    if changes.is_empty() {
        Comparison::Same
    } else {
        Comparison::Corrects(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corrects(old: &str, new: &str) -> Vec<(String, String)> {
        match compare(old, new) {
            Comparison::Corrects(c) => c,
            other => panic!("{old:?} → {new:?}: expected a correction, got {other:?}"),
        }
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn restatements_are_the_same() {
        for (old, new) in [
            ("My birthday is on July 11.", "My birthday is on July 11."),
            ("My birthday is on July 11.", "my birthday is on july 11"),
            ("I love green tea.", "I really love green tea!"),
            ("I love the green tea.", "I love green tea"),
            ("Caroline: I went to Paris.", "Caroline: I went to Paris"),
            // Dropping a name says less; the stored text stands.
            ("James: Take care, John, bye!", "James: Take care, bye!"),
        ] {
            assert_eq!(compare(old, new), Comparison::Same, "{old:?} → {new:?}");
        }
    }

    #[test]
    fn changed_numbers_dates_names_and_negations_are_corrections() {
        assert_eq!(
            corrects("My birthday is on July 11.", "My birthday is on July 12."),
            vec![pair("11", "12")]
        );
        assert_eq!(
            corrects("My birthday is on July 11.", "My birthday is on August 11."),
            vec![pair("July", "August")]
        );
        assert_eq!(
            corrects("I work at Google in Zurich.", "I work at Meta in Zurich."),
            vec![pair("Google", "Meta")]
        );
        assert_eq!(
            corrects(
                "The meeting is on Monday at 3pm.",
                "The meeting is on Tuesday at 4pm."
            ),
            vec![pair("Monday", "Tuesday"), pair("3pm", "4pm")]
        );
        assert_eq!(
            corrects("I eat meat.", "I don't eat meat."),
            vec![pair("", "don't")]
        );
        assert_eq!(
            corrects("I eat meat.", "I do not eat meat."),
            vec![pair("", "do not")]
        );
        assert_eq!(
            corrects("I eat meat.", "I no longer eat meat."),
            vec![pair("", "no longer")]
        );
        assert_eq!(
            corrects("I have two kids.", "I have three kids."),
            vec![pair("two", "three")]
        );
    }

    #[test]
    fn other_changed_words_make_a_different_statement() {
        for (old, new) in [
            ("I love green tea.", "I hate green tea."),
            ("My sister lives in a flat.", "My brother lives in a flat."),
            ("I work at Google.", "I worked at Google for years."),
            // A lowercase name is not recognisable as one: a different statement, kept.
            ("My dog is called rex.", "My dog is called max."),
        ] {
            assert_eq!(
                compare(old, new),
                Comparison::Different,
                "{old:?} → {new:?}"
            );
        }
    }

    #[test]
    fn a_capital_at_the_start_of_a_sentence_is_not_a_name() {
        // "Yes" is a filler; "Sure" starts a sentence and is an ordinary word.
        assert_eq!(
            compare("Sure. I will come.", "Fine. I will come."),
            Comparison::Different
        );
    }

    #[test]
    fn the_reason_names_each_change() {
        let c = compare("Meeting on May 3 at 10.", "Meeting on May 4 at 11.");
        assert_eq!(
            c.reason().as_deref(),
            Some(r#"corrected without an LLM: "3" → "4", "10" → "11""#)
        );
        assert_eq!(Comparison::Same.reason(), None);
    }

    #[test]
    fn very_long_texts_keep_the_plain_rule() {
        let old = "word ".repeat(MAX_WORDS + 1);
        let new = format!("{old} 12");
        assert_eq!(compare(&old, &new), Comparison::Same);
    }
}
