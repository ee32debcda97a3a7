//! Export and import (`GET /v1/export`, `POST /v1/import`): the versioned
//! JSON Lines of `engram_core::portable`.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::memory::Scope;
use engram_core::portable::{ExportHeader, ExportedMemory, ImportReport};
use engram_core::ports::Cursor;
use engram_core::service::MemoryService;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(export))
        .routes(routes!(import))
}

/// `GET /v1/export` query: the scope to export (at least one id; a key's
/// binding applies on top).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub run_id: Option<String>,
    pub org_id: Option<String>,
    pub app_id: Option<String>,
}

/// Memories per page read from the store while streaming.
const EXPORT_PAGE: usize = 200;

/// Every live memory of a scope with all its versions, vectors and history,
/// as versioned JSON Lines (`application/x-ndjson`): a header line, then one
/// memory per line. Streamed page by page; read it back with `POST /v1/import`
/// or `engram import`.
#[utoipa::path(get, path = "/v1/export", tag = "portability", params(ExportQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn export(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let filter = Filter::from_scope(&Scope {
        org_id: q.org_id,
        app_id: q.app_id,
        user_id: q.user_id,
        agent_id: q.agent_id,
        run_id: q.run_id,
    });
    let memory = app.memory.clone();
    // The first page is read now, so a bad request is a problem, not a broken stream.
    let (first, next) = memory.export_page(&ctx, &filter, None, EXPORT_PAGE).await?;
    let header = ExportHeader::new(memory.now(), memory.embedder().model().clone());
    let mut head = json_line(&header)?;
    head.extend(lines(&first)?);
    let state = Some((memory, ctx, filter, next));
    let rest = futures::stream::unfold(state, |state| async move {
        let (memory, ctx, filter, Some(after)) = state? else {
            return None;
        };
        Some(match next_page(&memory, &ctx, &filter, after).await {
            Ok((bytes, next)) => (Ok(Bytes::from(bytes)), Some((memory, ctx, filter, next))),
            Err(e) => {
                tracing::error!(error = %e, "export stream failed");
                (Err(std::io::Error::other(e.message)), None)
            }
        })
    });
    let body = Body::from_stream(
        futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) })
            .chain(rest),
    );
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

async fn next_page(
    memory: &MemoryService,
    ctx: &RequestCtx,
    filter: &Filter,
    after: Cursor,
) -> engram_core::Result<(Vec<u8>, Option<Cursor>)> {
    let (page, next) = memory
        .export_page(ctx, filter, Some(after), EXPORT_PAGE)
        .await?;
    Ok((lines(&page)?, next))
}

fn json_line(v: &impl serde::Serialize) -> engram_core::Result<Vec<u8>> {
    let mut out =
        serde_json::to_vec(v).map_err(|e| engram_core::Error::internal(format!("export: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

fn lines(memories: &[ExportedMemory]) -> engram_core::Result<Vec<u8>> {
    let mut out = Vec::new();
    for m in memories {
        out.extend(json_line(m)?);
    }
    Ok(out)
}

/// Reads an export (the body: its header line, then memory lines) back into
/// the store, in one transaction: all of it or, on any bad line, none of it
/// (the problem names the line). Memories already present (by id) are
/// skipped, so importing the same file twice changes nothing; vectors from
/// another embedding model are recomputed. For files larger than the body
/// limit, use `engram import`, which sends them in parts.
#[utoipa::path(post, path = "/v1/import", tag = "portability",
    request_body(content = String, content_type = "application/x-ndjson"),
    responses((status = 200, body = ImportOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn import(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    body: Bytes,
) -> Result<ApiJson<ImportOut>, ApiError> {
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::invalid("the body is not UTF-8 text"))?;
    let (header, memories) = parse(text)?;
    let report = app.memory.import(&ctx, &header, memories).await?;
    Ok(ApiJson(report.into()))
}

/// What an import did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportOut {
    /// Memories written, with all their versions and history.
    pub imported: u64,
    /// Memories the store already held (by id), left as they were.
    pub skipped: u64,
    /// Versions whose vectors were recomputed because the file's embedding model differs.
    pub reembedded: u64,
}

impl From<ImportReport> for ImportOut {
    fn from(r: ImportReport) -> Self {
        ImportOut {
            imported: r.imported,
            skipped: r.skipped,
            reembedded: r.reembedded,
        }
    }
}

/// Parses an export: the header, then every non-blank line as a memory.
pub fn parse(text: &str) -> Result<(ExportHeader, Vec<ExportedMemory>), ApiError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines
        .next()
        .ok_or_else(|| ApiError::invalid("the export is empty: expected a header line"))?;
    let header = ExportHeader::parse(first)?;
    let memories = lines
        .map(|(i, l)| ExportedMemory::parse_line(l, i + 1))
        .collect::<engram_core::Result<Vec<_>>>()?;
    Ok((header, memories))
}
