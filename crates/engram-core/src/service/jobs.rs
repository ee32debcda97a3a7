//! Durable background jobs: an asynchronous add is accepted at once, written
//! to the store as a job, and processed by workers that lease it.
//!
//! Who may change a job, and when (the store enforces it):
//! - `enqueue` inserts it `queued`;
//! - a worker's `claim` moves one `queued` job whose time has come — or a
//!   `running` one whose lease expired (its worker died) — to `running`
//!   under that worker's lease, counting the attempt;
//! - the worker's completion is a [`WriteOp::FinishJob`] applied in the
//!   **same transaction** as the job's memory writes, and only while it still
//!   holds the lease: a job's effects land exactly once, even if a worker is
//!   killed mid-job and another one takes it over;
//! - a failure puts it back `queued` with a later `run_after`, or `dead`
//!   after `max_attempts` (or at once for errors a retry cannot fix);
//! - `retry` moves a `dead` job back to `queued`.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use uuid::Uuid;

use crate::access::Role;
use crate::ctx::RequestCtx;
use crate::pipeline::Pipeline;
use crate::ports::{AuditEvent, WriteOp};
use crate::ports::{Job, JobCounts, JobState};
use crate::service::{AddInput, AddResult, Delivery, MAX_PAGE, MemoryService, WebhookService};
use crate::webhook::{DELIVERY_KIND, WebhookEvent};
use crate::{Error, ErrorCode, Result};

/// How jobs are retried.
#[derive(Debug, Clone)]
pub struct JobConfig {
    pub max_attempts: u32,
    /// A worker's lease on a job; the worker renews it every quarter lease
    /// while it works, so another worker takes the job over only when this
    /// one stopped (died) for a whole lease.
    pub lease: Duration,
    /// One attempt may run this many leases (its LLM time budget: derived
    /// from the lease, never the reverse); past it, the attempt is abandoned
    /// and retried later like any failure.
    pub attempt_leases: u32,
    /// First retry delay; doubles per attempt up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Jobs one org may have queued or running at once; more adds are
    /// refused (`queue_full`, retry later) so no tenant can fill the queue
    /// for the others.
    pub max_pending_per_org: u64,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            max_attempts: 5,
            lease: Duration::from_secs(120),
            attempt_leases: 5,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            max_pending_per_org: 10_000,
        }
    }
}

