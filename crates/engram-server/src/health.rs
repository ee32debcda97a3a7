//! `/healthz` (the process is up) and `/readyz` (it can serve: the store
//! takes writes, the embedding model is loaded; the LLM's state is reported).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

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

/// Readiness: 200 when every check passes, 503 naming the failing one otherwise.
pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let r = app.memory.readiness().await;
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
                   "circuit": state.as_str(), "model": p.llm().model()})
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
