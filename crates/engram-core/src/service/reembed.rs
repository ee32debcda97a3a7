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

use serde::Serialize;

use crate::access::Role;
use crate::ctx::RequestCtx;
use crate::ports::{AuditEvent, Embedder, ModelInfo, ReembedState};
use crate::service::MemoryService;
use crate::{Error, Result};

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
