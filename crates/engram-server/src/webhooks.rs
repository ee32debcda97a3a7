//! `/v1/webhooks`: subscribe a URL to memory changes (admin keys, inside
//! their binding), rotate its signing secret, see its recent deliveries.
//! The rules live in `engram_core::service::WebhookService`; sending is
//! `webhook_send.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use axum::Extension;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use engram_core::memory::Scope;
use engram_core::ports::DeliveryAttempt;
use engram_core::service::{NewWebhook, WebhookPatch};
use engram_core::webhook::{Webhook, WebhookEvent, WebhookFormat};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery, WebhookIdPath};
use crate::idempotency::CarriesSecret;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(webhooks_create, webhooks_list))
        .routes(routes!(webhooks_get, webhooks_update, webhooks_delete))
        .routes(routes!(webhooks_rotate))
        .routes(routes!(webhooks_deliveries))
}

/// `POST /v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where deliveries are POSTed (`http` or `https`).
    #[schema(example = "https://hooks.example.com/engram", max_length = 2048)]
    pub url: String,
    /// Any of `memory.created`, `memory.updated`, `memory.deleted`,
    /// `memory.expired`, `scope.erased`, `job.dead`.
    #[schema(value_type = Vec<String>, example = json!(["memory.created", "memory.updated"]))]
    pub events: Vec<String>,
    /// Narrows the webhook to these ids, on top of the key's binding.
    pub scope: Option<ScopeIn>,
    #[schema(max_length = 200)]
    pub name: Option<String>,
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    /// Whether payloads carry the memory's text (default true).
    pub include_text: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeIn {
    pub org_id: Option<String>,
    pub app_id: Option<String>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub run_id: Option<String>,
}

impl From<ScopeIn> for Scope {
    fn from(s: ScopeIn) -> Scope {
        Scope {
            org_id: s.org_id,
            app_id: s.app_id,
            user_id: s.user_id,
            agent_id: s.agent_id,
            run_id: s.run_id,
        }
    }
}

/// `PATCH /v1/webhooks/{id}`: the fields given change.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    pub url: Option<String>,
    #[schema(value_type = Option<Vec<String>>)]
    pub events: Option<Vec<String>>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub include_text: Option<bool>,
    /// `true` re-enables a disabled webhook (and clears its failure count).
    pub enabled: Option<bool>,
}

