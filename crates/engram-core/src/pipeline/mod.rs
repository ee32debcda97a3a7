//! The LLM memory pipeline: extraction and consolidation (DESIGN.md §2).
//!
//! 1. **Extract**: the new messages, with a few earlier turns of the same
//!    session for context, become atomic facts (text in the user's language,
//!    kind, entities, optional `valid_at`, who said it). Memories that were
//!    injected into the conversation (inside `<memories>` … `</memories>`)
//!    are not facts to extract.
//! 2. **Consolidate**: each fact's nearest existing memories in the same
//!    scope (top 5, hybrid search) are shown to the LLM under short aliases
//!    (`m1`, `m2`…); it answers one operation per fact: ADD, UPDATE(target,
//!    text), DELETE(target) or NOOP. An alias it invents is rejected, never
//!    trusted. Nothing is destroyed: UPDATE writes a new version (the old one
//!    is closed, `invalid_at`), DELETE closes the memory; every operation
//!    writes a history row with the LLM's reason.
//!
//! The result is a batch of [`WriteOp`]s the caller applies in one
//! transaction (a job appends its own completion to it).

mod json;

pub use json::{JsonAnswer, chat_json, parse_json_lenient};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::clock::to_millis;
use crate::ctx::RequestCtx;
use crate::filter::Filter;
use crate::memory::{Entity, Event, Memory, MemoryKind, Scope, text_hash};
use crate::ports::{ChatMessage, ChatRequest, JsonSchema, Llm, Usage};
use crate::ports::{UsageRow, WriteOp};
use crate::service::{AddInput, AddResult, Content, MemoryService, SearchInput};
use crate::{Error, ErrorCode, Result, text};

/// Neighbours shown per fact.
pub const NEIGHBOURS: usize = 5;

/// A fact the LLM extracted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    pub text: String,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub entities: Vec<Entity>,
    /// When it became true, if the conversation says (RFC 3339 or a date).
    #[serde(default)]
    pub valid_at: Option<String>,
    /// `user` or `assistant`: who stated it.
    #[serde(default)]
    pub speaker: Option<String>,
}

/// What the pipeline did, for the job result and metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcome {
    pub results: Vec<AddResult>,
    pub usage: Usage,
    /// Operations naming an alias that was not shown (dropped).
    pub rejected: usize,
}

const EXTRACT_PROMPT: &str = "You extract durable memories from a conversation between a user and an AI assistant.\n\
Return atomic facts: each one short, self-contained and true on its own, in the language the user wrote in.\n\
- Write facts about the user from the user's point of view, e.g. \"Works at Acme\", \"Is vegetarian\".\n\
- A statement the assistant made is attributed to the assistant (speaker \"assistant\"), never to the user.\n\
- kind: \"semantic\" for a lasting fact or preference, \"episodic\" for an event (put its date in valid_at when known), \
\"procedural\" for an instruction about how the assistant should behave.\n\
- entities: the people, places, organisations and things the fact names, with a short type.\n\
- Ignore small talk, questions, and anything inside <memories>...</memories>: those are memories already stored.\n\
- Extract facts only from the NEW messages; the earlier ones are context.\n\
Return {\"facts\": []} when there is nothing worth remembering.";

const CONSOLIDATE_PROMPT: &str = "You keep a user's memory consistent. You get EXISTING memories (ids m1, m2, ...) and NEW facts \
(ids f1, f2, ...). For every new fact answer exactly one operation:\n\
- ADD: the fact is new information.\n\
- UPDATE: the fact changes or refines an existing memory; give its id as target and the full new text.\n\
- DELETE: the fact contradicts an existing memory that is no longer true and the fact itself need not be stored; give its id as target.\n\
- NOOP: the fact is already known.\n\
Use only the ids shown. Give a short reason for each operation.";

const PROCEDURAL_PROMPT: &str = "You maintain an AI agent's standing instructions and preferences as one concise text. \
You get the CURRENT text (possibly empty) and NEW instructions. Merge them: keep what still holds, let newer instructions \
replace the ones they contradict, drop repeats, keep the user's language. Answer {\"summary\": \"...\"}.";

