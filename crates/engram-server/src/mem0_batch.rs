//! Mem0's batch routes (`batch_update`, `batch_delete`): many memories in
//! one transaction — all change or none does — each checked against the
//! key's binding like a single update or delete, and an error naming the
//! memory that stopped the batch. And `feedback`: a user's rating of a
//! memory, kept in its history and used by search.

use axum::Router;
use axum::extract::State;
use axum::routing::{post, put};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::mem0::{Body, Mem0Result, id_or, invalid, string, update_input};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/batch/", put(batch_update).delete(batch_delete))
        .route("/v1/feedback/", post(feedback))
}

/// The `memories` list of a batch body, each with its `memory_id`.
fn items(b: &Map<String, Value>) -> Mem0Result<Vec<(uuid::Uuid, &Map<String, Value>)>> {
    let Some(list) = b.get("memories").and_then(Value::as_array) else {
        return Err(invalid(
            "`memories` must be a list of objects with a `memory_id`",
        ));
    };
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let Some(obj) = item.as_object() else {
                return Err(invalid(format!("`memories[{i}]` must be an object")));
            };
            let raw = string(obj, "memory_id")?
                .ok_or_else(|| invalid(format!("`memories[{i}].memory_id` is required")))?;
            let id = id_or(&raw, || {
                format!("memory {raw} not found (`memories[{i}].memory_id`)")
            })?;
            Ok((id, obj))
        })
        .collect()
}

/// `PUT /v1/batch/`: `{"memories": [{"memory_id", "text"?, "metadata"?}]}`.
async fn batch_update(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Body(b): Body,
) -> Mem0Result {
    let updates = items(&b)?
        .into_iter()
        .map(|(id, obj)| Ok((id, update_input(obj)?)))
        .collect::<Mem0Result<Vec<_>>>()?;
    let n = app.memory.update_many(&ctx, updates).await?;
    Ok(axum::Json(
        json!({"message": format!("Successfully updated {n} memories")}),
    ))
}

/// `DELETE /v1/batch/`: `{"memories": [{"memory_id"}]}`.
async fn batch_delete(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Body(b): Body,
) -> Mem0Result {
    let ids = items(&b)?.into_iter().map(|(id, _)| id).collect();
    let n = app.memory.delete_many(&ctx, ids).await?;
    Ok(axum::Json(
        json!({"message": format!("Successfully deleted {n} memories")}),
    ))
}

/// `POST /v1/feedback/`: `{"memory_id", "feedback": "POSITIVE" | "NEGATIVE" |
/// "VERY_NEGATIVE" | null, "feedback_reason"?}`.
async fn feedback(State(app): State<AppState>, Caller(ctx): Caller, Body(b): Body) -> Mem0Result {
    let raw = string(&b, "memory_id")?.ok_or_else(|| invalid("`memory_id` is required"))?;
    let id = id_or(&raw, || format!("memory {raw} not found"))?;
    let rating = string(&b, "feedback")?
        .map(|f| engram_core::memory::Feedback::parse(&f))
        .transpose()?;
    let reason = string(&b, "feedback_reason")?;
    let m = app
        .memory
        .feedback(&ctx, id, rating, reason.clone())
        .await?;
    Ok(axum::Json(json!({
        "id": m.id,
        "feedback": rating.map(|f| f.as_str()),
        "feedback_reason": reason,
        "message": "Feedback recorded",
    })))
}
