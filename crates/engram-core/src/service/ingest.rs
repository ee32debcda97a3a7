//! The verbatim add (no LLM): validation, splitting into pieces, one
//! embedding batch, duplicates answered `NOOP`, one store transaction.

use std::collections::HashMap;

use jiff::Timestamp;
use uuid::Uuid;

use super::dot;
use crate::access::Role;
use crate::clock::to_millis;
use crate::correction::{self, Comparison};
use crate::ctx::RequestCtx;
use crate::filter::Filter;
use crate::memory::{Event, HistoryEvent, Memory, MemoryId, MemoryKind, Scope, text_hash};
use crate::ports::{Visibility, WriteOp};
use crate::service::{AddInput, AddResult, Content, MAX_NAME_BYTES, MemoryService};
use crate::telemetry;
use crate::text;
use crate::{Error, ErrorCode, Result};

/// An input's pieces: who said each (if a message named them) and its text.
type Pieces = Vec<(Option<String>, String)>;
/// An input (scope bound) with its pieces.
type Split = (AddInput, Pieces);

/// A verbatim add's pieces and their vectors, from one model.
pub(super) struct Embedded {
    embedder: std::sync::Arc<dyn crate::ports::Embedder>,
    texts: Vec<String>,
    vectors: Vec<Vec<f32>>,
}

/// How many times an add decides and writes before a conflict reaches the caller.
const ADD_ATTEMPTS: u32 = 4;

impl MemoryService {
    /// Stores messages or a text verbatim (no LLM): one memory per turn,
    /// long turns split by sentence, exact and near-duplicates in the same
    /// scope reported as NOOP. Every new memory writes an ADD history event.
    pub async fn add(&self, ctx: &RequestCtx, input: AddInput) -> Result<Vec<AddResult>> {
        let mut out = self.add_batch(ctx, vec![input]).await?;
        out.pop()
            .ok_or_else(|| Error::internal("add_batch returned no result"))
    }

