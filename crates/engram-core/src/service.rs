//! The service layer: one function per user action, called by every
//! transport (REST, Mem0 routes, MCP, CLI). Transports parse and map; the
//! rules live here.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use uuid::Uuid;

use crate::access::{Principal, Role};
use crate::audit::{AuditEvent, AuditQuery, ErasureReceipt, ErasureTarget};
use crate::budget;
use crate::config::{IngestConfig, RetrievalConfig};
use crate::embed::{Embedder, QueryCache};
use crate::filter::Filter;
use crate::fusion::{self, Ranked, SignalScores};
use crate::lifecycle::{self, LifecycleConfig};
use crate::memory::{
    Entity, Event, HistoryEvent, Memory, MemoryId, MemoryKind, Metadata, Scope, ScopeField,
    entity_key, text_hash,
};
use crate::portable::{ExportHeader, ExportedMemory, ExportedVersion, ImportReport};
use crate::store::{Cursor, ScopeIdStats, Store, VectorPath, Visibility, WriteOp};
use crate::telemetry;
use crate::text;
use crate::{Error, ErrorCode, Result};

/// Where "now" comes from; tests substitute a controllable clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// `now + ttl` in whole milliseconds (`None` past the end of time).
fn expiry_after(now: Timestamp, ttl: SignedDuration) -> Option<Timestamp> {
    now.checked_add(ttl).ok().map(to_millis)
}

/// A new version is a use: a sliding expiry starts again from `now`.
fn slide(m: &mut Memory, now: Timestamp) {
    if let Some(ttl) = m.idle_ttl {
        m.expires_at = expiry_after(now, ttl);
    }
}

/// Where a memory counted against the episodic cap is.
enum Placed {
    /// Inserted by the batch, at this index of its ops.
    New(usize),
    /// Already stored: its current version and expiry.
    Stored(u32, Option<Timestamp>),
}

/// What one [`MemoryService::sweep`] removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SweepReport {
    pub memories: u64,
    pub versions: u64,
    pub history_events: u64,
    /// Transactions (of up to `sweep_batch` memories each).
    pub batches: u64,
    pub seconds: f64,
}

/// Truncates to whole milliseconds: the precision stores keep and cursors carry.
pub fn to_millis(t: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(t.as_millisecond()).unwrap_or(t)
}

/// Who is asking (and through what), for access checks, history and logs.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub principal: Principal,
    /// The transport (`api`, `mcp:http`, `cli`…); names the actor when no key is involved.
    pub transport: String,
    pub request_id: Option<String>,
}

impl RequestCtx {
    pub fn new(principal: Principal, transport: &str, request_id: Option<String>) -> RequestCtx {
        RequestCtx {
            principal,
            transport: transport.to_owned(),
            request_id,
        }
    }

    /// The local operator through `transport` (CLI, MCP over stdio, evaluations).
    pub fn operator(transport: &str) -> RequestCtx {
        RequestCtx::new(Principal::operator(), transport, None)
    }

    /// `key:<id>` for an API key, else the transport.
    pub fn actor(&self) -> String {
        self.principal.actor(&self.transport)
    }
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// The speaker's name, when the caller gives one; stored as a `Name: ` prefix.
    pub name: Option<String>,
}

/// What to remember.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    Text(String),
    Messages(Vec<Message>),
}

/// Input of [`MemoryService::add`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AddInput {
    pub content: Content,
    pub scope: Scope,
    pub metadata: Metadata,
    pub categories: Vec<String>,
    pub kind: MemoryKind,
    /// A fixed expiry.
    pub expires_at: Option<Timestamp>,
    /// A sliding expiry (moved forward by each use), within the scope
    /// policy's bounds; without this or `expires_at`, the policy decides.
    #[serde(default)]
    pub ttl: Option<SignedDuration>,
    /// When the content was said; defaults to now (imports and evaluations set it).
    pub timestamp: Option<Timestamp>,
}

impl AddInput {
    /// `content` in `scope`, everything else by default: no metadata or
    /// categories, a semantic memory, the scope policy's expiry, said now.
    pub fn new(content: Content, scope: Scope) -> AddInput {
        AddInput {
            content,
            scope,
            metadata: Metadata::default(),
            categories: Vec::new(),
            kind: MemoryKind::default(),
            expires_at: None,
            ttl: None,
            timestamp: None,
        }
    }
}

/// One outcome of an add.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AddResult {
    pub id: MemoryId,
    pub memory: String,
    pub event: Event,
}

/// Input of [`MemoryService::search`].
#[derive(Debug, Clone)]
pub struct SearchInput {
    pub query: String,
    pub filter: Filter,
    pub top_k: Option<usize>,
    pub threshold: Option<f32>,
    pub token_budget: Option<usize>,
    pub explain: bool,
}

/// Why a hit scored what it did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    #[serde(flatten)]
    pub signals: SignalScores,
    /// Recency decay factor applied.
    pub decay: f32,
    pub kind_weight: f32,
    /// `fused × decay × kind_weight`.
    pub score: f32,
    pub vector_path: VectorPath,
}

#[derive(Debug, Clone)]
pub struct SearchHit {
    pub memory: Memory,
    pub score: f32,
    pub explanation: Option<Explanation>,
}

#[derive(Debug, Clone)]
pub struct SearchOutput {
    pub hits: Vec<SearchHit>,
    pub vector_path: VectorPath,
    /// Tokens of the returned hits.
    pub tokens: usize,
    /// Whether the query embedding came from the cache.
    pub cached_embedding: bool,
}

/// Input of [`MemoryService::update`]. `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UpdateInput {
    pub text: Option<String>,
    pub metadata: Option<Metadata>,
    pub categories: Option<Vec<String>>,
    pub expires_at: Option<Option<Timestamp>>,
}

/// A page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    pub memories: Vec<Memory>,
    pub next: Option<Cursor>,
}

/// Longest search query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Longest speaker name accepted in a message.
pub const MAX_NAME_BYTES: usize = 128;
/// Largest page of a listing.
pub const MAX_PAGE: usize = 1000;

/// An embedding model with its query cache: swapped together.
struct ModelSlot {
    embedder: Arc<dyn Embedder>,
    queries: Arc<QueryCache>,
}

impl ModelSlot {
    fn new(embedder: Arc<dyn Embedder>, query_cache: usize) -> ModelSlot {
        let queries = Arc::new(QueryCache::new(embedder.clone(), query_cache));
        ModelSlot { embedder, queries }
    }
}

/// How long a seen match between the store's model and this node's stands
/// before a search checks again.
const MODEL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the store still uses this node's model. Another node may
/// re-embed a shared store; this one must then stop answering searches
/// (its queries would be embedded with the old model) rather than rank
/// old-model queries against new-model vectors.
#[derive(Default)]
struct ModelCheck {
    /// When the store's model last matched this node's.
    matched: std::sync::Mutex<Option<std::time::Instant>>,
    /// Held by this node's own re-embedding from the store's switch to the
    /// embedder swap: a search that sees the store switched waits for the
    /// swap instead of calling its node stale.
    switching: futures::lock::Mutex<()>,
}

