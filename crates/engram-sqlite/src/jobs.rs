//! Durable jobs in the `jobs` table. One writer connection serialises
//! claims, so a job is leased to one worker at a time; a completion is part
//! of the job's own write transaction ([`finish`]).

use std::time::Duration;

use async_trait::async_trait;
use engram_core::ports::write::{from_json, to_json};
use engram_core::ports::{Job, JobCounts, JobState, JobStore};
use engram_core::{Error, ErrorCode, Result};
use jiff::Timestamp;
use rusqlite::{Connection, params};
use uuid::Uuid;

use crate::rows::ts;
use crate::{SqliteStore, db_err};

const COLUMNS: &str = "id, kind, state, payload, principal, scope, request_id, attempts, max_attempts, \
     last_error, result, created_at, updated_at, run_after, lease_owner, lease_until, ordering";

fn row_to_job(row: &rusqlite::Row<'_>) -> Result<Job> {
    let g = |e: rusqlite::Error| Error::store(format!("reading jobs row: {e}"));
    let id: String = row.get(0).map_err(g)?;
    let state: String = row.get(2).map_err(g)?;
    let payload: String = row.get(3).map_err(g)?;
    let principal: String = row.get(4).map_err(g)?;
    let scope: String = row.get(5).map_err(g)?;
    let result: Option<String> = row.get(10).map_err(g)?;
    let lease_until: Option<i64> = row.get(15).map_err(g)?;
    Ok(Job {
        id: id
            .parse()
            .map_err(|e| Error::store(format!("bad job id {id}: {e}")))?,
        kind: row.get(1).map_err(g)?,
        state: JobState::parse(&state).map_err(|e| Error::store(e.message))?,
        payload: from_json(&payload, "payload")?,
        principal: from_json(&principal, "principal")?,
        scope: from_json(&scope, "scope")?,
        request_id: row.get(6).map_err(g)?,
        attempts: row.get(7).map_err(g)?,
        max_attempts: row.get(8).map_err(g)?,
        last_error: row.get(9).map_err(g)?,
        result: result.map(|r| from_json(&r, "result")).transpose()?,
        created_at: ts(row.get(11).map_err(g)?)?,
        updated_at: ts(row.get(12).map_err(g)?)?,
        run_after: ts(row.get(13).map_err(g)?)?,
        lease_owner: row.get(14).map_err(g)?,
        lease_until: lease_until.map(ts).transpose()?,
        ordering: row.get(16).map_err(g)?,
    })
}

/// Marks a job done inside the caller's transaction, if `worker` still holds it.
pub(crate) fn finish(
    conn: &Connection,
    id: Uuid,
    worker: &str,
    result: &serde_json::Value,
    at: Timestamp,
) -> Result<()> {
    let n = conn
        .execute(
            "UPDATE jobs SET state = 'done', result = ?3, lease_owner = NULL, lease_until = NULL, \
             updated_at = ?4, payload = CASE WHEN kind = 'webhook' THEN '{}' ELSE payload END \
             WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
            params![id.to_string(), worker, to_json(result), at.as_millisecond()],
        )
        .map_err(db_err)?;
    if n == 0 {
        return Err(Error::new(
            ErrorCode::Conflict,
            format!("job {id}: the lease was lost to another worker; nothing was written"),
        ));
    }
    Ok(())
}

