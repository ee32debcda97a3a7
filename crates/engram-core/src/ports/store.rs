//! The storage port: what the service needs from a backend.
//!
//! A backend keeps one record store with three indexes in step (vectors,
//! keywords, entities) and the history table. Every [`WriteOp`] batch passed
//! to [`Store::apply`] is atomic: records, indexes and history change
//! together or not at all.

use async_trait::async_trait;
use jiff::Timestamp;
use serde::Serialize;

use crate::filter::Filter;
use crate::fusion::Ranked;
use crate::memory::{HistoryEvent, Memory, MemoryId, Scope};
use crate::{Error, Result};

/// Which memories a read may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visibility {
    /// Memories that expired at or before `now` are invisible.
    pub now: Timestamp,
}

/// One change. Each carries the history row it writes.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// A new memory (version 1).
    Insert {
        memory: Memory,
        embedding: Vec<f32>,
        history: HistoryEvent,
    },
    /// A new version of an existing memory: the current version is closed
    /// (`invalid_at = memory.updated_at`) and `memory` becomes current.
    /// `embedding: None` keeps the previous version's vector (the text did not change).
    Update {
        memory: Memory,
        embedding: Option<Vec<f32>>,
        history: HistoryEvent,
    },
    /// Closes the current version of `id` at `at`; nothing is physically removed.
    Delete {
        id: MemoryId,
        at: Timestamp,
        history: HistoryEvent,
    },
    /// Sets the expiry of the current version of `id` in place (no new
    /// version, no history row): sliding expiries moved by a use, or memories
    /// expired by a cap. A compare-and-set: it applies only while the current
    /// version is still `version` with expiry `from` — a concurrent update,
    /// touch or erasure wins, and then nothing happens (no error).
    SetExpiry {
        id: MemoryId,
        version: u32,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    },
    /// Sets the feedback of `id`'s current version in place, if it is still
    /// `version` (else a `conflict`), with the history row saying so.
    SetFeedback {
        id: MemoryId,
        version: u32,
        feedback: Option<crate::memory::Feedback>,
        history: HistoryEvent,
    },
    /// Writes a memory from an export exactly as it was — every version (only
    /// the last current and indexed), its history rows as they are — unless
    /// the store already holds a memory with this id, in which case nothing
    /// happens. Not audited per row: the batch carries one `Audit` op.
    Import {
        versions: Vec<(Memory, Vec<f32>)>,
        history: Vec<HistoryEvent>,
    },
    /// Marks a job `done` with its result — in the same transaction as the
    /// job's memory writes, and only while `worker` holds its lease (else the
    /// whole batch fails with a `Conflict` naming the lease).
    FinishJob {
        id: uuid::Uuid,
        worker: String,
        result: serde_json::Value,
        at: Timestamp,
    },
    /// Adds one pipeline run's LLM usage to its scope's tally for the day.
    RecordUsage(UsageRow),
    /// Appends an audit event (memory writes are audited from their history
    /// rows without one).
    Audit(crate::ports::AuditEvent),
}

impl WriteOp {
    /// The vectors this op writes.
    pub fn vectors(&self) -> Vec<&[f32]> {
        match self {
            WriteOp::Insert { embedding, .. } => vec![embedding.as_slice()],
            WriteOp::Update { embedding, .. } => embedding.iter().map(Vec::as_slice).collect(),
            WriteOp::Import { versions, .. } => {
                versions.iter().map(|(_, v)| v.as_slice()).collect()
            }
            WriteOp::Delete { .. }
            | WriteOp::SetExpiry { .. }
            | WriteOp::SetFeedback { .. }
            | WriteOp::FinishJob { .. }
            | WriteOp::RecordUsage(_)
            | WriteOp::Audit(_) => Vec::new(),
        }
    }
}

/// Refuses a batch with any vector whose length is not the store's `dim`
/// (before anything is written).
pub fn check_dimensions(ops: &[WriteOp], dim: usize) -> Result<()> {
    match ops
        .iter()
        .flat_map(WriteOp::vectors)
        .find(|v| v.len() != dim)
    {
        Some(v) => Err(Error::new(
            crate::ErrorCode::EmbeddingModelMismatch,
            format!("vector has {} dimensions; the store holds {dim}", v.len()),
        )),
        None => Ok(()),
    }
}

/// LLM usage of one scope, one day, one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    pub scope: Scope,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub model: String,
    /// Pipeline runs (adds) that called the LLM.
    pub runs: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Estimated cost, millionths of a US dollar.
    pub cost_microdollars: u64,
}

