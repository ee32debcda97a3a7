//! `/v1/memories`: add, search, list, get, update, delete, history.
//! Handlers parse, call the service, map the result; nothing else.

use axum::extract::State;
use engram_core::filter::Filter;
use engram_core::memory::Scope;
use engram_core::ports::Cursor;
use engram_core::service::Added;
use engram_core::service::{DEFAULT_PAGE, SearchInput, UpdateInput};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery, MemoryIdPath};
use crate::wire::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(memories_add, memories_list, memories_delete_all))
        .routes(routes!(memories_search))
        .routes(routes!(memories_get, memories_update, memories_delete))
        .routes(routes!(memories_history))
        .routes(routes!(memories_revert))
        .routes(routes!(memories_feedback))
}

/// Add memories.
///
/// Stores `messages` (one memory per turn, long turns split by sentence) or `text`, with the
/// scope ids given. Exact and near-duplicates of memories in the same scope come back as `NOOP`.
/// With `"async": true` the add is validated, queued durably and answered with `202` and a job id.
#[utoipa::path(post, path = "/v1/memories", tag = "memories", request_body = AddRequest,
    responses((status = 200, body = AddResponse), (status = 202, body = JobAccepted),
        (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn memories_add(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(req): ApiJson<AddRequest>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let (infer, run_async) = (req.infer, req.run_async);
    let results = match app
        .jobs
        .add(&ctx, req.into_input()?, infer, run_async)
        .await?
    {
        Added::Done(results) => results,
        Added::Queued(job) => {
            let body = JobAccepted {
                job_id: job.id,
                status: job.state.as_str().to_owned(),
            };
            return Ok((axum::http::StatusCode::ACCEPTED, ApiJson(body)).into_response());
        }
    };
    Ok(ApiJson(AddResponse {
        results: results
            .into_iter()
            .map(|r| AddResultOut {
                id: r.id,
                memory: r.memory,
                event: r.event.as_str().to_owned(),
            })
            .collect(),
    })
    .into_response())
}

/// Search memories.
///
/// Hybrid retrieval (semantic + keyword + entity) over the memories matching `filters`,
/// with recency decay, a threshold and a token budget.
#[utoipa::path(post, path = "/v1/memories/search", tag = "memories", request_body = SearchRequest,
    responses((status = 200, body = SearchResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn memories_search(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(req): ApiJson<SearchRequest>,
) -> Result<ApiJson<SearchResponse>, ApiError> {
    let ids = Scope {
        org_id: req.org_id,
        app_id: req.app_id,
        user_id: req.user_id,
        agent_id: req.agent_id,
        run_id: req.run_id,
    };
    let filter = search_filter(req.filters.as_ref(), ids)?;
    let as_of = match &req.as_of {
        None | Some(Value::Null) | Some(Value::String(_)) => {
            time_field(req.as_of.as_ref(), "as_of")?
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "`as_of` must be an RFC 3339 time string, e.g. 2026-01-31T12:00:00Z",
            ));
        }
    };
    let input = SearchInput {
        query: req.query,
        filter,
        top_k: req.top_k,
        threshold: req.threshold,
        token_budget: req.token_budget,
        explain: req.explain,
    };
    let out = match as_of {
        Some(at) => app.memory.search_as_of(&ctx, input, at).await?,
        None => app.memory.search(&ctx, input).await?,
    };
    Ok(ApiJson(SearchResponse {
        results: out
            .hits
            .into_iter()
            .map(|h| SearchHitOut {
                memory: h.memory.into(),
                score: h.score,
                explanation: h.explanation,
            })
            .collect(),
        tokens: out.tokens,
    }))
}

fn list_filter(q: &ListQuery) -> Result<Filter, ApiError> {
    search_filter(None, q.scope())
}

/// List memories of a scope, newest first, with cursor pagination.
#[utoipa::path(get, path = "/v1/memories", tag = "memories", params(ListQuery),
    responses((status = 200, body = ListResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn memories_list(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<ApiJson<ListResponse>, ApiError> {
    let filter = list_filter(&q)?;
    let after = q.cursor.as_deref().map(Cursor::decode).transpose()?;
    let page = app
        .memory
        .list(&ctx, &filter, after, q.limit.unwrap_or(DEFAULT_PAGE))
        .await?;
    Ok(ApiJson(ListResponse {
        results: page.memories.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

/// Delete every memory of a scope.
#[utoipa::path(delete, path = "/v1/memories", tag = "memories", params(ListQuery),
    responses((status = 200, body = DeleteAllResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn memories_delete_all(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<ApiJson<DeleteAllResponse>, ApiError> {
    if q.cursor.is_some() || q.limit.is_some() {
        return Err(ApiError::invalid(
            "`cursor` and `limit` do not apply to a delete",
        ));
    }
    let filter = list_filter(&q)?;
    let deleted = app.memory.delete_all(&ctx, &filter).await?;
    Ok(ApiJson(DeleteAllResponse { deleted }))
}

/// Get one memory.
#[utoipa::path(get, path = "/v1/memories/{id}", tag = "memories", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = MemoryOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn memories_get(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    MemoryIdPath(id): MemoryIdPath,
) -> Result<ApiJson<MemoryOut>, ApiError> {
    Ok(ApiJson(app.memory.get(&ctx, id).await?.into()))
}

/// Update a memory's text, metadata, categories or expiry (writes a new version).
#[utoipa::path(patch, path = "/v1/memories/{id}", tag = "memories", params(("id" = uuid::Uuid, Path)), request_body = UpdateRequest,
    responses((status = 200, body = MemoryOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn memories_update(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    MemoryIdPath(id): MemoryIdPath,
    ApiJson(req): ApiJson<UpdateRequest>,
) -> Result<ApiJson<MemoryOut>, ApiError> {
    let expires_at = match req.expires_at {
        None => None,
        Some(v) => Some(time_field(v.as_ref(), "expires_at")?),
    };
    let input = UpdateInput {
        text: req.text,
        metadata: req.metadata,
        categories: req.categories,
        expires_at,
    };
    Ok(ApiJson(app.memory.update(&ctx, id, input).await?.into()))
}

/// Delete a memory (its history is kept).
#[utoipa::path(delete, path = "/v1/memories/{id}", tag = "memories", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = DeleteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn memories_delete(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    MemoryIdPath(id): MemoryIdPath,
) -> Result<ApiJson<DeleteResponse>, ApiError> {
    app.memory.delete(&ctx, id).await?;
    Ok(ApiJson(DeleteResponse { id, deleted: true }))
}

/// Every change of a memory, oldest first.
#[utoipa::path(get, path = "/v1/memories/{id}/history", tag = "memories", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = HistoryResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn memories_history(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    MemoryIdPath(id): MemoryIdPath,
) -> Result<ApiJson<HistoryResponse>, ApiError> {
    let events = app.memory.history(&ctx, id).await?;
    Ok(ApiJson(HistoryResponse {
        results: events.into_iter().map(Into::into).collect(),
    }))
}

/// `POST /v1/memories/{id}/revert`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertRequest {
    /// The earlier version whose text becomes current again.
    #[schema(minimum = 1)]
    pub version: u32,
}

/// Restore an earlier version's text as a new version (a `REVERT` history event).
#[utoipa::path(post, path = "/v1/memories/{id}/revert", tag = "memories", params(("id" = uuid::Uuid, Path)), request_body = RevertRequest,
    responses((status = 200, body = MemoryOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn memories_revert(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    MemoryIdPath(id): MemoryIdPath,
    ApiJson(req): ApiJson<RevertRequest>,
) -> Result<ApiJson<MemoryOut>, ApiError> {
    Ok(ApiJson(
        app.memory.revert(&ctx, id, req.version).await?.into(),
    ))
}

/// `POST /v1/memories/{id}/feedback`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// `POSITIVE`, `NEGATIVE` or `VERY_NEGATIVE`; `null` clears the rating.
    #[schema(value_type = Option<String>, pattern = "^(POSITIVE|NEGATIVE|VERY_NEGATIVE)$")]
    pub feedback: Option<String>,
    /// Why (kept in the memory's history).
    #[schema(max_length = 1000)]
    pub reason: Option<String>,
}

/// Rate a memory: a negative rating lowers its rank, a very negative one
/// keeps it out of searches (by default). Kept in place (no new version)
/// with a `FEEDBACK` history event.
#[utoipa::path(post, path = "/v1/memories/{id}/feedback", tag = "memories", params(("id" = uuid::Uuid, Path)), request_body = FeedbackRequest,
    responses((status = 200, body = MemoryOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn memories_feedback(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    MemoryIdPath(id): MemoryIdPath,
    ApiJson(req): ApiJson<FeedbackRequest>,
) -> Result<ApiJson<MemoryOut>, ApiError> {
    let rating = req
        .feedback
        .as_deref()
        .map(engram_core::memory::Feedback::parse)
        .transpose()?;
    Ok(ApiJson(
        app.memory
            .feedback(&ctx, id, rating, req.reason)
            .await?
            .into(),
    ))
}