    /// [`add`](Self::add) for several inputs at once: one embedding batch and
    /// one store transaction for all of them (imports, evaluations). Results
    /// come back per input, in order. Any invalid input fails the whole batch.
    pub async fn add_batch(
        &self,
        ctx: &RequestCtx,
        inputs: Vec<AddInput>,
    ) -> Result<Vec<Vec<AddResult>>> {
        // A correction names the version it replaces. On this node, adds to
        // one scope take turns from decision to commit; another node may
        // still replace the version first: then decide again against what
        // is stored now rather than fail the caller with a conflict.
        ctx.principal.require(Role::ReadWrite, "adding memories")?;
        let scopes: Vec<Scope> = inputs
            .iter()
            .map(|i| ctx.principal.bind_scope(i.scope.clone()))
            .collect::<Result<_>>()?;
        // The model runs before the turn is taken: adds to one scope wait
        // for each other's decision and commit, not for each other's
        // embedding (which concurrent adds share in batches).
        let embedded = self.embed_verbatim(ctx, &inputs).await?;
        let _turn = self.inner.add_locks.lock(&scopes).await;
        let mut attempt = 1;
        let all_results = loop {
            let (ops, results) = self
                .prepare_add_with(ctx, inputs.clone(), embedded.as_ref())
                .await?;
            if ops.is_empty() {
                break results;
            }
            match self.inner.store.apply(ops).await {
                Ok(()) => break results,
                Err(e) if e.code == ErrorCode::Conflict && attempt < ADD_ATTEMPTS => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "add raced another write; deciding again");
                }
                Err(e) => return Err(e),
            }
        };
        // Saying a known fact again is a use of it.
        let repeated: Vec<MemoryId> = all_results
            .iter()
            .flatten()
            .filter(|r| r.event == Event::Noop)
            .map(|r| r.id)
            .collect();
        if !repeated.is_empty() {
            let mut known = self.inner.store.get_many(&repeated, self.vis()).await?;
            self.touch(known.iter_mut()).await;
        }
        for r in all_results.iter().flatten() {
            telemetry::memory_event(r.event, 1);
        }
        Ok(all_results)
    }

    /// Checks an add without doing it (no embedding, no write): the role, the
    /// binding, the content's limits. Returns the input with the bound scope,
    /// ready to queue.
    pub fn validate_add(&self, ctx: &RequestCtx, mut input: AddInput) -> Result<AddInput> {
        ctx.principal.require(Role::ReadWrite, "adding memories")?;
        input.scope = ctx.principal.bind_scope(input.scope)?;
        self.pieces(&input, self.now())?;
        Ok(input)
    }

    /// Everything an add does except the write: the store operations and the
    /// results they will produce. A job runner appends its own completion to
    /// the same transaction.
    pub async fn prepare_add(
        &self,
        ctx: &RequestCtx,
        inputs: Vec<AddInput>,
    ) -> Result<(Vec<WriteOp>, Vec<Vec<AddResult>>)> {
        self.prepare_add_with(ctx, inputs, None).await
    }

    /// The pieces of a verbatim add embedded ahead of its decision; `None`
    /// when an input is procedural (those decide one at a time).
    async fn embed_verbatim(
        &self,
        ctx: &RequestCtx,
        inputs: &[AddInput],
    ) -> Result<Option<Embedded>> {
        if inputs.iter().any(|i| i.kind == MemoryKind::Procedural) {
            return Ok(None);
        }
        let (_, texts) = self.split_verbatim(ctx, inputs.to_vec(), self.now())?;
        let embedder = self.embedder();
        let vectors = Self::embed_with(&*embedder, &texts).await?;
        Ok(Some(Embedded {
            embedder,
            texts,
            vectors,
        }))
    }

    async fn prepare_add_with(
        &self,
        ctx: &RequestCtx,
        inputs: Vec<AddInput>,
        embedded: Option<&Embedded>,
    ) -> Result<(Vec<WriteOp>, Vec<Vec<AddResult>>)> {
        ctx.principal.require(Role::ReadWrite, "adding memories")?;
        let procedural = |i: &AddInput| i.kind == MemoryKind::Procedural;
        if !inputs.iter().any(procedural) {
            let (mut ops, results) = self.prepare_verbatim(ctx, inputs, embedded).await?;
            self.cap_episodic(ctx, &mut ops).await?;
            return Ok((ops, results));
        }
        // Procedural adds maintain one memory per agent; take inputs one at a time.
        let mut ops = Vec::new();
        let mut results = Vec::new();
        for input in inputs {
            let (o, r) = if procedural(&input) {
                let (o, r) = self.prepare_procedural(ctx, input, None).await?;
                (o, vec![r])
            } else {
                let (o, mut r) = self.prepare_verbatim(ctx, vec![input], None).await?;
                (o, r.pop().unwrap_or_default())
            };
            ops.extend(o);
            results.push(r);
        }
        self.cap_episodic(ctx, &mut ops).await?;
        Ok((ops, results))
    }

    /// The verbatim (no-LLM) add: pieces, duplicates as NOOP.
    pub(super) async fn prepare_verbatim(
        &self,
        ctx: &RequestCtx,
        inputs: Vec<AddInput>,
        embedded: Option<&Embedded>,
    ) -> Result<(Vec<WriteOp>, Vec<Vec<AddResult>>)> {
        let now = self.now();
        let (prepared, texts) = self.split_verbatim(ctx, inputs, now)?;
        // One model for the vectors and their label (a re-embedding may switch it meanwhile).
        let (embedder, vectors) = match embedded {
            // Embedded ahead for exactly these pieces.
            Some(e) if e.texts == texts => (e.embedder.clone(), e.vectors.clone()),
            _ => {
                let embedder = self.embedder();
                let vectors = Self::embed_with(&*embedder, &texts).await?;
                (embedder, vectors)
            }
        };
        let mut vectors = vectors.into_iter();
        let vis = Visibility { now };
        let threshold = self.inner.ingest.dedup_threshold;
        let mut ops = Vec::new();
        let mut all_results = Vec::with_capacity(prepared.len());
        // Memories added or corrected earlier in this batch, for duplicate checks within it.
        let mut batch: Vec<Seen> = Vec::new();
        for (input, pieces) in prepared {
            let (expires_at, idle_ttl) = self.expiry_of(&input, now)?;
            let at = input.timestamp.map(to_millis).unwrap_or(now);
            let mut results = Vec::with_capacity(pieces.len());
            for (role, piece) in pieces {
                let vector = vectors
                    .next()
                    .ok_or_else(|| Error::internal("vector count changed"))?;
                let hash = text_hash(&piece);
                if let Some(seen) = batch.iter().find(|b| {
                    b.scope == input.scope
                        && (b.hash == hash
                            || (dot(&b.vector, &vector) >= threshold
                                && correction::compare(&b.text, &piece) == Comparison::Same))
                }) {
                    results.push(AddResult {
                        id: seen.id,
                        memory: piece,
                        event: Event::Noop,
                    });
                    continue;
                }
                match self
                    .nearest_same(&input.scope, &piece, &hash, &vector, vis)
                    .await?
                {
                    Near::Known(existing) => {
                        results.push(AddResult {
                            id: existing,
                            memory: piece,
                            event: Event::Noop,
                        });
                        continue;
                    }
                    // A memory corrected earlier in this batch is added, not versioned twice.
                    Near::Corrected(old, reason) if !batch.iter().any(|b| b.id == old.id) => {
                        // The same statement with a number, date, name or
                        // negation changed: a new version of the memory.
                        let mut next = self.successor(&old, &piece, now);
                        next.embedding_model = embedder.model().id.clone();
                        for (k, v) in &input.metadata {
                            next.metadata.insert(k.clone(), v.clone());
                        }
                        if input.timestamp.is_some() {
                            next.valid_at = input.timestamp.map(to_millis);
                        }
                        let mut history = self.history_event(
                            ctx,
                            &next,
                            Event::Update,
                            Some(old.text.clone()),
                            Some(piece.clone()),
                            now,
                        );
                        history.reason = Some(reason);
                        metrics::counter!("engram_corrections_total").increment(1);
                        results.push(AddResult {
                            id: old.id,
                            memory: piece.clone(),
                            event: Event::Update,
                        });
                        batch.push(Seen {
                            scope: input.scope.clone(),
                            id: old.id,
                            hash,
                            text: piece.clone(),
                            vector: vector.clone(),
                        });
                        ops.push(WriteOp::Update {
                            memory: next,
                            embedding: Some(vector),
                            history,
                        });
                        continue;
                    }
                    Near::Corrected(..) | Near::None => {}
                }
                let id = Uuid::now_v7();
                let memory = Memory {
                    id,
                    version: 1,
                    entities: text::tag_entities(&piece),
                    tokens: embedder.count_tokens(&piece) as u32,
                    feedback: None,
                    hash: hash.clone(),
                    text: piece.clone(),
                    kind: input.kind,
                    scope: input.scope.clone(),
                    metadata: input.metadata.clone(),
                    categories: input.categories.clone(),
                    role,
                    created_at: at,
                    updated_at: at,
                    valid_at: input.timestamp.map(to_millis),
                    invalid_at: None,
                    expires_at,
                    idle_ttl,
                    embedding_model: embedder.model().id.clone(),
                };
                let history =
                    self.history_event(ctx, &memory, Event::Add, None, Some(piece.clone()), now);
                results.push(AddResult {
                    id,
                    memory: piece.clone(),
                    event: Event::Add,
                });
                batch.push(Seen {
                    scope: input.scope.clone(),
                    id,
                    hash,
                    text: piece.clone(),
                    vector: vector.clone(),
                });
                ops.push(WriteOp::Insert {
                    memory,
                    embedding: vector,
                    history,
                });
            }
            all_results.push(results);
        }
        Ok((ops, all_results))
    }

    /// Validates an add and splits its content into the texts to store, with their roles.
    /// Each input bound to the caller's scope with its pieces (role, text),
    /// and every piece's text in order: what a verbatim add embeds, whether
    /// ahead of its turn (`embed_verbatim`) or inside it.
    fn split_verbatim(
        &self,
        ctx: &RequestCtx,
        inputs: Vec<AddInput>,
        now: Timestamp,
    ) -> Result<(Vec<Split>, Vec<String>)> {
        let mut prepared = Vec::with_capacity(inputs.len());
        let mut texts = Vec::new();
        for mut input in inputs {
            input.scope = ctx.principal.bind_scope(input.scope)?;
            let pieces = self.pieces(&input, now)?;
            texts.extend(pieces.iter().map(|(_, t)| t.clone()));
            prepared.push((input, pieces));
        }
        Ok((prepared, texts))
    }

    pub(super) fn pieces(&self, input: &AddInput, now: Timestamp) -> Result<Pieces> {
        input.scope.validate_for_write()?;
        if let Some(exp) = input.expires_at
            && exp <= now
        {
            return Err(Error::invalid("`expires_at` is in the past"));
        }
        self.expiry_of(input, now)?;
        // (role, speaker name, content) per turn.
        let turns: Vec<(Option<String>, Option<String>, String)> = match &input.content {
            Content::Text(t) => {
                self.check_text(t, "`text`")?;
                vec![(None, None, t.clone())]
            }
            Content::Messages(messages) => {
                let max = self.inner.ingest.max_messages;
                if messages.len() > max {
                    return Err(Error::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "{} messages in one add; the maximum is {max}",
                            messages.len()
                        ),
                    ));
                }
                let mut turns = Vec::with_capacity(messages.len());
                for (i, m) in messages.iter().enumerate() {
                    if !matches!(m.role.as_str(), "user" | "assistant" | "system" | "tool") {
                        return Err(Error::invalid(format!(
                            "`messages[{i}].role` is `{}`; expected user, assistant, system or tool",
                            m.role
                        )));
                    }
                    self.check_text(&m.content, &format!("`messages[{i}].content`"))?;
                    if m.name
                        .as_ref()
                        .is_some_and(|n| n.len() > MAX_NAME_BYTES || n.contains(['\n', '\r']))
                    {
                        return Err(Error::invalid(format!(
                            "`messages[{i}].name` must be one line of at most {MAX_NAME_BYTES} bytes"
                        )));
                    }
                    let name = m
                        .name
                        .as_deref()
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned);
                    turns.push((Some(m.role.clone()), name, m.content.clone()));
                }
                turns
            }
        };
        if turns.iter().all(|(_, _, t)| t.trim().is_empty()) {
            return Err(Error::invalid(
                "nothing to remember: the text or every message content is empty",
            ));
        }
        let embedder = self.embedder();
        let count = |s: &str| embedder.count_tokens(s);
        let mut pieces = Vec::new();
        for (role, name, content) in turns {
            // Memories the caller injected into the conversation are stored already.
            let content = text::strip_injected(&content);
            for chunk in text::chunk(&content, self.inner.ingest.max_chunk_tokens, &count) {
                // Every chunk of a named turn carries the speaker, so each stands on its own.
                let piece = match &name {
                    Some(n) => format!("{n}: {chunk}"),
                    None => chunk,
                };
                pieces.push((role.clone(), piece));
            }
        }
        Ok(pieces)
    }

    /// The stored memory a new piece repeats or corrects, if any: among its
    /// nearest neighbours in the scope, one with the same text, or one at
    /// the duplicate threshold or above that says the same thing
    /// ([`correction::compare`]), or one at the correction threshold or
    /// above that says it with salient details changed. A neighbour that
    /// says something else is not a duplicate.
    async fn nearest_same(
        &self,
        scope: &Scope,
        piece: &str,
        hash: &str,
        vector: &[f32],
        vis: Visibility,
    ) -> Result<Near> {
        let near = self
            .inner
            .store
            .vector_search(&Filter::exact_scope(scope), vis, vector, 4)
            .await?;
        let candidates: Vec<MemoryId> = near.hits.iter().map(|(id, _)| *id).collect();
        if candidates.is_empty() {
            return Ok(Near::None);
        }
        let scores: HashMap<MemoryId, f32> = near.hits.iter().copied().collect();
        let mut memories = self.inner.store.get_many(&candidates, vis).await?;
        memories.retain(|m| m.scope == *scope);
        if let Some(m) = memories.iter().find(|m| m.hash == hash) {
            return Ok(Near::Known(m.id));
        }
        let score = |m: &Memory| scores.get(&m.id).copied().unwrap_or(0.0);
        let (threshold, correction) = (
            self.inner.ingest.dedup_threshold,
            self.inner.ingest.correction_threshold,
        );
        memories.retain(|m| score(m) >= threshold.min(correction));
        memories.sort_by(|a, b| score(b).total_cmp(&score(a)));
        for m in memories {
            match correction::compare(&m.text, piece) {
                Comparison::Same => return Ok(Near::Known(m.id)),
                // Only a near-duplicate by meaning may correct, not a neighbour.
                Comparison::Corrects(_) if score(&m) < correction => {}
                c @ Comparison::Corrects(_) => {
                    let reason = c.reason().unwrap_or_default();
                    return Ok(Near::Corrected(Box::new(m), reason));
                }
                Comparison::Different => {}
            }
        }
        Ok(Near::None)
    }

    pub(crate) fn history_event(
        &self,
        ctx: &RequestCtx,
        m: &Memory,
        event: Event,
        old_text: Option<String>,
        new_text: Option<String>,
        at: Timestamp,
    ) -> HistoryEvent {
        HistoryEvent {
            id: Uuid::now_v7(),
            memory_id: m.id,
            event,
            old_text,
            new_text,
            version: m.version,
            actor: Some(ctx.actor()),
            reason: None,
            request_id: ctx.request_id.clone(),
            scope: m.scope.clone(),
            created_at: at,
        }
    }
}

/// A piece this batch added (or corrected a memory with).
struct Seen {
    scope: Scope,
    id: MemoryId,
    hash: String,
    text: String,
    vector: Vec<f32>,
}

/// What a new piece's nearest neighbours say about it.
enum Near {
    /// A memory already says it.
    Known(MemoryId),
    /// A memory says it with a number, date, name or negation that the new
    /// piece changes; the reason names the changes.
    Corrected(Box<Memory>, String),
    /// Nothing in the scope says it.
    None,
}