/// Which vector-search strategy answered a query (DESIGN.md §2, "Filtered vector search").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorPath {
    /// Exact scan over the filtered set.
    Exact,
    /// HNSW graph traversal with the filter applied during the search.
    Hnsw,
    /// The filter matched nothing.
    Empty,
}

impl VectorPath {
    pub fn as_str(self) -> &'static str {
        match self {
            VectorPath::Exact => "exact",
            VectorPath::Hnsw => "hnsw",
            VectorPath::Empty => "empty",
        }
    }
}

/// Semantic candidates with the path that produced them.
#[derive(Debug, Clone)]
pub struct VectorHits {
    /// Cosine similarity, best first.
    pub hits: Ranked<MemoryId>,
    pub path: VectorPath,
    /// The estimated size of the filtered set that chose the path.
    pub estimated: usize,
}

/// A position in a listing ordered by `(created_at, id)` descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: Timestamp,
    pub id: MemoryId,
}

impl Cursor {
    pub fn of(m: &Memory) -> Cursor {
        Cursor {
            created_at: m.created_at,
            id: m.id,
        }
    }

    /// An opaque token: `<millis>.<uuid>`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at.as_millisecond(), self.id.simple())
    }

    pub fn decode(token: &str) -> Result<Cursor> {
        let bad = || {
            Error::invalid(format!(
                "`cursor` is not a cursor returned by this server: `{token}`"
            ))
        };
        let (ms, id) = token.split_once('.').ok_or_else(bad)?;
        let ms: i64 = ms.parse().map_err(|_| bad())?;
        Ok(Cursor {
            created_at: Timestamp::from_millisecond(ms).map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

/// Counts describing a store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreStats {
    /// Current (live or expired) memory versions.
    pub memories: u64,
    /// All versions ever written, including closed ones.
    pub versions: u64,
    pub history_events: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Vectors in the ANN graph.
    pub indexed_vectors: u64,
}

/// One scope id and the visible memories that carry it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeIdStats {
    pub field: crate::memory::ScopeField,
    pub id: String,
    pub memories: usize,
    /// `created_at` of its oldest and newest memory.
    pub first: Timestamp,
    pub last: Timestamp,
}

/// The embedding model a store's vectors come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ModelInfo {
    pub id: String,
    pub dim: usize,
}

/// Refuses a batch embedded with another model than the store's (a write
/// prepared before a re-embedding switched the model, applied after it).
/// An update keeping its previous vector (`embedding: None`) is labelled by
/// the store with its own model instead.
pub fn check_model(ops: &[WriteOp], model: &str) -> Result<()> {
    let stale = ops.iter().find_map(|op| match op {
        WriteOp::Insert { memory, .. }
        | WriteOp::Update {
            memory,
            embedding: Some(_),
            ..
        } => (memory.embedding_model != model).then_some(&memory.embedding_model),
        WriteOp::Import { versions, .. } => versions
            .iter()
            .map(|(m, _)| &m.embedding_model)
            .find(|m| *m != model),
        WriteOp::Update { .. }
        | WriteOp::Delete { .. }
        | WriteOp::SetExpiry { .. }
        | WriteOp::SetFeedback { .. }
        | WriteOp::FinishJob { .. }
        | WriteOp::RecordUsage(_)
        | WriteOp::Audit(_) => None,
    });
    match stale {
        Some(m) => Err(Error::new(
            crate::ErrorCode::ModelSwitched,
            format!(
                "this write was embedded with `{m}`, but the store switched to `{model}` meanwhile; retry it"
            ),
        )),
        None => Ok(()),
    }
}