fn extract_schema() -> JsonSchema {
    JsonSchema {
        name: "facts".into(),
        schema: json!({
            "type": "object", "additionalProperties": false, "required": ["facts"],
            "properties": {"facts": {"type": "array", "items": {
                "type": "object", "additionalProperties": false,
                "required": ["text", "kind", "entities", "valid_at", "speaker"],
                "properties": {
                    "text": {"type": "string"},
                    "kind": {"type": "string", "enum": ["semantic", "episodic", "procedural"]},
                    "entities": {"type": "array", "items": {"type": "object", "additionalProperties": false,
                        "required": ["name", "type"],
                        "properties": {"name": {"type": "string"}, "type": {"type": "string"}}}},
                    "valid_at": {"type": ["string", "null"]},
                    "speaker": {"type": "string", "enum": ["user", "assistant"]}
                }}}}
        }),
    }
}

fn consolidate_schema() -> JsonSchema {
    JsonSchema {
        name: "operations".into(),
        schema: json!({
            "type": "object", "additionalProperties": false, "required": ["operations"],
            "properties": {"operations": {"type": "array", "items": {
                "type": "object", "additionalProperties": false,
                "required": ["fact", "event", "target", "text", "reason"],
                "properties": {
                    "fact": {"type": "string"},
                    "event": {"type": "string", "enum": ["ADD", "UPDATE", "DELETE", "NOOP"]},
                    "target": {"type": ["string", "null"]},
                    "text": {"type": ["string", "null"]},
                    "reason": {"type": "string"}
                }}}}
        }),
    }
}

#[derive(Debug, Deserialize)]
struct Operation {
    fact: String,
    event: String,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// Removes `<memories>…</memories>` blocks (memories retrieved and injected
/// into the prompt by the caller); an unclosed block runs to the end.
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

fn kind_of(f: &Fact) -> MemoryKind {
    match f.kind.as_deref() {
        Some("episodic") => MemoryKind::Episodic,
        Some("procedural") => MemoryKind::Procedural,
        _ => MemoryKind::Semantic,
    }
}

/// The LLM pipeline over a memory service.
#[derive(Clone)]
pub struct Pipeline {
    memory: MemoryService,
    llm: Arc<dyn Llm>,
}

impl Pipeline {
    pub fn new(memory: MemoryService, llm: Arc<dyn Llm>) -> Pipeline {
        Pipeline { memory, llm }
    }

    pub fn llm(&self) -> &Arc<dyn Llm> {
        &self.llm
    }

    /// Facts from the new messages (earlier ones are context only).
    pub async fn extract(
        &self,
        context: &[ChatMessage],
        new: &[ChatMessage],
    ) -> Result<(Vec<Fact>, Usage)> {
        let mut convo = String::new();
        if !context.is_empty() {
            convo.push_str("EARLIER MESSAGES (context only):\n");
            for m in context {
                convo.push_str(&format!("{}: {}\n", m.role, m.content));
            }
            convo.push('\n');
        }
        convo.push_str("NEW MESSAGES:\n");
        for m in new {
            convo.push_str(&format!("{}: {}\n", m.role, m.content));
        }
        let answer = chat_json(
            self.llm.as_ref(),
            ChatRequest {
                messages: vec![
                    ChatMessage::system(EXTRACT_PROMPT),
                    ChatMessage::user(convo),
                ],
                schema: Some(extract_schema()),
                temperature: 0.0,
                max_tokens: Some(2000),
            },
        )
        .await?;
        let facts: Vec<Fact> =
            serde_json::from_value(answer.value["facts"].clone()).map_err(|e| {
                Error::new(
                    ErrorCode::LlmFailure,
                    format!("the extraction answer does not match its schema: {e}"),
                )
            })?;
        let facts = facts
            .into_iter()
            .map(|mut f| {
                f.text = f.text.trim().to_owned();
                f
            })
            .filter(|f| !f.text.is_empty())
            .collect();
        Ok((facts, answer.usage))
    }