fn job_not_found(id: Uuid) -> Error {
    Error::not_found(format!("job {id} not found"))
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// What an add did: its results, or the job that will produce them.
#[derive(Debug, Clone)]
pub enum Added {
    Done(Vec<AddResult>),
    Queued(Box<Job>),
}

/// Wakes a pool of idle workers.
pub type Waker = std::sync::Arc<dyn Fn() + Send + Sync>;

/// The one door adds come in by, for every transport (REST, Mem0, MCP,
/// CLI), and queueing and inspecting jobs. Transports never call
/// [`MemoryService::add`] themselves (`tests/layering.rs` checks).
#[derive(Clone)]
pub struct JobQueue {
    memory: MemoryService,
    config: JobConfig,
    pipeline: Option<Pipeline>,
    wake: Option<Waker>,
}

impl JobQueue {
    pub fn new(memory: MemoryService, config: JobConfig, pipeline: Option<Pipeline>) -> JobQueue {
        JobQueue {
            memory,
            config,
            pipeline,
            wake: None,
        }
    }

    /// Calls `wake` whenever a job becomes due (queued or retried), so idle
    /// workers start at once instead of at their next poll.
    pub fn with_waker(mut self, wake: Waker) -> JobQueue {
        self.wake = Some(wake);
        self
    }

    /// The same queue running `infer` adds through `pipeline` (`None`: verbatim only).
    pub fn with_pipeline(mut self, pipeline: Option<Pipeline>) -> JobQueue {
        self.pipeline = pipeline;
        self
    }

    /// The service adds are written through.
    pub fn memory(&self) -> &MemoryService {
        &self.memory
    }

    fn wake(&self) {
        if let Some(wake) = &self.wake {
            wake();
        }
    }

    /// Whether adds can go through the LLM pipeline.
    pub fn pipeline(&self) -> Option<&Pipeline> {
        self.pipeline.as_ref()
    }

    /// The one entry point for adds from every transport. `infer` (default:
    /// true when an LLM is configured) runs the LLM pipeline instead of
    /// storing verbatim; `run_async` (default: whether an LLM is configured)
    /// queues the add as a durable job and answers at once.
    pub async fn add(
        &self,
        ctx: &RequestCtx,
        input: AddInput,
        infer: Option<bool>,
        run_async: Option<bool>,
    ) -> Result<Added> {
        let llm = self.pipeline.is_some();
        if run_async.unwrap_or(llm) {
            let infer = llm && infer.unwrap_or(true);
            return Ok(Added::Queued(Box::new(
                self.enqueue_add(ctx, input, infer).await?,
            )));
        }
        Ok(Added::Done(self.add_now(ctx, input, infer).await?))
    }

    /// [`add`](Self::add), synchronously.
    pub async fn add_now(
        &self,
        ctx: &RequestCtx,
        input: AddInput,
        infer: Option<bool>,
    ) -> Result<Vec<AddResult>> {
        if self.pipeline.is_some() && infer.unwrap_or(true) {
            self.add_inferred(ctx, input).await
        } else {
            self.memory.add(ctx, input).await
        }
    }

    /// Bulk verbatim adds (`engram import`, evaluations): one embedding
    /// batch and one transaction for all of them; never the LLM, whatever
    /// is configured. Results come back per input, in order.
    pub async fn add_verbatim_batch(
        &self,
        ctx: &RequestCtx,
        inputs: Vec<AddInput>,
    ) -> Result<Vec<Vec<AddResult>>> {
        self.memory.add_batch(ctx, inputs).await
    }

    /// An add through the LLM pipeline, now (the synchronous path).
    async fn add_inferred(&self, ctx: &RequestCtx, input: AddInput) -> Result<Vec<AddResult>> {
        let pipeline = self
            .pipeline
            .as_ref()
            .ok_or_else(|| Error::new(ErrorCode::LlmUnavailable, "no LLM is configured"))?;
        let input = self.memory.validate_add(ctx, input)?;
        let (ops, outcome) = pipeline.prepare(ctx, &input).await?;
        if !ops.is_empty() {
            self.memory.store().apply(ops).await?;
        }
        record(&outcome.results);
        Ok(outcome.results)
    }

    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    /// Validates an add now (the caller gets a 4xx at once if it is wrong) and
    /// queues it. Returns the job.
    pub async fn enqueue_add(&self, ctx: &RequestCtx, input: AddInput, infer: bool) -> Result<Job> {
        let input = self.memory.validate_add(ctx, input)?;
        let org = input.scope.org_id.as_deref();
        let pending = self.memory.store().job_pending(org).await?;
        if pending >= self.config.max_pending_per_org {
            metrics::counter!("engram_jobs_refused_total", "reason" => "queue_full").increment(1);
            return Err(Error::new(
                ErrorCode::QueueFull,
                format!(
                    "{pending} adds of this org are already queued or running (at most {}); retry later",
                    self.config.max_pending_per_org
                ),
            ));
        }
        let now = self.memory.now();
        let mut payload = serde_json::to_value(&input)
            .map_err(|e| Error::internal(format!("job payload: {e}")))?;
        payload["infer"] = json!(infer && self.pipeline.is_some());
        let job = Job {
            id: Uuid::now_v7(),
            kind: "add".into(),
            state: JobState::Queued,
            payload,
            principal: ctx.principal.clone(),
            scope: input.scope.clone(),
            request_id: ctx.request_id.clone(),
            attempts: 0,
            max_attempts: self.config.max_attempts,
            last_error: None,
            result: None,
            created_at: now,
            updated_at: now,
            run_after: now,
            lease_owner: None,
            lease_until: None,
            ordering: None,
        };
        self.memory.store().job_insert(&job).await?;
        metrics::counter!("engram_jobs_enqueued_total", "kind" => "add").increment(1);
        self.wake();
        Ok(job)
    }

    /// A job the caller may see (its own binding covers the job's scope).
    pub async fn get(&self, ctx: &RequestCtx, id: Uuid) -> Result<Job> {
        match self.memory.store().job_get(id).await? {
            // Deliveries are seen through their webhook, never retried by hand
            // (a re-sent old event would arrive after newer ones).
            Some(j) if j.kind != DELIVERY_KIND && ctx.principal.covers(&j.scope) => Ok(j),
            _ => Err(job_not_found(id)),
        }
    }

    /// Jobs the caller may see, newest first.
    pub async fn list(
        &self,
        ctx: &RequestCtx,
        state: Option<JobState>,
        limit: usize,
    ) -> Result<Vec<Job>> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("`limit` must be between 1 and {}", MAX_PAGE),
            ));
        }
        // Webhook deliveries are listed with their webhook, not here.
        let mut jobs = self
            .memory
            .store()
            .job_list(state, Some("add"), 10 * limit)
            .await?;
        jobs.retain(|j| ctx.principal.covers(&j.scope));
        jobs.truncate(limit);
        Ok(jobs)
    }

    /// Re-queues a dead job (read-write keys, inside their binding).
    pub async fn retry(&self, ctx: &RequestCtx, id: Uuid) -> Result<Job> {
        ctx.principal.require(Role::ReadWrite, "retrying jobs")?;
        let job = self.get(ctx, id).await?;
        if job.state != JobState::Dead {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "job {id} is {}; only dead jobs can be retried",
                    job.state.as_str()
                ),
            ));
        }
        if !self
            .memory
            .store()
            .job_requeue(id, self.memory.now())
            .await?
        {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("job {id} changed; look again"),
            ));
        }
        let audit = AuditEvent::new(
            self.memory.now(),
            ctx.actor(),
            "job.retry",
            job.scope.org_id.clone(),
            Some(id.to_string()),
            ctx.request_id.clone(),
        );
        self.memory
            .store()
            .apply(vec![WriteOp::Audit(audit)])
            .await?;
        self.wake();
        self.get(ctx, id).await
    }

    pub async fn counts(&self) -> Result<JobCounts> {
        self.memory.store().job_counts().await
    }
}

