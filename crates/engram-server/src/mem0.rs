//! Mem0 wire compatibility: the routes Mem0's Python `MemoryClient` calls
//! (2.x and 1.x, trailing slashes exactly as it sends them; it follows no
//! redirects) and the routes of Mem0's self-hosted server, with Mem0's
//! request and response shapes.
//!
//! Like every transport, these handlers only translate: the same service
//! functions as the native API do the work, under the same API keys and
//! bindings (`Authorization: Token <key>` and `X-API-Key` are accepted by the
//! auth layer). Mem0's `org_id` / `project_id` fields, which 1.x clients echo
//! back from `/v1/ping/`, are ignored: the key decides the org.
//!
//! Errors are JSON `{"detail": …, "error": …, "code": …}` (Mem0's clients
//! read `detail`), with the native API's status codes, so the client raises
//! its matching exception (404 → `MemoryNotFoundError`, 401/403 →
//! `AuthenticationError`, 400/422 → `ValidationError`, 429 → `RateLimitError`).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use engram_core::ErrorCode;
use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::memory::{HistoryEvent, Memory, Scope, ScopeField};
use engram_core::service::{AddInput, Content, Message, SearchInput, UpdateInput};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, HttpCode};
use crate::wire::time_field;

pub fn router() -> Router<AppState> {
    Router::new()
        // MemoryClient 2.x
        .route("/v1/ping/", get(ping))
        .route("/v3/memories/add/", post(add))
        .route("/v3/memories/search/", post(search))
        .route("/v3/memories/", post(get_all))
        .route(
            "/v1/memories/{id}/",
            get(memory_get).put(memory_update).delete(memory_delete),
        )
        .route("/v1/memories/", post(add).delete(delete_all))
        .route("/v1/memories/{id}/history/", get(history))
        .route("/v1/entities/", get(entities))
        .route("/v1/entities/{kind}/{id}/", delete(entity_delete))
        .route("/v2/entities/{kind}/{id}/", delete(entity_delete))
        // MemoryClient 1.x
        .route("/v2/memories/search/", post(search))
        .route("/v2/memories/", post(get_all))
        // Mem0's self-hosted server
        .route(
            "/memories",
            post(server_add).get(server_list).delete(server_delete_all),
        )
        .route(
            "/memories/{id}",
            get(memory_get).put(server_update).delete(server_delete),
        )
        .route("/memories/{id}/history", get(history))
        .route("/search", post(search))
        .route("/reset", post(server_reset))
        .route("/entities", get(server_entities))
        .route("/entities/{kind}/{id}", delete(entity_delete))
        .merge(crate::mem0_webhooks::router())
        .merge(crate::mem0_batch::router())
}

/// Whether `path` looks like a call from a Mem0 client (they end their
/// paths with `/`, and the platform's management routes live under `/api/`).
pub fn is_mem0_path(path: &str) -> bool {
    (path.ends_with('/') && path.len() > 1 && !path.starts_with("/ui")) || path.starts_with("/api/")
}

/// An error in Mem0's shape.
pub struct Mem0Error(pub(crate) ApiError);

impl From<ApiError> for Mem0Error {
    fn from(e: ApiError) -> Self {
        Mem0Error(e)
    }
}

impl From<engram_core::Error> for Mem0Error {
    fn from(e: engram_core::Error) -> Self {
        Mem0Error(e.into())
    }
}

impl IntoResponse for Mem0Error {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let code = self.0.code;
        let retry_after = self.0.retry_after();
        let detail = self.0.public_detail();
        // One missing memory is worded as Mem0 words it; other misses (a
        // batch's, a webhook's) keep the message that names what is missing.
        let one_memory = detail.starts_with("memory ")
            && detail.ends_with(" not found")
            && detail.len() == "memory  not found".len() + 36;
        let detail = if code == HttpCode::Core(ErrorCode::NotFound) && one_memory {
            "Memory not found!".to_owned()
        } else {
            detail
        };
        let mut resp = (
            status,
            axum::Json(
                json!({"detail": detail, "error": detail, "code": code.as_str(),
                "request_id": crate::request_id::current()}),
            ),
        )
            .into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        resp
    }
}