impl ModelCheck {
    fn recent(&self) -> bool {
        let matched = *self.matched.lock().unwrap_or_else(|e| e.into_inner());
        matched.is_some_and(|at| at.elapsed() < MODEL_CHECK_EVERY)
    }

    fn seen(&self) {
        *self.matched.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
    }
}

/// The memory service. Cheap to clone.
#[derive(Clone)]
pub struct MemoryService {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    store: Arc<dyn Store>,
    /// The embedding model and its query cache; replaced when a
    /// re-embedding switches the store to another model. Shared by every
    /// `with_*` copy of the service.
    model: Arc<std::sync::RwLock<Arc<ModelSlot>>>,
    model_check: Arc<ModelCheck>,
    query_cache: usize,
    retrieval: RetrievalConfig,
    ingest: IngestConfig,
    clock: Arc<dyn Clock>,
    lifecycle: LifecycleConfig,
}

impl MemoryService {
    /// Binds the embedder's model to the store (refusing a mismatch) and builds the service.
    pub async fn new(
        store: Arc<dyn Store>,
        embedder: Arc<dyn Embedder>,
        retrieval: RetrievalConfig,
        ingest: IngestConfig,
        query_cache: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<MemoryService> {
        store.bind_model(embedder.model()).await?;
        let model = Arc::new(std::sync::RwLock::new(Arc::new(ModelSlot::new(
            embedder,
            query_cache,
        ))));
        Ok(MemoryService {
            inner: Arc::new(Inner {
                store,
                model,
                model_check: Arc::default(),
                query_cache,
                retrieval,
                ingest,
                clock,
                lifecycle: LifecycleConfig::default(),
            }),
        })
    }

    /// The same service (store, embedder, query cache) with other retrieval settings.
    pub fn with_retrieval(&self, retrieval: RetrievalConfig) -> MemoryService {
        let mut inner = (*self.inner).clone();
        inner.retrieval = retrieval;
        MemoryService {
            inner: Arc::new(inner),
        }
    }

    /// The same service with other expiry policies.
    pub fn with_lifecycle(&self, lifecycle: LifecycleConfig) -> MemoryService {
        let mut inner = (*self.inner).clone();
        inner.lifecycle = lifecycle;
        MemoryService {
            inner: Arc::new(inner),
        }
    }

    pub fn lifecycle_config(&self) -> &LifecycleConfig {
        &self.inner.lifecycle
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The embedding model in use now.
    pub fn embedder(&self) -> Arc<dyn Embedder> {
        self.slot().embedder.clone()
    }

    pub fn query_cache(&self) -> Arc<QueryCache> {
        self.slot().queries.clone()
    }

    /// The model slot to embed a search's query with, once the store is
    /// known (within [`MODEL_CHECK_EVERY`]) to still use that model.
    async fn query_slot(&self) -> Result<Arc<ModelSlot>> {
        let check = &self.inner.model_check;
        if check.recent() {
            return Ok(self.slot());
        }
        let slot = self.current_slot().await?;
        check.seen();
        Ok(slot)
    }

    /// Whether the store still uses this node's model: an
    /// `EmbeddingModelMismatch` naming the model to restart with when another
    /// node re-embedded the store (`/readyz` asks; searches ask through a
    /// once-a-second cache).
    pub async fn check_store_model(&self) -> Result<()> {
        self.current_slot().await.map(drop)
    }

    /// This node's model slot, once the store is known to use its model.
    async fn current_slot(&self) -> Result<Arc<ModelSlot>> {
        let bound = self.inner.store.bound_model().await?;
        let slot = self.slot();
        let Some(bound) = bound.filter(|b| b != slot.embedder.model()) else {
            return Ok(slot);
        };
        // This node may be re-embedding itself, between the switch and the swap.
        drop(self.inner.model_check.switching.lock().await);
        let slot = self.slot();
        if &bound == slot.embedder.model() {
            return Ok(slot);
        }
        Err(Error::new(
            ErrorCode::EmbeddingModelMismatch,
            format!(
                "this node embeds queries with `{}`, but the store's vectors now come from `{}` \
                 (re-embedded); restart this node with that model",
                slot.embedder.model().id,
                bound.id
            ),
        ))
    }

    /// Runs `switch` (a re-embedding's switch of the store) and, when it
    /// reports the store switched, makes `to` this service's model, with
    /// searches that notice the new model in between waiting for the swap.
    pub(crate) async fn switch_model(
        &self,
        to: &Arc<dyn Embedder>,
        switch: impl std::future::Future<Output = Result<bool>>,
    ) -> Result<bool> {
        let _swapping = self.inner.model_check.switching.lock().await;
        let switched = switch.await?;
        if switched {
            self.set_embedder(to.clone());
        }
        Ok(switched)
    }

    fn slot(&self) -> Arc<ModelSlot> {
        // A poisoned lock means a thread panicked while swapping two Arcs;
        // the slot it holds is whole either way.
        self.inner
            .model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes `embedder` the model for every later call (after a re-embedding
    /// switched the store to it), with a fresh query cache.
    fn set_embedder(&self, embedder: Arc<dyn Embedder>) {
        let slot = Arc::new(ModelSlot::new(embedder, self.inner.query_cache));
        *self.inner.model.write().unwrap_or_else(|e| e.into_inner()) = slot;
    }

    pub fn retrieval_config(&self) -> &RetrievalConfig {
        &self.inner.retrieval
    }

    pub fn ingest_config(&self) -> &IngestConfig {
        &self.inner.ingest
    }

    pub fn now(&self) -> Timestamp {
        to_millis(self.inner.clock.now())
    }

    pub(crate) fn vis(&self) -> Visibility {
        Visibility { now: self.now() }
    }

    pub(crate) fn check_text(&self, text: &str, what: &str) -> Result<()> {
        let max = self.inner.ingest.max_text_bytes;
        if text.len() > max {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("{what} is {} bytes long; the maximum is {max}", text.len()),
            ));
        }
        Ok(())
    }

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
        let (ops, all_results) = self.prepare_add(ctx, inputs).await?;
        if !ops.is_empty() {
            self.inner.store.apply(ops).await?;
        }
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
        ctx.principal.require(Role::ReadWrite, "adding memories")?;
        let procedural = |i: &AddInput| i.kind == MemoryKind::Procedural;
        if !inputs.iter().any(procedural) {
            let (mut ops, results) = self.prepare_verbatim(ctx, inputs).await?;
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
                let (o, mut r) = self.prepare_verbatim(ctx, vec![input]).await?;
                (o, r.pop().unwrap_or_default())
            };
            ops.extend(o);
            results.push(r);
        }
        self.cap_episodic(ctx, &mut ops).await?;
        Ok((ops, results))
    }

    /// The agent's one procedural memory (its instructions and preferences), if any.
    pub async fn procedural_memory(
        &self,
        ctx: &RequestCtx,
        scope: &Scope,
    ) -> Result<Option<Memory>> {
        let filter = Filter::exact_scope(scope).and(Filter::Cond(crate::filter::Cond::Kind(
            vec![MemoryKind::Procedural],
            false,
        )));
        Ok(self
            .list(ctx, &filter, None, 1)
            .await?
            .memories
            .into_iter()
            .next())
    }

