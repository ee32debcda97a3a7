//! Webhooks and their delivery attempts in the `webhooks` and
//! `webhook_attempts` tables. Deliveries are jobs (`jobs.rs`).

use async_trait::async_trait;
use engram_core::memory::Scope;
use engram_core::ports::{ATTEMPTS_KEPT, DeliveryAttempt, WebhookStore};
use engram_core::webhook::{Webhook, WebhookEvent, WebhookFormat};
use engram_core::{Error, Result};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::rows::ts;
use crate::{SqliteStore, db_err};

const COLUMNS: &str = "id, url, events, org_id, app_id, user_id, agent_id, run_id, name, description, \
     format, project_id, include_text, enabled, failures, disabled_reason, secret, created_by, \
     created_at, updated_at";

fn uuid(s: &str) -> Result<Uuid> {
    s.parse()
        .map_err(|e| Error::store(format!("bad uuid {s}: {e}")))
}

fn row_to_webhook(row: &rusqlite::Row<'_>) -> Result<Webhook> {
    let g = |e: rusqlite::Error| Error::store(format!("reading webhooks row: {e}"));
    let id: String = row.get(0).map_err(g)?;
    let format: String = row.get(10).map_err(g)?;
    Ok(Webhook {
        id: uuid(&id)?,
        url: row.get(1).map_err(g)?,
        events: WebhookEvent::from_mask(row.get(2).map_err(g)?),
        scope: Scope {
            org_id: row.get(3).map_err(g)?,
            app_id: row.get(4).map_err(g)?,
            user_id: row.get(5).map_err(g)?,
            agent_id: row.get(6).map_err(g)?,
            run_id: row.get(7).map_err(g)?,
        },
        name: row.get(8).map_err(g)?,
        description: row.get(9).map_err(g)?,
        format: WebhookFormat::parse(&format).map_err(|e| Error::store(e.message))?,
        project_id: row.get(11).map_err(g)?,
        include_text: row.get(12).map_err(g)?,
        enabled: row.get(13).map_err(g)?,
        consecutive_failures: row.get(14).map_err(g)?,
        disabled_reason: row.get(15).map_err(g)?,
        secret: row.get(16).map_err(g)?,
        created_by: row.get(17).map_err(g)?,
        created_at: ts(row.get(18).map_err(g)?)?,
        updated_at: ts(row.get(19).map_err(g)?)?,
    })
}

/// The enabled webhooks (inside a write transaction, for `apply_batch`).
pub(crate) fn enabled(conn: &Connection) -> Result<Vec<Webhook>> {
    query(conn, "WHERE enabled = 1")
}

fn query(conn: &Connection, clause: &str) -> Result<Vec<Webhook>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM webhooks {clause} ORDER BY created_at, id"
        ))
        .map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db_err)? {
        out.push(row_to_webhook(r)?);
    }
    Ok(out)
}

fn insert(conn: &Connection, w: &Webhook) -> Result<usize> {
    conn.prepare_cached(&format!(
        "INSERT INTO webhooks ({COLUMNS}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
    ))
        .and_then(|mut stmt| {
            stmt.execute(params![
                w.id.to_string(),
                w.url,
                WebhookEvent::mask(&w.events),
                w.scope.org_id,
                w.scope.app_id,
                w.scope.user_id,
                w.scope.agent_id,
                w.scope.run_id,
                w.name,
                w.description,
                w.format.as_str(),
                w.project_id,
                w.include_text,
                w.enabled,
                w.consecutive_failures,
                w.disabled_reason,
                w.secret,
                w.created_by,
                w.created_at.as_millisecond(),
                w.updated_at.as_millisecond(),
            ])
        })
        .map_err(db_err)
}

