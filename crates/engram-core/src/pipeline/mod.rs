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
mod validate;

pub use json::{JsonAnswer, chat_json, parse_json_lenient};
pub use validate::FactChecks;
use validate::{check_facts, consolidation_budget, extraction_budget};

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
    /// What the fact checks caught ([`check_facts`]).
    pub checks: FactChecks,
    /// Answers cut off at `max_tokens` (their complete part was used).
    pub truncated: usize,
}

/// One extraction: checked facts and what it took.
#[derive(Debug, Clone, Default)]
struct Extracted {
    pub facts: Vec<Fact>,
    pub usage: Usage,
    pub checks: FactChecks,
    /// Answers cut off at `max_tokens`.
    pub truncated: usize,
}

/// The `key` list of a model's answer (`what` names it in errors). Items of
/// a cut-off answer that do not make a `T` — the salvage may keep a bare
/// `text` — are skipped, not fatal; in a complete answer they are errors.
fn items_of<T: serde::de::DeserializeOwned>(
    value: &Value,
    key: &str,
    truncated: bool,
    what: &str,
) -> Result<Vec<T>> {
    let schema_error = |why: String| {
        Error::new(
            ErrorCode::LlmFailure,
            format!("the {what} answer does not match its schema: {why}"),
        )
    };
    let items = match &value[key] {
        Value::Array(items) => items,
        Value::Null if truncated => return Ok(Vec::new()),
        Value::Null => return Err(schema_error(format!("`{key}` is missing"))),
        _ => return Err(schema_error(format!("`{key}` is not a list"))),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match serde_json::from_value::<T>(item.clone()) {
            Ok(t) => out.push(t),
            Err(_) if truncated => {}
            Err(e) => return Err(schema_error(e.to_string())),
        }
    }
    Ok(out)
}

const EXTRACT_PROMPT: &str = "You extract durable memories from a conversation between a user and an AI assistant.\n\
Return atomic facts: each one short, self-contained and true on its own, in the language the user wrote in.\n\
- Write facts about the user from the user's point of view, e.g. \"Works at Acme\", \"Is vegetarian\".\n\
- A statement the assistant made is attributed to the assistant (speaker \"assistant\"), never to the user.\n\
- kind: \"semantic\" for a lasting fact or preference, \"episodic\" for an event (put its date in valid_at when known), \
\"procedural\" for an instruction about how the assistant should behave.\n\
- entities: the people, places, organisations and things the fact names, with a short type.\n\
- valid_at: when the fact became true, as a date (YYYY-MM-DD), only when the messages say when; resolve words like \
\"yesterday\" or \"next Friday\" against the CONVERSATION DATE; otherwise null.\n\
- Ignore small talk, questions, and anything inside <memories>...</memories>: those are memories already stored.\n\
- Extract facts only from the NEW messages; the earlier ones are context.\n\
- State each fact once. When there is nothing worth remembering, the list of facts is empty.";

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

/// The extraction answer's schema. Property order is part of the prompt for
/// grammar-constrained decoders: `text` first, so the model states the fact
/// before its details.
const EXTRACT_SCHEMA: &str = r#"{
  "type": "object", "additionalProperties": false, "required": ["facts"],
  "properties": {"facts": {"type": "array", "items": {
    "type": "object", "additionalProperties": false,
    "required": ["text", "speaker", "kind", "entities", "valid_at"],
    "properties": {
      "text": {"type": "string"},
      "speaker": {"type": "string", "enum": ["user", "assistant"]},
      "kind": {"type": "string", "enum": ["semantic", "episodic", "procedural"]},
      "entities": {"type": "array", "items": {"type": "object", "additionalProperties": false,
        "required": ["name", "type"],
        "properties": {"name": {"type": "string"}, "type": {"type": "string"}}}},
      "valid_at": {"type": ["string", "null"]}
    }}}}
}"#;

/// The consolidation answer's schema: which fact, what to do, then the details.
const CONSOLIDATE_SCHEMA: &str = r#"{
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
}"#;

const SUMMARY_SCHEMA: &str = r#"{"type": "object", "additionalProperties": false, "required": ["summary"],
  "properties": {"summary": {"type": "string"}}}"#;

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