    /// A procedural add for an agent: merged into the agent's one procedural
    /// memory (a new version), or its first version. `summary` is the merged
    /// text when an LLM wrote it; without one, new instructions are appended
    /// as lines (exact repeats skipped).
    pub async fn prepare_procedural(
        &self,
        ctx: &RequestCtx,
        mut input: AddInput,
        summary: Option<String>,
    ) -> Result<(Vec<WriteOp>, AddResult)> {
        input.scope = ctx.principal.bind_scope(input.scope)?;
        if input.scope.agent_id.is_none() {
            return Err(Error::invalid(
                "a procedural memory belongs to an agent: give `agent_id`",
            ));
        }
        let now = self.now();
        let pieces = self.pieces(&input, now)?;
        let (expires_at, idle_ttl) = self.expiry_of(&input, now)?;
        let existing = self.procedural_memory(ctx, &input.scope).await?;
        let text = match summary {
            Some(s) => s.trim().to_owned(),
            None => {
                let mut lines: Vec<String> = existing
                    .as_ref()
                    .map(|m| m.text.lines().map(str::to_owned).collect())
                    .unwrap_or_default();
                for (_, p) in pieces {
                    let p = p.trim().to_owned();
                    if !p.is_empty() && !lines.iter().any(|l| l.eq_ignore_ascii_case(&p)) {
                        lines.push(p);
                    }
                }
                lines.join("\n")
            }
        };
        self.check_text(&text, "the agent's procedural memory")?;
        if let Some(m) = &existing
            && m.text == text
        {
            let r = AddResult {
                id: m.id,
                memory: text,
                event: Event::Noop,
            };
            return Ok((Vec::new(), r));
        }
        let embedder = self.embedder();
        let vector = Self::embed_with(&*embedder, std::slice::from_ref(&text))
            .await?
            .pop()
            .ok_or_else(|| Error::embedder("embedder returned no vector"))?;
        let model = embedder.model().id.clone();
        let tokens = embedder.count_tokens(&text) as u32;
        Ok(match existing {
            Some(old) => {
                let mut next = self.successor(&old, &text, now);
                next.embedding_model = model.clone();
                let mut h = self.history_event(
                    ctx,
                    &next,
                    Event::Update,
                    Some(old.text.clone()),
                    Some(text.clone()),
                    now,
                );
                h.reason = Some("procedural memory updated with new instructions".into());
                let r = AddResult {
                    id: old.id,
                    memory: text,
                    event: Event::Update,
                };
                (
                    vec![WriteOp::Update {
                        memory: next,
                        embedding: Some(vector),
                        history: h,
                    }],
                    r,
                )
            }
            None => {
                let memory = Memory {
                    id: Uuid::now_v7(),
                    version: 1,
                    hash: text_hash(&text),
                    entities: text::tag_entities(&text),
                    tokens,
                    text: text.clone(),
                    kind: MemoryKind::Procedural,
                    scope: input.scope.clone(),
                    metadata: input.metadata.clone(),
                    categories: input.categories.clone(),
                    role: None,
                    created_at: now,
                    updated_at: now,
                    valid_at: None,
                    invalid_at: None,
                    expires_at,
                    idle_ttl,
                    embedding_model: model,
                };
                let h = self.history_event(ctx, &memory, Event::Add, None, Some(text.clone()), now);
                let r = AddResult {
                    id: memory.id,
                    memory: text,
                    event: Event::Add,
                };
                (
                    vec![WriteOp::Insert {
                        memory,
                        embedding: vector,
                        history: h,
                    }],
                    r,
                )
            }
        })
    }