/// A webhook as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookOut {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub scope: ScopeIn,
    pub name: Option<String>,
    pub description: Option<String>,
    /// `engram` or `mem0` (the payload shape).
    pub format: String,
    pub include_text: bool,
    pub enabled: bool,
    /// Failed attempts in a row (the webhook is disabled at the server's limit).
    pub consecutive_failures: u32,
    pub disabled_reason: Option<String>,
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<Webhook> for WebhookOut {
    fn from(w: Webhook) -> Self {
        WebhookOut {
            id: w.id.to_string(),
            url: w.url,
            events: w.events.iter().map(|e| e.as_str().to_owned()).collect(),
            scope: ScopeIn {
                org_id: w.scope.org_id,
                app_id: w.scope.app_id,
                user_id: w.scope.user_id,
                agent_id: w.scope.agent_id,
                run_id: w.scope.run_id,
            },
            name: w.name,
            description: w.description,
            format: w.format.as_str().to_owned(),
            include_text: w.include_text,
            enabled: w.enabled,
            consecutive_failures: w.consecutive_failures,
            disabled_reason: w.disabled_reason,
            created_by: w.created_by,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// A webhook with its signing secret (creation and rotation only).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookWithSecret {
    /// `whsec_<base64>`: verify each delivery's `webhook-signature` with it
    /// (Standard Webhooks). Shown once; not retrievable later.
    pub secret: String,
    #[serde(flatten)]
    pub webhook: WebhookOut,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookListResponse {
    pub results: Vec<WebhookOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    pub id: String,
    /// The delivery (`webhook-id` is `msg_` and this id without dashes; the same on every retry).
    pub delivery_id: String,
    pub event: String,
    pub attempt: u32,
    /// `delivered`, `failed` (retried later), `dead` (given up) or `refused` (private address).
    pub outcome: String,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

impl From<DeliveryAttempt> for DeliveryOut {
    fn from(a: DeliveryAttempt) -> Self {
        DeliveryOut {
            id: a.id.to_string(),
            delivery_id: a.delivery_id.to_string(),
            event: a.event.as_str().to_owned(),
            attempt: a.attempt,
            outcome: a.outcome,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error: a.error,
            at: a.at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryListResponse {
    pub results: Vec<DeliveryOut>,
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// At most this many attempts, newest first (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

fn events(names: &[String]) -> Result<Vec<WebhookEvent>, ApiError> {
    Ok(names
        .iter()
        .map(|n| WebhookEvent::parse(n))
        .collect::<engram_core::Result<_>>()?)
}

/// Subscribe a URL to memory changes (admin).
///
/// The webhook hears only changes inside the key's binding (narrowed by
/// `scope`). Each delivery is a POST signed per Standard Webhooks
/// (`webhook-id`, `webhook-timestamp`, `webhook-signature`); the answer
/// carries the signing secret once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhookRequest,
    responses((status = 201, body = WebhookWithSecret), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn webhooks_create(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(req): ApiJson<CreateWebhookRequest>,
) -> Result<
    (
        StatusCode,
        Extension<CarriesSecret>,
        ApiJson<WebhookWithSecret>,
    ),
    ApiError,
> {
    let new = NewWebhook {
        url: req.url,
        events: events(&req.events)?,
        scope: req.scope.map(Into::into).unwrap_or_default(),
        name: req.name,
        description: req.description,
        format: WebhookFormat::Engram,
        project_id: None,
        include_text: req.include_text.unwrap_or(true),
    };
    let hook = app.webhooks.create(&ctx, new).await?;
    app.webhook_presence.set_active();
    Ok((
        StatusCode::CREATED,
        // The secret is shown once: never kept for an idempotent replay.
        Extension(CarriesSecret),
        ApiJson(WebhookWithSecret {
            secret: hook.secret.clone(),
            webhook: hook.into(),
        }),
    ))
}

/// List webhooks (admin): those inside the key's binding.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookListResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn webhooks_list(
    State(app): State<AppState>,
    Caller(ctx): Caller,
) -> Result<ApiJson<WebhookListResponse>, ApiError> {
    let hooks = app.webhooks.list(&ctx).await?;
    Ok(ApiJson(WebhookListResponse {
        results: hooks.into_iter().map(Into::into).collect(),
    }))
}

/// One webhook (admin).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 200, body = WebhookOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn webhooks_get(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    WebhookIdPath(id): WebhookIdPath,
) -> Result<ApiJson<WebhookOut>, ApiError> {
    Ok(ApiJson(app.webhooks.get(&ctx, id).await?.into()))
}

/// Change a webhook (admin): URL, events, name, description, text, enabled.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "The webhook's id")),
    request_body = UpdateWebhookRequest,
    responses((status = 200, body = WebhookOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn webhooks_update(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    WebhookIdPath(id): WebhookIdPath,
    ApiJson(req): ApiJson<UpdateWebhookRequest>,
) -> Result<ApiJson<WebhookOut>, ApiError> {
    let patch = WebhookPatch {
        url: req.url,
        events: req.events.as_deref().map(events).transpose()?,
        name: req.name,
        description: req.description,
        include_text: req.include_text,
        enabled: req.enabled,
    };
    let hook = app.webhooks.update(&ctx, id, patch).await?;
    app.webhook_presence.set_active();
    Ok(ApiJson(hook.into()))
}

/// Delete a webhook (admin). Deliveries still queued for it are dropped.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn webhooks_delete(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    WebhookIdPath(id): WebhookIdPath,
) -> Result<StatusCode, ApiError> {
    app.webhooks.delete(&ctx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret (admin), shown once; the old one stops signing at once.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 200, body = WebhookWithSecret), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn webhooks_rotate(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    WebhookIdPath(id): WebhookIdPath,
) -> Result<(Extension<CarriesSecret>, ApiJson<WebhookWithSecret>), ApiError> {
    let hook = app.webhooks.rotate_secret(&ctx, id).await?;
    Ok((
        Extension(CarriesSecret),
        ApiJson(WebhookWithSecret {
            secret: hook.secret.clone(),
            webhook: hook.into(),
        }),
    ))
}

/// Recent delivery attempts of a webhook (admin), newest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = String, Path, description = "The webhook's id"), DeliveriesQuery),
    responses((status = 200, body = DeliveryListResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn webhooks_deliveries(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    WebhookIdPath(id): WebhookIdPath,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<ApiJson<DeliveryListResponse>, ApiError> {
    let attempts = app
        .webhooks
        .deliveries(&ctx, id, q.limit.unwrap_or(50))
        .await?;
    Ok(ApiJson(DeliveryListResponse {
        results: attempts.into_iter().map(Into::into).collect(),
    }))
}

/// Whether any webhook is enabled, as this node last looked (at most
/// [`PRESENCE_TTL_MS`] ago): decides whether a write wakes a worker at once
/// for its deliveries. Without webhooks, writes wake nobody.
#[derive(Default)]
pub struct WebhookPresence {
    active: AtomicBool,
    checked_ms: AtomicI64,
}

const PRESENCE_TTL_MS: i64 = 2000;

impl WebhookPresence {
    pub fn set_active(&self) {
        self.active.store(true, Ordering::Relaxed);
    }

    async fn active(&self, app: &AppState) -> bool {
        let now = Timestamp::now().as_millisecond();
        if now - self.checked_ms.load(Ordering::Relaxed) > PRESENCE_TTL_MS {
            self.checked_ms.store(now, Ordering::Relaxed);
            if let Ok((all, disabled)) = app.webhooks.counts().await {
                self.active.store(all > disabled, Ordering::Relaxed);
            }
        }
        self.active.load(Ordering::Relaxed)
    }
}

/// After a successful write request, wakes a worker for the deliveries the
/// write queued (instead of its next poll), when webhooks exist.
pub async fn wake_for_deliveries(
    State(app): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let resp = next.run(req).await;
    if writes && resp.status().is_success() && app.webhook_presence.active(&app).await {
        app.job_ready.notify_one();
    }
    resp
}

/// Shared by `AppState`.
pub type Presence = Arc<WebhookPresence>;
