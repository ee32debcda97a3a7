//! `/v1/admin/reembed`: moves every vector to another embedding model in the
//! background, while this server keeps answering from the old vectors until
//! the switch (`MemoryService::reembed`).
//!
//! One run at a time per process. Its progress lives in memory; the store
//! remembers the migration itself, so a run stopped by a restart or a crash
//! is `paused` and resumes, where it stopped, when started again with the
//! same model.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use engram_core::ctx::RequestCtx;
use engram_core::ports::Embedder;
use engram_core::ports::ModelInfo;
use engram_core::ports::ReembedState;
use engram_core::service::{DEFAULT_BATCH, ReembedReport, check_batch};
use engram_core::{Error, ErrorCode};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;

/// Which model to move to, as the caller names it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReembedRequest {
    /// One of the models the operator allowed this server to load
    /// (`--reembed-model`): a model directory, its name, or a remote model's
    /// name. Endpoints and directories come from the operator, never from a
    /// request.
    pub model: String,
    /// Texts embedded per batch (default 256, at most 4096).
    #[schema(minimum = 1, maximum = 4096)]
    pub batch: Option<usize>,
}

/// Loads the model a request names (the binary knows how; the server does not).
pub type ModelLoader = Arc<
    dyn Fn(ReembedRequest) -> BoxFuture<'static, Result<Arc<dyn Embedder>, String>> + Send + Sync,
>;

/// This process's re-embedding run, if any.
#[derive(Default)]
pub struct Reembedder {
    loader: Option<ModelLoader>,
    run: Mutex<Option<Run>>,
    /// Held through a start (which awaits): two starts cannot both begin a run.
    starting: tokio::sync::Mutex<()>,
}

struct Run {
    status: Arc<Mutex<ReembedOut>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reembedder {
    pub fn new(loader: Option<ModelLoader>) -> Reembedder {
        Reembedder {
            loader,
            run: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
        }
    }

    fn run(&self) -> std::sync::MutexGuard<'_, Option<Run>> {
        // Poisoning: a panic while replacing the Option; the value is whole.
        self.run.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(reembed_start, reembed_get, reembed_cancel))
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelOut {
    pub id: String,
    pub dim: usize,
}

impl From<ModelInfo> for ModelOut {
    fn from(m: ModelInfo) -> Self {
        ModelOut {
            id: m.id,
            dim: m.dim,
        }
    }
}

/// The phase of a re-embedding, as this server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// None recorded.
    Idle,
    /// In this process.
    Running,
    /// Recorded in the store, no run here: start it again with the same
    /// model to resume.
    Paused,
    /// Done; the store now uses `to`.
    Switched,
    Cancelled,
    Failed,
}

/// Where a re-embedding stands.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReembedOut {
    pub state: RunState,
    /// The model searches use now.
    pub from: ModelOut,
    pub to: Option<ModelOut>,
    /// Versions (current and superseded) that have their new vector.
    pub done: u64,
    /// Every version in the store.
    pub total: u64,
    /// Versions embedded by this run.
    pub embedded: u64,
    pub error: Option<String>,
}

impl ReembedOut {
    fn of(state: RunState, s: &ReembedState) -> ReembedOut {
        ReembedOut {
            state,
            from: s.from.clone().into(),
            to: Some(s.to.clone().into()),
            done: s.done,
            total: s.total,
            embedded: 0,
            error: None,
        }
    }

    fn switched(r: &ReembedReport) -> ReembedOut {
        ReembedOut {
            state: RunState::Switched,
            from: r.from.clone().into(),
            to: Some(r.to.clone().into()),
            done: r.versions,
            total: r.versions,
            embedded: r.embedded,
            error: None,
        }
    }
}

