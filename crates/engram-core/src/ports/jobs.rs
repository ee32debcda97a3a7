//! The job storage port: durable background jobs as stored, and where they
//! live (the same store as the memories they write). Who may change a job,
//! and when, is described in `service/jobs.rs`.

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::access::Principal;
use crate::memory::Scope;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    /// Gave up after its attempts (the dead-letter queue); `retry` re-queues it.
    Dead,
}

impl JobState {
    pub const ALL: [JobState; 4] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Result<JobState> {
        JobState::ALL
            .into_iter()
            .find(|j| j.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown job state `{s}`: use queued, running, done or dead"
                ))
            })
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: Uuid,
    /// `add`.
    pub kind: String,
    pub state: JobState,
    pub payload: Value,
    /// Who asked (the job runs with the same rights).
    pub principal: Principal,
    /// The scope the job writes to (for listing within a binding and for erasure).
    pub scope: Scope,
    pub request_id: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub last_error: Option<String>,
    pub result: Option<Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub run_after: Timestamp,
    pub lease_owner: Option<String>,
    pub lease_until: Option<Timestamp>,
    /// Jobs sharing this key run one at a time, oldest first (a webhook's
    /// deliveries about one memory); `None` for jobs with no order.
    pub ordering: Option<String>,
}

/// Jobs per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct JobCounts {
    pub queued: u64,
    pub running: u64,
    pub done: u64,
    pub dead: u64,
}

impl JobCounts {
    /// Records `n` jobs in the state a store names `state` (unknown states are ignored).
    pub fn set(&mut self, state: &str, n: u64) {
        match JobState::parse(state) {
            Ok(JobState::Queued) => self.queued = n,
            Ok(JobState::Running) => self.running = n,
            Ok(JobState::Done) => self.done = n,
            Ok(JobState::Dead) => self.dead = n,
            Err(_) => {}
        }
    }
}

/// Where jobs live: the same store as the memories they write.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    async fn job_insert(&self, job: &Job) -> Result<()>;
    /// Leases the next due job to `worker` until `now + lease` and counts the
    /// attempt. Without `deliveries`, webhook deliveries are left to workers
    /// that can send them.
    async fn job_claim(
        &self,
        worker: &str,
        now: Timestamp,
        lease: Duration,
        deliveries: bool,
    ) -> Result<Option<Job>>;
    /// Extends `worker`'s lease on a running job to `until` (the worker's
    /// heartbeat). False if the worker no longer holds it.
    async fn job_renew(&self, id: Uuid, worker: &str, until: Timestamp) -> Result<bool>;
    /// Records a failure while `worker` holds the lease: back to `queued` at
    /// `retry_at`, or `dead` when `retry_at` is `None` (a dead delivery's
    /// body — which may quote a memory — is dropped). False if the lease was lost.
    async fn job_fail(
        &self,
        id: Uuid,
        worker: &str,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<bool>;
    async fn job_get(&self, id: Uuid) -> Result<Option<Job>>;
    /// Jobs in `state` (all states with `None`) of `kind` (every kind with
    /// `None`), newest first.
    async fn job_list(
        &self,
        state: Option<JobState>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>>;
    /// `dead` → `queued` with its attempts reset. False unless it was dead.
    async fn job_requeue(&self, id: Uuid, now: Timestamp) -> Result<bool>;
    async fn job_counts(&self) -> Result<JobCounts>;
    /// Add jobs queued or running for `org_id` (`None`: the operator's, without an org).
    async fn job_pending(&self, org_id: Option<&str>) -> Result<u64>;
}
