//! `/v1/jobs`: job status, the dead-letter queue, retries; and the worker
//! pool that processes queued jobs on this node.

use axum::extract::State;
use engram_core::ports::{Job, JobState};
use engram_core::service::JobRunner;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery, MemoryIdPath};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(jobs_list))
        .routes(routes!(jobs_get))
        .routes(routes!(jobs_retry))
        .routes(routes!(usage_list))
}

/// LLM usage of one scope, one day, one model.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageOut {
    pub org_id: Option<String>,
    pub app_id: Option<String>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub run_id: Option<String>,
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub model: String,
    /// Adds that called the LLM.
    pub runs: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Estimated from the configured prices (0 when none are set).
    pub cost_usd: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageResponse {
    pub results: Vec<UsageOut>,
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// At most this many rows, newest day first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// LLM token usage and estimated cost per scope and day, inside the caller's binding.
#[utoipa::path(get, path = "/v1/usage", tag = "jobs", params(UsageQuery),
    responses((status = 200, body = UsageResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn usage_list(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<ApiJson<UsageResponse>, ApiError> {
    let rows = app.memory.llm_usage(&ctx, q.limit.unwrap_or(100)).await?;
    Ok(ApiJson(UsageResponse {
        results: rows
            .into_iter()
            .map(|r| UsageOut {
                org_id: r.scope.org_id,
                app_id: r.scope.app_id,
                user_id: r.scope.user_id,
                agent_id: r.scope.agent_id,
                run_id: r.scope.run_id,
                day: r.day,
                model: r.model,
                runs: r.runs,
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                cost_usd: r.cost_microdollars as f64 / 1e6,
            })
            .collect(),
    }))
}

/// A job as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobOut {
    pub id: uuid::Uuid,
    pub kind: String,
    /// `queued`, `running`, `done` or `dead`.
    pub status: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub last_error: Option<String>,
    /// When done: `{"results": [{"id", "memory", "event"}]}` (ADD / NOOP…).
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub request_id: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: jiff::Timestamp,
    /// When a queued job runs next.
    #[schema(value_type = String, format = DateTime)]
    pub run_after: jiff::Timestamp,
}

impl From<Job> for JobOut {
    fn from(j: Job) -> Self {
        JobOut {
            id: j.id,
            kind: j.kind,
            status: j.state.as_str().to_owned(),
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            last_error: j.last_error,
            result: j.result,
            request_id: j.request_id,
            created_at: j.created_at,
            updated_at: j.updated_at,
            run_after: j.run_after,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// `queued`, `running`, `done` or `dead` (the dead-letter queue).
    #[param(pattern = "^(queued|running|done|dead)$")]
    pub state: Option<String>,
    /// At most this many, newest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobListResponse {
    pub results: Vec<JobOut>,
}

/// List jobs inside the caller's binding, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobsQuery),
    responses((status = 200, body = JobListResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn jobs_list(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(q): ApiQuery<JobsQuery>,
) -> Result<ApiJson<JobListResponse>, ApiError> {
    let state = q.state.as_deref().map(JobState::parse).transpose()?;
    let jobs = app.jobs.list(&ctx, state, q.limit.unwrap_or(100)).await?;
    Ok(ApiJson(JobListResponse {
        results: jobs.into_iter().map(Into::into).collect(),
    }))
}

/// A job's status and, when done, its result.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = JobOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn jobs_get(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    MemoryIdPath(id): MemoryIdPath,
) -> Result<ApiJson<JobOut>, ApiError> {
    Ok(ApiJson(app.jobs.get(&ctx, id).await?.into()))
}

/// Re-queue a dead job.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = JobOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn jobs_retry(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    MemoryIdPath(id): MemoryIdPath,
) -> Result<ApiJson<JobOut>, ApiError> {
    let job = app.jobs.retry(&ctx, id).await?;
    Ok(ApiJson(job.into()))
}

/// Starts `config.workers` workers. Each claims due jobs until the shutdown
/// token is cancelled; a job it has started is finished first (leases cover
/// a worker that dies instead).
pub fn spawn_workers(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let node = uuid::Uuid::now_v7().simple().to_string();
    (0..state.config.workers)
        .map(|i| {
            let runner = JobRunner::new(
                state.memory.clone(),
                state.config.jobs.clone(),
                format!("{}-{i}", &node[node.len() - 8..]),
            )
            .with_pipeline(state.jobs.pipeline().cloned())
            .with_webhooks(
                state
                    .config
                    .deliver_webhooks
                    .then(|| state.webhooks.clone()),
            );
            // Queue gauges are refreshed when /metrics is scraped, not per job.
            let (stop, ready) = (state.shutdown.clone(), state.job_ready.clone());
            tokio::spawn(async move {
                loop {
                    if stop.is_cancelled() {
                        return;
                    }
                    match runner.run_once().await {
                        Ok(true) => {}
                        Ok(false) => {
                            // Idle: wait for a new job, or poll (retries come due, other nodes).
                            tokio::select! {
                                () = ready.notified() => {}
                                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                                () = stop.cancelled() => return,
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "job worker: store error; backing off");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

/// The expiry sweep: every `sweep_interval` (the first after one interval),
/// removes expired memories (`MemoryService::sweep`) until shutdown. Each
/// node runs one; on Postgres concurrent sweeps skip each other's rows.
pub fn spawn_sweeper(state: &AppState) -> tokio::task::JoinHandle<()> {
    let memory = state.memory.clone();
    let stop = state.shutdown.clone();
    let idempotency_ttl = state.config.idempotency_ttl;
    let every = memory
        .lifecycle_config()
        .sweep_interval
        .unsigned_abs()
        .max(std::time::Duration::from_secs(1));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => return,
            }
            match memory.sweep().await {
                Ok(r) if r.memories > 0 => tracing::info!(
                    memories = r.memories,
                    versions = r.versions,
                    history_events = r.history_events,
                    seconds = r.seconds,
                    "sweep: expired memories removed"
                ),
                Ok(_) => tracing::debug!("sweep: nothing expired"),
                Err(e) => tracing::error!(error = %e, "sweep failed; trying again next interval"),
            }
            match memory.purge_idempotency(idempotency_ttl).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(records = n, "sweep: expired idempotency records removed"),
                Err(e) => {
                    tracing::error!(error = %e, "idempotency purge failed; trying again next interval")
                }
            }
        }
    })
}