    /// The verbatim (no-LLM) add: pieces, duplicates as NOOP.
    async fn prepare_verbatim(
        &self,
        ctx: &RequestCtx,
        inputs: Vec<AddInput>,
    ) -> Result<(Vec<WriteOp>, Vec<Vec<AddResult>>)> {
        let now = self.now();
        let mut prepared = Vec::with_capacity(inputs.len());
        let mut texts: Vec<String> = Vec::new();
        for mut input in inputs {
            input.scope = ctx.principal.bind_scope(input.scope)?;
            let pieces = self.pieces(&input, now)?;
            texts.extend(pieces.iter().map(|(_, t)| t.clone()));
            prepared.push((input, pieces));
        }
        // One model for the vectors and their label (a re-embedding may switch it meanwhile).
        let embedder = self.embedder();
        let mut vectors = Self::embed_with(&*embedder, &texts).await?.into_iter();
        let vis = Visibility { now };
        let threshold = self.inner.ingest.dedup_threshold;
        let mut ops = Vec::new();
        let mut all_results = Vec::with_capacity(prepared.len());
        // Memories added earlier in this batch, per scope, for duplicate checks within the batch.
        let mut batch: Vec<(Scope, MemoryId, String, Vec<f32>)> = Vec::new();
        for (input, pieces) in prepared {
            let (expires_at, idle_ttl) = self.expiry_of(&input, now)?;
            let scope_filter = Filter::exact_scope(&input.scope);
            let at = input.timestamp.map(to_millis).unwrap_or(now);
            let mut results = Vec::with_capacity(pieces.len());
            for (role, piece) in pieces {
                let vector = vectors
                    .next()
                    .ok_or_else(|| Error::internal("vector count changed"))?;
                let hash = text_hash(&piece);
                if let Some((_, id, _, _)) = batch.iter().find(|(s, _, h, v)| {
                    *s == input.scope && (*h == hash || dot(v, &vector) >= threshold)
                }) {
                    results.push(AddResult {
                        id: *id,
                        memory: piece,
                        event: Event::Noop,
                    });
                    continue;
                }
                if let Some(existing) = self
                    .find_duplicate(&scope_filter, &input.scope, &hash, &vector, threshold, vis)
                    .await?
                {
                    results.push(AddResult {
                        id: existing,
                        memory: piece,
                        event: Event::Noop,
                    });
                    continue;
                }
                let id = Uuid::now_v7();
                let memory = Memory {
                    id,
                    version: 1,
                    entities: text::tag_entities(&piece),
                    tokens: embedder.count_tokens(&piece) as u32,
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
                    memory: piece,
                    event: Event::Add,
                });
                batch.push((input.scope.clone(), id, hash, vector.clone()));
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
    fn pieces(&self, input: &AddInput, now: Timestamp) -> Result<Vec<(Option<String>, String)>> {
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

    async fn find_duplicate(
        &self,
        scope_filter: &Filter,
        scope: &Scope,
        hash: &str,
        vector: &[f32],
        threshold: f32,
        vis: Visibility,
    ) -> Result<Option<MemoryId>> {
        let near = self
            .inner
            .store
            .vector_search(scope_filter, vis, vector, 4)
            .await?;
        let candidates: Vec<MemoryId> = near.hits.iter().map(|(id, _)| *id).collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        let scores: HashMap<MemoryId, f32> = near.hits.iter().copied().collect();
        let memories = self.inner.store.get_many(&candidates, vis).await?;
        Ok(memories
            .into_iter()
            .find(|m| {
                m.scope == *scope
                    && (m.hash == hash || scores.get(&m.id).is_some_and(|s| *s >= threshold))
            })
            .map(|m| m.id))
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

    /// Hybrid retrieval: semantic, keyword and entity signals over the
    /// scope-filtered set, fused, × recency decay × kind weight, thresholded
    /// and packed into a token budget.
    pub async fn search(&self, ctx: &RequestCtx, mut input: SearchInput) -> Result<SearchOutput> {
        let cfg = &self.inner.retrieval;
        input.filter = ctx.principal.bind_filter(input.filter)?;
        require_scope(&input.filter)?;
        let (query, top_k) = self.check_search(&input)?;
        let query = query.as_str();
        let budget = input.token_budget.unwrap_or(cfg.default_token_budget);

        let started = std::time::Instant::now();
        let vis = self.vis();
        let candidates = cfg.candidates.max(top_k);
        let (vector, cached) = self.query_slot().await?.queries.embed_query(query).await?;
        let embedded = started.elapsed();
        let w = cfg.weights;
        let terms = if w.keyword > 0.0 {
            text::keyword_terms(query)
        } else {
            Vec::new()
        };
        let keys: Vec<String> = if w.entity > 0.0 {
            let mut keys: Vec<String> = text::tag_entities(query).iter().map(Entity::key).collect();
            keys.dedup();
            keys
        } else {
            Vec::new()
        };
        let store = &self.inner.store;
        let filter = &input.filter;
        let (semantic, keyword, entity) = futures::join!(
            async {
                if w.semantic > 0.0 || (w.keyword == 0.0 && w.entity == 0.0) {
                    store
                        .vector_search(filter, vis, &vector, candidates)
                        .await
                        .map(Some)
                } else {
                    Ok(None)
                }
            },
            async {
                if terms.is_empty() {
                    Ok(Vec::new())
                } else {
                    store.keyword_search(filter, vis, &terms, candidates).await
                }
            },
            async {
                if keys.is_empty() {
                    Ok(Vec::new())
                } else {
                    store.entity_search(filter, vis, &keys, candidates).await
                }
            },
        );
        let (semantic, path): (Ranked<MemoryId>, VectorPath) = match semantic? {
            Some(v) => (v.hits, v.path),
            None => (Vec::new(), VectorPath::Empty),
        };
        let (keyword, entity) = (keyword?, entity?);
        // Candidates that only keyword or entity search found still get their
        // real cosine similarity, so fusion compares like with like. (Filling in
        // BM25 for semantic-only candidates was measured too: no gain, one more query.)
        let mut semantic = semantic;
        if w.semantic > 0.0 {
            let known: std::collections::HashSet<MemoryId> =
                semantic.iter().map(|(id, _)| *id).collect();
            let mut missing: Vec<MemoryId> = keyword
                .iter()
                .chain(&entity)
                .map(|(id, _)| *id)
                .filter(|id| !known.contains(id))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            if !missing.is_empty() {
                semantic.extend(store.vector_scores(&missing, &vector).await?);
                semantic.sort_by(|a, b| b.1.total_cmp(&a.1));
            }
        }
        let mut fused = fusion::fuse(&semantic, &keyword, &entity, cfg);
        if cfg.context_weight > 0.0 {
            // The best candidates lend their score to the turns said around them.
            let mut best: Vec<(MemoryId, f32)> =
                fused.iter().map(|(id, s)| (*id, s.fused)).collect();
            best.sort_by(|a, b| b.1.total_cmp(&a.1));
            let top: Vec<MemoryId> = best.iter().take(top_k.max(20)).map(|(id, _)| *id).collect();
            let neighbors = store
                .neighbors(&top, filter, cfg.context_window_secs * 1000, vis)
                .await?;
            fusion::add_context(&mut fused, &neighbors, cfg.context_weight);
        }
        let ids: Vec<MemoryId> = fused.keys().copied().collect();
        // Re-check the filter on what is returned: a memory may have changed since a signal saw it.
        let memories: Vec<Memory> = store
            .get_many(&ids, vis)
            .await?
            .into_iter()
            .filter(|m| input.filter.matches(m))
            .collect();

        let scored = memories
            .into_iter()
            .filter_map(|m| {
                let signals = *fused.get(&m.id)?;
                Some(self.weigh(m, signals, vis.now))
            })
            .collect();
        let (mut hits, used) = self.rank(scored, &input, top_k, budget, path);
        telemetry::search(path, started.elapsed(), embedded, cached, hits.len(), used);
        self.touch(hits.iter_mut().map(|h| &mut h.memory)).await;
        Ok(SearchOutput {
            hits,
            vector_path: path,
            tokens: used,
            cached_embedding: cached,
        })
    }

    /// A candidate's final score: its fused signals × recency decay (age
    /// relative to `now`) × its kind's weight.
    fn weigh(&self, memory: Memory, signals: SignalScores, now: Timestamp) -> Scored {
        let cfg = &self.inner.retrieval;
        let age_days = now.duration_since(memory.updated_at).as_secs_f64() / 86_400.0;
        let decay = fusion::decay(
            age_days,
            cfg.half_life_days.get(memory.kind),
            cfg.decay_floor,
        ) as f32;
        let kind_weight = cfg.kind_weights.get(memory.kind);
        Scored {
            score: signals.fused * decay * kind_weight,
            memory,
            signals,
            decay,
            kind_weight,
        }
    }

    /// Thresholds, orders (highest score first; ties broken by newer, then id,
    /// so results are deterministic), keeps `top_k` and packs the token budget.
    /// Returns the hits and the tokens they use.
    fn rank(
        &self,
        mut scored: Vec<Scored>,
        input: &SearchInput,
        top_k: usize,
        budget: usize,
        path: VectorPath,
    ) -> (Vec<SearchHit>, usize) {
        scored.retain(|c| input.threshold.is_none_or(|t| c.score >= t));
        scored.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| b.memory.updated_at.cmp(&a.memory.updated_at))
                .then_with(|| a.memory.id.cmp(&b.memory.id))
        });
        scored.truncate(top_k);
        let tokens: Vec<usize> = scored.iter().map(|c| c.memory.tokens as usize).collect();
        let (kept, used) = budget::pack(&tokens, budget);
        let mut scored: Vec<Option<Scored>> = scored.into_iter().map(Some).collect();
        let hits = kept
            .into_iter()
            .filter_map(|i| scored[i].take())
            .map(|c| SearchHit {
                explanation: input.explain.then_some(Explanation {
                    signals: c.signals,
                    decay: c.decay,
                    kind_weight: c.kind_weight,
                    score: c.score,
                    vector_path: path,
                }),
                memory: c.memory,
                score: c.score,
            })
            .collect();
        (hits, used)
    }

    /// Derives what follows from a memory's text: hash, entities, token count.
    pub(crate) fn retext(&self, m: &mut Memory) {
        m.hash = text_hash(&m.text);
        m.entities = text::tag_entities(&m.text);
        m.tokens = self.embedder().count_tokens(&m.text) as u32;
    }

    /// The next version of `current` with `text` (written at `now`).
    pub(crate) fn successor(&self, current: &Memory, text: &str, now: Timestamp) -> Memory {
        let mut next = current.clone();
        next.text = text.to_owned();
        // Labelled with the model embedding it now: a write prepared before
        // a re-embedding switch is refused after it (`store::check_model`).
        next.embedding_model = self.embedder().model().id.clone();
        self.retext(&mut next);
        next.version = current.version + 1;
        next.updated_at = now.max(current.updated_at);
        slide(&mut next, now);
        next
    }

    /// The expiry of a new memory: fixed (`expires_at`), sliding (the
    /// request's `ttl` or its scope policy's) or none.
    pub(crate) fn expiry_of(
        &self,
        input: &AddInput,
        now: Timestamp,
    ) -> Result<(Option<Timestamp>, Option<SignedDuration>)> {
        if let Some(at) = input.expires_at {
            if input.ttl.is_some() {
                return Err(Error::invalid(
                    "give `expires_at` (a fixed expiry) or `ttl` (a sliding one), not both",
                ));
            }
            return Ok((Some(to_millis(at)), None));
        }
        let policy = self.inner.lifecycle.policy(&input.scope);
        let ttl = policy.idle_ttl(&input.scope, input.ttl)?;
        Ok((ttl.and_then(|t| expiry_after(now, t)), ttl))
    }

    /// Moves the sliding expiry of memories just used (read or said again)
    /// and updates the copies given. Best effort: a failed touch is logged and
    /// never fails the read. Not audited and not versioned (no content changes).
    async fn touch(&self, memories: impl IntoIterator<Item = &mut Memory>) {
        let now = self.now();
        let mut ops = Vec::new();
        for m in memories {
            if let (Some(ttl), Some(at)) = (m.idle_ttl, m.expires_at)
                && lifecycle::needs_touch(at, ttl, now)
            {
                m.expires_at = expiry_after(now, ttl);
                ops.push(WriteOp::SetExpiry {
                    id: m.id,
                    version: m.version,
                    from: Some(at),
                    to: m.expires_at,
                });
            }
        }
        if ops.is_empty() {
            return;
        }
        let n = ops.len();
        match self.inner.store.apply(ops).await {
            Ok(()) => telemetry::expiry_touched(n),
            Err(e) => tracing::warn!(error = %e, memories = n, "could not extend sliding expiries"),
        }
    }

    /// Keeps at most the scope policy's cap of current episodic memories in
    /// each scope `ops` adds to: the oldest (by `created_at`) beyond it expire
    /// now, in the same transaction — existing ones by `SetExpiry` (audited as
    /// `memory.expire`), new ones by being written already expired.
    pub(crate) async fn cap_episodic(
        &self,
        ctx: &RequestCtx,
        ops: &mut Vec<WriteOp>,
    ) -> Result<()> {
        let mut scopes: Vec<Scope> = Vec::new();
        for op in ops.iter() {
            if let WriteOp::Insert { memory, .. } = op
                && memory.kind == MemoryKind::Episodic
                && !scopes.contains(&memory.scope)
            {
                scopes.push(memory.scope.clone());
            }
        }
        let vis = self.vis();
        let now = vis.now;
        for scope in scopes {
            let Some(cap) = self.inner.lifecycle.policy(&scope).episodic_cap else {
                continue;
            };
            let filter = Filter::exact_scope(&scope).and(Filter::Cond(crate::filter::Cond::Kind(
                vec![MemoryKind::Episodic],
                false,
            )));
            // Memories this batch deletes no longer count.
            let deleted: Vec<MemoryId> = ops
                .iter()
                .filter_map(|op| match op {
                    WriteOp::Delete { id, .. } => Some(*id),
                    _ => None,
                })
                .collect();
            // (created_at, id, where: the new insert's index in `ops`, or the
            // existing memory's version and expiry)
            let mut all: Vec<(Timestamp, MemoryId, Placed)> = ops
                .iter()
                .enumerate()
                .filter_map(|(i, op)| match op {
                    WriteOp::Insert { memory, .. }
                        if memory.kind == MemoryKind::Episodic
                            && memory.scope == scope
                            && memory.is_live(now) =>
                    {
                        Some((memory.created_at, memory.id, Placed::New(i)))
                    }
                    _ => None,
                })
                .collect();
            let existing = self.inner.store.count(&filter, vis).await?;
            if existing.saturating_sub(deleted.len()) + all.len() <= cap {
                continue;
            }
            let mut after = None;
            loop {
                let page = self.inner.store.list(&filter, vis, after, MAX_PAGE).await?;
                all.extend(
                    page.iter()
                        .filter(|m| !deleted.contains(&m.id))
                        .map(|m| (m.created_at, m.id, Placed::Stored(m.version, m.expires_at))),
                );
                match page.last() {
                    Some(last) if page.len() == MAX_PAGE => after = Some(Cursor::of(last)),
                    _ => break,
                }
            }
            all.sort_by_key(|m| std::cmp::Reverse((m.0, m.1)));
            for (_, id, placed) in all.into_iter().skip(cap) {
                match placed {
                    Placed::New(i) => {
                        if let WriteOp::Insert { memory, .. } = &mut ops[i] {
                            memory.expires_at = Some(now);
                            memory.idle_ttl = None;
                        }
                    }
                    Placed::Stored(version, from) => {
                        ops.push(WriteOp::SetExpiry {
                            id,
                            version,
                            from,
                            to: Some(now),
                        });
                        let mut e = AuditEvent::new(
                            now,
                            ctx.actor(),
                            "memory.expire",
                            scope.org_id.clone(),
                            Some(id.to_string()),
                            ctx.request_id.clone(),
                        );
                        e.detail = serde_json::json!({ "reason": "episodic_cap", "cap": cap });
                        ops.push(WriteOp::Audit(e));
                    }
                }
            }
            telemetry::episodic_capped();
        }
        Ok(())
    }

    /// Removes expired memories (every version, their history and index
    /// entries), in batches of the lifecycle's `sweep_batch`, until none is
    /// left. Each batch is one transaction with one `memory.sweep` audit event.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let started = std::time::Instant::now();
        let now = self.now();
        let batch = self.inner.lifecycle.sweep_batch.max(1);
        let mut report = SweepReport::default();
        loop {
            let audit = AuditEvent::new(now, "system".into(), "memory.sweep", None, None, None);
            let c = self.inner.store.sweep_expired(now, batch, audit).await?;
            report.batches += 1;
            report.memories += c.memories;
            report.versions += c.versions;
            report.history_events += c.history_events;
            if (c.memories as usize) < batch {
                break;
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        telemetry::sweep(&report, now);
        Ok(report)
    }

    /// One page of an export: the live memories matching `filter` inside
    /// the caller's binding (newest first, after `after`), each with every
    /// version and vector and its history; and the cursor of the next page.
    pub async fn export_page(
        &self,
        ctx: &RequestCtx,
        filter: &Filter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<(Vec<ExportedMemory>, Option<Cursor>)> {
        let page = self.list(ctx, filter, after, limit).await?;
        let ids: Vec<MemoryId> = page.memories.iter().map(|m| m.id).collect();
        let mut versions: HashMap<MemoryId, Vec<ExportedVersion>> = HashMap::new();
        for (memory, embedding) in self.inner.store.memory_versions(&ids).await? {
            versions
                .entry(memory.id)
                .or_default()
                .push(ExportedVersion { memory, embedding });
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(versions) = versions.remove(&id) else {
                continue; // erased or swept since the listing
            };
            out.push(ExportedMemory {
                id,
                versions,
                history: self.inner.store.history(id).await?,
            });
        }
        Ok((out, page.next))
    }

    /// Imports memories read from an export made with `header`: each is
    /// checked whole, must lie inside the caller's binding, and is written
    /// with all its versions and history unless the store already holds its
    /// id (so importing the same file again changes nothing). Vectors from
    /// another model are recomputed with this one. One transaction, one
    /// `memory.import` audit event.
    pub async fn import(
        &self,
        ctx: &RequestCtx,
        header: &ExportHeader,
        mut memories: Vec<ExportedMemory>,
    ) -> Result<ImportReport> {
        ctx.principal
            .require(Role::ReadWrite, "importing memories")?;
        let embedder = self.embedder();
        let model = embedder.model().clone();
        let same_model = header.embedding_model == model;
        let dim = header.embedding_model.dim;
        for m in &memories {
            m.validate(dim)?;
            let scope = &m.versions[0].memory.scope;
            if !ctx.principal.covers(scope) {
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    format!("memory {} lies outside this key's binding", m.id),
                ));
            }
            for v in &m.versions {
                self.check_text(&v.memory.text, &format!("memory {}'s text", m.id))?;
            }
            // A sliding expiry must respect this scope's bounds, as on an add.
            if let Some(ttl) = m.current().and_then(|c| c.idle_ttl) {
                self.inner
                    .lifecycle
                    .policy(scope)
                    .idle_ttl(scope, Some(ttl))
                    .map_err(|e| Error::invalid(format!("memory {}: {}", m.id, e.message)))?;
            }
        }
        // What the store derives itself is recomputed, not trusted.
        for v in memories.iter_mut().flat_map(|m| m.versions.iter_mut()) {
            v.memory.hash = text_hash(&v.memory.text);
            v.memory.tokens = embedder.count_tokens(&v.memory.text) as u32;
        }
        let ids: Vec<MemoryId> = memories.iter().map(|m| m.id).collect();
        let mut existing: HashMap<MemoryId, Scope> = HashMap::new();
        for (m, _) in self.inner.store.memory_versions(&ids).await? {
            existing.insert(m.id, m.scope);
        }
        // An id held under another scope is not "already imported".
        for m in &memories {
            if let Some(scope) = existing.get(&m.id)
                && *scope != m.versions[0].memory.scope
            {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!("memory {} already exists with another scope", m.id),
                ));
            }
        }
        let mut report = ImportReport::default();
        let mut fresh: Vec<ExportedMemory> = Vec::with_capacity(memories.len());
        let mut seen = std::collections::HashSet::new();
        for m in memories {
            if existing.contains_key(&m.id) || !seen.insert(m.id) {
                report.skipped += 1;
            } else {
                fresh.push(m);
            }
        }
        // A version keeps its vector only when both the file and the version
        // itself name our model (an export taken across a re-embedding
        // switch may hold both models' vectors).
        let stale = |v: &ExportedVersion| !same_model || v.memory.embedding_model != model.id;
        let texts: Vec<String> = fresh
            .iter()
            .flat_map(|m| m.versions.iter().filter(|v| stale(v)))
            .map(|v| v.memory.text.clone())
            .collect();
        if !texts.is_empty() {
            let mut vectors = Self::embed_with(&*embedder, &texts).await?.into_iter();
            for v in fresh.iter_mut().flat_map(|m| m.versions.iter_mut()) {
                if stale(v) {
                    v.embedding = vectors.next().unwrap_or_default();
                    v.memory.embedding_model = model.id.clone();
                    report.reembedded += 1;
                }
            }
        }
        report.imported = fresh.len() as u64;
        if fresh.is_empty() {
            return Ok(report);
        }
        let mut ops: Vec<WriteOp> = fresh
            .into_iter()
            .map(|m| WriteOp::Import {
                versions: m
                    .versions
                    .into_iter()
                    .map(|v| (v.memory, v.embedding))
                    .collect(),
                history: m.history,
            })
            .collect();
        let mut audit = AuditEvent::new(
            self.now(),
            ctx.actor(),
            "memory.import",
            ctx.principal.binding.org_id.clone(),
            None,
            ctx.request_id.clone(),
        );
        audit.detail = serde_json::to_value(&report).unwrap_or_default();
        ops.push(WriteOp::Audit(audit));
        self.inner.store.apply(ops).await?;
        Ok(report)
    }

    /// One vector per text, in order, from `embedder` (the model whose id
    /// labels the vectors; an embedder answering with another count is an
    /// error, not a silent misalignment).
    pub(crate) async fn embed_with(
        embedder: &dyn Embedder,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>> {
        let vectors = embedder.embed(texts).await?;
        if vectors.len() != texts.len() {
            return Err(Error::embedder(format!(
                "embedder returned {} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        Ok(vectors)
    }

    /// One text's vector and the id of the model that made it (its label).
    pub(crate) async fn embed_one(&self, text: &str) -> Result<(Vec<f32>, String)> {
        let embedder = self.embedder();
        let vector = embedder
            .embed(&[text.to_owned()])
            .await?
            .pop()
            .ok_or_else(|| Error::embedder("embedder returned no vector"))?;
        Ok((vector, embedder.model().id.clone()))
    }

    /// The checks every search makes: the trimmed query and `top_k`.
    fn check_search(&self, input: &SearchInput) -> Result<(String, usize)> {
        let cfg = &self.inner.retrieval;
        let query = input.query.trim();
        if query.is_empty() {
            return Err(Error::invalid("`query` must not be empty"));
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "`query` is {} bytes long; the maximum is {MAX_QUERY_BYTES}",
                    query.len()
                ),
            ));
        }
        let top_k = input.top_k.unwrap_or(cfg.default_top_k);
        if top_k == 0 || top_k > cfg.max_top_k {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("`top_k` must be between 1 and {}", cfg.max_top_k),
            ));
        }
        if let Some(t) = input.threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(Error::invalid("`threshold` must be between 0 and 1"));
        }
        Ok((query.to_owned(), top_k))
    }

    /// A search as the memory stood at `at` (`as_of`): over the versions that
    /// were current then, scored by exact cosine similarity and keyword
    /// overlap (the indexes hold current versions only), decayed relative to
    /// `at`, thresholded and packed like a normal search.
    pub async fn search_as_of(
        &self,
        ctx: &RequestCtx,
        mut input: SearchInput,
        at: Timestamp,
    ) -> Result<SearchOutput> {
        let cfg = &self.inner.retrieval;
        input.filter = ctx.principal.bind_filter(input.filter)?;
        require_scope(&input.filter)?;
        let (query, top_k) = self.check_search(&input)?;
        let (vector, cached) = self.query_slot().await?.queries.embed_query(&query).await?;
        let terms: Vec<String> = text::keyword_terms(&query);
        let versions = self.inner.store.versions_at(&input.filter, at).await?;
        let w = cfg.weights;
        let scored = versions
            .into_iter()
            .map(|(m, v)| {
                let semantic = dot(&vector, &v).max(0.0);
                let lower = m.text.to_lowercase();
                let keyword = if terms.is_empty() {
                    0.0
                } else {
                    terms.iter().filter(|t| lower.contains(t.as_str())).count() as f32
                        / terms.len() as f32
                };
                let fused = (w.semantic * semantic + w.keyword * keyword)
                    / (w.semantic + w.keyword).max(f32::EPSILON);
                let signals = SignalScores {
                    semantic: Some(semantic),
                    keyword: Some(keyword),
                    fused,
                    ..Default::default()
                };
                self.weigh(m, signals, at)
            })
            .collect();
        let budget = input.token_budget.unwrap_or(cfg.default_token_budget);
        let (hits, used) = self.rank(scored, &input, top_k, budget, VectorPath::Exact);
        Ok(SearchOutput {
            hits,
            vector_path: VectorPath::Exact,
            tokens: used,
            cached_embedding: cached,
        })
    }

    /// The current version of a memory, if it lies inside the caller's binding.
    pub async fn get(&self, ctx: &RequestCtx, id: MemoryId) -> Result<Memory> {
        let mut m = self
            .inner
            .store
            .get(id, self.vis())
            .await?
            .filter(|m| ctx.principal.covers(&m.scope))
            .ok_or_else(|| not_found(id))?;
        self.touch(std::slice::from_mut(&mut m)).await;
        Ok(m)
    }

    /// Memories matching `filter` (which must name a scope id) inside the
    /// caller's binding, newest first.
    pub async fn list(
        &self,
        ctx: &RequestCtx,
        filter: &Filter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Page> {
        let filter = &ctx.principal.bind_filter(filter.clone())?;
        require_scope(filter)?;
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("`limit` must be between 1 and {MAX_PAGE}"),
            ));
        }
        let mut memories = self
            .inner
            .store
            .list(filter, self.vis(), after, limit + 1)
            .await?;
        let next = if memories.len() > limit {
            memories.truncate(limit);
            memories.last().map(Cursor::of)
        } else {
            None
        };
        Ok(Page { memories, next })
    }

    /// Writes a new version of a memory. Text changes re-embed and re-tag it.
    pub async fn update(
        &self,
        ctx: &RequestCtx,
        id: MemoryId,
        input: UpdateInput,
    ) -> Result<Memory> {
        ctx.principal
            .require(Role::ReadWrite, "updating memories")?;
        if input.text.is_none()
            && input.metadata.is_none()
            && input.categories.is_none()
            && input.expires_at.is_none()
        {
            return Err(Error::invalid(
                "nothing to update: give `text`, `metadata`, `categories` or `expires_at`",
            ));
        }
        let current = self.get(ctx, id).await?;
        let now = self.now();
        let mut next = current.clone();
        if let Some(text) = &input.text {
            let text = text.trim();
            if text.is_empty() {
                return Err(Error::invalid("`text` must not be empty"));
            }
            self.check_text(text, "`text`")?;
            next.text = text.to_owned();
        }
        if let Some(m) = input.metadata {
            next.metadata = m;
        }
        if let Some(c) = input.categories {
            next.categories = c;
        }
        if let Some(e) = input.expires_at {
            if e.is_some_and(|e| e <= now) {
                return Err(Error::invalid("`expires_at` is in the past"));
            }
            next.expires_at = e.map(to_millis);
            next.idle_ttl = None;
        }
        if next == current {
            return Ok(current);
        }
        next.version = current.version + 1;
        next.updated_at = now.max(current.updated_at);
        slide(&mut next, now);
        let embedding = if next.text != current.text {
            self.retext(&mut next);
            let (vector, model) = self.embed_one(&next.text).await?;
            next.embedding_model = model;
            Some(vector)
        } else {
            // The store keeps the previous vector and labels it itself.
            None
        };
        let history = self.history_event(
            ctx,
            &next,
            Event::Update,
            Some(current.text.clone()),
            Some(next.text.clone()),
            now,
        );
        self.inner
            .store
            .apply(vec![WriteOp::Update {
                memory: next.clone(),
                embedding,
                history,
            }])
            .await?;
        telemetry::memory_event(Event::Update, 1);
        Ok(next)
    }

    /// Restores the text of an earlier `version` as a new version (recorded
    /// as a `REVERT` history event); every version stays in the history.
    pub async fn revert(&self, ctx: &RequestCtx, id: MemoryId, version: u32) -> Result<Memory> {
        ctx.principal
            .require(Role::ReadWrite, "reverting memories")?;
        let current = self.get(ctx, id).await?;
        let events = self.inner.store.history(id).await?;
        let text = events
            .iter()
            .filter(|e| {
                e.version == version
                    && matches!(e.event, Event::Add | Event::Update | Event::Revert)
            })
            .find_map(|e| e.new_text.clone())
            .ok_or_else(|| {
                Error::not_found(format!(
                    "memory {id} has no version {version} (it is at version {})",
                    current.version
                ))
            })?;
        if version == current.version {
            return Err(Error::invalid(format!(
                "version {version} is the current version of memory {id}"
            )));
        }
        let now = self.now();
        let mut next = self.successor(&current, &text, now);
        let (vector, model) = self.embed_one(&text).await?;
        next.embedding_model = model;
        let mut history = self.history_event(
            ctx,
            &next,
            Event::Revert,
            Some(current.text.clone()),
            Some(text),
            now,
        );
        history.reason = Some(format!("revert to version {version}"));
        self.inner
            .store
            .apply(vec![WriteOp::Update {
                memory: next.clone(),
                embedding: Some(vector),
                history,
            }])
            .await?;
        telemetry::memory_event(Event::Revert, 1);
        Ok(next)
    }

    /// Closes the current version of a memory; its history remains.
    pub async fn delete(&self, ctx: &RequestCtx, id: MemoryId) -> Result<()> {
        ctx.principal
            .require(Role::ReadWrite, "deleting memories")?;
        let current = self.get(ctx, id).await?;
        let now = self.now();
        let history = self.history_event(
            ctx,
            &current,
            Event::Delete,
            Some(current.text.clone()),
            None,
            now,
        );
        self.inner
            .store
            .apply(vec![WriteOp::Delete {
                id,
                at: now,
                history,
            }])
            .await?;
        telemetry::memory_event(Event::Delete, 1);
        Ok(())
    }

    /// Deletes every visible memory matching `filter` (which must name a scope id). Returns how many.
    pub async fn delete_all(&self, ctx: &RequestCtx, filter: &Filter) -> Result<usize> {
        ctx.principal
            .require(Role::ReadWrite, "deleting memories")?;
        let filter = ctx.principal.bind_filter(filter.clone())?;
        require_scope(&filter)?;
        self.delete_matching(ctx, &filter).await
    }

    /// Deletes every memory the caller can see (Mem0's `reset`). Admin only;
    /// an admin key resets its own binding (its org), the operator everything.
    pub async fn reset(&self, ctx: &RequestCtx) -> Result<usize> {
        ctx.principal
            .require(Role::Admin, "resetting every memory")?;
        let filter = ctx.principal.bind_filter(Filter::all())?;
        self.delete_matching(ctx, &filter).await
    }

    /// Closes every visible memory matching an already-bound `filter`.
    async fn delete_matching(&self, ctx: &RequestCtx, filter: &Filter) -> Result<usize> {
        let mut deleted = 0;
        loop {
            // Each round deletes what it listed, so the next listing starts over.
            let memories = self.inner.store.list(filter, self.vis(), None, 500).await?;
            if memories.is_empty() {
                return Ok(deleted);
            }
            let now = self.now();
            let ops: Vec<WriteOp> = memories
                .iter()
                .map(|m| WriteOp::Delete {
                    id: m.id,
                    at: now,
                    history: self.history_event(
                        ctx,
                        m,
                        Event::Delete,
                        Some(m.text.clone()),
                        None,
                        now,
                    ),
                })
                .collect();
            deleted += ops.len();
            let n = ops.len() as u64;
            self.inner.store.apply(ops).await?;
            telemetry::memory_event(Event::Delete, n);
        }
    }

    /// Page `page` (from 1) of `page_size` memories matching `filter` inside the
    /// caller's binding, newest first, and how many match in all (Mem0's
    /// page-numbered listing; the native API pages by cursor).
    pub async fn list_page(
        &self,
        ctx: &RequestCtx,
        filter: &Filter,
        page: usize,
        page_size: usize,
    ) -> Result<(usize, Vec<Memory>)> {
        let filter = ctx.principal.bind_filter(filter.clone())?;
        require_scope(&filter)?;
        if page == 0 {
            return Err(Error::invalid("`page` starts at 1"));
        }
        if page_size == 0 || page_size > MAX_PAGE {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("`page_size` must be between 1 and {MAX_PAGE}"),
            ));
        }
        let vis = self.vis();
        let total = self.inner.store.count(&filter, vis).await?;
        let end = page.saturating_mul(page_size).min(total);
        let start = (page - 1).saturating_mul(page_size);
        if start >= end {
            return Ok((total, Vec::new()));
        }
        let mut memories = self.inner.store.list(&filter, vis, None, end).await?;
        let page = memories.split_off(start.min(memories.len()));
        Ok((total, page))
    }

    /// LLM usage tallies (per scope, day and model) inside the caller's binding, newest day first.
    pub async fn llm_usage(
        &self,
        ctx: &RequestCtx,
        limit: usize,
    ) -> Result<Vec<crate::store::UsageRow>> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("`limit` must be between 1 and {MAX_PAGE}"),
            ));
        }
        let mut rows = self.inner.store.usage(10 * limit).await?;
        rows.retain(|r| ctx.principal.covers(&r.scope));
        rows.truncate(limit);
        Ok(rows)
    }

    /// The scope ids the caller can see (Mem0's users / entities), with counts.
    pub async fn scope_ids(&self, ctx: &RequestCtx) -> Result<Vec<ScopeIdStats>> {
        let filter = ctx.principal.bind_filter(Filter::all())?;
        self.inner.store.scope_ids(&filter, self.vis()).await
    }

    /// Erases every trace of one user / agent / run / org inside the caller's
    /// binding (see [`crate::audit`]) and, with `compact`, rewrites the
    /// store's files so the bytes are gone from disk too. Admins erase within
    /// their org; a read-write key may erase the user or agent it is bound to.
    pub async fn erase(
        &self,
        ctx: &RequestCtx,
        field: ScopeField,
        id: &str,
        compact: bool,
    ) -> Result<ErasureReceipt> {
        crate::audit::validate_target(field, id)?;
        let p = &ctx.principal;
        let own = p.binding.get(field) == Some(id) && field != ScopeField::Org;
        if !own {
            p.require(Role::Admin, "erasing another scope's data")?;
        } else {
            p.require(Role::ReadWrite, "erasing data")?;
        }
        let org_id = p.binding.org_id.clone();
        if field == ScopeField::Org && org_id.as_deref().is_some_and(|o| o != id) {
            return Err(Error::new(
                ErrorCode::Forbidden,
                "an admin key can erase only its own org",
            ));
        }
        // Below the org, a bound key's other ids narrow nothing: erasure of
        // `user_id = X` in its org covers every agent and app that user spoke to.
        let target = ErasureTarget {
            field,
            id: id.to_owned(),
            org_id: if field == ScopeField::Org {
                Some(id.to_owned())
            } else {
                org_id.clone()
            },
        };
        let started_at = self.now();
        let receipt_id = Uuid::now_v7();
        let mut audit = AuditEvent::new(
            started_at,
            ctx.actor(),
            "erasure",
            target.org_id.clone(),
            Some(receipt_id.to_string()),
            ctx.request_id.clone(),
        );
        // What kind of id was erased, never which one.
        audit.detail = serde_json::json!({ "field": field.as_str() });
        let erased = self.inner.store.erase(&target, audit).await?;
        // Query embeddings may hold the person's words.
        self.query_cache().clear();
        let compacted = if compact {
            self.inner.store.compact().await?
        } else {
            false
        };
        tracing::info!(receipt = %receipt_id, field = field.as_str(), versions = erased.versions, "erasure done");
        Ok(ErasureReceipt {
            receipt_id,
            field: field.as_str().to_owned(),
            id: id.to_owned(),
            org_id: target.org_id,
            erased,
            compacted,
            started_at,
            finished_at: self.now(),
        })
    }

    /// Audit events (admins: their org's; the operator: all), oldest first.
    pub async fn audit(
        &self,
        ctx: &RequestCtx,
        mut query: AuditQuery,
    ) -> Result<Vec<(i64, AuditEvent)>> {
        ctx.principal
            .require(Role::Admin, "reading the audit log")?;
        if query.limit == 0 || query.limit > MAX_PAGE {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("`limit` must be between 1 and {MAX_PAGE}"),
            ));
        }
        if let Some(org) = &ctx.principal.binding.org_id {
            if query.org_id.as_ref().is_some_and(|o| o != org) {
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    "an admin key reads only its own org's audit log",
                ));
            }
            query.org_id = Some(org.clone());
        }
        self.inner.store.audit_list(&query).await
    }

    /// Every change of a memory, oldest first (also for deleted memories).
    pub async fn history(&self, ctx: &RequestCtx, id: MemoryId) -> Result<Vec<HistoryEvent>> {
        let events = self.inner.store.history(id).await?;
        // Every version of a memory keeps its scope, so the first event decides.
        match events.first() {
            Some(first) if ctx.principal.covers(&first.scope) => Ok(events),
            _ => Err(not_found(id)),
        }
    }
}

/// A search candidate on its way to becoming a hit.
struct Scored {
    memory: Memory,
    score: f32,
    signals: SignalScores,
    decay: f32,
    kind_weight: f32,
}

/// Every read names a scope id (after the caller's binding is applied).
fn require_scope(filter: &Filter) -> Result<()> {
    if filter.names_scope() {
        return Ok(());
    }
    Err(Error::new(
        ErrorCode::MissingScope,
        "name at least one scope id (user_id, agent_id, run_id, org_id or app_id), by equality or `in`",
    ))
}

fn not_found(id: MemoryId) -> Error {
    Error::not_found(format!("memory {id} not found"))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Normalises an entity list for the index.
pub fn entity_keys(entities: &[Entity]) -> Vec<String> {
    let mut keys: Vec<String> = entities.iter().map(|e| entity_key(&e.name)).collect();
    keys.sort();
    keys.dedup();
    keys
}