/// A storage backend: memories, their indexes and history, and API keys.
#[async_trait]
pub trait Store:
    crate::ports::KeyStore
    + crate::ports::JobStore
    + crate::ports::IdempotencyStore
    + crate::ports::AuditStore
    + crate::ports::ReembedStore
    + crate::ports::WebhookStore
    + Send
    + Sync
    + 'static
{
    /// A short name for logs: `sqlite`, `postgres`.
    fn backend(&self) -> &'static str;

    /// Records the embedding model on first use; afterwards refuses a different one
    /// with [`crate::ErrorCode::EmbeddingModelMismatch`].
    async fn bind_model(&self, model: &ModelInfo) -> Result<()>;

    /// The model the stored vectors come from now (`None` before the first
    /// bind). Differs from a node's own after another node re-embedded.
    async fn bound_model(&self) -> Result<Option<ModelInfo>>;

    /// Applies a batch atomically.
    async fn apply(&self, ops: Vec<WriteOp>) -> Result<()>;

    /// The current version of a memory, if visible.
    async fn get(&self, id: MemoryId, vis: Visibility) -> Result<Option<Memory>>;

    /// Current versions of several memories, in the order given; invisible ones are skipped.
    async fn get_many(&self, ids: &[MemoryId], vis: Visibility) -> Result<Vec<Memory>>;

    /// Visible current memories matching `filter`, newest first, after `cursor`.
    async fn list(
        &self,
        filter: &Filter,
        vis: Visibility,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<Memory>>;

    /// The versions that were current (and unexpired) at `at` and match
    /// `filter`, with their vectors: the memory as it stood then (`as_of`);
    /// at most `limit` of them.
    async fn versions_at(
        &self,
        filter: &Filter,
        at: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Memory, Vec<f32>)>>;

    /// LLM usage tallies, newest day first; the caller filters by binding.
    async fn usage(&self, limit: usize) -> Result<Vec<UsageRow>>;

    /// How many visible current memories match `filter`.
    async fn count(&self, filter: &Filter, vis: Visibility) -> Result<usize>;

    /// The scope ids carried by visible memories matching `filter`, with
    /// counts; ordered by field, then id.
    async fn scope_ids(&self, filter: &Filter, vis: Visibility) -> Result<Vec<ScopeIdStats>>;

    /// Every version (current, superseded, deleted) of each of `ids` with its
    /// vector, by id in the order given, then by version.
    async fn memory_versions(&self, ids: &[MemoryId]) -> Result<Vec<(Memory, Vec<f32>)>>;

    /// Every history event of a memory, oldest first.
    async fn history(&self, id: MemoryId) -> Result<Vec<HistoryEvent>>;

    /// Nearest visible current memories to `vector` among those matching `filter`.
    async fn vector_search(
        &self,
        filter: &Filter,
        vis: Visibility,
        vector: &[f32],
        k: usize,
    ) -> Result<VectorHits>;

    /// Cosine similarity of `vector` to each listed memory's current vector (missing ones are skipped).
    async fn vector_scores(&self, ids: &[MemoryId], vector: &[f32]) -> Result<Ranked<MemoryId>>;

    /// Best BM25 matches for any of `terms` among visible current memories matching `filter`.
    async fn keyword_search(
        &self,
        filter: &Filter,
        vis: Visibility,
        terms: &[String],
        k: usize,
    ) -> Result<Ranked<MemoryId>>;

    /// Memories sharing entities (by [`crate::memory::entity_key`]) with the query.
    /// Scores are absolute, in [0, 1]: each matched entity adds its rarity in the
    /// filtered set, `ln(1 + n/df) / ln(1 + n)`, averaged over the query's entities.
    async fn entity_search(
        &self,
        filter: &Filter,
        vis: Visibility,
        keys: &[String],
        k: usize,
    ) -> Result<Ranked<MemoryId>>;

    /// For each listed memory, the live memories said just before and after it in
    /// the same scope, at most `max_gap_ms` apart (its conversational context).
    /// Neighbours must match `filter` too.
    async fn neighbors(
        &self,
        ids: &[MemoryId],
        filter: &Filter,
        max_gap_ms: i64,
        vis: Visibility,
    ) -> Result<Vec<(MemoryId, Vec<MemoryId>)>>;

    async fn stats(&self) -> Result<StoreStats>;

    /// Whether the store can take a write now (readiness): fails with
    /// [`crate::ErrorCode::StoreFailure`] saying why when it cannot.
    async fn check_writable(&self) -> Result<()>;

    /// Persists derived state (the ANN graph) so the next start is fast.
    async fn flush(&self) -> Result<()>;

    /// Physically removes every record carrying the target's id (all
    /// versions, index entries, history, jobs, usage, the org's idempotency
    /// records) in one transaction, appending `audit` with the counts as its
    /// detail. Returns the counts.
    async fn erase(
        &self,
        target: &crate::ports::ErasureTarget,
        audit: crate::ports::AuditEvent,
    ) -> Result<crate::ports::ErasureCounts>;

    /// Rewrites the store's files so deleted records' bytes are gone from
    /// disk (checkpoint, index merge, vacuum). Returns whether that is what
    /// happened (`false`: the backend cannot promise it, e.g. Postgres WAL).
    async fn compact(&self) -> Result<bool>;

    /// Removes up to `limit` memories whose current version expired at or
    /// before `now`: every version, their history, and their keyword, vector
    /// and entity index entries, in one transaction that also appends `audit`
    /// (with the counts added to its detail) when anything was removed.
    async fn sweep_expired(
        &self,
        now: Timestamp,
        limit: usize,
        audit: crate::ports::AuditEvent,
    ) -> Result<crate::ports::ErasureCounts>;
}
