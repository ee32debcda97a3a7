//! `/healthz` (the process is up) and `/readyz` (it can serve: the store
//! takes writes, the embedding model is loaded; the LLM's state is reported).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use engram_core::service::Readiness;

use crate::AppState;

/// Liveness: answers while the process runs.
pub async fn healthz(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    (
        StatusCode::OK,
        Json(json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "store": app.memory.backend(),
        })),
    )
}

/// How long one readiness probe of the store answers for: `/readyz` costs
/// the store at most one probe per this, however often it is called.
pub const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The last readiness probe and when it ran.
#[derive(Default)]
pub struct ProbeCache(tokio::sync::Mutex<Option<(std::time::Instant, Readiness)>>);

impl ProbeCache {
    /// The readiness of at most [`PROBE_EVERY`] ago; concurrent callers wait
    /// for one probe rather than each running their own.
    async fn get(&self, app: &AppState) -> Readiness {
        let mut last = self.0.lock().await;
        if let Some((at, r)) = last.as_ref()
            && at.elapsed() < PROBE_EVERY
        {
            return r.clone();
        }
        metrics::counter!("engram_readiness_probes_total").increment(1);
        let r = app.memory.readiness().await;
        *last = Some((std::time::Instant::now(), r.clone()));
        r
    }
}

/// Readiness: 200 when every check passes, 503 naming the failing one otherwise.
pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let r = app.readiness.get(&app).await;
    let check = |problem: &Option<String>| match problem {
        None => json!("ok"),
        Some(_) => json!("fail"),
    };
    let store =
        json!({"status": check(&r.store_problem), "backend": r.backend, "detail": r.store_problem});
    let embedder = json!({"status": check(&r.stale_model), "model": r.model.id, "dim": r.model.dim,
        "detail": r.stale_model});
    let reembed = match &r.reembedding {
        Some(s) => json!({"to": s.to.id, "done": s.done, "total": s.total}),
        None => Value::Null,
    };
    // The LLM is reported, not required: adds queue while it is down and search never needs it.
    let llm = match app.jobs.pipeline() {
        None => json!({"status": "not_configured"}),
        Some(p) => {
            let state = p.llm().state();
            json!({"status": if state == engram_core::ports::LlmState::Closed { "ok" } else { "unavailable" },
                   "circuit": state.as_str(), "model": p.llm().model(),
                   // Calls holding and waiting for the endpoint's slots (--llm-concurrency).
                   "queue": p.llm().queue()})
        }
    };
    let ready = r.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    metrics::gauge!("engram_ready").set(if ready { 1.0 } else { 0.0 });
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": {"store": store, "embedder": embedder, "llm": llm},
            "reembedding": reembed,
        })),
    )
}
