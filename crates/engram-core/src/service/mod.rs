//! The service layer: one function per user action, called by every
//! transport (REST, Mem0 routes, MCP, CLI). Transports parse and map; the
//! rules live here.
//!
//! [`MemoryService`] is one type whose `impl` blocks live by feature:
//! `ingest.rs` and `procedural.rs` (the verbatim add), `search.rs`,
//! `memories.rs` (get, list, update, revert, delete, history),
//! `lifecycle.rs` (expiry, the episodic cap, the sweep), `portable.rs`
//! (export and import), `governance.rs` (erasure, audit, usage),
//! `reembed.rs` and `model.rs` (the embedding model and its swap).
//! [`JobQueue`] (`jobs.rs`) is the one door adds come in by: it decides
//! between the LLM pipeline and the verbatim add, now or as a job.
//! [`KeyService`] (`keys.rs`) manages API keys.

use std::sync::Arc;

use jiff::Timestamp;

use crate::clock::{Clock, to_millis};
use crate::config::{IngestConfig, RetrievalConfig};
use crate::filter::Filter;
use crate::lifecycle::LifecycleConfig;
use crate::memory::MemoryId;
use crate::ports::{Embedder, Store, Visibility};
use crate::{Error, ErrorCode, Result};

mod embed_batch;
mod governance;
mod health;
mod ingest;
mod jobs;
mod keys;
mod lifecycle;
mod memories;
mod model;
mod portable;
mod procedural;
mod query_cache;
mod reembed;
mod scope_lock;
mod search;
mod types;
mod webhooks;

pub use governance::{ErasureReceipt, validate_target};
pub use health::Readiness;
pub use jobs::{Added, JobConfig, JobQueue, JobRunner};
pub use keys::{
    CACHE_TTL, KEY_PREFIX, KeyService, MAX_KEY_NAME, MAX_RATE_LIMIT, NewKey, hash_secret,
};
pub use memories::MAX_BATCH_MEMORIES;
pub use query_cache::QueryCache;
pub use reembed::{DEFAULT_BATCH, MAX_BATCH, ReembedReport, check_batch};
pub use types::{
    AddInput, AddResult, Content, DEFAULT_AGENT_PAGE, DEFAULT_PAGE, Explanation, MAX_NAME_BYTES,
    MAX_PAGE, MAX_PAGE_OFFSET, MAX_QUERY_BYTES, Message, Page, SearchHit, SearchInput,
    SearchOutput, SweepReport, UpdateInput,
};

pub use webhooks::{Delivery, NewWebhook, WebhookConfig, WebhookPatch, WebhookService};

use model::{ModelCheck, ModelSlot};

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
    /// Adds to one scope decide one at a time (`scope_lock.rs`).
    add_locks: Arc<scope_lock::ScopeLocks>,
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
                add_locks: Arc::default(),
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

    /// Persists derived state (the vector graph) so the next start is fast.
    pub async fn flush(&self) -> Result<()> {
        self.inner.store.flush().await
    }

    /// The store's short name for logs and `/healthz`: `sqlite`, `postgres`.
    pub fn backend(&self) -> &'static str {
        self.inner.store.backend()
    }

    /// The store itself, for the process that built it and for tests;
    /// transports go through the service (`tests/layering.rs` checks).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
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