fn lock(s: &Mutex<ReembedOut>) -> std::sync::MutexGuard<'_, ReembedOut> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Start (or resume) moving every vector to another embedding model. The
/// local operator or an `operator` key (the model is store-wide). Answers at once; follow it with
/// `GET /v1/admin/reembed`.
#[utoipa::path(post, path = "/v1/admin/reembed", tag = "admin", request_body = ReembedRequest,
    responses((status = 202, body = ReembedOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn reembed_start(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(req): ApiJson<ReembedRequest>,
) -> Result<Response, ApiError> {
    // Permission first: nothing is loaded for a caller who may not do this.
    app.memory.reembed_state(&ctx).await?;
    let batch = req.batch.unwrap_or(DEFAULT_BATCH);
    check_batch(batch)?;
    if req.model.trim().is_empty() {
        return Err(Error::invalid("`model` is empty").into());
    }
    let reembedder = app.reembed.clone();
    let _starting = reembedder.starting.lock().await;
    if reembedder
        .run()
        .as_ref()
        .is_some_and(|r| !r.task.is_finished())
    {
        return Err(Error::new(
            ErrorCode::Conflict,
            "a re-embedding is already running on this server",
        )
        .into());
    }
    let loader = reembedder.loader.clone().ok_or_else(|| {
        Error::invalid("this server cannot load embedding models (started without a model loader)")
    })?;
    let embedder = loader(req)
        .await
        .map_err(|e| Error::invalid(format!("cannot load the model: {e}")))?;
    // Refusals (same model, another migration in progress) answer now.
    let started = app.memory.reembed_start(&ctx, embedder.model()).await?;
    let status = Arc::new(Mutex::new(ReembedOut::of(RunState::Running, &started)));
    let task = tokio::spawn(run(app.clone(), ctx, embedder, batch, status.clone()));
    *reembedder.run() = Some(Run {
        status: status.clone(),
        task,
    });
    let body = lock(&status).clone();
    Ok((StatusCode::ACCEPTED, ApiJson(body)).into_response())
}

async fn run(
    app: AppState,
    ctx: RequestCtx,
    embedder: Arc<dyn Embedder>,
    batch: usize,
    status: Arc<Mutex<ReembedOut>>,
) {
    let progress = {
        let status = status.clone();
        move |s: &ReembedState| {
            let mut out = lock(&status);
            out.done = s.done;
            out.total = s.total;
        }
    };
    let outcome = tokio::select! {
        r = app.memory.reembed(&ctx, embedder, batch, &progress) => r,
        () = app.shutdown.cancelled() => return,
    };
    let mut out = lock(&status);
    match outcome {
        Ok(report) => *out = ReembedOut::switched(&report),
        Err(_) if out.state == RunState::Cancelled => {}
        Err(e) => {
            tracing::error!(error = %e, "re-embedding failed");
            out.state = RunState::Failed;
            out.error = Some(e.message);
        }
    }
}

/// Where the re-embedding stands: this server's run, or the one recorded in the store.
#[utoipa::path(get, path = "/v1/admin/reembed", tag = "admin",
    responses((status = 200, body = ReembedOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn reembed_get(
    State(app): State<AppState>,
    Caller(ctx): Caller,
) -> Result<ApiJson<ReembedOut>, ApiError> {
    let recorded = app.memory.reembed_state(&ctx).await?;
    let local = app.reembed.run().as_ref().map(|r| lock(&r.status).clone());
    let out = match (local, recorded) {
        (Some(out), _) if out.state != RunState::Running => out,
        (Some(mut out), Some(s)) => {
            (out.done, out.total) = (s.done, s.total);
            out
        }
        // The run is past its last batch and switching.
        (Some(out), None) => out,
        (None, Some(s)) => ReembedOut::of(RunState::Paused, &s),
        (None, None) => ReembedOut {
            state: RunState::Idle,
            from: app.memory.embedder().model().clone().into(),
            to: None,
            done: 0,
            total: 0,
            embedded: 0,
            error: None,
        },
    };
    Ok(ApiJson(out))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CancelOut {
    /// Whether a re-embedding was recorded (its new vectors are dropped).
    pub cancelled: bool,
}

/// Abandon the re-embedding: drop the new vectors; this server's run stops.
#[utoipa::path(delete, path = "/v1/admin/reembed", tag = "admin",
    responses((status = 200, body = CancelOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn reembed_cancel(
    State(app): State<AppState>,
    Caller(ctx): Caller,
) -> Result<ApiJson<CancelOut>, ApiError> {
    // The store's record goes first; a run of this process then fails its
    // next batch or switch with a conflict and stops. (Aborting it could
    // stop it between a committed switch and the embedder swap.)
    let cancelled = app.memory.reembed_cancel(&ctx).await?;
    if let Some(run) = app.reembed.run().as_ref() {
        let mut out = lock(&run.status);
        if out.state == RunState::Running {
            out.state = RunState::Cancelled;
        }
    }
    Ok(ApiJson(CancelOut { cancelled }))
}
