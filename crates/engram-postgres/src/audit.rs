//! The audit log (append-only: a trigger refuses UPDATE, DELETE and TRUNCATE) and erasure.

use async_trait::async_trait;
use engram_core::Result;
use engram_core::memory::ScopeField;
use engram_core::ports::{AuditEvent, AuditQuery, AuditStore, ErasureCounts, ErasureTarget};
use jiff::Timestamp;
use tokio_postgres::Transaction;

use crate::error::ApplyError;
use crate::rows::{get, ts};
use crate::{PgStore, pg_err};

/// Appends one event inside the caller's transaction.
pub(crate) async fn append(
    tx: &Transaction<'_>,
    e: &AuditEvent,
) -> std::result::Result<(), ApplyError> {
    tx.execute(
        "INSERT INTO audit (id, at, actor, action, org_id, target, request_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &e.id,
            &e.at.as_millisecond(),
            &e.actor,
            &e.action,
            &e.org_id,
            &e.target,
            &e.request_id,
            &e.detail,
        ],
    )
    .await?;
    Ok(())
}

/// Removes every record of the target inside `tx`; returns the counts.
pub(crate) async fn erase(
    tx: &Transaction<'_>,
    target: &ErasureTarget,
    mut audit: AuditEvent,
) -> std::result::Result<ErasureCounts, ApplyError> {
    // Column names come from a fixed list; the ids are parameters. Every id
    // of the target and of the caller's binding must match.
    let conds = target.conditions();
    let values: Vec<&str> = conds.iter().map(|(_, v)| *v).collect();
    let args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
        .iter()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let matching = |column: &dyn Fn(&str) -> String| -> String {
        conds
            .iter()
            .enumerate()
            .map(|(i, (f, _))| format!("{} = ${}::text", column(f.as_str()), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let cond = matching(&|c| c.to_owned());
    mark_table(tx).await?;
    tx.execute(
        &format!(
            "INSERT INTO erased SELECT rowid, id, invalid_at IS NULL FROM memories WHERE {cond}"
        ),
        &args,
    )
    .await?;
    let mut c = remove_marked(
        tx,
        &format!("({cond}) OR memory_id IN (SELECT id FROM erased)"),
        &args,
    )
    .await?;
    // Jobs about the target, whatever their state (payloads hold the text).
    c.jobs = tx
        .execute(
            &format!(
                "DELETE FROM jobs WHERE {}",
                matching(&|c| format!("scope::jsonb ->> '{c}'"))
            ),
            &args,
        )
        .await?;
    c.llm_usage_rows = tx
        .execute(&format!("DELETE FROM llm_usage WHERE {cond}"), &args)
        .await?;
    // Stored responses may quote the erased memories: the callers whose
    // binding lies within the erased scope lose their replay records (the
    // operator's too); others keep theirs.
    let within: Vec<(ScopeField, &str)> = target.within.iter().collect();
    let within_values: Vec<&str> = within.iter().map(|(_, v)| *v).collect();
    let within_args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = within_values
        .iter()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let keys_within = match within
        .iter()
        .enumerate()
        .map(|(i, (f, _))| format!("{} = ${}::text", f.as_str(), i + 1))
        .collect::<Vec<_>>()
    {
        w if w.is_empty() => "true".to_owned(),
        w => w.join(" AND "),
    };
    c.idempotency_records = tx
        .execute(
            &format!(
                "DELETE FROM idempotency WHERE principal NOT LIKE 'key:%' \
                 OR substr(principal, 5) IN (SELECT id FROM api_keys WHERE {keys_within})"
            ),
            &within_args,
        )
        .await?;
    // Keys bound to the target name it (runs cannot be bound).
    if target.field != ScopeField::Run {
        c.api_keys = tx
            .execute(&format!("DELETE FROM api_keys WHERE {cond}"), &args)
            .await?;
    }
    audit.add_counts(&c, false);
    append(tx, &audit).await?;
    Ok(c)
}

async fn mark_table(tx: &Transaction<'_>) -> std::result::Result<(), ApplyError> {
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS erased (r bigint PRIMARY KEY, id uuid, cur boolean) ON COMMIT DELETE ROWS",
    )
    .await?;
    Ok(())
}

/// Removes the memory versions marked in `erased` with their entity rows
/// (the keyword and vector indexes go with the rows), and the history rows
/// matching `history_cond` (with `args`).
async fn remove_marked(
    tx: &Transaction<'_>,
    history_cond: &str,
    args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> std::result::Result<ErasureCounts, ApplyError> {
    let mut c = ErasureCounts::default();
    let row = tx
        .query_one(
            "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE cur) FROM erased",
            &[],
        )
        .await?;
    let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
    c.versions = n(0);
    c.memories = n(1);
    // The keyword (tsvector) and vector (HNSW) indexes hold current versions.
    c.keyword_index_entries = n(2);
    c.vector_index_entries = n(2);
    c.entity_index_entries = tx
        .execute(
            "DELETE FROM entities WHERE memory IN (SELECT r FROM erased)",
            &[],
        )
        .await?;
    c.history_events = tx
        .execute(&format!("DELETE FROM history WHERE {history_cond}"), args)
        .await?;
    tx.execute(
        "DELETE FROM memories WHERE rowid IN (SELECT r FROM erased)",
        &[],
    )
    .await?;
    Ok(c)
}

/// The lock a node holds while sweeping, so nodes do not sweep the same rows at once.
const SWEEP_LOCK: i64 = 0x656e_6772_616d + 1;

/// Removes up to `limit` memories whose current version expired by `now`
/// (all versions, history, index entries) and appends `audit` with the
/// counts when anything went. If another node is sweeping, does nothing.
/// Queues `memory.expired` deliveries for the marked current versions, in
/// the sweep's transaction (only when some webhook wants the event).
async fn announce_expiry(
    tx: &Transaction<'_>,
    now: Timestamp,
) -> std::result::Result<(), ApplyError> {
    let hooks = crate::webhooks::enabled(tx).await?;
    if !hooks.iter().any(|h| {
        h.events
            .contains(&engram_core::webhook::WebhookEvent::MemoryExpired)
    }) {
        return Ok(());
    }
    let rows = tx
        .query(
            "SELECT m.id, m.version, m.text, m.org_id, m.app_id, m.user_id, m.agent_id, m.run_id \
             FROM memories m JOIN erased e ON e.r = m.rowid WHERE m.invalid_at IS NULL",
            &[],
        )
        .await?;
    let mut expired = Vec::with_capacity(rows.len());
    for r in &rows {
        let version: i32 = crate::rows::get(r, 1)?;
        expired.push(engram_core::ports::Expired {
            id: crate::rows::get(r, 0)?,
            version: u32::try_from(version).unwrap_or_default(),
            text: crate::rows::get(r, 2)?,
            scope: engram_core::memory::Scope {
                org_id: crate::rows::get(r, 3)?,
                app_id: crate::rows::get(r, 4)?,
                user_id: crate::rows::get(r, 5)?,
                agent_id: crate::rows::get(r, 6)?,
                run_id: crate::rows::get(r, 7)?,
            },
        });
    }
    for job in engram_core::ports::expiry_jobs(&hooks, &expired, now) {
        crate::jobs::insert(tx, &job).await?;
    }
    Ok(())
}

pub(crate) async fn sweep(
    tx: &Transaction<'_>,
    now: Timestamp,
    limit: usize,
    mut audit: AuditEvent,
) -> std::result::Result<ErasureCounts, ApplyError> {
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&SWEEP_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(ErasureCounts::default());
    }
    mark_table(tx).await?;
    tx.execute(
        // The expired current versions are locked (skipping any a writer
        // holds): an update or touch on another node waits for this
        // transaction and then finds the memory gone, instead of the sweep
        // deleting a version or history row written after it looked.
        "INSERT INTO erased SELECT rowid, id, invalid_at IS NULL FROM memories WHERE id IN \
         (SELECT id FROM memories WHERE expires_at IS NOT NULL AND invalid_at IS NULL \
          AND expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        &[&now.as_millisecond(), &(limit as i64)],
    )
    .await?;
    announce_expiry(tx, now).await?;
    let c = remove_marked(tx, "memory_id IN (SELECT id FROM erased)", &[]).await?;
    if c.memories > 0 {
        audit.add_counts(&c, true);
        append(tx, &audit).await?;
    }
    Ok(c)
}

#[async_trait]
impl AuditStore for PgStore {
    async fn audit_list(&self, q: &AuditQuery) -> Result<Vec<(i64, AuditEvent)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, id, at, actor, action, org_id, target, request_id, detail FROM audit \
                 WHERE ($1::text IS NULL OR org_id = $1::text) AND ($2::text IS NULL OR action = $2::text) \
                 AND ($3::text IS NULL OR actor = $3::text) AND ($4::text IS NULL OR target = $4::text) \
                 AND ($5::bigint IS NULL OR at >= $5::bigint) AND ($6::bigint IS NULL OR at < $6::bigint) \
                 AND seq > $7 ORDER BY seq LIMIT $8",
                &[
                    &q.org_id,
                    &q.action,
                    &q.actor,
                    &q.target,
                    &q.since.map(|t| t.as_millisecond()),
                    &q.until.map(|t| t.as_millisecond()),
                    &q.after.unwrap_or(0),
                    &(q.limit as i64),
                ],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    get(r, 0)?,
                    AuditEvent {
                        id: get(r, 1)?,
                        at: ts(get(r, 2)?)?,
                        actor: get(r, 3)?,
                        action: get(r, 4)?,
                        org_id: get(r, 5)?,
                        target: get(r, 6)?,
                        request_id: get(r, 7)?,
                        detail: get(r, 8)?,
                    },
                ))
            })
            .collect()
    }
}
