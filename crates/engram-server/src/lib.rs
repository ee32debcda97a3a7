//! Engram's HTTP server: the native REST API (`/v1`), MCP over streamable
//! HTTP (`/mcp`), API-key authentication and rate limits, problem+json
//! errors, request ids, Prometheus metrics, health and readiness, OpenAPI
//! 3.1 at `/openapi.json`.
//!
//! Architecture invariant: no business logic here. Handlers turn wire types
//! into domain inputs, call [`engram_core::service::MemoryService`] and map
//! the result; every rule lives in the service. This crate names no storage
//! backend and no model.

pub mod activity;
mod api_keys;
pub mod auth;
pub mod compactor;
pub mod error;
pub mod extract;
mod governance;
pub mod guard;
mod health;
pub mod idempotency;
mod jobs;

pub use jobs::{spawn_sweeper, spawn_workers};
pub mod mcp;
mod mcp_http;
pub mod mem0;
mod mem0_batch;
mod mem0_webhooks;
mod memories;
pub mod metrics;
pub mod portable;
pub mod reembed;
pub mod request_id;
pub mod ui;
pub mod webhook_send;
mod webhooks;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use engram_core::service::KeyService;
use engram_core::service::MemoryService;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::auth::{AuthMode, RateLimitConfig, RateLimits};
use crate::error::{ApiError, HttpCode};

/// Server settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// How long shutdown waits for in-flight requests before giving up on them.
    pub shutdown_timeout: Duration,
    pub auth: AuthMode,
    pub rate_limit: RateLimitConfig,
    /// MCP over streamable HTTP at `/mcp`.
    /// Host, Origin and body-type checks for every route.
    pub guard: guard::GuardConfig,
    /// Background workers processing queued jobs (0: none on this node).
    pub workers: usize,
    pub jobs: engram_core::service::JobConfig,
    /// How long an `Idempotency-Key` record is kept (then purged by the sweeper).
    pub idempotency_ttl: Duration,
    /// When set, `/metrics` answers only scrapers that send it as a bearer token.
    pub metrics_token: Option<String>,
    /// Dashboard sessions: idle and absolute expiry, how many at most.
    pub ui_sessions: ui::SessionConfig,
    /// Webhook delivery: private targets, failures before disabling, timeout.
    pub webhooks: engram_core::service::WebhookConfig,
    /// Whether this process's workers send webhook deliveries (`engram mcp`
    /// on stdio leaves them to the servers, whose flags say where they may go).
    pub deliver_webhooks: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            auth: AuthMode::Keys,
            rate_limit: RateLimitConfig::default(),
            guard: guard::GuardConfig::default(),
            workers: 2,
            jobs: engram_core::service::JobConfig::default(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            metrics_token: None,
            ui_sessions: ui::SessionConfig::default(),
            webhooks: engram_core::service::WebhookConfig::default(),
            deliver_webhooks: true,
        }
    }
}

/// Shared state of every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub memory: MemoryService,
    pub keys: KeyService,
    pub jobs: engram_core::service::JobQueue,
    /// Wakes idle workers when a job is queued.
    pub job_ready: Arc<tokio::sync::Notify>,
    pub config: ServerConfig,
    limits: Arc<RateLimits>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Cancelled when the server shuts down (ends MCP sessions).
    pub shutdown: CancellationToken,
    /// This process's re-embedding run (`/v1/admin/reembed`).
    pub reembed: Arc<reembed::Reembedder>,
    /// When `/metrics` last refreshed the store's gauges.
    gauges: Arc<crate::metrics::GaugeClock>,
    /// The last readiness probe of the store, reused for a moment.
    readiness: Arc<health::ProbeCache>,
    /// The store's compaction, one background job per node.
    pub compactor: Arc<compactor::Compactor>,
    /// The dashboard's signed-in sessions (this node's memory).
    pub sessions: Arc<ui::Sessions>,
    /// Webhook management and delivery.
    pub webhooks: engram_core::service::WebhookService,
    /// Whether this node saw enabled webhooks lately (writes then wake a worker).
    pub webhook_presence: webhooks::Presence,
}

impl AppState {
    /// Runs `infer` adds through the LLM pipeline (extraction, consolidation).
    pub fn with_pipeline(mut self, pipeline: engram_core::pipeline::Pipeline) -> AppState {
        self.jobs = self.jobs.with_pipeline(Some(pipeline));
        self
    }

