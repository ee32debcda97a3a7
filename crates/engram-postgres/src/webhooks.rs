//! Webhooks and their delivery attempts in Postgres. Deliveries are jobs
//! (`jobs.rs`): claimed with `FOR UPDATE SKIP LOCKED`, so a delivery goes
//! out from one node at a time however many nodes run.

use async_trait::async_trait;
use engram_core::memory::Scope;
use engram_core::ports::{ATTEMPTS_KEPT, DeliveryAttempt, WebhookStore};
use engram_core::webhook::{Webhook, WebhookEvent, WebhookFormat};
use engram_core::{Error, Result};
use jiff::Timestamp;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::error::ApplyError;
use crate::rows::{get, int, ts};
use crate::{PgStore, pg_err};

const COLUMNS: &str = "id, url, events, org_id, app_id, user_id, agent_id, run_id, name, description, \
     format, project_id, include_text, enabled, failures, disabled_reason, secret, created_by, \
     created_at, updated_at";

fn row_to_webhook(row: &Row) -> Result<Webhook> {
    let format: String = get(row, 10)?;
    let failures: i32 = get(row, 14)?;
    Ok(Webhook {
        id: get(row, 0)?,
        url: get(row, 1)?,
        events: WebhookEvent::from_mask(get(row, 2)?),
        scope: Scope {
            org_id: get(row, 3)?,
            app_id: get(row, 4)?,
            user_id: get(row, 5)?,
            agent_id: get(row, 6)?,
            run_id: get(row, 7)?,
        },
        name: get(row, 8)?,
        description: get(row, 9)?,
        format: WebhookFormat::parse(&format).map_err(|e| Error::store(e.message))?,
        project_id: get(row, 11)?,
        include_text: get(row, 12)?,
        enabled: get(row, 13)?,
        consecutive_failures: u32::try_from(failures).unwrap_or_default(),
        disabled_reason: get(row, 15)?,
        secret: get(row, 16)?,
        created_by: get(row, 17)?,
        created_at: ts(get(row, 18)?)?,
        updated_at: ts(get(row, 19)?)?,
    })
}

/// The enabled webhooks (inside a write transaction, for `apply_batch`).
pub(crate) async fn enabled(
    client: &impl GenericClient,
) -> std::result::Result<Vec<Webhook>, ApplyError> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM webhooks WHERE enabled ORDER BY created_at, id"),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(row_to_webhook)
        .collect::<Result<Vec<_>>>()?)
}

async fn insert(client: &impl GenericClient, w: &Webhook) -> Result<u64> {
    client
        .execute(
            &format!(
                "INSERT INTO webhooks ({COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
            ),
            &[
                &w.id,
                &w.url,
                &WebhookEvent::mask(&w.events),
                &w.scope.org_id,
                &w.scope.app_id,
                &w.scope.user_id,
                &w.scope.agent_id,
                &w.scope.run_id,
                &w.name,
                &w.description,
                &w.format.as_str(),
                &w.project_id,
                &w.include_text,
                &w.enabled,
                &int(w.consecutive_failures),
                &w.disabled_reason,
                &w.secret,
                &w.created_by,
                &w.created_at.as_millisecond(),
                &w.updated_at.as_millisecond(),
            ],
        )
        .await
        .map_err(pg_err)
}

fn row_to_attempt(row: &Row) -> Result<DeliveryAttempt> {
    let event: String = get(row, 3)?;
    let attempt: i32 = get(row, 4)?;
    let status: Option<i32> = get(row, 6)?;
    let latency: i64 = get(row, 7)?;
    Ok(DeliveryAttempt {
        id: get(row, 0)?,
        webhook_id: get(row, 1)?,
        delivery_id: get(row, 2)?,
        event: WebhookEvent::parse(&event).map_err(|e| Error::store(e.message))?,
        attempt: u32::try_from(attempt).unwrap_or_default(),
        outcome: get(row, 5)?,
        status_code: status.and_then(|s| u16::try_from(s).ok()),
        latency_ms: u64::try_from(latency).unwrap_or(0),
        error: get(row, 8)?,
        at: ts(get(row, 9)?)?,
    })
}