/// One worker: claims a due job, runs it, records the outcome.
pub struct JobRunner {
    memory: MemoryService,
    config: JobConfig,
    worker: String,
    pipeline: Option<Pipeline>,
    webhooks: Option<WebhookService>,
}

fn record(results: &[AddResult]) {
    for r in results {
        crate::telemetry::memory_event(r.event, 1);
    }
}

impl JobRunner {
    pub fn new(memory: MemoryService, config: JobConfig, worker: impl Into<String>) -> JobRunner {
        JobRunner {
            memory,
            config,
            worker: worker.into(),
            pipeline: None,
            webhooks: None,
        }
    }

    /// Delivers webhooks (without, deliveries wait for a node that does).
    pub fn with_webhooks(mut self, webhooks: Option<WebhookService>) -> JobRunner {
        self.webhooks = webhooks;
        self
    }

    fn backoff(&self, attempts: u32) -> Timestamp {
        let backoff = self
            .config
            .backoff_base
            .saturating_mul(1u32 << (attempts.saturating_sub(1)).min(16))
            .min(self.config.backoff_max);
        plus(self.memory.now(), backoff)
    }

    /// Tells webhooks subscribed to `job.dead` that an add gave up.
    async fn announce_dead(&self, job: &Job, error: &str) {
        let (Some(webhooks), false) = (&self.webhooks, job.kind == DELIVERY_KIND) else {
            return;
        };
        let data = json!({
            "job_id": job.id.to_string(),
            "kind": job.kind,
            "attempts": job.attempts,
            "error": error,
            "org_id": job.scope.org_id,
            "app_id": job.scope.app_id,
            "user_id": job.scope.user_id,
            "agent_id": job.scope.agent_id,
            "run_id": job.scope.run_id,
        });
        if let Err(e) = webhooks.emit(WebhookEvent::JobDead, &job.scope, data).await {
            tracing::warn!(job = %job.id, error = %e.message, "could not queue the job.dead webhook event");
        }
    }

