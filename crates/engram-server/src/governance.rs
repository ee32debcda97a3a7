//! Erasure (`DELETE /v1/users/{id}` and per agent / run / org) and the audit
//! trail (`GET /v1/audit`, `GET /v1/audit/export`).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use engram_core::memory::ScopeField;
use engram_core::ports::{AuditEvent, AuditQuery, ErasureCounts};
use engram_core::service::ErasureReceipt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(erase_user))
        .routes(routes!(erase_agent))
        .routes(routes!(erase_run))
        .routes(routes!(erase_org))
        .routes(routes!(audit_list))
        .routes(routes!(audit_export))
        .routes(routes!(compact))
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EraseQuery {
    /// Rewrite the store's files afterwards so the erased bytes are gone from
    /// disk too: `true` (default) schedules it on the node's background
    /// compactor (coalesced with other erasures; a graceful shutdown finishes
    /// it); `wait` waits for it and reports `compacted`; `false` skips it.
    pub compact: Option<String>,
}

/// What an erasure does about the store's files.
enum Compaction {
    Background,
    Wait,
    Skip,
}

impl Compaction {
    fn parse(v: Option<&str>) -> Result<Compaction, ApiError> {
        match v {
            None | Some("true") | Some("background") => Ok(Compaction::Background),
            Some("wait") => Ok(Compaction::Wait),
            Some("false") | Some("none") => Ok(Compaction::Skip),
            Some(other) => Err(ApiError::invalid(format!(
                "`compact` is `{other}`; use true (in the background), wait, or false"
            ))),
        }
    }
}

/// Records removed, per kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasedOut {
    pub memories: u64,
    pub versions: u64,
    pub history_events: u64,
    pub entity_index_entries: u64,
    pub keyword_index_entries: u64,
    pub vector_index_entries: u64,
    pub jobs: u64,
    pub idempotency_records: u64,
    pub llm_usage_rows: u64,
    pub api_keys: u64,
}

impl From<ErasureCounts> for ErasedOut {
    fn from(c: ErasureCounts) -> Self {
        ErasedOut {
            memories: c.memories,
            versions: c.versions,
            history_events: c.history_events,
            entity_index_entries: c.entity_index_entries,
            keyword_index_entries: c.keyword_index_entries,
            vector_index_entries: c.vector_index_entries,
            jobs: c.jobs,
            idempotency_records: c.idempotency_records,
            llm_usage_rows: c.llm_usage_rows,
            api_keys: c.api_keys,
        }
    }
}

/// The receipt of an erasure. The audit log keeps its id and counts, not the erased id.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptOut {
    pub receipt_id: uuid::Uuid,
    /// `user_id`, `agent_id`, `run_id` or `org_id`.
    pub field: String,
    pub id: String,
    pub org_id: Option<String>,
    /// Exactly what was erased: the target id within the caller's binding
    /// (an app-bound admin erasing a user erases that user in its app only).
    pub scope: ErasedScope,
    pub erased: ErasedOut,
    /// Whether the store's files were rewritten so the bytes are gone from disk
    /// (SQLite: yes; Postgres: no — its WAL, replicas and backups keep old pages).
    pub compacted: bool,
    /// `scheduled` (the node's background compactor runs it soon; a graceful
    /// shutdown finishes it), `done`, `unavailable` (the backend cannot
    /// promise it) or `none` (not asked for).
    pub compaction: String,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub finished_at: jiff::Timestamp,
}

/// The scope ids an erasure matched (unset: any).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasedScope {
    pub org_id: Option<String>,
    pub app_id: Option<String>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub run_id: Option<String>,
}