/// Inserts `job` (inside the caller's transaction, for a webhook delivery).
pub(crate) fn insert(conn: &Connection, job: &Job) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO jobs ({COLUMNS}, org_id, user_id) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
    ))
    .and_then(|mut stmt| {
        stmt.execute(params![
            job.id.to_string(),
            job.kind,
            job.state.as_str(),
            to_json(&job.payload),
            to_json(&job.principal),
            to_json(&job.scope),
            job.request_id,
            job.attempts,
            job.max_attempts,
            job.last_error,
            job.result.as_ref().map(to_json),
            job.created_at.as_millisecond(),
            job.updated_at.as_millisecond(),
            job.run_after.as_millisecond(),
            job.lease_owner,
            job.lease_until.map(|t| t.as_millisecond()),
            job.ordering,
            job.scope.org_id,
            job.scope.user_id,
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

fn get(conn: &Connection, id: Uuid) -> Result<Option<Job>> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))
        .map_err(db_err)?;
    let mut rows = stmt.query([id.to_string()]).map_err(db_err)?;
    match rows.next().map_err(db_err)? {
        Some(r) => Ok(Some(row_to_job(r)?)),
        None => Ok(None),
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn job_insert(&self, job: &Job) -> Result<()> {
        let job = job.clone();
        self.write(move |conn| insert(conn, &job)).await
    }

    async fn job_claim(
        &self,
        worker: &str,
        now: Timestamp,
        lease: Duration,
        deliveries: bool,
    ) -> Result<Option<Job>> {
        let worker = worker.to_owned();
        // Fair across tenants: among due jobs (and jobs whose lease ran out),
        // the org with the fewest jobs running now goes first, then the oldest.
        self.write(move |conn| {
            let now_ms = now.as_millisecond();
            let mut stmt = conn
                .prepare_cached(&format!(
                    "UPDATE jobs SET state = 'running', lease_owner = ?1, lease_until = ?2, \
                     attempts = attempts + 1, updated_at = ?3 \
                     WHERE id = (SELECT j.id FROM jobs j \
                                 WHERE ((j.state = 'queued' AND j.run_after <= ?3) \
                                    OR (j.state = 'running' AND j.lease_until <= ?3)) \
                                   AND (?4 OR j.kind <> 'webhook') \
                                   AND (j.ordering IS NULL OR NOT EXISTS ( \
                                        SELECT 1 FROM jobs e WHERE e.ordering = j.ordering \
                                        AND e.state IN ('queued', 'running') \
                                        AND (e.created_at, e.id) < (j.created_at, j.id))) \
                                 ORDER BY (SELECT count(*) FROM jobs r WHERE r.state = 'running' \
                                           AND r.lease_until > ?3 AND r.org_id IS j.org_id), \
                                          j.run_after, j.created_at LIMIT 1) \
                     RETURNING {COLUMNS}"
                ))
                .map_err(db_err)?;
            let mut rows = stmt
                .query(params![
                    worker,
                    now_ms.saturating_add(ms(lease)),
                    now_ms,
                    deliveries
                ])
                .map_err(db_err)?;
            match rows.next().map_err(db_err)? {
                Some(r) => Ok(Some(row_to_job(r)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn job_renew(&self, id: Uuid, worker: &str, until: Timestamp) -> Result<bool> {
        let worker = worker.to_owned();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE jobs SET lease_until = ?3 \
                     WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
                    params![id.to_string(), worker, until.as_millisecond()],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn job_fail(
        &self,
        id: Uuid,
        worker: &str,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool> {
        let (worker, error) = (worker.to_owned(), error.to_owned());
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE jobs SET state = CASE WHEN ?4 IS NULL THEN 'dead' ELSE 'queued' END, \
                     run_after = COALESCE(?4, run_after), last_error = ?3, lease_owner = NULL, \
                     lease_until = NULL, updated_at = ?5, \
                     payload = CASE WHEN ?4 IS NULL AND kind = 'webhook' THEN '{}' ELSE payload END \
                     WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
                    params![
                        id.to_string(),
                        worker,
                        error,
                        retry_at.map(|t| t.as_millisecond()),
                        now.as_millisecond()
                    ],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn job_get(&self, id: Uuid) -> Result<Option<Job>> {
        self.read(move |conn, _| get(conn, id)).await
    }

    async fn job_list(
        &self,
        state: Option<JobState>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>> {
        let kind = kind.map(str::to_owned);
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) \
                     AND (?3 IS NULL OR kind = ?3) ORDER BY created_at DESC, id DESC LIMIT ?2"
                ))
                .map_err(db_err)?;
            let mut rows = stmt
                .query(params![state.map(JobState::as_str), limit as i64, kind])
                .map_err(db_err)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(db_err)? {
                out.push(row_to_job(r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn job_requeue(&self, id: Uuid, now: Timestamp) -> Result<bool> {
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE jobs SET state = 'queued', attempts = 0, run_after = ?2, updated_at = ?2 \
                     WHERE id = ?1 AND state = 'dead'",
                    params![id.to_string(), now.as_millisecond()],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn job_pending(&self, org_id: Option<&str>) -> Result<u64> {
        let org = org_id.map(str::to_owned);
        self.read(move |conn, _| {
            conn.query_row(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running') AND kind = 'add' \
                 AND org_id IS ?1",
                params![org],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(db_err)
        })
        .await
    }

    async fn job_counts(&self) -> Result<JobCounts> {
        self.read(|conn, _| {
            let mut stmt = conn
                .prepare_cached("SELECT state, count(*) FROM jobs GROUP BY state")
                .map_err(db_err)?;
            let mut rows = stmt.query([]).map_err(db_err)?;
            let mut c = JobCounts::default();
            while let Some(r) = rows.next().map_err(db_err)? {
                let state: String = r.get(0).map_err(db_err)?;
                c.set(&state, r.get::<_, i64>(1).map_err(db_err)?.max(0) as u64);
            }
            Ok(c)
        })
        .await
    }
}

#[async_trait]
impl engram_core::ports::IdempotencyStore for SqliteStore {
    async fn idem_begin(
        &self,
        caller: &str,
        key: &str,
        request_hash: &str,
        now: Timestamp,
        max_per_caller: usize,
    ) -> Result<engram_core::ports::IdemBegin> {
        use engram_core::ports::{IDEMPOTENCY_ABANDONED_AFTER_SECS, IdemBegin, StoredResponse};
        use rusqlite::OptionalExtension;
        let (caller, key, hash) = (caller.to_owned(), key.to_owned(), request_hash.to_owned());
        self.write(move |conn| {
            let found: Option<(String, Option<i64>, Option<String>, i64)> = conn
                .query_row(
                    "SELECT request_hash, status, response, created_at FROM idempotency \
                     WHERE principal = ?1 AND key = ?2",
                    params![caller, key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(db_err)?;
            let reserve = |conn: &Connection| {
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency (principal, key, request_hash, status, response, created_at) \
                     VALUES (?1, ?2, ?3, NULL, NULL, ?4)",
                    params![caller, key, hash, now.as_millisecond()],
                )
                .map_err(db_err)
            };
            match found {
                None => {
                    // At most the cap per caller: the oldest go first.
                    conn.execute(
                        "DELETE FROM idempotency WHERE principal = ?1 AND key IN (SELECT key FROM idempotency \
                         WHERE principal = ?1 ORDER BY created_at DESC LIMIT -1 OFFSET ?2)",
                        params![caller, max_per_caller.max(1) as i64 - 1],
                    )
                    .map_err(db_err)?;
                    reserve(conn)?;
                    Ok(IdemBegin::New)
                }
                Some((h, _, _, _)) if h != hash => Ok(IdemBegin::Mismatch),
                Some((_, Some(status), Some(resp), _)) => {
                    let v: serde_json::Value = from_json(&resp, "idempotent response")?;
                    Ok(IdemBegin::Replay(StoredResponse {
                        status: u16::try_from(status).unwrap_or(500),
                        content_type: v["content_type"].as_str().unwrap_or("application/json").to_owned(),
                        body: v["body"].as_str().unwrap_or("").as_bytes().to_vec(),
                    }))
                }
                Some((_, _, _, created)) if now.as_millisecond() - created > IDEMPOTENCY_ABANDONED_AFTER_SECS * 1000 => {
                    reserve(conn)?;
                    Ok(IdemBegin::New)
                }
                Some(_) => Ok(IdemBegin::InFlight),
            }
        })
        .await
    }

    async fn idem_complete(
        &self,
        caller: &str,
        key: &str,
        response: &engram_core::ports::StoredResponse,
    ) -> Result<()> {
        let (caller, key) = (caller.to_owned(), key.to_owned());
        let stored = serde_json::json!({
            "content_type": response.content_type,
            "body": String::from_utf8_lossy(&response.body),
        });
        let status = response.status;
        self.write(move |conn| {
            conn.execute(
                "UPDATE idempotency SET status = ?3, response = ?4 WHERE principal = ?1 AND key = ?2",
                params![caller, key, status, to_json(&stored)],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn idem_abort(&self, caller: &str, key: &str) -> Result<()> {
        let (caller, key) = (caller.to_owned(), key.to_owned());
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM idempotency WHERE principal = ?1 AND key = ?2 AND status IS NULL",
                params![caller, key],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn idem_purge(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.write(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency \
                     WHERE created_at < ?1 LIMIT ?2)",
                    params![before.as_millisecond(), limit as i64],
                )
                .map_err(db_err)?;
            Ok(n as u64)
        })
        .await
    }
}

impl SqliteStore {
    /// Re-queues jobs left `running` by a process that died. Only sound when no
    /// other process can hold a lease: the embedded store is single-process
    /// (the data directory is locked), so at start every lease is orphaned.
    pub async fn release_orphaned_leases(&self, now: Timestamp) -> Result<usize> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL, \
                 run_after = ?1, updated_at = ?1 WHERE state = 'running'",
                params![now.as_millisecond()],
            )
            .map_err(db_err)
        })
        .await
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Adds a usage row to its tally (same scope, day and model), inside the caller's transaction.
pub(crate) fn record_usage(conn: &Connection, row: &engram_core::ports::UsageRow) -> Result<()> {
    let s = &row.scope;
    let id = |v: &Option<String>| v.clone().unwrap_or_default();
    conn.execute(
        "INSERT INTO llm_usage (org_id, app_id, user_id, agent_id, run_id, day, model, runs, prompt_tokens, \
         completion_tokens, cost_microdollars) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
         ON CONFLICT (org_id, app_id, user_id, agent_id, run_id, day, model) DO UPDATE SET \
         runs = runs + excluded.runs, prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = completion_tokens + excluded.completion_tokens, \
         cost_microdollars = cost_microdollars + excluded.cost_microdollars",
        params![
            id(&s.org_id),
            id(&s.app_id),
            id(&s.user_id),
            id(&s.agent_id),
            id(&s.run_id),
            row.day,
            row.model,
            row.runs as i64,
            row.prompt_tokens as i64,
            row.completion_tokens as i64,
            row.cost_microdollars as i64
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

pub(crate) fn usage(conn: &Connection, limit: usize) -> Result<Vec<engram_core::ports::UsageRow>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT org_id, app_id, user_id, agent_id, run_id, day, model, runs, prompt_tokens, \
             completion_tokens, cost_microdollars FROM llm_usage ORDER BY day DESC, org_id, user_id LIMIT ?1",
        )
        .map_err(db_err)?;
    let mut rows = stmt.query([limit as i64]).map_err(db_err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db_err)? {
        let g = |i: usize| r.get::<_, String>(i).map_err(db_err);
        let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64).map_err(db_err);
        out.push(engram_core::ports::UsageRow {
            scope: engram_core::memory::Scope {
                org_id: opt(g(0)?),
                app_id: opt(g(1)?),
                user_id: opt(g(2)?),
                agent_id: opt(g(3)?),
                run_id: opt(g(4)?),
            },
            day: g(5)?,
            model: g(6)?,
            runs: n(7)?,
            prompt_tokens: n(8)?,
            completion_tokens: n(9)?,
            cost_microdollars: n(10)?,
        });
    }
    Ok(out)
}