    /// One attempt at a webhook delivery.
    async fn run_delivery(&self, job: &Job) -> Result<()> {
        let store = self.memory.store();
        let Some(webhooks) = &self.webhooks else {
            store
                .job_fail(
                    job.id,
                    &self.worker,
                    "this node does not deliver webhooks",
                    Some(self.backoff(1)),
                    self.memory.now(),
                )
                .await?;
            return Ok(());
        };
        let (error, retry_at) = match webhooks.deliver(job).await? {
            Delivery::Done(result) => {
                let finish = WriteOp::FinishJob {
                    id: job.id,
                    worker: self.worker.clone(),
                    result,
                    at: self.memory.now(),
                };
                match store.apply(vec![finish]).await {
                    Err(e) if e.code == ErrorCode::Conflict => {
                        tracing::warn!(job = %job.id, "delivery lease lost after sending; its new worker sends it again");
                    }
                    other => other?,
                }
                return Ok(());
            }
            Delivery::Retry(e) if job.attempts < job.max_attempts => {
                let at = self.backoff(job.attempts);
                (e, Some(at))
            }
            Delivery::Retry(e) | Delivery::Dead(e) => (e, None),
        };
        store
            .job_fail(job.id, &self.worker, &error, retry_at, self.memory.now())
            .await?;
        Ok(())
    }

    /// Runs `infer` adds through the LLM pipeline.
    pub fn with_pipeline(mut self, pipeline: Option<Pipeline>) -> JobRunner {
        self.pipeline = pipeline;
        self
    }

    /// Runs at most one job. `Ok(false)` when none was due.
    pub async fn run_once(&self) -> Result<bool> {
        let store = self.memory.store();
        let now = self.memory.now();
        let Some(job) = store
            .job_claim(
                &self.worker,
                now,
                self.config.lease,
                self.webhooks.is_some(),
            )
            .await?
        else {
            return Ok(false);
        };
        let started = std::time::Instant::now();
        tracing::info!(job = %job.id, worker = %self.worker, attempt = job.attempts, "job claimed");
        if job.attempts > job.max_attempts {
            store
                .job_fail(
                    job.id,
                    &self.worker,
                    &format!(
                        "gave up after {} attempts; last error: {}",
                        job.max_attempts,
                        job.last_error
                            .as_deref()
                            .unwrap_or("the worker stopped mid-job")
                    ),
                    None,
                    now,
                )
                .await?;
            metrics::counter!("engram_jobs_total", "outcome" => "dead").increment(1);
            self.announce_dead(&job, "gave up after its attempts").await;
            return Ok(true);
        }
        if job.kind == DELIVERY_KIND {
            self.run_delivery(&job).await?;
            return Ok(true);
        }
        let outcome = self.process_with_heartbeat(&job).await;
        let elapsed = started.elapsed().as_secs_f64();
        metrics::histogram!("engram_job_duration_seconds").record(elapsed);
        match outcome {
            Ok(()) => {
                tracing::info!(job = %job.id, worker = %self.worker, attempt = job.attempts, seconds = elapsed, outcome = "done", "job ended");
                metrics::counter!("engram_jobs_total", "outcome" => "done").increment(1);
            }
            Err(e) if e.code == ErrorCode::Conflict && !self.holds_lease(job.id).await? => {
                // Another worker took the job over; its run counts, not ours.
                tracing::warn!(job = %job.id, "job lease lost; leaving it to its new worker");
            }
            Err(e) => {
                let retryable = !e.code.is_user_error();
                let retry_at = (retryable && job.attempts < job.max_attempts)
                    .then(|| self.backoff(job.attempts));
                let outcome = if retry_at.is_some() { "retry" } else { "dead" };
                tracing::warn!(job = %job.id, worker = %self.worker, attempt = job.attempts, seconds = elapsed, code = %e.code, error = %e.message, outcome, "job ended");
                let error = format!("{}: {}", e.code, e.message);
                let failed = store
                    .job_fail(job.id, &self.worker, &error, retry_at, self.memory.now())
                    .await?;
                metrics::counter!("engram_jobs_total", "outcome" => outcome).increment(1);
                if failed && retry_at.is_none() {
                    self.announce_dead(&job, &error).await;
                }
            }
        }
        Ok(true)
    }

    /// Whether this worker still holds `id` (the store says; no message parsing).
    async fn holds_lease(&self, id: Uuid) -> Result<bool> {
        Ok(self.memory.store().job_get(id).await?.is_some_and(|j| {
            j.state == JobState::Running && j.lease_owner.as_deref() == Some(&self.worker)
        }))
    }

    /// The verbatim add's writes and results for one input.
    async fn verbatim(
        &self,
        ctx: &RequestCtx,
        input: AddInput,
    ) -> Result<(Vec<WriteOp>, Vec<AddResult>)> {
        let (ops, results) = self.memory.prepare_add(ctx, vec![input]).await?;
        Ok((ops, results.into_iter().flatten().collect()))
    }

