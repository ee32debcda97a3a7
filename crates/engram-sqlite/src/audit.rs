//! The audit log (append-only: triggers refuse UPDATE and DELETE) and erasure.

use async_trait::async_trait;
use engram_core::Result;
use engram_core::memory::ScopeField;
use engram_core::ports::{AuditEvent, AuditQuery, AuditStore, ErasureCounts, ErasureTarget};
use jiff::Timestamp;
use rusqlite::{Connection, params};

use crate::rows::ts;
use crate::{SqliteStore, db_err};

/// Appends one event inside the caller's transaction.
pub(crate) fn append(conn: &Connection, e: &AuditEvent) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit (id, at, actor, action, org_id, target, request_id, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            e.id.to_string(),
            e.at.as_millisecond(),
            e.actor,
            e.action,
            e.org_id,
            e.target,
            e.request_id,
            e.detail.to_string(),
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

/// Removes every record of the target inside `tx`; returns the counts and the
/// row keys of the current versions removed (for the catalog and vector index).
pub(crate) fn erase(
    tx: &rusqlite::Transaction<'_>,
    target: &ErasureTarget,
    mut audit: AuditEvent,
) -> Result<(ErasureCounts, Vec<i64>)> {
    // Column names come from a fixed list; the ids are parameters. Every id
    // of the target and of the caller's binding must match.
    let conds = target.conditions();
    let args: Vec<&str> = conds.iter().map(|(_, v)| *v).collect();
    let args = rusqlite::params_from_iter(args);
    let matching = |column: &dyn Fn(&str) -> String| -> String {
        conds
            .iter()
            .enumerate()
            .map(|(i, (f, _))| format!("{} = ?{}", column(f.as_str()), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let cond = matching(&|c| c.to_owned());
    let exec =
        |sql: &str| -> Result<u64> { Ok(tx.execute(sql, args.clone()).map_err(db_err)? as u64) };
    mark_table(tx)?;
    exec(&format!(
        "INSERT INTO temp.erased SELECT rowid, id, invalid_at IS NULL FROM memories WHERE {cond}"
    ))?;
    let (mut c, current) = remove_marked(
        tx,
        &format!("({cond}) OR memory_id IN (SELECT id FROM temp.erased)"),
        args.clone(),
    )?;
    // Jobs about the target, whatever their state (payloads hold the text).
    c.jobs = exec(&format!(
        "DELETE FROM jobs WHERE {}",
        matching(&|c| format!("json_extract(scope, '$.{c}')"))
    ))?;
    c.llm_usage_rows = exec(&format!("DELETE FROM llm_usage WHERE {cond}"))?;
    // Stored responses may quote the erased memories: the callers whose
    // binding lies within the erased scope lose their replay records (the
    // operator's too); others keep theirs.
    let within: Vec<(engram_core::memory::ScopeField, &str)> = target.within.iter().collect();
    let keys_within = within
        .iter()
        .enumerate()
        .map(|(i, (f, _))| format!("{} = ?{}", f.as_str(), i + 1))
        .collect::<Vec<_>>();
    let keys_within = if keys_within.is_empty() {
        "1".to_owned()
    } else {
        keys_within.join(" AND ")
    };
    c.idempotency_records = tx
        .execute(
            &format!(
                "DELETE FROM idempotency WHERE principal NOT LIKE 'key:%' \
                 OR substr(principal, 5) IN (SELECT id FROM api_keys WHERE {keys_within})"
            ),
            rusqlite::params_from_iter(within.iter().map(|(_, v)| *v)),
        )
        .map_err(db_err)? as u64;
    // Keys bound to the target name it (runs cannot be bound).
    if target.field != ScopeField::Run {
        c.api_keys = exec(&format!("DELETE FROM api_keys WHERE {cond}"))?;
    }
    tx.execute_batch("DROP TABLE temp.erased;")
        .map_err(db_err)?;
    audit.add_counts(&c, false);
    append(tx, &audit)?;
    Ok((c, current))
}

fn mark_table(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute_batch(
        "DROP TABLE IF EXISTS temp.erased; CREATE TEMP TABLE erased (r INTEGER PRIMARY KEY, id TEXT, cur INTEGER);",
    )
    .map_err(db_err)
}

/// Removes the memory versions marked in `temp.erased` with their keyword
/// and entity index entries, and the history rows matching `history_cond`
/// (with `args`). Returns the counts and the row keys of the current
/// versions removed (for the catalog and vector index).
fn remove_marked(
    tx: &rusqlite::Transaction<'_>,
    history_cond: &str,
    args: impl rusqlite::Params,
) -> Result<(ErasureCounts, Vec<i64>)> {
    let mut c = ErasureCounts::default();
    let count = |sql: &str| -> Result<u64> {
        tx.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(db_err)
    };
    c.versions = count("SELECT count(*) FROM temp.erased")?;
    c.memories = count("SELECT count(DISTINCT id) FROM temp.erased")?;
    let current: Vec<i64> = {
        let mut stmt = tx
            .prepare("SELECT r FROM temp.erased WHERE cur")
            .map_err(db_err)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)?
    };
    // The keyword and vector indexes hold current versions only.
    c.keyword_index_entries = current.len() as u64;
    c.vector_index_entries = current.len() as u64;
    for r in &current {
        tx.prepare_cached("DELETE FROM memories_fts WHERE rowid = ?1")
            .and_then(|mut s| s.execute([r]))
            .map_err(db_err)?;
    }
    c.entity_index_entries = tx
        .execute(
            "DELETE FROM entities WHERE memory IN (SELECT r FROM temp.erased)",
            [],
        )
        .map_err(db_err)? as u64;
    c.history_events = tx
        .execute(&format!("DELETE FROM history WHERE {history_cond}"), args)
        .map_err(db_err)? as u64;
    tx.execute(
        "DELETE FROM memories WHERE rowid IN (SELECT r FROM temp.erased)",
        [],
    )
    .map_err(db_err)?;
    Ok((c, current))
}

/// Removes up to `limit` memories whose current version expired by `now`
/// (all versions, history, index entries); appends `audit` with the counts
/// when anything went.
/// Queues `memory.expired` deliveries for the marked current versions, in
/// the sweep's transaction (only when some webhook wants the event).
fn announce_expiry(tx: &rusqlite::Transaction<'_>, now: Timestamp) -> Result<()> {
    let hooks = crate::webhooks::enabled(tx)?;
    if !hooks.iter().any(|h| {
        h.events
            .contains(&engram_core::webhook::WebhookEvent::MemoryExpired)
    }) {
        return Ok(());
    }
    let mut stmt = tx
        .prepare(
            "SELECT m.id, m.version, m.text, m.org_id, m.app_id, m.user_id, m.agent_id, m.run_id \
             FROM memories m JOIN temp.erased e ON e.r = m.rowid WHERE m.invalid_at IS NULL",
        )
        .map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    let mut expired = Vec::new();
    while let Some(r) = rows.next().map_err(db_err)? {
        let id: String = r.get(0).map_err(db_err)?;
        expired.push(engram_core::ports::Expired {
            id: id
                .parse()
                .map_err(|e| engram_core::Error::store(format!("bad memory id {id}: {e}")))?,
            version: r.get(1).map_err(db_err)?,
            text: r.get(2).map_err(db_err)?,
            scope: engram_core::memory::Scope {
                org_id: r.get(3).map_err(db_err)?,
                app_id: r.get(4).map_err(db_err)?,
                user_id: r.get(5).map_err(db_err)?,
                agent_id: r.get(6).map_err(db_err)?,
                run_id: r.get(7).map_err(db_err)?,
            },
        });
    }
    for job in engram_core::ports::expiry_jobs(&hooks, &expired, now) {
        crate::jobs::insert(tx, &job)?;
    }
    Ok(())
}

pub(crate) fn sweep(
    tx: &rusqlite::Transaction<'_>,
    now: Timestamp,
    limit: usize,
    mut audit: AuditEvent,
) -> Result<(ErasureCounts, Vec<i64>)> {
    mark_table(tx)?;
    tx.execute(
        "INSERT INTO temp.erased SELECT rowid, id, invalid_at IS NULL FROM memories WHERE id IN \
         (SELECT id FROM memories WHERE expires_at IS NOT NULL AND invalid_at IS NULL \
          AND expires_at <= ?1 LIMIT ?2)",
        params![now.as_millisecond(), limit as i64],
    )
    .map_err(db_err)?;
    announce_expiry(tx, now)?;
    let (c, current) = remove_marked(tx, "memory_id IN (SELECT id FROM temp.erased)", [])?;
    tx.execute_batch("DROP TABLE temp.erased;")
        .map_err(db_err)?;
    if c.memories > 0 {
        audit.add_counts(&c, true);
        append(tx, &audit)?;
    }
    Ok((c, current))
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit_list(&self, q: &AuditQuery) -> Result<Vec<(i64, AuditEvent)>> {
        let q = q.clone();
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, id, at, actor, action, org_id, target, request_id, detail FROM audit \
                     WHERE (?1 IS NULL OR org_id = ?1) AND (?2 IS NULL OR action = ?2) \
                     AND (?3 IS NULL OR actor = ?3) AND (?4 IS NULL OR target = ?4) \
                     AND (?5 IS NULL OR at >= ?5) AND (?6 IS NULL OR at < ?6) AND seq > ?7 \
                     ORDER BY seq LIMIT ?8",
                )
                .map_err(db_err)?;
            let mut rows = stmt
                .query(params![
                    q.org_id,
                    q.action,
                    q.actor,
                    q.target,
                    q.since.map(|t| t.as_millisecond()),
                    q.until.map(|t| t.as_millisecond()),
                    q.after.unwrap_or(0),
                    q.limit as i64,
                ])
                .map_err(db_err)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(db_err)? {
                let id: String = r.get(1).map_err(db_err)?;
                let detail: String = r.get(8).map_err(db_err)?;
                out.push((
                    r.get(0).map_err(db_err)?,
                    AuditEvent {
                        id: id.parse().map_err(|e| {
                            engram_core::Error::store(format!("bad audit id {id}: {e}"))
                        })?,
                        at: ts(r.get(2).map_err(db_err)?)?,
                        actor: r.get(3).map_err(db_err)?,
                        action: r.get(4).map_err(db_err)?,
                        org_id: r.get(5).map_err(db_err)?,
                        target: r.get(6).map_err(db_err)?,
                        request_id: r.get(7).map_err(db_err)?,
                        detail: serde_json::from_str(&detail).unwrap_or_default(),
                    },
                ));
            }
            Ok(out)
        })
        .await
    }
}
