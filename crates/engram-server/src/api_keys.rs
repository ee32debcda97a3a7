//! `/v1/keys`: create, list and revoke API keys (admin keys, within their own binding).

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use engram_core::access::Role;
use engram_core::memory::Scope;
use engram_core::ports::ApiKey;
use engram_core::service::NewKey;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, KeyIdPath};
use crate::idempotency::CarriesSecret;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(keys_create, keys_list))
        .routes(routes!(keys_revoke))
}

/// `POST /v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// What the key is for (shown in lists).
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    /// `operator`, `admin`, `read_write` (default) or `read_only`; at most the caller's own role.
    #[schema(value_type = Option<String>, example = "read_write", pattern = "^(operator|admin|read_write|read_only)$")]
    pub role: Option<String>,
    /// Defaults to the caller's org; an admin key cannot name another.
    pub org_id: Option<String>,
    pub app_id: Option<String>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    /// Requests per minute (default: the server's per-key limit).
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_limit: Option<u32>,
}

/// A key as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyOut {
    pub id: String,
    pub name: String,
    pub role: String,
    pub org_id: Option<String>,
    pub app_id: Option<String>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub rate_limit: Option<u32>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    pub created_by: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
}

impl From<ApiKey> for KeyOut {
    fn from(k: ApiKey) -> Self {
        KeyOut {
            id: k.id,
            name: k.name,
            role: k.role.as_str().to_owned(),
            org_id: k.binding.org_id,
            app_id: k.binding.app_id,
            user_id: k.binding.user_id,
            agent_id: k.binding.agent_id,
            rate_limit: k.rate_limit,
            created_at: k.created_at,
            created_by: k.created_by,
            revoked_at: k.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateKeyResponse {
    /// The key to send as `Authorization: Bearer <key>`. Shown once; only its hash is stored.
    pub key: String,
    #[serde(flatten)]
    pub info: KeyOut,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyListResponse {
    pub results: Vec<KeyOut>,
}

/// Create an API key (admin).
///
/// The new key is bound to the caller's binding (at least its org) plus the ids given,
/// with a role no higher than the caller's. The response carries the key once.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 201, body = CreateKeyResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn keys_create(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(req): ApiJson<CreateKeyRequest>,
) -> Result<
    (
        StatusCode,
        Extension<CarriesSecret>,
        ApiJson<CreateKeyResponse>,
    ),
    ApiError,
> {
    let role = req.role.as_deref().map(Role::parse).transpose()?;
    let new = NewKey {
        name: req.name,
        role,
        binding: Scope {
            org_id: req.org_id,
            app_id: req.app_id,
            user_id: req.user_id,
            agent_id: req.agent_id,
            run_id: None,
        },
        rate_limit: req.rate_limit,
    };
    let (key, token) = app.keys.create(&ctx.principal, new).await?;
    tracing::info!(target: "engram::audit", actor = %ctx.actor(), key_id = %key.id, role = %key.role, "api key created");
    Ok((
        StatusCode::CREATED,
        // The secret is shown once: never kept for an idempotent replay.
        Extension(CarriesSecret),
        ApiJson(CreateKeyResponse {
            key: token,
            info: key.into(),
        }),
    ))
}

/// List API keys (admin): those inside the caller's binding, revoked ones included.
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, body = KeyListResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn keys_list(
    State(app): State<AppState>,
    Caller(ctx): Caller,
) -> Result<ApiJson<KeyListResponse>, ApiError> {
    let keys = app.keys.list(&ctx.principal).await?;
    Ok(ApiJson(KeyListResponse {
        results: keys.into_iter().map(Into::into).collect(),
    }))
}

/// Revoke an API key (admin). It stops working at once.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path, description = "The key's id (16 hex digits)")),
    responses((status = 200, body = KeyOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn keys_revoke(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    KeyIdPath(id): KeyIdPath,
) -> Result<ApiJson<KeyOut>, ApiError> {
    let key = app.keys.revoke(&ctx.principal, &id).await?;
    tracing::info!(target: "engram::audit", actor = %ctx.actor(), key_id = %key.id, "api key revoked");
    Ok(ApiJson(key.into()))
}
