//! The webhook ports: where subscriptions and their delivery attempts live
//! ([`WebhookStore`], the same store as the memories whose changes they
//! announce), and what sends a delivery ([`WebhookSender`], an HTTP client
//! in the server). Deliveries themselves are jobs of kind
//! [`DELIVERY_KIND`](crate::webhook::DELIVERY_KIND), enqueued inside the
//! transaction of the change they announce.

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::Serialize;
use uuid::Uuid;

use crate::Result;
use crate::access::Principal;
use crate::memory::{Event, HistoryEvent, MemoryId, Scope};
use crate::ports::{Job, JobState};
use crate::webhook::{
    DELIVERY_ATTEMPTS, DELIVERY_KIND, DeliveryPayload, Webhook, WebhookEvent, memory_body,
};

/// One attempt to deliver an event, as kept for `GET /v1/webhooks/{id}/deliveries`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryAttempt {
    pub id: Uuid,
    pub webhook_id: Uuid,
    /// The delivery (its job id, sent as `webhook-id`: the same on every retry).
    pub delivery_id: Uuid,
    pub event: WebhookEvent,
    pub attempt: u32,
    /// `delivered`, `failed` (will be retried), `dead` (given up) or `refused` (SSRF guard).
    pub outcome: String,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    pub at: Timestamp,
}

/// Attempts kept per webhook (older ones are dropped as new ones arrive).
pub const ATTEMPTS_KEPT: usize = 1000;

#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    async fn webhook_insert(&self, hook: &Webhook) -> Result<()>;
    async fn webhook_get(&self, id: Uuid) -> Result<Option<Webhook>>;
    /// Every webhook, oldest first (the caller filters by binding; there are few).
    async fn webhook_list(&self) -> Result<Vec<Webhook>>;
    /// Writes `hook`'s settings — url, events, name, description,
    /// include_text, updated_at — and nothing else (never the secret, the
    /// enabled state or the failure count, which have their own writers).
    /// False if it is gone.
    async fn webhook_update(&self, hook: &Webhook) -> Result<bool>;
    /// Enables (clearing the failure count and reason) or disables (with
    /// `reason`) a webhook. False if it is gone.
    async fn webhook_set_enabled(
        &self,
        id: Uuid,
        enabled: bool,
        reason: Option<&str>,
        at: Timestamp,
    ) -> Result<bool>;
    /// Replaces the signing secret. False if the webhook is gone.
    async fn webhook_set_secret(&self, id: Uuid, secret: &str, at: Timestamp) -> Result<bool>;
    /// Deletes the webhook and its attempts; its queued deliveries are
    /// skipped when they come up. False if it was gone.
    async fn webhook_delete(&self, id: Uuid) -> Result<bool>;
    /// Records an attempt, and counts it: a delivered one resets the
    /// webhook's consecutive failures, a failed one adds one and disables
    /// the webhook at `max_failures`. Returns whether this attempt disabled it.
    async fn webhook_record(&self, attempt: &DeliveryAttempt, max_failures: u32) -> Result<bool>;
    /// The newest attempts of a webhook, newest first.
    async fn webhook_attempts(&self, id: Uuid, limit: usize) -> Result<Vec<DeliveryAttempt>>;
    /// Deliveries queued or running (the delivery queue's depth).
    async fn webhook_pending(&self) -> Result<u64>;
}

/// A signed request, ready to go.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub timeout: Duration,
}

/// How one send went.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    /// The receiver answered (any status).
    Answered { status: u16 },
    /// No answer: DNS, connection, TLS or timeout.
    Failed { error: String },
    /// The target resolved to an address the SSRF guard refuses.
    Refused { error: String },
}

/// Sends deliveries. Resolves the target itself and refuses a blocked
/// address after resolution (the SSRF guard's second check), follows no
/// redirects, and reads at most a few KiB of the answer.
#[async_trait]
pub trait WebhookSender: Send + Sync + 'static {
    async fn send(&self, out: Outgoing) -> Sent;
    /// Resolves `url`'s host and refuses a blocked address (at creation).
    async fn check(&self, url: &str) -> Result<()>;
}

/// A delivery of `body` to `hook`, as a job: queued at `at`, run by the
/// system, in the scope of the change it announces (so erasing that scope
/// also drops its pending deliveries). Deliveries that share `ordering`
/// (one webhook, one memory) go out in the order they were made.
pub fn delivery_job(
    hook: &Webhook,
    event: WebhookEvent,
    scope: &Scope,
    body: String,
    ordering: Option<String>,
    at: Timestamp,
) -> Job {
    let payload = DeliveryPayload {
        webhook_id: hook.id,
        event,
        body,
    };
    Job {
        id: Uuid::now_v7(),
        kind: DELIVERY_KIND.to_owned(),
        state: JobState::Queued,
        // Serialising three plain fields cannot fail.
        payload: serde_json::to_value(&payload).unwrap_or_default(),
        principal: Principal::operator(),
        scope: scope.clone(),
        request_id: None,
        attempts: 0,
        max_attempts: DELIVERY_ATTEMPTS,
        last_error: None,
        result: None,
        created_at: at,
        updated_at: at,
        run_after: at,
        lease_owner: None,
        lease_until: None,
        ordering,
    }
}

/// The ordering key of deliveries about one memory to one webhook.
pub fn memory_ordering(hook: Uuid, memory: MemoryId) -> String {
    format!("{hook}:{memory}")
}

/// A memory the expiry sweep removes, as its `memory.expired` event tells it.
#[derive(Debug, Clone)]
pub struct Expired {
    pub id: MemoryId,
    pub version: u32,
    pub text: String,
    pub scope: Scope,
}

/// The `memory.expired` deliveries for `expired` to those of `hooks` that
/// want them — queued by the sweep in its own transaction.
pub fn expiry_jobs(hooks: &[Webhook], expired: &[Expired], at: Timestamp) -> Vec<Job> {
    let event = WebhookEvent::MemoryExpired;
    let mut jobs = Vec::new();
    for m in expired {
        let history = HistoryEvent {
            id: Uuid::now_v7(),
            memory_id: m.id,
            event: Event::Delete,
            old_text: Some(m.text.clone()),
            new_text: None,
            version: m.version,
            actor: Some("system".to_owned()),
            reason: Some("expired".to_owned()),
            request_id: None,
            scope: m.scope.clone(),
            created_at: at,
        };
        for hook in hooks.iter().filter(|h| h.wants(event, &m.scope)) {
            jobs.push(delivery_job(
                hook,
                event,
                &m.scope,
                memory_body(hook, event, &history),
                Some(memory_ordering(hook.id, m.id)),
                at,
            ));
        }
    }
    jobs
}
