//! What operators and probes ask of a node: readiness, store statistics,
//! and the idempotency records the HTTP layer keeps.

use crate::ErrorCode;
use crate::Result;
use crate::ports::{IdempotencyStore, ModelInfo, ReembedState, StoreStats};
use crate::service::MemoryService;

/// Whether this node can serve, check by check. Every text here is safe to
/// show an unauthenticated caller: causes go to the log.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// `sqlite`, `postgres`.
    pub backend: &'static str,
    /// Why the store cannot take a write now, if it cannot.
    pub store_problem: Option<String>,
    /// The model this node embeds with.
    pub model: ModelInfo,
    /// Set when another node re-embedded the store under another model.
    pub stale_model: Option<String>,
    /// A re-embedding in progress (or paused).
    pub reembedding: Option<ReembedState>,
}

impl Readiness {
    /// Every required check passes (the LLM is reported, never required).
    pub fn ready(&self) -> bool {
        self.store_problem.is_none() && self.stale_model.is_none()
    }
}

impl MemoryService {
    /// Readiness: the store takes writes and still uses this node's model.
    pub async fn readiness(&self) -> Readiness {
        let store = self.store();
        let store_problem = match store.check_writable().await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(error = %e, "readiness: store not writable");
                Some("the store cannot take writes now; the server log says why".to_owned())
            }
        };
        // A store that cannot be read is the store check's to report.
        let stale_model = match self.check_store_model().await {
            Err(e) if e.code == ErrorCode::EmbeddingModelMismatch => Some(e.message),
            Ok(()) | Err(_) => None,
        };
        Readiness {
            backend: store.backend(),
            store_problem,
            model: self.embedder().model().clone(),
            stale_model,
            reembedding: store.reembed_state().await.ok().flatten(),
        }
    }

    /// Counts of the whole store (operators' metrics; no scope applies).
    pub async fn store_stats(&self) -> Result<StoreStats> {
        self.store().stats().await
    }

    /// Removes `Idempotency-Key` records older than `ttl`, in batches;
    /// returns how many went.
    pub async fn purge_idempotency(&self, ttl: std::time::Duration) -> Result<u64> {
        const BATCH: usize = 10_000;
        let ttl = jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::MAX);
        let before = self.now().checked_sub(ttl).unwrap_or(jiff::Timestamp::MIN);
        let mut total = 0;
        loop {
            let n = self.store().idem_purge(before, BATCH).await?;
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Where the HTTP layer keeps `Idempotency-Key` records.
    pub fn idempotency(&self) -> &dyn IdempotencyStore {
        &**self.store()
    }
}