pub(crate) type Mem0Result<T = axum::Json<Value>> = Result<T, Mem0Error>;

pub(crate) fn invalid(detail: impl Into<String>) -> Mem0Error {
    Mem0Error(ApiError::invalid(detail))
}

/// A JSON body, leniently: Mem0 clients send extra fields, which are ignored.
pub struct Body(pub(crate) Map<String, Value>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = Mem0Error;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Mem0Error> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Mem0Error(ApiError::new(
                        HttpCode::PayloadTooLarge,
                        "request body is larger than the server's limit",
                    ))
                } else {
                    invalid(format!("could not read the request body: {e}"))
                }
            })?;
        if bytes.is_empty() {
            return Ok(Body(Map::new()));
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => Ok(Body(m)),
            Ok(_) => Err(invalid("the request body must be a JSON object")),
            Err(e) => Err(invalid(format!("request body is not valid JSON: {e}"))),
        }
    }
}

fn field<'a>(b: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    b.get(name).filter(|v| !v.is_null())
}

pub(crate) fn string(b: &Map<String, Value>, name: &str) -> Mem0Result<Option<String>> {
    match field(b, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(invalid(format!("`{name}` must be a string"))),
    }
}

const ID_FIELDS: [(&str, ScopeField); 4] = [
    ("user_id", ScopeField::User),
    ("agent_id", ScopeField::Agent),
    ("app_id", ScopeField::App),
    ("run_id", ScopeField::Run),
];

/// The scope ids named at the top level of a body or query (Mem0 never sends
/// `org_id` as a scope: 1.x echoes the ping's value, which the key decides).
fn top_level_ids(b: &Map<String, Value>) -> Mem0Result<Scope> {
    let mut scope = Scope::default();
    for (name, f) in ID_FIELDS {
        if let Some(v) = string(b, name)? {
            scope.set(f, Some(v));
        }
    }
    Ok(scope)
}

/// The ids of an add: top-level ones, or simple equalities inside `filters`
/// (2.x clients send either).
fn add_scope(b: &Map<String, Value>) -> Mem0Result<Scope> {
    let mut scope = top_level_ids(b)?;
    if let Some(Value::Object(filters)) = field(b, "filters") {
        for (name, f) in ID_FIELDS {
            if scope.get(f).is_none()
                && let Some(v) = string(filters, name)?
            {
                scope.set(f, Some(v));
            }
        }
    }
    Ok(scope)
}

/// `filters` AND the top-level ids; `"*"` means "has this id".
fn read_filter(filters: Option<&Value>, ids: &Scope) -> Mem0Result<Filter> {
    Ok(Filter::with_ids(filters, ids)?)
}

/// Mem0's messages: a string, one message object, or a list of them.
fn messages(v: &Value) -> Mem0Result<Vec<Message>> {
    let one = |m: &Value| -> Mem0Result<Message> {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user")
            .to_owned();
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(invalid(
                    "each message needs a text `content` (multimodal content is not supported)",
                ));
            }
        };
        let name = m.get("name").and_then(Value::as_str).map(str::to_owned);
        Ok(Message {
            role,
            content,
            name,
        })
    };
    match v {
        Value::String(s) => Ok(vec![Message {
            role: "user".into(),
            content: s.clone(),
            name: None,
        }]),
        Value::Object(_) => Ok(vec![one(v)?]),
        Value::Array(items) if !items.is_empty() => items.iter().map(one).collect(),
        _ => Err(invalid(
            "`messages` must be a string, a message or a non-empty list of messages",
        )),
    }
}

fn metadata(b: &Map<String, Value>) -> Mem0Result<Map<String, Value>> {
    match field(b, "metadata") {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(invalid("`metadata` must be an object")),
    }
}

fn ts(t: Timestamp) -> String {
    t.to_string()
}