    pub fn new(memory: MemoryService, keys: KeyService, config: ServerConfig) -> AppState {
        let job_ready = Arc::new(tokio::sync::Notify::new());
        let wake = job_ready.clone();
        let compactor = Arc::new(compactor::Compactor::new(memory.clone()));
        let sender: Arc<dyn engram_core::ports::WebhookSender> = match webhook_send::HttpSender::new(
            config.webhooks.allow_private,
        ) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(error = %e.message, "no HTTP client for webhooks: deliveries will fail");
                Arc::new(webhook_send::NoSender(e.message))
            }
        };
        AppState {
            webhooks: engram_core::service::WebhookService::new(
                memory.clone(),
                sender,
                config.webhooks.clone(),
            ),
            webhook_presence: Arc::default(),
            jobs: engram_core::service::JobQueue::new(memory.clone(), config.jobs.clone(), None)
                .with_waker(Arc::new(move || wake.notify_one())),
            job_ready,
            memory,
            keys,
            limits: Arc::new(RateLimits::new(config.rate_limit)),
            sessions: Arc::new(ui::Sessions::new(config.ui_sessions)),
            config,
            metrics: crate::metrics::install(),
            shutdown: CancellationToken::new(),
            reembed: Arc::new(reembed::Reembedder::default()),
            gauges: Arc::default(),
            readiness: Arc::default(),
            compactor,
        }
    }

    /// Sends webhook deliveries with `sender` (tests: fixed DNS answers).
    pub fn with_webhook_sender(
        mut self,
        sender: Arc<dyn engram_core::ports::WebhookSender>,
    ) -> AppState {
        self.webhooks = engram_core::service::WebhookService::new(
            self.memory.clone(),
            sender,
            self.config.webhooks.clone(),
        );
        self
    }

    /// Lets `/v1/admin/reembed` load the models it is asked for.
    pub fn with_model_loader(mut self, loader: reembed::ModelLoader) -> AppState {
        self.reembed = Arc::new(reembed::Reembedder::new(Some(loader)));
        self
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Engram", description = "Long-term memory server for AI agents: native REST API. \
Every route needs an API key (`Authorization: Bearer <key>`) bound to an org and optionally an app, user or agent; \
a key never reads or writes outside its binding."),
    tags(
        (name = "memories", description = "Add, search, list, update and delete memories"),
        (name = "jobs", description = "Background jobs: asynchronous adds, the dead-letter queue"),
        (name = "keys", description = "API keys (admin)"),
        (name = "governance", description = "Erasure with receipts, and the audit trail"),
        (name = "webhooks", description = "Signed deliveries of memory changes to your URLs (admin)"),
        (name = "portability", description = "Export and import as versioned JSON Lines"),
        (name = "admin", description = "Operations on the whole store: re-embedding")
    ),
    components(schemas(error::Problem)),
    modifiers(&BearerAuth),
    security(("api_key" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An Engram API key (`engram keys create`)"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the native API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = api_router().split_for_parts();
    api
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(memories::router())
        .merge(jobs::router())
        .merge(api_keys::router())
        .merge(governance::router())
        .merge(portable::router())
        .merge(reembed::router())
        .merge(webhooks::router())
}

/// The whole application, ready to serve (tests call it with `oneshot`).
pub fn app(state: AppState) -> Router {
    let (api, doc) = api_router().split_for_parts();
    let doc = std::sync::Arc::new(doc);
    let timeout = state.config.request_timeout;
    let mcp = mcp_http::http_service(state.jobs.clone(), state.shutdown.clone());
    let guard = std::sync::Arc::new(state.config.guard.clone());
    let router = api
        .merge(mem0::router())
        .merge(ui::router(state.clone()))
        .route(
            "/openapi.json",
            get(move || async move { axum::Json(doc.as_ref().clone()) }),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(crate::metrics::metrics_get))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn(move |req, next| {
            with_timeout(timeout, req, next)
        }));
    // MCP sessions stream (SSE), so they sit outside the per-request timeout;
    // their bodies get the same size limit as every other route.
    let limit = state.config.max_body_bytes;
    let mcp = mcp
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            body_limit(limit, req, next)
        }));
    let router = router.nest_service("/mcp", mcp);
    // Layers run outside in: request id → guard (Host, Origin, body type) →
    // metrics → auth and rate limit (the dashboard: by session, in `ui`) →
    // idempotency → timeout → route.
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            webhooks::wake_for_deliveries,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::layer,
        ))
        .layer(axum::middleware::from_fn(crate::metrics::layer))
        .layer(axum::middleware::from_fn(move |req, next| {
            guard::layer(guard.clone(), req, next)
        }))
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(state)
}

/// A body announced larger than `limit` is refused before it is read (a
/// streamed one is cut at `limit` by `RequestBodyLimitLayer`).
async fn body_limit(
    limit: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return ApiError::new(
            HttpCode::PayloadTooLarge,
            format!("request body is larger than the server's limit ({limit} bytes)"),
        )
        .into_response();
    }
    next.run(req).await
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

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    // Mem0's clients end their paths with `/` (or call `/api/…`): they get
    // Mem0's error shape, saying the method is one Engram does not serve.
    if mem0::is_mem0_path(path) {
        return mem0::Mem0Error(ApiError::new(
            HttpCode::RouteNotFound,
            format!(
                "Engram does not serve `{method} {path}`: this Mem0 client method is not \
                 supported (docs/mem0.md lists what is)"
            ),
        ))
        .into_response();
    }
    ApiError::new(
        HttpCode::RouteNotFound,
        format!("no route for `{path}`; see /openapi.json"),
    )
    .into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        HttpCode::MethodNotAllowed,
        format!("`{method}` is not allowed on `{}`", uri.path()),
    )
}

/// Serves `app` on `listener` until `shutdown` resolves: then stops accepting,
/// ends MCP sessions, and waits for in-flight requests — at most
/// `shutdown_timeout`. Returns whether every request finished in time.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<bool> {
    let token = state.shutdown.clone();
    let limit = state.config.shutdown_timeout;
    let signalled = token.clone();
    let mut workers = jobs::spawn_workers(&state);
    workers.push(jobs::spawn_sweeper(&state));
    workers.push(state.compactor.spawn(token.clone()));
    let compactor = state.compactor.clone();
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutdown: no new connections; draining in-flight requests");
        signalled.cancel();
    });
    let deadline = async {
        token.cancelled().await;
        tokio::time::sleep(limit).await;
    };
    // Requests and running jobs drain together, within the same bound.
    let drain = async {
        let served = server.await;
        token.cancel();
        for w in workers {
            let _ = w.await;
        }
        // Erasures answered before the stop get their bytes out of the files.
        compactor.finish().await;
        served
    };
    tokio::select! {
        r = drain => r.map(|()| true),
        () = deadline => {
            tracing::warn!(timeout_secs = limit.as_secs(), "shutdown: in-flight requests or jobs did not finish in time; abandoning them (queued jobs resume at the next start)");
            Ok(false)
        }
    }
}
