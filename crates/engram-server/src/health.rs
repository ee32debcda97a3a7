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
            "store": app.memory.store().backend(),
        })),
    )
}

/// Readiness: 200 when every check passes, 503 naming the failing one otherwise.
pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = match app.memory.store().check_writable().await {
        Ok(()) => json!({"status": "ok", "backend": app.memory.store().backend()}),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store not writable");
            json!({"status": "fail", "backend": app.memory.store().backend(), "detail": e.message})
        }
    };
    // Another node may have re-embedded the shared store: this one's queries
    // would then be embedded with the wrong model. (A store that cannot be
    // read is the store check's to report.)
    let stale = match app.memory.check_store_model().await {
        Err(e) if e.code == engram_core::ErrorCode::EmbeddingModelMismatch => Some(e.message),
        _ => None,
    };
    let model = app.memory.embedder().model().clone();
    let embedder = match stale {
        Some(detail) => {
            json!({"status": "fail", "model": model.id, "dim": model.dim, "detail": detail})
        }
        None => json!({"status": "ok", "model": model.id, "dim": model.dim}),
    };
    let reembed = match app.memory.store().reembed_state().await {
        Ok(Some(s)) => json!({"to": s.to.id, "done": s.done, "total": s.total}),
        _ => serde_json::Value::Null,
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
    let ready = store["status"] == "ok" && embedder["status"] == "ok";
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