/// A memory as Mem0 returns it.
fn memory_json(m: Memory, score: Option<f32>) -> Value {
    let mut v = json!({
        "id": m.id,
        "memory": m.text,
        "hash": m.hash,
        "metadata": m.metadata,
        "categories": m.categories,
        "created_at": ts(m.created_at),
        "updated_at": ts(m.updated_at),
        "user_id": m.scope.user_id,
        "agent_id": m.scope.agent_id,
        "app_id": m.scope.app_id,
        "run_id": m.scope.run_id,
        "expiration_date": m.expires_at.map(ts),
        "kind": m.kind.as_str(),
    });
    if let Some(f) = m.feedback {
        v["feedback"] = json!(f.as_str());
    }
    if let Some(s) = score {
        v["score"] = json!(s);
    }
    v
}

fn history_json(h: HistoryEvent) -> Value {
    json!({
        "id": h.id,
        "memory_id": h.memory_id,
        "old_memory": h.old_text,
        "new_memory": h.new_text,
        "event": h.event.as_str(),
        "created_at": ts(h.created_at),
        "updated_at": ts(h.created_at),
        "is_deleted": h.event == engram_core::memory::Event::Delete,
        "actor_id": h.actor,
        "user_id": h.scope.user_id,
        "agent_id": h.scope.agent_id,
        "app_id": h.scope.app_id,
        "run_id": h.scope.run_id,
        "input": [],
    })
}

/// `raw` as an id; anything but a UUID names nothing: 404 saying `missing()`.
pub(crate) fn id_or(raw: &str, missing: impl FnOnce() -> String) -> Mem0Result<uuid::Uuid> {
    raw.parse()
        .map_err(|_| Mem0Error::from(engram_core::Error::not_found(missing())))
}

fn uuid(id: &str) -> Mem0Result<uuid::Uuid> {
    // Any id that is not a UUID names no memory.
    id.parse()
        .map_err(|_| Mem0Error(ApiError::new(HttpCode::Core(ErrorCode::NotFound), id)))
}

/// `GET /v1/ping/`: the client's constructor needs `org_id` and `project_id`.
async fn ping(Caller(ctx): Caller) -> axum::Json<Value> {
    let b = &ctx.principal.binding;
    axum::Json(json!({
        "status": "ok",
        "org_id": b.org_id.clone().unwrap_or_else(|| "local".into()),
        "project_id": b.app_id.clone().unwrap_or_else(|| "default".into()),
        "user_email": Value::Null,
    }))
}

async fn add_with(app: &AppState, ctx: &RequestCtx, b: &Map<String, Value>) -> Mem0Result {
    let messages = field(b, "messages").map(messages).transpose()?;
    let content = Content::new(messages, string(b, "text")?)?;
    let input = AddInput {
        content,
        scope: add_scope(b)?,
        metadata: metadata(b)?,
        categories: Vec::new(),
        kind: Default::default(),
        expires_at: time_field(field(b, "expiration_date"), "expiration_date")?,
        ttl: None,
        timestamp: time_field(field(b, "timestamp"), "timestamp")?,
    };
    // Mem0's routes answer adds synchronously; `infer` is Mem0's own flag.
    let infer = field(b, "infer").and_then(Value::as_bool);
    let results = app.jobs.add_now(ctx, input, infer).await?;
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| json!({"id": r.id, "memory": r.memory, "event": r.event.as_str(), "data": {"memory": r.memory}}))
        .collect();
    Ok(axum::Json(json!({"results": results})))
}

/// `POST /v3/memories/add/` (2.x) and `POST /v1/memories/` (1.x).
async fn add(State(app): State<AppState>, Caller(ctx): Caller, Body(b): Body) -> Mem0Result {
    add_with(&app, &ctx, &b).await
}

