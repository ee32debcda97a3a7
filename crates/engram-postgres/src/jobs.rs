//! Durable jobs, idempotency records and LLM usage in Postgres.
//!
//! One queue for every node: a worker claims the oldest due job with
//! `FOR UPDATE SKIP LOCKED` (claims never wait on each other and never hand
//! one job to two workers) and holds it by a lease; a lease that runs out
//! (its node died) makes the job claimable again. A completion is part of
//! the job's own write transaction ([`finish`]) and only counts while the
//! lease is still held.

use std::time::Duration;

use async_trait::async_trait;
use engram_core::memory::Scope;
use engram_core::ports::UsageRow;
use engram_core::ports::write::{from_json, to_json};
use engram_core::ports::{
    IDEMPOTENCY_ABANDONED_AFTER_SECS, IdemBegin, IdempotencyStore, StoredResponse,
};
use engram_core::ports::{Job, JobCounts, JobState, JobStore};
use engram_core::{Error, ErrorCode, Result};
use jiff::Timestamp;
use tokio_postgres::{GenericClient, Row, Transaction};
use uuid::Uuid;

use crate::error::ApplyError;
use crate::rows::{get, int, ts};
use crate::{PgStore, pg_err};

const COLUMNS: &str = "id, kind, state, payload, principal, scope, request_id, attempts, max_attempts, \
     last_error, result, created_at, updated_at, run_after, lease_owner, lease_until, ordering";

fn row_to_job(row: &Row) -> Result<Job> {
    let state: String = get(row, 2)?;
    let payload: String = get(row, 3)?;
    let principal: String = get(row, 4)?;
    let scope: String = get(row, 5)?;
    let result: Option<String> = get(row, 10)?;
    let attempts: i32 = get(row, 7)?;
    let max_attempts: i32 = get(row, 8)?;
    Ok(Job {
        id: get(row, 0)?,
        kind: get(row, 1)?,
        state: JobState::parse(&state).map_err(|e| Error::store(e.message))?,
        payload: from_json(&payload, "payload")?,
        principal: from_json(&principal, "principal")?,
        scope: from_json(&scope, "scope")?,
        request_id: get(row, 6)?,
        attempts: u32::try_from(attempts).unwrap_or_default(),
        max_attempts: u32::try_from(max_attempts).unwrap_or_default(),
        last_error: get(row, 9)?,
        result: result.map(|r| from_json(&r, "result")).transpose()?,
        created_at: ts(get(row, 11)?)?,
        updated_at: ts(get(row, 12)?)?,
        run_after: ts(get(row, 13)?)?,
        lease_owner: get(row, 14)?,
        lease_until: get::<Option<i64>>(row, 15)?.map(ts).transpose()?,
        ordering: get(row, 16)?,
    })
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Marks a job done inside the caller's transaction, if `worker` still holds it.
pub(crate) async fn finish(
    tx: &Transaction<'_>,
    id: Uuid,
    worker: &str,
    result: &serde_json::Value,
    at: Timestamp,
) -> std::result::Result<(), ApplyError> {
    let n = tx
        .execute(
            "UPDATE jobs SET state = 'done', result = $3, lease_owner = NULL, lease_until = NULL, \
             updated_at = $4, payload = CASE WHEN kind = 'webhook' THEN '{}' ELSE payload END \
             WHERE id = $1 AND state = 'running' AND lease_owner = $2",
            &[&id, &worker, &to_json(result), &at.as_millisecond()],
        )
        .await?;
    if n == 0 {
        return Err(Error::new(
            ErrorCode::Conflict,
            format!("job {id}: the lease was lost to another worker; nothing was written"),
        )
        .into());
    }
    Ok(())
}

/// Inserts `job` (inside the caller's transaction, for a webhook delivery).
pub(crate) async fn insert(
    client: &impl GenericClient,
    job: &Job,
) -> std::result::Result<(), tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "INSERT INTO jobs ({COLUMNS}, org_id, user_id) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
            ),
            &[
                &job.id,
                &job.kind,
                &job.state.as_str(),
                &to_json(&job.payload),
                &to_json(&job.principal),
                &to_json(&job.scope),
                &job.request_id,
                &int(job.attempts),
                &int(job.max_attempts),
                &job.last_error,
                &job.result.as_ref().map(to_json),
                &job.created_at.as_millisecond(),
                &job.updated_at.as_millisecond(),
                &job.run_after.as_millisecond(),
                &job.lease_owner,
                &job.lease_until.map(|t| t.as_millisecond()),
                &job.ordering,
                &job.scope.org_id,
                &job.scope.user_id,
            ],
        )
        .await?;
    Ok(())
}

