//! Tolerant parsing of a model's JSON answer (code fences, thinking tags,
//! prose around it) and the one repair round-trip when the answer still does
//! not parse ([`chat_json`]).

use serde_json::Value;

use crate::ports::{ChatMessage, ChatRequest, Llm, Usage};
use crate::{Error, ErrorCode, Result};

/// Extracts the JSON value from a model's answer: strips `<think>…</think>`
/// blocks and Markdown code fences, then takes the first balanced JSON
/// object or array, ignoring prose before and after it.
pub fn parse_json_lenient(text: &str) -> Option<Value> {
    let mut t = text.to_owned();
    // Thinking blocks (DeepSeek-R1, Qwen…) may contain braces of their own.
    for (open, close) in [("<think>", "</think>"), ("<thinking>", "</thinking>")] {
        while let Some(start) = t.find(open) {
            match t[start..].find(close) {
                Some(end) => t.replace_range(start..start + end + close.len(), ""),
                None => t.truncate(start),
            }
        }
    }
    if let Ok(v) = serde_json::from_str::<Value>(t.trim()) {
        return Some(v);
    }
    // The first `{` or `[` whose balanced span parses.
    let bytes = t.as_bytes();
    let mut start = 0;
    while let Some(off) = t[start..].find(['{', '[']) {
        let s = start + off;
        if let Some(end) = balanced_end(bytes, s)
            && let Ok(v) = serde_json::from_str::<Value>(&t[s..=end])
        {
            return Some(v);
        }
        start = s + 1;
    }
    None
}

/// The index of the bracket closing the one at `start`, skipping strings.
fn balanced_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for (i, &c) in b.iter().enumerate().skip(start) {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// A JSON answer and the tokens it took (over the repair round-trip too).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonAnswer {
    pub value: Value,
    pub usage: Usage,
    /// Whether the first answer did not parse and a repair request was needed.
    pub repaired: bool,
    /// The answer was cut off at `max_tokens`; `value` holds what could be
    /// salvaged ([`salvage_truncated`]).
    pub truncated: bool,
}

/// Asks for JSON: parses the answer leniently; if that fails, sends the
/// answer back once with the parse error and asks for the JSON alone; if
/// that fails too, the error says what the model answered. An answer cut off
/// at `max_tokens` is not a syntax slip — a repair would replay the loop
/// that caused it — so it comes back `truncated` with what was salvaged.
pub async fn chat_json(llm: &dyn Llm, request: ChatRequest) -> Result<JsonAnswer> {
    let first = llm.chat(request.clone()).await?;
    let mut usage = first.usage;
    if first.truncated {
        return Ok(JsonAnswer {
            value: salvage_truncated(&first.content),
            usage,
            repaired: false,
            truncated: true,
        });
    }
    if let Some(value) = parse_json_lenient(&first.content) {
        return Ok(JsonAnswer {
            value,
            usage,
            repaired: false,
            truncated: false,
        });
    }
    let mut repair = request;
    repair
        .messages
        .push(ChatMessage::assistant(first.content.clone()));
    repair.messages.push(ChatMessage::user(
        "Your answer was not valid JSON. Reply again with only the JSON value the instructions ask for: \
         no prose, no code fences.",
    ));
    let second = llm.chat(repair).await?;
    usage.add(second.usage);
    if second.truncated {
        return Ok(JsonAnswer {
            value: salvage_truncated(&second.content),
            usage,
            repaired: true,
            truncated: true,
        });
    }
    match parse_json_lenient(&second.content) {
        Some(value) => Ok(JsonAnswer {
            value,
            usage,
            repaired: true,
            truncated: false,
        }),
        None => {
            let shown: String = second.content.chars().take(200).collect();
            Err(Error::new(
                ErrorCode::LlmFailure,
                format!(
                    "the model did not answer with JSON, even after a repair request; it said: {shown:?}"
                ),
            ))
        }
    }
}

