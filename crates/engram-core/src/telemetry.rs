//! Metric names and recording, through the `metrics` facade (a no-op until a
//! recorder is installed; the server installs a Prometheus one). Recording
//! is not I/O: it updates in-process counters.

use std::time::Duration;

use crate::memory::Event;
use crate::ports::{JobCounts, VectorPath};

/// Seconds per search, whole service call (`path`: exact, hnsw, empty).
pub const SEARCH_SECONDS: &str = "engram_search_duration_seconds";
/// Seconds per search spent embedding the query.
pub const QUERY_EMBED_SECONDS: &str = "engram_query_embedding_duration_seconds";
/// Searches, by whether they returned at least one memory (`hit`: true/false).
pub const SEARCHES: &str = "engram_searches_total";
/// Tokens of the memories a search returned (what a caller injects into its prompt).
pub const INJECTED_TOKENS: &str = "engram_search_injected_tokens";
/// Memory operations by event (ADD, UPDATE, DELETE, NOOP): the consolidation mix.
pub const MEMORY_EVENTS: &str = "engram_memory_operations_total";

pub(crate) fn search(
    path: VectorPath,
    total: Duration,
    embedding: Duration,
    cached: bool,
    hits: usize,
    tokens: usize,
) {
    let path = path.as_str();
    metrics::histogram!(SEARCH_SECONDS, "path" => path).record(total.as_secs_f64());
    metrics::histogram!(QUERY_EMBED_SECONDS, "cached" => if cached { "true" } else { "false" })
        .record(embedding.as_secs_f64());
    metrics::counter!(SEARCHES, "hit" => if hits > 0 { "true" } else { "false" }).increment(1);
    metrics::histogram!(INJECTED_TOKENS).record(tokens as f64);
}

/// Jobs per state, as gauges (`engram_jobs_queued` / `_running` / `_dead`).
pub fn job_counts(c: &JobCounts) {
    metrics::gauge!("engram_jobs_queued").set(c.queued as f64);
    metrics::gauge!("engram_jobs_running").set(c.running as f64);
    metrics::gauge!("engram_jobs_dead").set(c.dead as f64);
}

pub(crate) fn memory_event(event: Event, n: u64) {
    metrics::counter!(MEMORY_EVENTS, "event" => event.as_str()).increment(n);
}

/// Sweeps run (each removes every expired memory in batches).
pub const SWEEPS: &str = "engram_sweep_runs_total";
/// Seconds per sweep.
pub const SWEEP_SECONDS: &str = "engram_sweep_duration_seconds";
/// Expired memories removed by sweeps (`what`: memories, versions, history_events).
pub const SWEPT: &str = "engram_sweep_removed_total";
/// Sliding expiries moved forward because a memory was used.
pub const EXPIRY_TOUCHES: &str = "engram_expiry_touches_total";
/// Adds that expired older episodic memories to keep a scope within its cap.
pub const EPISODIC_CAPPED: &str = "engram_episodic_cap_enforced_total";

pub(crate) fn sweep(r: &crate::service::SweepReport, at: jiff::Timestamp) {
    metrics::counter!(SWEEPS).increment(1);
    metrics::histogram!(SWEEP_SECONDS).record(r.seconds);
    metrics::counter!(SWEPT, "what" => "memories").increment(r.memories);
    metrics::counter!(SWEPT, "what" => "versions").increment(r.versions);
    metrics::counter!(SWEPT, "what" => "history_events").increment(r.history_events);
    metrics::gauge!("engram_sweep_last_run_timestamp_seconds")
        .set(at.as_millisecond() as f64 / 1000.0);
}

pub(crate) fn expiry_touched(n: usize) {
    metrics::counter!(EXPIRY_TOUCHES).increment(n as u64);
}

pub(crate) fn episodic_capped() {
    metrics::counter!(EPISODIC_CAPPED).increment(1);
}