fn row_to_attempt(row: &rusqlite::Row<'_>) -> Result<DeliveryAttempt> {
    let g = |e: rusqlite::Error| Error::store(format!("reading webhook_attempts row: {e}"));
    let id: String = row.get(0).map_err(g)?;
    let hook: String = row.get(1).map_err(g)?;
    let delivery: String = row.get(2).map_err(g)?;
    let event: String = row.get(3).map_err(g)?;
    let latency: i64 = row.get(7).map_err(g)?;
    Ok(DeliveryAttempt {
        id: uuid(&id)?,
        webhook_id: uuid(&hook)?,
        delivery_id: uuid(&delivery)?,
        event: WebhookEvent::parse(&event).map_err(|e| Error::store(e.message))?,
        attempt: row.get(4).map_err(g)?,
        outcome: row.get(5).map_err(g)?,
        status_code: row.get(6).map_err(g)?,
        latency_ms: u64::try_from(latency).unwrap_or(0),
        error: row.get(8).map_err(g)?,
        at: ts(row.get(9).map_err(g)?)?,
    })
}

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn webhook_insert(&self, hook: &Webhook) -> Result<()> {
        let hook = hook.clone();
        self.write(move |conn| insert(conn, &hook).map(drop)).await
    }

    async fn webhook_get(&self, id: Uuid) -> Result<Option<Webhook>> {
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM webhooks WHERE id = ?1"))
                .map_err(db_err)?;
            let mut rows = stmt.query([id.to_string()]).map_err(db_err)?;
            match rows.next().map_err(db_err)? {
                Some(r) => Ok(Some(row_to_webhook(r)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn webhook_list(&self) -> Result<Vec<Webhook>> {
        self.read(|conn, _| query(conn, "")).await
    }

    async fn webhook_update(&self, hook: &Webhook) -> Result<bool> {
        let hook = hook.clone();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE webhooks SET url = ?2, events = ?3, name = ?4, description = ?5, \
                     include_text = ?6, updated_at = ?7 WHERE id = ?1",
                    params![
                        hook.id.to_string(),
                        hook.url,
                        WebhookEvent::mask(&hook.events),
                        hook.name,
                        hook.description,
                        hook.include_text,
                        hook.updated_at.as_millisecond(),
                    ],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn webhook_set_enabled(
        &self,
        id: Uuid,
        enabled: bool,
        reason: Option<&str>,
        at: Timestamp,
    ) -> Result<bool> {
        let reason = reason.map(str::to_owned);
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE webhooks SET enabled = ?2, disabled_reason = ?3, updated_at = ?4, \
                     failures = CASE WHEN ?2 THEN 0 ELSE failures END WHERE id = ?1",
                    params![id.to_string(), enabled, reason, at.as_millisecond()],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn webhook_set_secret(&self, id: Uuid, secret: &str, at: Timestamp) -> Result<bool> {
        let secret = secret.to_owned();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE webhooks SET secret = ?2, updated_at = ?3 WHERE id = ?1",
                    params![id.to_string(), secret, at.as_millisecond()],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn webhook_delete(&self, id: Uuid) -> Result<bool> {
        self.write_tx("webhook delete", move |_, tx| {
            let id = id.to_string();
            tx.execute("DELETE FROM webhook_attempts WHERE webhook_id = ?1", [&id])
                .map_err(db_err)?;
            let n = tx
                .execute("DELETE FROM webhooks WHERE id = ?1", [&id])
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn webhook_record(&self, a: &DeliveryAttempt, max_failures: u32) -> Result<bool> {
        let a = a.clone();
        self.write_tx("webhook attempt", move |_, tx| {
            let hook = a.webhook_id.to_string();
            let Some((enabled, failures)) = tx
                .query_row(
                    "SELECT enabled, failures FROM webhooks WHERE id = ?1",
                    [&hook],
                    |r| Ok((r.get::<_, bool>(0)?, r.get::<_, u32>(1)?)),
                )
                .optional()
                .map_err(db_err)?
            else {
                return Ok(false);
            };
            tx.execute(
                "INSERT INTO webhook_attempts (id, webhook_id, delivery_id, event, attempt, outcome, \
                 status_code, latency_ms, error, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    a.id.to_string(),
                    hook,
                    a.delivery_id.to_string(),
                    a.event.as_str(),
                    a.attempt,
                    a.outcome,
                    a.status_code,
                    i64::try_from(a.latency_ms).unwrap_or(i64::MAX),
                    a.error,
                    a.at.as_millisecond(),
                ],
            )
            .map_err(db_err)?;
            tx.execute(
                "DELETE FROM webhook_attempts WHERE webhook_id = ?1 AND id NOT IN \
                 (SELECT id FROM webhook_attempts WHERE webhook_id = ?1 ORDER BY id DESC LIMIT ?2)",
                params![hook, ATTEMPTS_KEPT as i64],
            )
            .map_err(db_err)?;
            let delivered = a.outcome == "delivered";
            let failures = if delivered { 0 } else { failures.saturating_add(1) };
            let disabled = enabled && !delivered && failures >= max_failures;
            let reason = format!("{max_failures} delivery attempts failed in a row");
            tx.execute(
                "UPDATE webhooks SET failures = ?2, enabled = enabled AND NOT ?3, \
                 disabled_reason = CASE WHEN ?3 THEN ?4 ELSE disabled_reason END WHERE id = ?1",
                params![hook, failures, disabled, reason],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(disabled)
        })
        .await
    }

    async fn webhook_attempts(&self, id: Uuid, limit: usize) -> Result<Vec<DeliveryAttempt>> {
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, webhook_id, delivery_id, event, attempt, outcome, status_code, latency_ms, \
                     error, at FROM webhook_attempts WHERE webhook_id = ?1 ORDER BY id DESC LIMIT ?2",
                )
                .map_err(db_err)?;
            let mut rows = stmt
                .query(params![id.to_string(), limit as i64])
                .map_err(db_err)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(db_err)? {
                out.push(row_to_attempt(r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn webhook_pending(&self) -> Result<u64> {
        self.read(|conn, _| {
            conn.query_row(
                "SELECT count(*) FROM jobs WHERE kind = 'webhook' AND state IN ('queued', 'running')",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(db_err)
        })
        .await
    }
}