/// Adds a usage row to its tally (same scope, day and model), inside the caller's transaction.
pub(crate) async fn record_usage(
    tx: &Transaction<'_>,
    row: &UsageRow,
) -> std::result::Result<(), ApplyError> {
    let s = &row.scope;
    let id = |v: &Option<String>| v.clone().unwrap_or_default();
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    tx.execute(
        "INSERT INTO llm_usage (org_id, app_id, user_id, agent_id, run_id, day, model, runs, prompt_tokens, \
         completion_tokens, cost_microdollars) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (org_id, app_id, user_id, agent_id, run_id, day, model) DO UPDATE SET \
         runs = llm_usage.runs + excluded.runs, \
         prompt_tokens = llm_usage.prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = llm_usage.completion_tokens + excluded.completion_tokens, \
         cost_microdollars = llm_usage.cost_microdollars + excluded.cost_microdollars",
        &[
            &id(&s.org_id),
            &id(&s.app_id),
            &id(&s.user_id),
            &id(&s.agent_id),
            &id(&s.run_id),
            &row.day,
            &row.model,
            &n(row.runs),
            &n(row.prompt_tokens),
            &n(row.completion_tokens),
            &n(row.cost_microdollars),
        ],
    )
    .await?;
    Ok(())
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub(crate) async fn usage(client: &impl GenericClient, limit: usize) -> Result<Vec<UsageRow>> {
    let rows = client
        .query(
            "SELECT org_id, app_id, user_id, agent_id, run_id, day, model, runs, prompt_tokens, \
             completion_tokens, cost_microdollars FROM llm_usage \
             ORDER BY day DESC, org_id, user_id LIMIT $1",
            &[&(limit as i64)],
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            let n = |i: usize| get::<i64>(r, i).map(|v| v.max(0) as u64);
            Ok(UsageRow {
                scope: Scope {
                    org_id: opt(get(r, 0)?),
                    app_id: opt(get(r, 1)?),
                    user_id: opt(get(r, 2)?),
                    agent_id: opt(get(r, 3)?),
                    run_id: opt(get(r, 4)?),
                },
                day: get(r, 5)?,
                model: get(r, 6)?,
                runs: n(7)?,
                prompt_tokens: n(8)?,
                completion_tokens: n(9)?,
                cost_microdollars: n(10)?,
            })
        })
        .collect()
}

#[async_trait]
impl JobStore for PgStore {
    async fn job_insert(&self, job: &Job) -> Result<()> {
        let client = self.client().await?;
        insert(&**client, job).await.map_err(pg_err)
    }

    async fn job_claim(
        &self,
        worker: &str,
        now: Timestamp,
        lease: Duration,
        deliveries: bool,
    ) -> Result<Option<Job>> {
        let client = self.client().await?;
        let now_ms = now.as_millisecond();
        let until = now_ms.saturating_add(ms(lease));
        // Due jobs, and jobs whose lease ran out (their worker died); a row
        // another claim holds is skipped, never waited for. Fair across
        // tenants: the org with the fewest jobs running now goes first.
        let row = client
            .query_opt(
                &format!(
                    "UPDATE jobs SET state = 'running', lease_owner = $1, lease_until = $2, \
                     attempts = attempts + 1, updated_at = $3 \
                     WHERE id = (SELECT j.id FROM jobs j \
                                 WHERE ((j.state = 'queued' AND j.run_after <= $3) \
                                    OR (j.state = 'running' AND j.lease_until <= $3)) \
                                   AND ($4 OR j.kind <> 'webhook') \
                                   AND (j.ordering IS NULL OR NOT EXISTS ( \
                                        SELECT 1 FROM jobs e WHERE e.ordering = j.ordering \
                                        AND e.state IN ('queued', 'running') \
                                        AND (e.created_at, e.id) < (j.created_at, j.id))) \
                                 ORDER BY (SELECT count(*) FROM jobs r WHERE r.state = 'running' \
                                           AND r.lease_until > $3 AND r.org_id IS NOT DISTINCT FROM j.org_id), \
                                          j.run_after, j.created_at \
                                 LIMIT 1 FOR UPDATE OF j SKIP LOCKED) \
                     RETURNING {COLUMNS}"
                ),
                &[&worker, &until, &now_ms, &deliveries],
            )
            .await
            .map_err(pg_err)?;
        row.as_ref().map(row_to_job).transpose()
    }