#[async_trait]
impl WebhookStore for PgStore {
    async fn webhook_insert(&self, hook: &Webhook) -> Result<()> {
        let client = self.client().await?;
        insert(&**client, hook).await.map(drop)
    }

    async fn webhook_get(&self, id: Uuid) -> Result<Option<Webhook>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM webhooks WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg_err)?;
        row.as_ref().map(row_to_webhook).transpose()
    }

    async fn webhook_list(&self) -> Result<Vec<Webhook>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM webhooks ORDER BY created_at, id"),
                &[],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(row_to_webhook).collect()
    }

    async fn webhook_update(&self, hook: &Webhook) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE webhooks SET url = $2, events = $3, name = $4, description = $5, \
                 include_text = $6, updated_at = $7 WHERE id = $1",
                &[
                    &hook.id,
                    &hook.url,
                    &WebhookEvent::mask(&hook.events),
                    &hook.name,
                    &hook.description,
                    &hook.include_text,
                    &hook.updated_at.as_millisecond(),
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn webhook_set_enabled(
        &self,
        id: Uuid,
        enabled: bool,
        reason: Option<&str>,
        at: Timestamp,
    ) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE webhooks SET enabled = $2, disabled_reason = $3, updated_at = $4, \
                 failures = CASE WHEN $2 THEN 0 ELSE failures END WHERE id = $1",
                &[&id, &enabled, &reason, &at.as_millisecond()],
            )
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn webhook_set_secret(&self, id: Uuid, secret: &str, at: Timestamp) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE webhooks SET secret = $2, updated_at = $3 WHERE id = $1",
                &[&id, &secret, &at.as_millisecond()],
            )
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn webhook_delete(&self, id: Uuid) -> Result<bool> {
        let client = self.client().await?;
        // The attempts go with it (ON DELETE CASCADE).
        let n = client
            .execute("DELETE FROM webhooks WHERE id = $1", &[&id])
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn webhook_record(&self, a: &DeliveryAttempt, max_failures: u32) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // Locks the webhook: two nodes recording at once count both failures.
        let Some(row) = tx
            .query_opt(
                "SELECT enabled, failures FROM webhooks WHERE id = $1 FOR UPDATE",
                &[&a.webhook_id],
            )
            .await
            .map_err(pg_err)?
        else {
            return Ok(false);
        };
        let enabled: bool = get(&row, 0)?;
        let failures: i32 = get(&row, 1)?;
        tx.execute(
            "INSERT INTO webhook_attempts (id, webhook_id, delivery_id, event, attempt, outcome, \
             status_code, latency_ms, error, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &a.id,
                &a.webhook_id,
                &a.delivery_id,
                &a.event.as_str(),
                &int(a.attempt),
                &a.outcome,
                &a.status_code.map(i32::from),
                &i64::try_from(a.latency_ms).unwrap_or(i64::MAX),
                &a.error,
                &a.at.as_millisecond(),
            ],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            "DELETE FROM webhook_attempts WHERE webhook_id = $1 AND id < \
             (SELECT id FROM webhook_attempts WHERE webhook_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1)",
            &[&a.webhook_id, &(ATTEMPTS_KEPT as i64 - 1)],
        )
        .await
        .map_err(pg_err)?;
        let delivered = a.outcome == "delivered";
        let failures = if delivered {
            0
        } else {
            failures.saturating_add(1)
        };
        let disable = enabled && !delivered && failures >= int(max_failures);
        let reason = format!("{max_failures} delivery attempts failed in a row");
        tx.execute(
            "UPDATE webhooks SET failures = $2, enabled = enabled AND NOT $3, \
             disabled_reason = CASE WHEN $3 THEN $4 ELSE disabled_reason END WHERE id = $1",
            &[&a.webhook_id, &failures, &disable, &reason],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(disable)
    }

    async fn webhook_attempts(&self, id: Uuid, limit: usize) -> Result<Vec<DeliveryAttempt>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, webhook_id, delivery_id, event, attempt, outcome, status_code, latency_ms, \
                 error, at FROM webhook_attempts WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2",
                &[&id, &(limit as i64)],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(row_to_attempt).collect()
    }

    async fn webhook_pending(&self) -> Result<u64> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM jobs WHERE kind = 'webhook' AND state IN ('queued', 'running')",
                &[],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        Ok(n.max(0) as u64)
    }
}
