//! Engram's HTTP server: the native REST API (`/v1`), problem+json errors,
//! request ids, OpenAPI 3.1 at `/openapi.json`, health.
//!
//! Architecture invariant: no business logic here. Handlers turn wire types
//! into domain inputs, call [`engram_core::service::MemoryService`] and map
//! the result; every rule lives in the service. This crate names no storage
//! backend and no model.

pub mod error;
pub mod extract;
pub mod mcp;
mod memories;
pub mod request_id;
pub mod wire;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use engram_core::service::MemoryService;
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::error::{ApiError, HttpCode};

/// Server limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// MCP over streamable HTTP at `/mcp` (off without a token).
    pub mcp: mcp::McpHttpConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            mcp: mcp::McpHttpConfig::default(),
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub memory: MemoryService,
    pub config: ServerConfig,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Engram", description = "Long-term memory server for AI agents: native REST API."),
    tags((name = "memories", description = "Add, search, list, update and delete memories")),
    components(schemas(error::Problem))
)]
struct ApiDoc;

/// The OpenAPI document of the native API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = api_router().split_for_parts();
    api
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(memories::router())
}

/// The whole application, ready to serve (tests call it with `oneshot`).
pub fn app(state: AppState) -> Router {
    let (api, doc) = api_router().split_for_parts();
    let doc = std::sync::Arc::new(doc);
    let timeout = state.config.request_timeout;
    let mcp = mcp::http_service(state.memory.clone(), state.config.mcp.clone());
    let router = api
        .route(
            "/openapi.json",
            get(move || async move { axum::Json(doc.as_ref().clone()) }),
        )
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn(move |req, next| {
            with_timeout(timeout, req, next)
        }))
        .with_state(state);
    // MCP sessions stream (SSE), so they sit outside the per-request timeout.
    let router = match mcp {
        Some(mcp) => router.nest_service("/mcp", mcp),
        None => router.route("/mcp", axum::routing::any(mcp_off)),
    };
    router.layer(axum::middleware::from_fn(request_id::layer))
}

async fn mcp_off() -> ApiError {
    ApiError::new(
        HttpCode::RouteNotFound,
        "MCP over HTTP is off: start the server with --mcp-token (or ENGRAM_MCP_TOKEN) to enable /mcp",
    )
}

async fn with_timeout(
    limit: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            HttpCode::Timeout,
            format!("the request took longer than {}s", limit.as_secs()),
        )
        .into_response(),
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        HttpCode::RouteNotFound,
        format!("no route for `{}`; see /openapi.json", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        HttpCode::MethodNotAllowed,
        format!("`{method}` is not allowed on `{}`", uri.path()),
    )
}

/// Process liveness.
async fn healthz(State(app): State<AppState>) -> impl IntoResponse {
    let model = app.memory.embedder().model().clone();
    (
        StatusCode::OK,
        axum::Json(
            json!({"status": "ok", "store": app.memory.store().backend(), "embedding_model": model.id}),
        ),
    )
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