impl From<ErasureReceipt> for ReceiptOut {
    fn from(r: ErasureReceipt) -> Self {
        ReceiptOut {
            receipt_id: r.receipt_id,
            field: r.field,
            id: r.id,
            org_id: r.org_id,
            scope: ErasedScope {
                org_id: r.scope.org_id,
                app_id: r.scope.app_id,
                user_id: r.scope.user_id,
                agent_id: r.scope.agent_id,
                run_id: r.scope.run_id,
            },
            erased: r.erased.into(),
            compacted: r.compacted,
            compaction: String::new(),
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

async fn erase(
    app: &AppState,
    ctx: &engram_core::ctx::RequestCtx,
    field: ScopeField,
    id: String,
    q: EraseQuery,
) -> Result<ApiJson<ReceiptOut>, ApiError> {
    let compaction = Compaction::parse(q.compact.as_deref())?;
    let mut receipt = app.memory.erase(ctx, field, &id, false).await?;
    // Keys bound to the erased id are gone from the store: this node stops
    // trusting them now, not when its key cache expires (other nodes: within
    // that cache period, `service::CACHE_TTL`).
    if receipt.erased.api_keys > 0 {
        app.keys.forget_verified();
    }
    // Never inline for everyone: the compaction is the node's background job.
    let state = match compaction {
        Compaction::Skip => "none",
        Compaction::Background => {
            app.compactor.request();
            "scheduled"
        }
        Compaction::Wait => {
            receipt.compacted = app.compactor.run_now().await?;
            if receipt.compacted {
                "done"
            } else {
                "unavailable"
            }
        }
    };
    let mut out = ReceiptOut::from(receipt);
    out.compaction = state.to_owned();
    Ok(ApiJson(out))
}

/// Compact the store now (operator only): checkpoint, index merge, VACUUM
/// and graph rebuild, so erased records' bytes leave the files. Waits for it.
#[utoipa::path(post, path = "/v1/admin/compact", tag = "admin",
    responses((status = 200, body = CompactOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn compact(
    State(app): State<AppState>,
    Caller(ctx): Caller,
) -> Result<ApiJson<CompactOut>, ApiError> {
    ctx.principal
        .require(engram_core::access::Role::Operator, "compacting the store")?;
    let compacted = app.compactor.run_now().await?;
    Ok(ApiJson(CompactOut { compacted }))
}

/// The answer of `POST /v1/admin/compact`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompactOut {
    /// Whether the store's files were rewritten (Postgres: no — its WAL,
    /// replicas and backups keep old pages; the tables were vacuumed).
    pub compacted: bool,
}

/// Erase every trace of a user (in the caller's org): every version of every
/// memory, index entries, history, jobs, usage, keys bound to them. Admins, or
/// a read-write key bound to that user.
#[utoipa::path(delete, path = "/v1/users/{user_id}", tag = "governance", params(("user_id" = String, Path), EraseQuery),
    responses((status = 200, body = ReceiptOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn erase_user(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
    ApiQuery(q): ApiQuery<EraseQuery>,
) -> Result<ApiJson<ReceiptOut>, ApiError> {
    erase(&app, &ctx, ScopeField::User, id, q).await
}

/// Erase every trace of an agent (in the caller's org).
#[utoipa::path(delete, path = "/v1/agents/{agent_id}", tag = "governance", params(("agent_id" = String, Path), EraseQuery),
    responses((status = 200, body = ReceiptOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn erase_agent(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
    ApiQuery(q): ApiQuery<EraseQuery>,
) -> Result<ApiJson<ReceiptOut>, ApiError> {
    erase(&app, &ctx, ScopeField::Agent, id, q).await
}

/// Erase every trace of a session (run) (in the caller's org). Admins only.
#[utoipa::path(delete, path = "/v1/runs/{run_id}", tag = "governance", params(("run_id" = String, Path), EraseQuery),
    responses((status = 200, body = ReceiptOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn erase_run(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
    ApiQuery(q): ApiQuery<EraseQuery>,
) -> Result<ApiJson<ReceiptOut>, ApiError> {
    erase(&app, &ctx, ScopeField::Run, id, q).await
}

/// Erase a whole org: every memory, job, usage row and key of it. An admin of that org only.
#[utoipa::path(delete, path = "/v1/orgs/{org_id}", tag = "governance", params(("org_id" = String, Path), EraseQuery),
    responses((status = 200, body = ReceiptOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn erase_org(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
    ApiQuery(q): ApiQuery<EraseQuery>,
) -> Result<ApiJson<ReceiptOut>, ApiError> {
    erase(&app, &ctx, ScopeField::Org, id, q).await
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// e.g. `memory.add`, `memory.update`, `memory.delete`, `memory.feedback`, `key.create`, `key.revoke`, `webhook.create`, `erasure`, `job.retry`.
    pub action: Option<String>,
    /// `key:<id>`, or `cli` / `mcp:stdio` for the local operator.
    pub actor: Option<String>,
    /// A memory id, key id, job id or erasure receipt id.
    pub target: Option<String>,
    /// Events at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Events before this time (RFC 3339).
    pub until: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// At most this many, oldest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// One audited action: who, what, which record, when. Never text or secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditOut {
    pub id: uuid::Uuid,
    #[schema(value_type = String, format = DateTime)]
    pub at: jiff::Timestamp,
    pub actor: String,
    pub action: String,
    pub org_id: Option<String>,
    pub target: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Object)]
    pub detail: Value,
}

impl From<AuditEvent> for AuditOut {
    fn from(e: AuditEvent) -> Self {
        AuditOut {
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            org_id: e.org_id,
            target: e.target,
            request_id: e.request_id,
            detail: e.detail,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub results: Vec<AuditOut>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

fn time(raw: &Option<String>, name: &str) -> Result<Option<jiff::Timestamp>, ApiError> {
    raw.as_ref()
        .map(|s| engram_core::filter::parse_timestamp(&Value::String(s.clone()), name))
        .transpose()
        .map_err(ApiError::from)
}

fn query(p: &AuditParams, limit: usize) -> Result<AuditQuery, ApiError> {
    let after = match &p.cursor {
        Some(c) => Some(c.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::invalid(format!(
                "`cursor` is not a cursor returned by this server: `{c}`"
            ))
        })?),
        None => None,
    };
    Ok(AuditQuery {
        org_id: None,
        action: p.action.clone(),
        actor: p.actor.clone(),
        target: p.target.clone(),
        since: time(&p.since, "since")?,
        until: time(&p.until, "until")?,
        after,
        limit,
    })
}

/// The audit log (admins: their org's), oldest first, with cursor pagination.
#[utoipa::path(get, path = "/v1/audit", tag = "governance", params(AuditParams),
    responses((status = 200, body = AuditPage), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn audit_list(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<ApiJson<AuditPage>, ApiError> {
    let limit = p.limit.unwrap_or(100);
    let rows = app.memory.audit(&ctx, query(&p, limit)?).await?;
    let next_cursor = (rows.len() == limit)
        .then(|| rows.last().map(|(seq, _)| seq.to_string()))
        .flatten();
    Ok(ApiJson(AuditPage {
        results: rows.into_iter().map(|(_, e)| e.into()).collect(),
        next_cursor,
    }))
}

/// The audit log as JSON lines (`application/x-ndjson`), every matching event.
#[utoipa::path(get, path = "/v1/audit/export", tag = "governance", params(AuditParams),
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn audit_export(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Response, ApiError> {
    // Every matching event, read in pages of `limit` (checked by the service
    // like the listing's).
    let mut q = query(&p, p.limit.unwrap_or(engram_core::service::MAX_PAGE))?;
    let mut out = Vec::new();
    loop {
        let rows = app.memory.audit(&ctx, q.clone()).await?;
        let Some((last, _)) = rows.last() else { break };
        q.after = Some(*last);
        let full = rows.len() == q.limit;
        for (_, e) in rows {
            // AuditOut holds plain data; it always serialises.
            serde_json::to_writer(&mut out, &AuditOut::from(e)).map_err(|e| {
                ApiError::from(engram_core::Error::internal(format!("audit export: {e}")))
            })?;
            out.push(b'\n');
        }
        if !full {
            break;
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}