/// What a cut-off `{"key": [ {…}, {…}, {…` answer still holds: the complete
/// items of its first array, and — when the last item was cut inside its
/// `text` — that text up to the point where it starts repeating itself.
/// Returns `{"key": [items]}` (an empty array when nothing survived).
pub fn salvage_truncated(content: &str) -> Value {
    let key = content
        .find('"')
        .and_then(|s| {
            content[s + 1..]
                .find('"')
                .map(|e| &content[s + 1..s + 1 + e])
        })
        .filter(|k| !k.is_empty() && !k.contains(['{', '[']))
        .unwrap_or("items")
        .to_owned();
    let mut items = Vec::new();
    let b = content.as_bytes();
    if let Some(open) = content.find('[') {
        let mut i = open + 1;
        while i < b.len() {
            match b[i] {
                b'{' => match balanced_end(b, i) {
                    Some(end) => {
                        if let Ok(v) = serde_json::from_str::<Value>(&content[i..=end]) {
                            items.push(v);
                        }
                        i = end + 1;
                    }
                    None => {
                        if let Some(text) = partial_text(&content[i..]) {
                            items.push(serde_json::json!({ "text": text }));
                        }
                        break;
                    }
                },
                b']' => break,
                _ => i += 1,
            }
        }
    }
    serde_json::json!({ key: items })
}

/// The `text` of an unfinished object, cut where it starts repeating a
/// sentence; `None` unless at least one whole sentence came before.
fn partial_text(object: &str) -> Option<String> {
    let start = object.find("\"text\"")?;
    let rest = &object[start + 6..];
    let quote = rest.find('"')?;
    let raw = &rest[quote + 1..];
    // The string runs to its closing quote, or to the cut.
    let mut text = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => text.push('\n'),
                Some(other) => text.push(other),
                None => break,
            },
            c => text.push(c),
        }
    }
    let cut = super::validate::cut_loop(&text)?;
    (!cut.is_empty()).then_some(cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lenient_parsing_finds_the_json() {
        let want = json!({"facts": [{"text": "Alice likes {braces}"}]});
        for answer in [
            r#"{"facts": [{"text": "Alice likes {braces}"}]}"#,
            "```json\n{\"facts\": [{\"text\": \"Alice likes {braces}\"}]}\n```",
            "<think>The user said {x}... I should answer {}</think>\n{\"facts\": [{\"text\": \"Alice likes {braces}\"}]}",
            "Sure! Here is the JSON:\n{\"facts\": [{\"text\": \"Alice likes {braces}\"}]}\nLet me know if you need more.",
            "{not json} then {\"facts\": [{\"text\": \"Alice likes {braces}\"}]}",
        ] {
            assert_eq!(parse_json_lenient(answer), Some(want.clone()), "{answer}");
        }
        assert_eq!(parse_json_lenient("[1, 2]"), Some(json!([1, 2])));
        for bad in ["", "no json here", "{\"a\": ", "<think>{\"a\": 1}</think>"] {
            assert_eq!(parse_json_lenient(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_cut_off_answer_keeps_its_complete_items_and_cuts_the_loop() {
        let looped = r#"{"facts": [{"text": "Is a nurse", "kind": "semantic"}, {"text": "I am allergic to penicillin. I am allergic to penicillin. I am allerg"#;
        assert_eq!(
            salvage_truncated(looped),
            json!({"facts": [
                {"text": "Is a nurse", "kind": "semantic"},
                {"text": "I am allergic to penicillin."}
            ]})
        );
        // Cut inside the details of an item: the complete ones survive.
        let cut =
            r#"{"facts": [{"text": "Likes tea"}, {"text": "Lives in Oslo", "entities": [{"na"#;
        assert_eq!(
            salvage_truncated(cut),
            json!({"facts": [{"text": "Likes tea"}]})
        );
        assert_eq!(
            salvage_truncated(r#"{"operations": [{"fact": "f1", "ev"#),
            json!({"operations": []})
        );
        assert_eq!(salvage_truncated(""), json!({"items": []}));
        assert!(super::super::validate::cut_loop("a. b. a.").is_some());
        assert!(super::super::validate::cut_loop("a. b. c.").is_none());
    }
}
