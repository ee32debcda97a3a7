//! Mem0's webhook routes (`create_webhook`, `get_webhooks`,
//! `update_webhook`, `delete_webhook` of Mem0's clients): the same
//! [`WebhookService`](engram_core::service::WebhookService) as
//! `/v1/webhooks`, with Mem0's names and shapes. A webhook made here
//! receives Mem0's payload (`{"event_details": {"id", "data": {"memory"},
//! "event"}}`), signed like every delivery (Standard Webhooks headers).
//! Mem0's project is kept as a label: the API key decides what a webhook
//! may hear.

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, put};
use engram_core::service::{NewWebhook, WebhookPatch};
use engram_core::webhook::{Webhook, WebhookEvent, WebhookFormat};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::mem0::{Body, Mem0Result, id_or, invalid, string};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/webhooks/projects/{project_id}/",
            get(list).post(create),
        )
        .route("/api/v1/webhooks/{id}/", put(update).delete(remove))
}

/// Mem0's event names (`memory_add`, and the docs' `memory:add`);
/// `memory_categorize` is accepted and never sent.
fn event_types(v: Option<&Value>) -> Mem0Result<Option<Vec<WebhookEvent>>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Some(names) = v.as_array() else {
        return Err(invalid("`event_types` must be a list of event names"));
    };
    let mut out = Vec::new();
    for n in names {
        let Some(n) = n.as_str() else {
            return Err(invalid("`event_types` must be a list of event names"));
        };
        if let Some(e) = WebhookEvent::parse_mem0(&n.replace(':', "_"))? {
            out.push(e);
        }
    }
    Ok(Some(out))
}

fn webhook_json(w: &Webhook) -> Value {
    json!({
        "webhook_id": w.id.to_string(),
        "name": w.name,
        "url": w.url,
        "event_types": w.events.iter().filter_map(|e| e.mem0_name()).collect::<Vec<_>>(),
        "project": w.project_id,
        "is_active": w.enabled,
        "created_at": w.created_at.to_string(),
        "updated_at": w.updated_at.to_string(),
    })
}

fn id(raw: &str) -> Mem0Result<uuid::Uuid> {
    id_or(raw, || format!("webhook {raw} not found"))
}

async fn list(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(project): Path<String>,
) -> Mem0Result {
    let hooks = app.webhooks.list(&ctx).await?;
    Ok(axum::Json(Value::Array(
        hooks
            .iter()
            .filter(|w| {
                w.format == WebhookFormat::Mem0 && w.project_id.as_deref() == Some(&project)
            })
            .map(webhook_json)
            .collect(),
    )))
}

async fn create(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(project): Path<String>,
    Body(b): Body,
) -> Mem0Result<(
    axum::http::StatusCode,
    axum::Extension<crate::idempotency::CarriesSecret>,
    axum::Json<Value>,
)> {
    let url = string(&b, "url")?.ok_or_else(|| invalid("`url` is required"))?;
    let new = NewWebhook {
        url,
        events: event_types(b.get("event_types"))?.unwrap_or_default(),
        scope: Default::default(),
        name: string(&b, "name")?,
        description: None,
        format: WebhookFormat::Mem0,
        project_id: Some(project),
        include_text: true,
    };
    let hook = app.webhooks.create(&ctx, new).await?;
    app.webhook_presence.set_active();
    let mut out = webhook_json(&hook);
    // Mem0 has no signing secret; Engram signs every delivery and shows it once.
    out["secret"] = json!(hook.secret);
    Ok((
        axum::http::StatusCode::CREATED,
        axum::Extension(crate::idempotency::CarriesSecret),
        axum::Json(out),
    ))
}

async fn update(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(raw): Path<String>,
    Body(b): Body,
) -> Mem0Result {
    let patch = WebhookPatch {
        url: string(&b, "url")?,
        events: event_types(b.get("event_types"))?,
        name: string(&b, "name")?,
        ..WebhookPatch::default()
    };
    let hook = app.webhooks.update(&ctx, id(&raw)?, patch).await?;
    let mut out = webhook_json(&hook);
    out["message"] = json!("Webhook updated successfully");
    Ok(axum::Json(out))
}

async fn remove(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(raw): Path<String>,
) -> Mem0Result {
    app.webhooks.delete(&ctx, id(&raw)?).await?;
    Ok(axum::Json(
        json!({"message": "Webhook deleted successfully"}),
    ))
}