/// `POST /v3/memories/search/`, `POST /v2/memories/search/`, `POST /search`.
async fn search(State(app): State<AppState>, Caller(ctx): Caller, Body(b): Body) -> Mem0Result {
    let query = string(&b, "query")?.unwrap_or_default();
    let filter = read_filter(field(&b, "filters"), &top_level_ids(&b)?)?;
    let top_k = match field(&b, "top_k") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|k| *k > 0)
                .ok_or_else(|| invalid("`top_k` must be a positive integer"))? as usize,
        ),
    };
    search_options(&b)?;
    let threshold = match field(&b, "threshold") {
        None => None,
        Some(v) => Some(
            v.as_f64()
                .ok_or_else(|| invalid("`threshold` must be a number"))? as f32,
        ),
    };
    let out = app
        .memory
        .search(
            &ctx,
            SearchInput {
                query,
                filter,
                top_k,
                threshold,
                token_budget: Some(0),
                explain: false,
            },
        )
        .await?;
    let results: Vec<Value> = out
        .hits
        .into_iter()
        .map(|h| memory_json(h.memory, Some(h.score)))
        .collect();
    Ok(axum::Json(json!({"results": results})))
}

/// The v3 options Mem0's clients send with a search or a listing, checked: `latest_only`
/// (Engram searches current versions — `true`, the default; `false` is
/// refused rather than ignored), `keyword_search` and `rerank` (accepted:
/// keyword matching and fusion always run), `reference_date` (a time).
fn search_options(b: &Map<String, Value>) -> Mem0Result<()> {
    for name in ["latest_only", "keyword_search", "rerank"] {
        if field(b, name).is_some_and(|v| !v.is_boolean()) {
            return Err(invalid(format!("`{name}` must be true or false")));
        }
    }
    if field(b, "latest_only") == Some(&Value::Bool(false)) {
        return Err(invalid(
            "`latest_only: false` is not supported: Engram searches the current version of each \
             memory; read older versions with the memory's history or a native search with `as_of`",
        ));
    }
    if let Some(v) = field(b, "reference_date") {
        time_field(Some(v), "reference_date")?;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    page: Option<String>,
    page_size: Option<String>,
}

fn positive(v: Option<&str>, name: &str, default: usize) -> Mem0Result<usize> {
    match v {
        None => Ok(default),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| invalid(format!("`{name}` must be a positive integer"))),
    }
}

/// `POST /v3/memories/` (2.x) and `POST /v2/memories/` (1.x): page-numbered listing.
async fn get_all(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    uri: axum::http::Uri,
    Query(q): Query<PageQuery>,
    Body(b): Body,
) -> Mem0Result {
    let page = positive(q.page.as_deref(), "page", 1)?;
    let size = positive(q.page_size.as_deref(), "page_size", 100)?;
    search_options(&b)?;
    let filter = read_filter(field(&b, "filters"), &top_level_ids(&b)?)?;
    let (total, memories) = app.memory.list_page(&ctx, &filter, page, size).await?;
    let link = |p: usize| format!("{}?page={p}&page_size={size}", uri.path());
    let next = (page * size < total).then(|| link(page + 1));
    let previous = (page > 1).then(|| link(page - 1));
    let results: Vec<Value> = memories.into_iter().map(|m| memory_json(m, None)).collect();
    Ok(axum::Json(json!({
        "count": total, "next": next, "previous": previous, "results": results,
    })))
}