    async fn job_renew(&self, id: Uuid, worker: &str, until: Timestamp) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE jobs SET lease_until = $3 \
                 WHERE id = $1 AND state = 'running' AND lease_owner = $2",
                &[&id, &worker, &until.as_millisecond()],
            )
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn job_fail(
        &self,
        id: Uuid,
        worker: &str,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE jobs SET state = CASE WHEN $4::bigint IS NULL THEN 'dead' ELSE 'queued' END, \
                 run_after = COALESCE($4::bigint, run_after), last_error = $3, lease_owner = NULL, \
                 lease_until = NULL, updated_at = $5, \
                 payload = CASE WHEN $4::bigint IS NULL AND kind = 'webhook' THEN '{}' ELSE payload END \
                 WHERE id = $1 AND state = 'running' AND lease_owner = $2",
                &[
                    &id,
                    &worker,
                    &error,
                    &retry_at.map(|t| t.as_millisecond()),
                    &now.as_millisecond(),
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn job_get(&self, id: Uuid) -> Result<Option<Job>> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"), &[&id])
            .await
            .map_err(pg_err)?;
        row.as_ref().map(row_to_job).transpose()
    }

    async fn job_list(
        &self,
        state: Option<JobState>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM jobs WHERE ($1::text IS NULL OR state = $1::text) \
                     AND ($3::text IS NULL OR kind = $3::text) ORDER BY created_at DESC, id DESC LIMIT $2"
                ),
                &[&state.map(JobState::as_str), &(limit as i64), &kind],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(row_to_job).collect()
    }

    async fn job_requeue(&self, id: Uuid, now: Timestamp) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, run_after = $2, updated_at = $2 \
                 WHERE id = $1 AND state = 'dead'",
                &[&id, &now.as_millisecond()],
            )
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn job_pending(&self, org_id: Option<&str>) -> Result<u64> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running') AND kind = 'add' \
                 AND org_id IS NOT DISTINCT FROM $1::text",
                &[&org_id],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        Ok(n.max(0) as u64)
    }

    async fn job_counts(&self) -> Result<JobCounts> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT state, count(*) FROM jobs GROUP BY state", &[])
            .await
            .map_err(pg_err)?;
        let mut c = JobCounts::default();
        for r in &rows {
            let state: String = get(r, 0)?;
            c.set(&state, get::<i64>(r, 1)?.max(0) as u64);
        }
        Ok(c)
    }
}

#[async_trait]
impl IdempotencyStore for PgStore {
    async fn idem_begin(
        &self,
        caller: &str,
        key: &str,
        request_hash: &str,
        now: Timestamp,
        max_per_caller: usize,
    ) -> Result<IdemBegin> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let now_ms = now.as_millisecond();
        // Reserve, unless another request (on any node) already did.
        let reserved = tx
            .execute(
                "INSERT INTO idempotency (principal, key, request_hash, status, response, created_at) \
                 VALUES ($1, $2, $3, NULL, NULL, $4) ON CONFLICT (principal, key) DO NOTHING",
                &[&caller, &key, &request_hash, &now_ms],
            )
            .await
            .map_err(pg_err)?;
        let outcome = if reserved == 1 {
            // At most the cap per caller: the oldest go first.
            tx.execute(
                "DELETE FROM idempotency WHERE principal = $1 AND key IN (SELECT key FROM idempotency \
                 WHERE principal = $1 ORDER BY created_at DESC OFFSET $2)",
                &[&caller, &(max_per_caller.max(1) as i64)],
            )
            .await
            .map_err(pg_err)?;
            IdemBegin::New
        } else {
            let row = tx
                .query_one(
                    "SELECT request_hash, status, response, created_at FROM idempotency \
                     WHERE principal = $1 AND key = $2 FOR UPDATE",
                    &[&caller, &key],
                )
                .await
                .map_err(pg_err)?;
            let (hash, status, response, created): (String, Option<i32>, Option<String>, i64) =
                (get(&row, 0)?, get(&row, 1)?, get(&row, 2)?, get(&row, 3)?);
            match (status, response) {
                _ if hash != request_hash => IdemBegin::Mismatch,
                (Some(status), Some(resp)) => {
                    let v: serde_json::Value = from_json(&resp, "idempotent response")?;
                    IdemBegin::Replay(StoredResponse {
                        status: u16::try_from(status).unwrap_or(500),
                        content_type: v["content_type"]
                            .as_str()
                            .unwrap_or("application/json")
                            .to_owned(),
                        body: v["body"].as_str().unwrap_or("").as_bytes().to_vec(),
                    })
                }
                _ if now_ms - created > IDEMPOTENCY_ABANDONED_AFTER_SECS * 1000 => {
                    // Its request never finished (the node died): take it over.
                    tx.execute(
                        "UPDATE idempotency SET created_at = $3 WHERE principal = $1 AND key = $2",
                        &[&caller, &key, &now_ms],
                    )
                    .await
                    .map_err(pg_err)?;
                    IdemBegin::New
                }
                _ => IdemBegin::InFlight,
            }
        };
        tx.commit().await.map_err(pg_err)?;
        Ok(outcome)
    }

    async fn idem_complete(
        &self,
        caller: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        let stored = serde_json::json!({
            "content_type": response.content_type,
            "body": String::from_utf8_lossy(&response.body),
        });
        let client = self.client().await?;
        client
            .execute(
                "UPDATE idempotency SET status = $3, response = $4 WHERE principal = $1 AND key = $2",
                &[
                    &caller,
                    &key,
                    &i32::from(response.status),
                    &to_json(&stored),
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn idem_purge(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM idempotency WHERE ctid IN (SELECT ctid FROM idempotency \
                 WHERE created_at < $1 LIMIT $2)",
                &[&before.as_millisecond(), &(limit as i64)],
            )
            .await
            .map_err(pg_err)
    }

    async fn idem_abort(&self, caller: &str, key: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM idempotency WHERE principal = $1 AND key = $2 AND status IS NULL",
                &[&caller, &key],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }
}