pub use crate::text::strip_injected;

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

    /// Facts from the new messages (earlier ones are context only), checked
    /// ([`check_facts`]). `date` is the conversation's date line. The output
    /// budget follows the input; an answer cut off at it keeps its complete
    /// facts, and when none survived the call is made once more with a
    /// note saying why, never replayed as it was.
    async fn extract(
        &self,
        context: &[ChatMessage],
        new: &[ChatMessage],
        date: &str,
    ) -> Result<Extracted> {
        let mut convo = format!("CONVERSATION DATE: {date}\n\n");
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
        let budget = extraction_budget(convo.len());
        let mut request = ChatRequest {
            messages: vec![
                ChatMessage::system(EXTRACT_PROMPT),
                ChatMessage::user(convo),
            ],
            schema: Some(JsonSchema::new("facts", EXTRACT_SCHEMA)?),
            temperature: 0.0,
            max_tokens: Some(budget),
        };
        let mut out = Extracted::default();
        for round in 0..2 {
            let answer = chat_json(self.llm.as_ref(), request.clone()).await?;
            out.usage.add(answer.usage);
            let facts: Vec<Fact> =
                items_of(&answer.value, "facts", answer.truncated, "extraction")?;
            if !answer.truncated {
                let (facts, checks) = check_facts(facts, new, context);
                out.checks.add(checks);
                out.facts = facts;
                return Ok(out);
            }
            out.truncated += 1;
            let (facts, checks) = check_facts(facts, new, context);
            out.checks.add(checks);
            if !facts.is_empty() {
                tracing::warn!(
                    kept = facts.len(),
                    max_tokens = budget,
                    "the extraction answer was cut off; keeping its complete facts"
                );
                out.facts = facts;
                return Ok(out);
            }
            if round == 0 {
                tracing::warn!(
                    max_tokens = budget,
                    "the extraction answer was cut off with no complete fact; asking again"
                );
                request.messages.push(ChatMessage::user(format!(
                    "Your previous answer was cut off after {budget} tokens because it repeated itself. \
                     Answer again: state each fact once, in at most 25 words, and stop."
                )));
            }
        }
        Err(Error::new(
            ErrorCode::LlmFailure,
            format!(
                "the model's extraction answer was cut off at {budget} tokens twice with no complete fact \
                 (it repeats itself); the next attempt extracts one message at a time"
            ),
        ))
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
                schema: Some(JsonSchema::new("instructions", SUMMARY_SCHEMA)?),
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
                truncated: usize::from(answer.truncated),
                ..Default::default()
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
        self.prepare_attempt(ctx, input, 1).await
    }

    /// [`prepare`](Self::prepare) as a job's `attempt`-th try: from the
    /// second on, each message is extracted on its own (a shorter input
    /// than the one that failed).
    pub async fn prepare_attempt(
        &self,
        ctx: &RequestCtx,
        input: &AddInput,
        attempt: u32,
    ) -> Result<(Vec<WriteOp>, Outcome)> {
        let (mut ops, outcome) = if input.kind == MemoryKind::Procedural {
            self.prepare_procedural(ctx, input).await?
        } else {
            self.prepare_facts(ctx, input, attempt >= 2).await?
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
        one_by_one: bool,
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
        let day = input
            .timestamp
            .unwrap_or_else(|| self.memory.now())
            .to_zoned(jiff::tz::TimeZone::UTC);
        let date = day.strftime("%Y-%m-%d (%A)").to_string();
        let mut outcome = Outcome::default();
        let mut facts = Vec::new();
        let chunks: Vec<&[ChatMessage]> = if one_by_one {
            new.chunks(1).collect()
        } else {
            vec![&new[..]]
        };
        for chunk in chunks {
            let got = self.extract(&context, chunk, &date).await?;
            outcome.usage.add(got.usage);
            outcome.checks.add(got.checks);
            outcome.truncated += got.truncated;
            facts.extend(got.facts);
        }
        let mut usage = outcome.usage;
        if facts.is_empty() {
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
                    schema: Some(JsonSchema::new("operations", CONSOLIDATE_SCHEMA)?),
                    temperature: 0.0,
                    max_tokens: Some(consolidation_budget(facts.len())),
                },
            )
            .await?;
            usage.add(answer.usage);
            let mut ops: Vec<Operation> = items_of(
                &answer.value,
                "operations",
                answer.truncated,
                "consolidation",
            )?;
            if answer.truncated {
                // Cut off: the facts it never reached are added (nothing is lost).
                outcome.truncated += 1;
                for i in 1..=facts.len() {
                    let id = format!("f{i}");
                    if !ops.iter().any(|o| o.fact == id) {
                        ops.push(Operation {
                            fact: id,
                            event: "ADD".into(),
                            target: None,
                            text: None,
                            reason: Some(
                                "the consolidation answer was cut off before this fact".into(),
                            ),
                        });
                    }
                }
            }
            ops
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
                        feedback: None,
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
    fn schemas_are_json_with_the_fact_text_first() {
        for (name, text) in [
            ("facts", EXTRACT_SCHEMA),
            ("operations", CONSOLIDATE_SCHEMA),
            ("instructions", SUMMARY_SCHEMA),
        ] {
            JsonSchema::new(name, text).unwrap();
        }
        let order = |key: &str| EXTRACT_SCHEMA.find(&format!("\"{key}\": {{")).unwrap();
        assert!(order("text") < order("speaker"));
        assert!(order("speaker") < order("kind"));
        assert!(order("kind") < order("entities"));
        assert!(order("entities") < order("valid_at"));
        assert!(
            !EXTRACT_PROMPT.contains("{\"facts\""),
            "a literal empty answer gets copied by small models"
        );
    }

    #[test]
    fn a_cut_off_answer_skips_the_items_it_cannot_use() {
        // The salvage of a cut-off consolidation can keep a bare `text`.
        let cut = json!({"operations": [
            {"fact": "f1", "event": "ADD", "target": null, "text": null, "reason": "new"},
            {"text": "Lives in Oslo."}]});
        let ops: Vec<Operation> = items_of(&cut, "operations", true, "consolidation").unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].fact, "f1");
        let e = items_of::<Operation>(&cut, "operations", false, "consolidation").unwrap_err();
        assert!(e.message.contains("missing field `fact`"), "{e}");
        let e = items_of::<Fact>(&json!({}), "facts", false, "extraction").unwrap_err();
        assert!(e.message.contains("`facts` is missing"), "{e}");
        assert!(
            items_of::<Fact>(&json!({}), "facts", true, "extraction")
                .unwrap()
                .is_empty()
        );
    }

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
