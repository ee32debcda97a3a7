//! Re-embedding: moving every stored vector to another embedding model
//! while the service keeps answering.
//!
//! The new vectors are written beside the old ones, batch by batch in key
//! order; searches keep using the old vectors and the old model meanwhile.
//! Each batch is stored before the next is embedded, so an interrupted run
//! resumes where it stopped (the store remembers the migration). Writes made
//! during the migration land with the old model and are picked up by a
//! catch-up pass. When nothing is left, the store swaps every vector and the
//! model binding in one transaction (refusing if a write slipped in, which
//! sends the loop round once more), and the service swaps its embedder.
//! Writes prepared with the old model and applied after the switch are
//! refused by the store (`store::check_model`) and must be retried.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::access::Role;
use crate::audit::AuditEvent;
use crate::embed::Embedder;
use crate::service::{MemoryService, RequestCtx};
use crate::store::ModelInfo;
use crate::{Error, ErrorCode, Result};

/// A migration of every stored vector to another embedding model
/// (`engram reembed`). Searches keep using the `from` vectors until
/// [`ReembedStore::reembed_switch`] swaps them all in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReembedState {
    pub from: ModelInfo,
    pub to: ModelInfo,
    /// Versions (current and superseded) that have their `to` vector.
    pub done: u64,
    /// Every version in the store.
    pub total: u64,
}

/// One stored version still waiting for its vector from the new model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReembedItem {
    /// The version's key in the store (opaque, increasing in write order).
    pub key: i64,
    pub text: String,
}

/// Refuses vectors a migration cannot take: another model than the one the
/// migration is to, or the wrong length.
pub fn check_reembed(
    state: Option<&ReembedState>,
    to: &ModelInfo,
    vectors: &[(i64, Vec<f32>)],
) -> Result<()> {
    match state {
        None => Err(Error::new(
            ErrorCode::Conflict,
            "no re-embedding is in progress (it was switched or cancelled)",
        )),
        Some(s) if s.to != *to => Err(Error::new(
            ErrorCode::Conflict,
            format!(
                "the re-embedding in progress is to `{}`, not `{}`",
                s.to.id, to.id
            ),
        )),
        Some(_) => match vectors.iter().find(|(_, v)| v.len() != to.dim) {
            Some((_, v)) => Err(Error::new(
                ErrorCode::EmbeddingModelMismatch,
                format!(
                    "vector has {} dimensions; `{}` has {}",
                    v.len(),
                    to.id,
                    to.dim
                ),
            )),
            None => Ok(()),
        },
    }
}

/// Where a store keeps a migration: the new vectors beside the current
/// ones, and the switch. Implemented by every store backend.
#[async_trait]
pub trait ReembedStore: Send + Sync + 'static {
    /// Starts a migration of every vector to `to`, or resumes the one to
    /// `to` in progress. Refuses `to` when it is the store's model already
    /// (`InvalidRequest`) or when a migration to another model is in
    /// progress (`Conflict`).
    async fn reembed_start(&self, to: &ModelInfo) -> Result<ReembedState>;

    /// The migration in progress, if any.
    async fn reembed_state(&self) -> Result<Option<ReembedState>>;

    /// Up to `limit` versions with keys above `after` that have no vector
    /// from the new model yet, in key order.
    async fn reembed_pending(&self, after: i64, limit: usize) -> Result<Vec<ReembedItem>>;

    /// Stores new-model vectors beside the current ones (searches do not
    /// see them). Versions removed meanwhile are skipped.
    async fn reembed_put(&self, to: &ModelInfo, vectors: Vec<(i64, Vec<f32>)>) -> Result<()>;

    /// Switches to the new model if every version has its new vector: in
    /// one transaction the vectors replace the old ones, the model binding
    /// changes and `audit` is appended; then the vector index is rebuilt.
    /// Returns how many versions still lack a new vector (0: switched;
    /// otherwise nothing changed — writes landed since the last pass).
    async fn reembed_switch(&self, to: &ModelInfo, audit: crate::audit::AuditEvent) -> Result<u64>;

    /// Abandons the migration in progress (its new vectors are dropped).
    /// Returns whether there was one.
    async fn reembed_cancel(&self) -> Result<bool>;
}

/// What starting a migration to `to` means for a store whose vectors come
/// from `from` (`None`: nothing bound yet), with `current` in progress:
/// `Ok(Some(state))` resumes it, `Ok(None)` starts afresh; an empty store,
/// the same model, or another migration in progress is refused. The stores
/// call it inside their start transaction.
pub fn check_start(
    from: Option<&ModelInfo>,
    current: Option<ReembedState>,
    to: &ModelInfo,
) -> Result<Option<ReembedState>> {
    let from =
        from.ok_or_else(|| Error::invalid("the store holds no vectors yet: nothing to re-embed"))?;
    match current {
        Some(s) if s.to == *to => Ok(Some(s)),
        Some(s) => Err(Error::new(
            ErrorCode::Conflict,
            format!(
                "a re-embedding to `{}` is in progress ({} of {} versions); finish it, or cancel it first",
                s.to.id, s.done, s.total
            ),
        )),
        None if from == to => Err(Error::invalid(format!(
            "the store already uses `{}`",
            to.id
        ))),
        None => Ok(None),
    }
}