    /// A procedural add for an agent: the LLM merges the agent's current
    /// instructions and the new ones into one maintained memory.
    async fn prepare_procedural(
        &self,
        ctx: &RequestCtx,
        input: &AddInput,
    ) -> Result<(Vec<WriteOp>, Outcome)> {
        let scope = ctx.principal.bind_scope(input.scope.clone())?;
        let current = self
            .memory
            .procedural_memory(ctx, &scope)
            .await?
            .map(|m| m.text)
            .unwrap_or_default();
        let new = match &input.content {
            Content::Text(t) => t.clone(),
            Content::Messages(ms) => ms
                .iter()
                .map(|m| format!("{}: {}", m.role, m.content))
                .collect::<Vec<_>>()
                .join("\n"),
        };
        let answer = chat_json(
            self.llm.as_ref(),
            ChatRequest {
                messages: vec![
                    ChatMessage::system(PROCEDURAL_PROMPT),
                    ChatMessage::user(json!({"current": current, "new": new}).to_string()),
                ],
                schema: Some(JsonSchema {
                    name: "instructions".into(),
                    schema: json!({"type": "object", "additionalProperties": false, "required": ["summary"],
                        "properties": {"summary": {"type": "string"}}}),
                }),
                temperature: 0.0,
                max_tokens: Some(1500),
            },
        )
        .await?;
        let summary = answer.value["summary"]
            .as_str()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::LlmFailure,
                    "the summary answer has no `summary` text",
                )
            })?
            .to_owned();
        let (ops, result) = self
            .memory
            .prepare_procedural(ctx, input.clone(), Some(summary))
            .await?;
        Ok((
            ops,
            Outcome {
                results: vec![result],
                usage: answer.usage,
                rejected: 0,
            },
        ))
    }

    /// Extract, consolidate, and return the writes (not applied) and what
    /// they mean. The writes include the run's LLM usage, tallied per scope.
    pub async fn prepare(
        &self,
        ctx: &RequestCtx,
        input: &AddInput,
    ) -> Result<(Vec<WriteOp>, Outcome)> {
        let (mut ops, outcome) = if input.kind == MemoryKind::Procedural {
            self.prepare_procedural(ctx, input).await?
        } else {
            self.prepare_facts(ctx, input).await?
        };
        self.memory.cap_episodic(ctx, &mut ops).await?;
        let u = outcome.usage;
        if u.prompt_tokens + u.completion_tokens > 0 {
            let cost = self.llm.cost_usd(&u);
            metrics::counter!("engram_llm_runs_total").increment(1);
            ops.push(WriteOp::RecordUsage(UsageRow {
                scope: ctx.principal.bind_scope(input.scope.clone())?,
                day: self.memory.now().strftime("%Y-%m-%d").to_string(),
                model: self.llm.model().to_owned(),
                runs: 1,
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                cost_microdollars: (cost * 1e6).round() as u64,
            }));
        }
        Ok((ops, outcome))
    }

    async fn prepare_facts(
        &self,
        ctx: &RequestCtx,
        input: &AddInput,
    ) -> Result<(Vec<WriteOp>, Outcome)> {
        let new: Vec<ChatMessage> = match &input.content {
            Content::Text(t) => vec![ChatMessage::user(t.clone())],
            Content::Messages(ms) => ms
                .iter()
                .map(|m| ChatMessage {
                    role: m.role.clone(),
                    content: match &m.name {
                        Some(n) => format!("{n}: {}", m.content),
                        None => m.content.clone(),
                    },
                })
                .collect(),
        };
        // Memories a caller injected into the conversation are not new facts:
        // they never reach the extractor.
        let new: Vec<ChatMessage> = new
            .into_iter()
            .map(|m| ChatMessage {
                content: strip_injected(&m.content),
                ..m
            })
            .filter(|m| !m.content.trim().is_empty())
            .collect();
        if new.is_empty() {
            return Ok((Vec::new(), Outcome::default()));
        }
        let context = self.recent_turns(ctx, &input.scope).await?;
        let (facts, mut usage) = self.extract(&context, &new).await?;
        let mut outcome = Outcome::default();
        if facts.is_empty() {
            outcome.usage = usage;
            return Ok((Vec::new(), outcome));
        }
        // Neighbours of every fact, in the same scope, under aliases m1…mN.
        let mut shown: Vec<Memory> = Vec::new();
        for f in &facts {
            let hits = self
                .memory
                .search(
                    ctx,
                    SearchInput {
                        query: f.text.clone(),
                        filter: Filter::exact_scope(&input.scope),
                        top_k: Some(NEIGHBOURS),
                        threshold: None,
                        token_budget: Some(0),
                        explain: false,
                    },
                )
                .await?;
            for h in hits.hits {
                if !shown.iter().any(|m| m.id == h.memory.id) {
                    shown.push(h.memory);
                }
            }
        }
        let aliases: BTreeMap<String, &Memory> = shown
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("m{}", i + 1), m))
            .collect();
        let ops = if shown.is_empty() {
            // Nothing to compare with: every fact is new.
            (0..facts.len())
                .map(|i| Operation {
                    fact: format!("f{}", i + 1),
                    event: "ADD".into(),
                    target: None,
                    text: None,
                    reason: Some("no related memory".into()),
                })
                .collect()
        } else {
            let existing: Vec<Value> = aliases
                .iter()
                .map(|(a, m)| json!({"id": a, "text": m.text, "updated_at": m.updated_at.to_string()}))
                .collect();
            let new_facts: Vec<Value> = facts
                .iter()
                .enumerate()
                .map(|(i, f)| json!({"id": format!("f{}", i + 1), "text": f.text}))
                .collect();
            let answer = chat_json(
                self.llm.as_ref(),
                ChatRequest {
                    messages: vec![
                        ChatMessage::system(CONSOLIDATE_PROMPT),
                        ChatMessage::user(
                            json!({"existing": existing, "new_facts": new_facts}).to_string(),
                        ),
                    ],
                    schema: Some(consolidate_schema()),
                    temperature: 0.0,
                    max_tokens: Some(2000),
                },
            )
            .await?;
            usage.add(answer.usage);
            serde_json::from_value::<Vec<Operation>>(answer.value["operations"].clone()).map_err(
                |e| {
                    Error::new(
                        ErrorCode::LlmFailure,
                        format!("the consolidation answer does not match its schema: {e}"),
                    )
                },
            )?
        };
        outcome.usage = usage;
        let ops = self
            .apply_operations(ctx, input, &facts, &aliases, ops, &mut outcome)
            .await?;
        Ok((ops, outcome))
    }

    /// The last few turns of the same session, as context for extraction.
    async fn recent_turns(&self, ctx: &RequestCtx, scope: &Scope) -> Result<Vec<ChatMessage>> {
        if scope.run_id.is_none() {
            return Ok(Vec::new());
        }
        let page = self
            .memory
            .list(ctx, &Filter::exact_scope(scope), None, 6)
            .await?;
        Ok(page
            .memories
            .into_iter()
            .rev()
            .map(|m| ChatMessage {
                role: m.role.unwrap_or_else(|| "user".into()),
                content: m.text,
            })
            .collect())
    }

    async fn apply_operations(
        &self,
        ctx: &RequestCtx,
        input: &AddInput,
        facts: &[Fact],
        aliases: &BTreeMap<String, &Memory>,
        ops: Vec<Operation>,
        outcome: &mut Outcome,
    ) -> Result<Vec<WriteOp>> {
        let now = self.memory.now();
        let (expires_at, idle_ttl) = self.memory.expiry_of(input, now)?;
        // Texts to embed: ADDs and UPDATEs, in order.
        // (event, target memory, fact, text to store, reason)
        type Planned<'a> = (Event, Option<&'a Memory>, &'a Fact, String, Option<String>);
        let mut planned: Vec<Planned<'_>> = Vec::new();
        let mut touched: HashMap<Uuid, ()> = HashMap::new();
        for op in ops {
            let Some(i) = op
                .fact
                .strip_prefix('f')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=facts.len()).contains(n))
            else {
                outcome.rejected += 1;
                tracing::warn!(fact = %op.fact, "consolidation named an unknown fact; ignored");
                continue;
            };
            let fact = &facts[i - 1];
            let event = Event::parse(&op.event).unwrap_or(Event::Noop);
            let target = match event {
                Event::Update | Event::Delete => {
                    match op.target.as_deref().and_then(|t| aliases.get(t)) {
                        Some(m) if touched.insert(m.id, ()).is_none() => Some(*m),
                        Some(_) => {
                            outcome.rejected += 1;
                            continue;
                        }
                        None => {
                            // An alias that was never shown: rejected, not trusted.
                            outcome.rejected += 1;
                            tracing::warn!(target = ?op.target, "consolidation named an id it was not shown; ignored");
                            metrics::counter!("engram_consolidation_rejected_total").increment(1);
                            continue;
                        }
                    }
                }
                _ => op.target.as_deref().and_then(|t| aliases.get(t)).copied(),
            };
            let text = match event {
                Event::Update => op.text.clone().unwrap_or_else(|| fact.text.clone()),
                _ => fact.text.clone(),
            };
            planned.push((event, target, fact, text, op.reason));
        }
        let to_embed: Vec<String> = planned
            .iter()
            .filter(|(e, ..)| matches!(e, Event::Add | Event::Update))
            .map(|(_, _, _, t, _)| t.clone())
            .collect();
        let embedder = self.memory.embedder();
        let mut vectors = MemoryService::embed_with(&*embedder, &to_embed)
            .await?
            .into_iter();
        let mut writes = Vec::new();
        for (event, target, fact, text, reason) in planned {
            match (event, target) {
                (Event::Add, _) => {
                    let vector = vectors
                        .next()
                        .ok_or_else(|| Error::internal("vector count"))?;
                    self.memory.check_text(&text, "a fact")?;
                    let mut entities = fact.entities.clone();
                    if entities.is_empty() {
                        entities = text::tag_entities(&text);
                    }
                    let valid_at = fact
                        .valid_at
                        .as_ref()
                        .and_then(|v| crate::filter::parse_timestamp(&json!(v), "valid_at").ok())
                        .map(to_millis);
                    let memory = Memory {
                        id: Uuid::now_v7(),
                        version: 1,
                        hash: text_hash(&text),
                        tokens: embedder.count_tokens(&text) as u32,
                        text: text.clone(),
                        kind: kind_of(fact),
                        scope: input.scope.clone(),
                        metadata: input.metadata.clone(),
                        categories: input.categories.clone(),
                        entities,
                        role: fact.speaker.clone().or(Some("user".into())),
                        created_at: input.timestamp.map(to_millis).unwrap_or(now),
                        updated_at: now,
                        valid_at: valid_at.or(input.timestamp.map(to_millis)),
                        invalid_at: None,
                        expires_at,
                        idle_ttl,
                        embedding_model: embedder.model().id.clone(),
                    };
                    let mut h = self.memory.history_event(
                        ctx,
                        &memory,
                        Event::Add,
                        None,
                        Some(text.clone()),
                        now,
                    );
                    h.reason = reason;
                    outcome.results.push(AddResult {
                        id: memory.id,
                        memory: text,
                        event: Event::Add,
                    });
                    writes.push(WriteOp::Insert {
                        memory,
                        embedding: vector,
                        history: h,
                    });
                }
                (Event::Update, Some(old)) => {
                    let vector = vectors
                        .next()
                        .ok_or_else(|| Error::internal("vector count"))?;
                    self.memory.check_text(&text, "an updated fact")?;
                    let mut next = self.memory.successor(old, &text, now);
                    next.embedding_model = embedder.model().id.clone();
                    if !fact.entities.is_empty() {
                        next.entities = fact.entities.clone();
                    }
                    let mut h = self.memory.history_event(
                        ctx,
                        &next,
                        Event::Update,
                        Some(old.text.clone()),
                        Some(text.clone()),
                        now,
                    );
                    h.reason = reason;
                    outcome.results.push(AddResult {
                        id: old.id,
                        memory: text,
                        event: Event::Update,
                    });
                    writes.push(WriteOp::Update {
                        memory: next,
                        embedding: Some(vector),
                        history: h,
                    });
                }
                (Event::Delete, Some(old)) => {
                    let mut h = self.memory.history_event(
                        ctx,
                        old,
                        Event::Delete,
                        Some(old.text.clone()),
                        None,
                        now,
                    );
                    h.reason = reason;
                    outcome.results.push(AddResult {
                        id: old.id,
                        memory: old.text.clone(),
                        event: Event::Delete,
                    });
                    writes.push(WriteOp::Delete {
                        id: old.id,
                        at: now,
                        history: h,
                    });
                }
                (_, known) => outcome.results.push(AddResult {
                    id: known.map(|m| m.id).unwrap_or_else(Uuid::nil),
                    memory: text,
                    event: Event::Noop,
                }),
            }
        }
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_memories_are_stripped() {
        assert_eq!(
            strip_injected(
                "Hi <memories>- Likes tea\n- Lives in Oslo</memories> I moved to Bergen."
            ),
            "Hi  I moved to Bergen."
        );
        assert_eq!(
            strip_injected("<memories>a</memories>b<memories>c</memories>"),
            "b"
        );
        assert_eq!(strip_injected("x <memories>never closed"), "x ");
        assert_eq!(strip_injected("plain"), "plain");
    }
}