    /// From this attempt on, a job the model keeps failing (answers that
    /// cannot be used, not an unreachable provider) is stored verbatim.
    fn fallback_attempt(&self, job: &Job) -> u32 {
        job.max_attempts.min(3)
    }

    /// The attempt's time budget: `attempt_leases` leases.
    fn budget(&self) -> Duration {
        self.config
            .lease
            .saturating_mul(self.config.attempt_leases.max(1))
    }

    /// Runs the job while renewing its lease every quarter lease (the
    /// heartbeat), within the attempt's budget. A lost lease stops the
    /// attempt: another worker owns the job now.
    async fn process_with_heartbeat(&self, job: &Job) -> Result<()> {
        let work = self.process(job);
        tokio::pin!(work);
        let every = (self.config.lease / 4).max(Duration::from_millis(10));
        let deadline = tokio::time::sleep(self.budget());
        tokio::pin!(deadline);
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                outcome = &mut work => return outcome,
                _ = &mut deadline => {
                    let budget = self.budget();
                    return Err(Error::new(
                        ErrorCode::LlmUnavailable,
                        format!(
                            "the attempt took longer than its budget of {budget:?} ({} leases of {:?}); \
                             a slower model needs a longer --job-lease-secs or --job-attempt-leases",
                            self.config.attempt_leases, self.config.lease
                        ),
                    ));
                }
                _ = beat.tick() => {
                    let until = plus(self.memory.now(), self.config.lease);
                    match self.memory.store().job_renew(job.id, &self.worker, until).await {
                        Ok(true) => metrics::counter!("engram_job_heartbeats_total").increment(1),
                        Ok(false) => {
                            return Err(Error::new(
                                ErrorCode::Conflict,
                                format!("job {} is no longer leased to this worker", job.id),
                            ));
                        }
                        // A store hiccup: the next beat tries again (the lease still runs).
                        Err(e) => tracing::warn!(job = %job.id, error = %e.message, "could not renew the job's lease"),
                    }
                }
            }
        }
    }

    async fn process(&self, job: &Job) -> Result<()> {
        match job.kind.as_str() {
            "add" => {
                let infer = job.payload["infer"].as_bool().unwrap_or(false);
                let input: AddInput = serde_json::from_value(job.payload.clone())
                    .map_err(|e| Error::invalid(format!("job payload is not an add: {e}")))?;
                let ctx = RequestCtx::new(job.principal.clone(), "job", job.request_id.clone());
                // The job's result: what it did, with how it went.
                let (mut ops, results, mut result) = match (&self.pipeline, infer) {
                    (Some(p), true) => match p.prepare_attempt(&ctx, &input, job.attempts).await {
                        Ok((ops, outcome)) => (
                            ops,
                            outcome.results,
                            json!({
                                "usage": outcome.usage,
                                "checks": outcome.checks,
                                "truncated": outcome.truncated,
                                "rejected": outcome.rejected,
                            }),
                        ),
                        // The model keeps answering what cannot be used: store
                        // the messages verbatim rather than lose them.
                        Err(e)
                            if e.code == ErrorCode::LlmFailure
                                && job.attempts >= self.fallback_attempt(job) =>
                        {
                            tracing::warn!(job = %job.id, attempt = job.attempts, error = %e.message, "the LLM failed this job again; storing its messages verbatim");
                            metrics::counter!("engram_jobs_fallback_total").increment(1);
                            let (ops, results) = self.verbatim(&ctx, input).await?;
                            let result = json!({"usage": null, "fallback": "verbatim", "llm_error": e.message});
                            (ops, results, result)
                        }
                        Err(e) => return Err(e),
                    },
                    (None, true) => {
                        return Err(Error::new(
                            ErrorCode::LlmUnavailable,
                            "this job needs the LLM, and none is configured on this node",
                        ));
                    }
                    _ => {
                        let (ops, results) = self.verbatim(&ctx, input).await?;
                        (ops, results, json!({"usage": null}))
                    }
                };
                result["results"] = json!(results);
                ops.push(WriteOp::FinishJob {
                    id: job.id,
                    worker: self.worker.clone(),
                    result,
                    at: self.memory.now(),
                });
                self.memory.store().apply(ops).await?;
                record(&results);
                Ok(())
            }
            other => Err(Error::invalid(format!("unknown job kind `{other}`"))),
        }
    }
}