/// What a finished re-embedding did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReembedReport {
    pub from: ModelInfo,
    pub to: ModelInfo,
    /// Versions embedded by this run (a resumed run skips those done before).
    pub embedded: u64,
    /// Versions that had their new vector when this run started.
    pub resumed: u64,
    /// Every version now carrying the new model's vector.
    pub versions: u64,
    /// Passes over the store (more than one when writes landed meanwhile).
    pub passes: u32,
    /// Time spent in the switch (the swap transaction and the index rebuild), ms.
    pub switch_ms: u64,
}

/// Texts embedded at once unless the caller says otherwise.
pub const DEFAULT_BATCH: usize = 256;

/// The largest batch a run embeds at once.
pub const MAX_BATCH: usize = 4096;

/// Refuses a batch size outside 1..=[`MAX_BATCH`].
pub fn check_batch(batch: usize) -> Result<()> {
    if batch == 0 || batch > MAX_BATCH {
        return Err(Error::invalid(format!(
            "`batch` must be between 1 and {MAX_BATCH}"
        )));
    }
    Ok(())
}

impl MemoryService {
    /// Migrates every vector (current and superseded versions) to `to`,
    /// then makes `to` the service's model. `batch` texts are embedded at a
    /// time; `progress` hears after each batch. The local operator or
    /// an `operator` key: it changes every org's vectors.
    pub async fn reembed(
        &self,
        ctx: &RequestCtx,
        to: Arc<dyn Embedder>,
        batch: usize,
        progress: &(dyn Fn(&ReembedState) + Send + Sync),
    ) -> Result<ReembedReport> {
        check_batch(batch)?;
        let model = to.model().clone();
        let started = self.reembed_start(ctx, &model).await?;
        let store = self.store().clone();
        tracing::info!(from = %started.from.id, to = %model.id, done = started.done, total = started.total, "re-embedding");
        progress(&started);
        let mut report = ReembedReport {
            from: started.from.clone(),
            to: model.clone(),
            embedded: 0,
            resumed: started.done,
            versions: 0,
            passes: 1,
            switch_ms: 0,
        };
        let mut after = 0;
        let mut last = started;
        let mut batches = 0u64;
        loop {
            let items = store.reembed_pending(after, batch).await?;
            if items.is_empty() {
                let mut audit = AuditEvent::new(
                    self.now(),
                    ctx.actor(),
                    "reembed",
                    None,
                    None,
                    ctx.request_id.clone(),
                );
                audit.detail = serde_json::json!({
                    "from": report.from.id, "to": model.id, "dim": model.dim,
                    "embedded": report.embedded,
                });
                let switching = std::time::Instant::now();
                let switched = self
                    .switch_model(&to, async {
                        Ok(store.reembed_switch(&model, audit).await? == 0)
                    })
                    .await?;
                report.switch_ms += switching.elapsed().as_millis() as u64;
                if switched {
                    break;
                }
                // Writes landed since this pass began: another pass from the
                // start (keys of concurrent writers may commit out of order).
                after = 0;
                report.passes += 1;
                continue;
            }
            after = items.last().map_or(after, |i| i.key);
            let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
            let vectors = MemoryService::embed_with(&*to, &texts).await?;
            report.embedded += items.len() as u64;
            store
                .reembed_put(&model, items.iter().map(|i| i.key).zip(vectors).collect())
                .await?;
            // The store's counts every 16 batches (they scan), ours between.
            batches += 1;
            last.done += items.len() as u64;
            if batches.is_multiple_of(16)
                && let Some(state) = store.reembed_state().await?
            {
                last = state;
            }
            progress(&last);
        }
        // Switched: a failure to count is not a failure of the run.
        report.versions = match store.stats().await {
            Ok(stats) => stats.versions,
            Err(e) => {
                tracing::warn!(error = %e, "counting versions after the switch");
                last.total.max(last.done)
            }
        };
        tracing::info!(to = %model.id, embedded = report.embedded, passes = report.passes, "re-embedding switched");
        Ok(report)
    }

    /// Starts (or resumes) a migration to `to` without running it: what
    /// [`reembed`](Self::reembed) does first, for callers that answer before
    /// running it in the background.
    pub async fn reembed_start(&self, ctx: &RequestCtx, to: &ModelInfo) -> Result<ReembedState> {
        self.require_reembed(ctx)?;
        self.store().reembed_start(to).await
    }

    /// The re-embedding in progress, if any.
    pub async fn reembed_state(&self, ctx: &RequestCtx) -> Result<Option<ReembedState>> {
        self.require_reembed(ctx)?;
        self.store().reembed_state().await
    }

    /// Abandons the re-embedding in progress; returns whether there was one.
    pub async fn reembed_cancel(&self, ctx: &RequestCtx) -> Result<bool> {
        self.require_reembed(ctx)?;
        self.store().reembed_cancel().await
    }

    /// The model is store-wide: the local operator or an `operator` key
    /// (which only the local operator mints), never an org's admin.
    fn require_reembed(&self, ctx: &RequestCtx) -> Result<()> {
        ctx.principal
            .require(Role::Operator, "re-embedding (store-wide)")
    }
}
