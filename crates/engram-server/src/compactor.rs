//! The store's compaction (checkpoint, index merge, `VACUUM`, graph
//! rebuild: what makes erased bytes leave the files) as one background job
//! per node, never inline in a tenant's request.
//!
//! Erasures ask for it; requests made while one runs coalesce into the next
//! run, so any number of erasures costs at most one compaction in flight and
//! one queued. A caller may wait for it (`?compact=wait`), the operator may
//! start it (`POST /v1/admin/compact`), and a graceful shutdown finishes a
//! pending one, so a stopped server's files never hold erased text.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use engram_core::Result;
use engram_core::service::MemoryService;
use tokio_util::sync::CancellationToken;

/// One node's compactor. Cheap to share.
pub struct Compactor {
    memory: MemoryService,
    /// A compaction was asked for and has not started yet.
    pending: AtomicBool,
    wake: tokio::sync::Notify,
    /// Held while a compaction runs: one at a time.
    running: tokio::sync::Mutex<()>,
}

impl Compactor {
    pub fn new(memory: MemoryService) -> Compactor {
        Compactor {
            memory,
            pending: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Asks for a compaction soon; returns at once.
    pub fn request(&self) {
        self.pending.store(true, Ordering::Release);
        metrics::gauge!("engram_compaction_pending").set(1.0);
        self.wake.notify_one();
    }

    /// Compacts now (after any compaction already running): whether the
    /// erased bytes are gone from the store's files.
    pub async fn run_now(&self) -> Result<bool> {
        let _one = self.running.lock().await;
        // Whatever was asked for before this point is covered by this run.
        self.pending.store(false, Ordering::Release);
        metrics::gauge!("engram_compaction_pending").set(0.0);
        self.memory.compact_store().await
    }

    /// Runs a compaction that was asked for and has not run yet (shutdown).
    pub async fn finish(&self) {
        if self.pending.load(Ordering::Acquire) {
            tracing::info!("shutdown: finishing the pending compaction");
            if let Err(e) = self.run_now().await {
                tracing::error!(error = %e, "compaction at shutdown failed");
            }
        }
    }

    /// The background loop: compacts whenever asked, until `stop`.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = me.wake.notified() => {}
                    () = stop.cancelled() => return,
                }
                if me.pending.load(Ordering::Acquire) {
                    match me.run_now().await {
                        Ok(_) => tracing::info!("compaction done"),
                        Err(e) => {
                            tracing::error!(error = %e, "compaction failed; the next erasure asks again")
                        }
                    }
                }
            }
        })
    }
}