/// `GET /v1/memories/{id}/` and `GET /memories/{id}`.
async fn memory_get(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Mem0Result {
    let m = app.memory.get(&ctx, uuid(&id)?).await?;
    Ok(axum::Json(memory_json(m, None)))
}

pub(crate) fn update_input(b: &Map<String, Value>) -> Mem0Result<UpdateInput> {
    let text = string(b, "text")?;
    let metadata = match field(b, "metadata") {
        None => None,
        Some(_) => Some(metadata(b)?),
    };
    let expires_at = match b.get("expiration_date") {
        None => None,
        Some(v) => Some(time_field(Some(v), "expiration_date")?),
    };
    if text.is_none() && metadata.is_none() && expires_at.is_none() {
        return Err(invalid(
            "give at least one of `text`, `metadata` or `expiration_date`",
        ));
    }
    Ok(UpdateInput {
        text,
        metadata,
        categories: None,
        expires_at,
    })
}

/// `PUT /v1/memories/{id}/`: the updated memory.
async fn memory_update(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    Body(b): Body,
) -> Mem0Result {
    let m = app
        .memory
        .update(&ctx, uuid(&id)?, update_input(&b)?)
        .await?;
    let mut v = memory_json(m, None);
    v["message"] = json!("Memory updated successfully!");
    Ok(axum::Json(v))
}

/// Deletes one memory and answers `message` (the two Mem0 servers word it differently).
async fn delete_one(app: &AppState, ctx: &RequestCtx, id: &str, message: &str) -> Mem0Result {
    app.memory.delete(ctx, uuid(id)?).await?;
    Ok(axum::Json(json!({ "message": message })))
}

/// `DELETE /v1/memories/{id}/`. `delete_linked` (v3 clients) is accepted:
/// in Engram a memory's superseded versions share its id, so deleting it
/// leaves none of them current — there is no separate chain to follow.
async fn memory_delete(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Mem0Result {
    if let Some(v) = q.get("delete_linked")
        && !matches!(v.to_ascii_lowercase().as_str(), "true" | "false")
    {
        return Err(invalid("`delete_linked` must be true or false"));
    }
    delete_one(&app, &ctx, &id, "Memory deleted successfully!").await
}

/// `GET /v1/memories/{id}/history/` and `GET /memories/{id}/history`: a list.
async fn history(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Mem0Result {
    let events = app.memory.history(&ctx, uuid(&id)?).await?;
    Ok(axum::Json(Value::Array(
        events.into_iter().map(history_json).collect(),
    )))
}

/// `DELETE /v1/memories/?user_id=…` (or `?filters=<Python repr>`, as the client sends it).
async fn delete_all(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Query(q): Query<Map<String, Value>>,
) -> Mem0Result {
    let filters = match q.get("filters").and_then(Value::as_str) {
        Some(repr) => Some(python_literal(repr).map_err(|e| {
            invalid(format!(
                "`filters` is neither JSON nor a Python literal: {e}"
            ))
        })?),
        None => None,
    };
    let filter = read_filter(filters.as_ref(), &top_level_ids(&q)?)?;
    let deleted = app.memory.delete_all(&ctx, &filter).await?;
    Ok(axum::Json(
        json!({"message": "Memories deleted successfully!", "deleted": deleted}),
    ))
}

fn entity_field(kind: &str) -> Option<ScopeField> {
    match kind {
        "user" => Some(ScopeField::User),
        "agent" => Some(ScopeField::Agent),
        "app" => Some(ScopeField::App),
        "run" => Some(ScopeField::Run),
        _ => None,
    }
}

fn entity_kind(f: ScopeField) -> Option<&'static str> {
    match f {
        ScopeField::User => Some("user"),
        ScopeField::Agent => Some("agent"),
        ScopeField::App => Some("app"),
        ScopeField::Run => Some("run"),
        ScopeField::Org => None,
    }
}

/// `GET /v1/entities/`: users, agents, apps and runs with memories.
async fn entities(State(app): State<AppState>, Caller(ctx): Caller) -> Mem0Result {
    let ids = app.memory.scope_ids(&ctx).await?;
    let owner = ctx.principal.binding.org_id.clone();
    let mut totals = [0usize; 4];
    let results: Vec<Value> = ids
        .into_iter()
        .filter_map(|s| {
            let kind = entity_kind(s.field)?;
            totals[["user", "agent", "app", "run"]
                .iter()
                .position(|k| *k == kind)?] += 1;
            Some(json!({
                "id": s.id, "name": s.id, "type": kind,
                "created_at": ts(s.first), "updated_at": ts(s.last),
                "total_memories": s.memories, "owner": owner, "metadata": {},
            }))
        })
        .collect();
    Ok(axum::Json(json!({
        "count": results.len(), "next": null, "previous": null, "results": results,
        "total_users": totals[0], "total_agents": totals[1], "total_apps": totals[2], "total_runs": totals[3],
    })))
}

/// `DELETE /v2/entities/{type}/{id}/`: every memory of one user / agent / app / run.
async fn entity_delete(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path((kind, id)): Path<(String, String)>,
) -> Mem0Result {
    let field = entity_field(&kind).ok_or_else(|| {
        invalid(format!(
            "Invalid entity type `{kind}`: use user, agent, app or run"
        ))
    })?;
    let mut scope = Scope::default();
    scope.set(field, Some(id));
    let deleted = app
        .memory
        .delete_all(&ctx, &Filter::from_scope(&scope))
        .await?;
    Ok(axum::Json(
        json!({"message": "Entity deleted successfully.", "deleted": deleted}),
    ))
}

// ---- Mem0's self-hosted server (`server/main.py`) ----

/// `POST /memories`: like the client's add; at least one of user/agent/run id.
async fn server_add(State(app): State<AppState>, Caller(ctx): Caller, Body(b): Body) -> Mem0Result {
    let named = add_scope(&b)?;
    let bound = &ctx.principal.binding;
    let has = |f: ScopeField| named.get(f).is_some() || bound.get(f).is_some();
    if !(has(ScopeField::User) || has(ScopeField::Agent) || has(ScopeField::Run)) {
        return Err(invalid(
            "At least one identifier (user_id, agent_id, run_id) is required.",
        ));
    }
    add_with(&app, &ctx, &b).await
}

/// `GET /memories?user_id=…&top_k=…`: `{"results": [...]}`, newest first.
async fn server_list(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Query(q): Query<Map<String, Value>>,
) -> Mem0Result {
    let filter = read_filter(None, &top_level_ids(&q)?)?;
    let limit = positive(q.get("top_k").and_then(Value::as_str), "top_k", 100)?;
    let page = app.memory.list(&ctx, &filter, None, limit).await?;
    let results: Vec<Value> = page
        .memories
        .into_iter()
        .map(|m| memory_json(m, None))
        .collect();
    Ok(axum::Json(json!({"results": results})))
}

/// `PUT /memories/{id}`.
async fn server_update(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    Body(b): Body,
) -> Mem0Result {
    app.memory
        .update(&ctx, uuid(&id)?, update_input(&b)?)
        .await?;
    Ok(axum::Json(
        json!({"message": "Memory updated successfully!"}),
    ))
}

/// `DELETE /memories/{id}`.
async fn server_delete(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Mem0Result {
    delete_one(&app, &ctx, &id, "Memory deleted successfully").await
}

/// `DELETE /memories?user_id=…`: at least one id.
async fn server_delete_all(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Query(q): Query<Map<String, Value>>,
) -> Mem0Result {
    let ids = top_level_ids(&q)?;
    if ids.is_empty() {
        return Err(invalid("At least one identifier is required."));
    }
    app.memory
        .delete_all(&ctx, &Filter::from_scope(&ids))
        .await?;
    Ok(axum::Json(
        json!({"message": "All relevant memories deleted"}),
    ))
}

/// `POST /reset`: every memory the (admin) key can see.
async fn server_reset(State(app): State<AppState>, Caller(ctx): Caller) -> Mem0Result {
    app.memory.reset(&ctx).await?;
    Ok(axum::Json(json!({"message": "All memories reset"})))
}

/// `GET /entities`: a list of `{id, type, total_memories, created_at, updated_at}`.
async fn server_entities(State(app): State<AppState>, Caller(ctx): Caller) -> Mem0Result {
    let ids = app.memory.scope_ids(&ctx).await?;
    Ok(axum::Json(Value::Array(
        ids.into_iter()
            .filter_map(|s| {
                Some(
                    json!({"id": s.id, "type": entity_kind(s.field)?, "total_memories": s.memories,
                    "created_at": ts(s.first), "updated_at": ts(s.last)}),
                )
            })
            .collect(),
    )))
}

/// Parses a Python literal as `str(dict)` prints it (what `MemoryClient.delete_all`
/// puts in the query string for `filters=`): dicts, lists, tuples, strings in
/// single or double quotes, numbers, True / False / None. JSON passes too.
pub fn python_literal(s: &str) -> Result<Value, String> {
    let mut p = PyParser {
        s: s.as_bytes(),
        i: 0,
        depth: 0,
    };
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected `{}` at {}", p.s[p.i] as char, p.i));
    }
    Ok(v)
}

struct PyParser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl PyParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at {}", c as char, self.i))
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        self.depth += 1;
        if self.depth > 32 {
            return Err("nested too deeply".into());
        }
        let v = match self.peek() {
            Some(b'{') => self.dict(),
            Some(b'[') => self.seq(b'[', b']'),
            Some(b'(') => self.seq(b'(', b')'),
            Some(q @ (b'\'' | b'"')) => self.string(q).map(Value::String),
            Some(_) => self.atom(),
            None => Err("unexpected end".into()),
        };
        self.depth -= 1;
        v
    }

    fn dict(&mut self) -> Result<Value, String> {
        self.expect(b'{')?;
        let mut m = Map::new();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Value::Object(m));
        }
        loop {
            let key = match self.value()? {
                Value::String(k) => k,
                other => other.to_string(),
            };
            self.expect(b':')?;
            let v = self.value()?;
            m.insert(key, v);
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(Value::Object(m));
                    }
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Object(m));
                }
                _ => return Err(format!("expected `,` or `}}` at {}", self.i)),
            }
        }
    }

    fn seq(&mut self, open: u8, close: u8) -> Result<Value, String> {
        self.expect(open)?;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(Value::Array(items));
            }
            items.push(self.value()?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {}
                _ => return Err(format!("expected `,` at {}", self.i)),
            }
        }
    }

    fn string(&mut self, quote: u8) -> Result<String, String> {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            match c {
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or("unterminated escape")?;
                    self.i += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        other => other,
                    });
                }
                c if c == quote => {
                    return String::from_utf8(out).map_err(|e| e.to_string());
                }
                c => out.push(c),
            }
        }
        Err("unterminated string".into())
    }

    fn atom(&mut self) -> Result<Value, String> {
        let start = self.i;
        while self.i < self.s.len()
            && !matches!(self.s[self.i], b',' | b':' | b'}' | b']' | b')')
            && !self.s[self.i].is_ascii_whitespace()
        {
            self.i += 1;
        }
        let word = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
        match word {
            "True" | "true" => Ok(Value::Bool(true)),
            "False" | "false" => Ok(Value::Bool(false)),
            "None" | "null" => Ok(Value::Null),
            w => {
                if let Ok(i) = w.parse::<i64>() {
                    Ok(json!(i))
                } else if let Ok(f) = w.parse::<f64>() {
                    Ok(json!(f))
                } else {
                    Err(format!("unexpected `{w}` at {start}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_reprs_parse() {
        let v = python_literal(
            "{'AND': [{'user_id': 'alice'}, {'OR': [{'agent_id': \"it's\"}, {'run_id': '*'}]}], 'n': 3, 'ok': True, 'x': None, 't': (1, 2.5)}",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"AND": [{"user_id": "alice"}, {"OR": [{"agent_id": "it's"}, {"run_id": "*"}]}],
                   "n": 3, "ok": true, "x": null, "t": [1, 2.5]})
        );
        assert_eq!(
            python_literal("{\"user_id\": \"a\"}").unwrap(),
            json!({"user_id": "a"})
        );
        assert_eq!(
            python_literal("{'a': 'b\\'c'}").unwrap(),
            json!({"a": "b'c"})
        );
        for bad in [
            "{'a': }",
            "{'a' 'b'}",
            "{'a': 'b'",
            "[1, 2",
            "{'a': foo}",
            "",
        ] {
            assert!(python_literal(bad).is_err(), "{bad}");
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(python_literal(&deep).is_err());
    }
}
