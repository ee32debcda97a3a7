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
use crate::audit::AuditEvent;
use crate::embed::Embedder;
use crate::service::{MemoryService, RequestCtx};
use crate::store::{ModelInfo, ReembedState};
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

/// The largest batch a run embeds at once.
pub const MAX_BATCH: usize = 4096;

impl MemoryService {
    /// Migrates every vector (current and superseded versions) to `to`,
    /// then makes `to` the service's model. `batch` texts are embedded at a
    /// time; `progress` hears after each batch. Only the operator or an
    /// admin key bound to no org may do it: it changes every org's vectors.
    pub async fn reembed(
        &self,
        ctx: &RequestCtx,
        to: Arc<dyn Embedder>,
        batch: usize,
        progress: &(dyn Fn(&ReembedState) + Send + Sync),
    ) -> Result<ReembedReport> {
        self.require_reembed(ctx)?;
        if batch == 0 || batch > MAX_BATCH {
            return Err(Error::invalid(format!(
                "`batch` must be between 1 and {MAX_BATCH}"
            )));
        }
        let store = self.store().clone();
        let model = to.model().clone();
        let started = store.reembed_start(&model).await?;
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
                let left = store.reembed_switch(&model, audit).await?;
                report.switch_ms += switching.elapsed().as_millis() as u64;
                if left == 0 {
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
            if let Some(state) = store.reembed_state().await? {
                progress(&state);
            }
        }
        self.set_embedder(to);
        let stats = store.stats().await?;
        report.versions = stats.versions;
        tracing::info!(to = %model.id, embedded = report.embedded, passes = report.passes, "re-embedding switched");
        Ok(report)
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

    /// The model is store-wide configuration, like the server's flags: the
    /// operator or any admin key may change it (audited with who did).
    /// Nothing of another org is read or returned by doing so.
    fn require_reembed(&self, ctx: &RequestCtx) -> Result<()> {
        ctx.principal.require(Role::Admin, "re-embedding")
    }
}
