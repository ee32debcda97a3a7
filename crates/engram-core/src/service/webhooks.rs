//! Webhooks: admins subscribe a URL to memory changes inside their binding;
//! each change queues a signed delivery in the change's own transaction
//! (`ports/write.rs`), and the job runner sends it ([`WebhookService::deliver`]).
//!
//! Rules kept here, for every transport:
//! - managing webhooks needs an admin key, and a webhook is bound like a
//!   key: its scope is the creator's binding plus the ids it names, so it
//!   never hears of a change outside it; one it does not cover is `not_found`;
//! - a target must be `http`/`https` and, unless the node allows private
//!   targets, not resolve to a loopback, private, link-local or metadata
//!   address (checked at creation and again by the sender at each delivery);
//! - the signing secret is returned once (creation, rotation), never listed;
//! - `max_failures` failed attempts in a row disable the webhook; enabling
//!   it again (`PATCH enabled=true`) clears the count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::access::Role;
use crate::ctx::RequestCtx;
use crate::memory::Scope;
use crate::ports::{
    AuditEvent, DeliveryAttempt, Job, Outgoing, Sent, WebhookSender, WriteOp, delivery_job,
};
use crate::service::MemoryService;
use crate::webhook::{
    DeliveryPayload, MAX_PER_ORG, Webhook, WebhookEvent, WebhookFormat, check_url, envelope,
    new_secret, overlaps, sign, within,
};
use crate::{Error, ErrorCode, Result};

/// How this node delivers webhooks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Allow loopback, private and link-local targets (tests, on-premise receivers).
    pub allow_private: bool,
    /// Failed attempts in a row that disable a webhook.
    pub max_failures: u32,
    /// One delivery's time budget (connect, send, first bytes of the answer).
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow_private: false,
            max_failures: 20,
            timeout: Duration::from_secs(10),
        }
    }
}

/// `POST /v1/webhooks` (and Mem0's `create_webhook`).
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub url: String,
    pub events: Vec<WebhookEvent>,
    /// Ids the webhook is narrowed to, on top of the creator's binding.
    pub scope: Scope,
    pub name: Option<String>,
    pub description: Option<String>,
    pub format: WebhookFormat,
    pub project_id: Option<String>,
    pub include_text: bool,
}

/// `PATCH /v1/webhooks/{id}`: what is `Some` changes.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub events: Option<Vec<WebhookEvent>>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub include_text: Option<bool>,
    /// `true` re-enables a disabled webhook and clears its failure count.
    pub enabled: Option<bool>,
}

/// What became of one delivery attempt, for the job runner.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Delivered, or nothing to deliver (the webhook is gone): the job is done.
    Done(Value),
    /// Failed in a way a later attempt may not (network, 5xx, 429).
    Retry(String),
    /// Failed for good (another 4xx, a redirect, a refused address, a
    /// disabled webhook).
    Dead(String),
}

const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 1000;
/// Bytes of an error or answer kept with an attempt.
const MAX_ERROR: usize = 500;

/// Webhook management and delivery. Cheap to clone.
#[derive(Clone)]
pub struct WebhookService {
    memory: MemoryService,
    sender: Arc<dyn WebhookSender>,
    config: WebhookConfig,
}

fn not_found(id: Uuid) -> Error {
    Error::not_found(format!("webhook {id} not found"))
}

/// Each event once, in their declared order.
fn distinct(mut events: Vec<WebhookEvent>) -> Vec<WebhookEvent> {
    events.sort_by_key(|e| *e as u8);
    events.dedup();
    events
}

fn check_text(field: &str, value: Option<&str>, max: usize) -> Result<()> {
    match value {
        Some(v) if v.len() > max => Err(Error::invalid(format!(
            "`{field}` is longer than {max} bytes"
        ))),
        _ => Ok(()),
    }
}

impl WebhookService {
    pub fn new(
        memory: MemoryService,
        sender: Arc<dyn WebhookSender>,
        config: WebhookConfig,
    ) -> WebhookService {
        WebhookService {
            memory,
            sender,
            config,
        }
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    async fn check_target(&self, url: &str) -> Result<String> {
        let parsed = check_url(url, self.config.allow_private)?;
        self.sender.check(parsed.as_str()).await?;
        Ok(parsed.to_string())
    }

    async fn audit(&self, ctx: &RequestCtx, action: &str, hook: &Webhook) -> Result<()> {
        let event = AuditEvent::new(
            self.memory.now(),
            ctx.actor(),
            action,
            hook.scope.org_id.clone(),
            Some(hook.id.to_string()),
            ctx.request_id.clone(),
        );
        self.memory.store().apply(vec![WriteOp::Audit(event)]).await
    }

    /// Creates a webhook; the answer carries its secret, this once.
    pub async fn create(&self, ctx: &RequestCtx, new: NewWebhook) -> Result<Webhook> {
        ctx.principal.require(Role::Admin, "managing webhooks")?;
        let scope = ctx.principal.bind_scope(new.scope)?;
        if new.events.is_empty() && new.format == WebhookFormat::Engram {
            return Err(Error::invalid(format!(
                "`events` names no event: use one or more of {}",
                WebhookEvent::ALL.map(WebhookEvent::as_str).join(", ")
            )));
        }
        check_text("name", new.name.as_deref(), MAX_NAME)?;
        check_text("description", new.description.as_deref(), MAX_DESCRIPTION)?;
        let url = self.check_target(&new.url).await?;
        let store = self.memory.store();
        let same_org = store
            .webhook_list()
            .await?
            .iter()
            .filter(|w| w.scope.org_id == scope.org_id)
            .count();
        if same_org >= MAX_PER_ORG {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("this org already has {same_org} webhooks (at most {MAX_PER_ORG})"),
            ));
        }
        let now = self.memory.now();
        let events = distinct(new.events);
        let hook = Webhook {
            id: Uuid::now_v7(),
            url,
            events,
            scope,
            name: new.name,
            description: new.description,
            format: new.format,
            project_id: new.project_id,
            include_text: new.include_text,
            enabled: true,
            consecutive_failures: 0,
            disabled_reason: None,
            secret: new_secret()?,
            created_by: ctx.actor(),
            created_at: now,
            updated_at: now,
        };
        store.webhook_insert(&hook).await?;
        self.audit(ctx, "webhook.create", &hook).await?;
        Ok(hook)
    }

    /// The webhooks the caller's binding covers, oldest first.
    pub async fn list(&self, ctx: &RequestCtx) -> Result<Vec<Webhook>> {
        ctx.principal.require(Role::Admin, "managing webhooks")?;
        let mut hooks = self.memory.store().webhook_list().await?;
        hooks.retain(|w| ctx.principal.covers(&w.scope));
        Ok(hooks)
    }

    pub async fn get(&self, ctx: &RequestCtx, id: Uuid) -> Result<Webhook> {
        ctx.principal.require(Role::Admin, "managing webhooks")?;
        match self.memory.store().webhook_get(id).await? {
            Some(w) if ctx.principal.covers(&w.scope) => Ok(w),
            _ => Err(not_found(id)),
        }
    }

    pub async fn update(&self, ctx: &RequestCtx, id: Uuid, patch: WebhookPatch) -> Result<Webhook> {
        let mut hook = self.get(ctx, id).await?;
        if let Some(url) = patch.url {
            hook.url = self.check_target(&url).await?;
        }
        if let Some(events) = patch.events {
            if events.is_empty() && hook.format == WebhookFormat::Engram {
                return Err(Error::invalid("`events` names no event"));
            }
            hook.events = distinct(events);
        }
        check_text("name", patch.name.as_deref(), MAX_NAME)?;
        check_text("description", patch.description.as_deref(), MAX_DESCRIPTION)?;
        if patch.name.is_some() {
            hook.name = patch.name;
        }
        if patch.description.is_some() {
            hook.description = patch.description;
        }
        if let Some(t) = patch.include_text {
            hook.include_text = t;
        }
        let now = self.memory.now();
        hook.updated_at = now;
        let store = self.memory.store();
        if !store.webhook_update(&hook).await? {
            return Err(not_found(id));
        }
        if let Some(enabled) = patch.enabled {
            let reason = format!("disabled by {}", ctx.actor());
            let reason = (!enabled).then_some(reason.as_str());
            if !store.webhook_set_enabled(id, enabled, reason, now).await? {
                return Err(not_found(id));
            }
        }
        // What is stored now (the state may have moved meanwhile).
        let hook = store.webhook_get(id).await?.ok_or_else(|| not_found(id))?;
        self.audit(ctx, "webhook.update", &hook).await?;
        Ok(hook)
    }

    pub async fn delete(&self, ctx: &RequestCtx, id: Uuid) -> Result<()> {
        let hook = self.get(ctx, id).await?;
        if !self.memory.store().webhook_delete(id).await? {
            return Err(not_found(id));
        }
        self.audit(ctx, "webhook.delete", &hook).await
    }

    /// A new signing secret (returned once); the old one stops signing at once.
    pub async fn rotate_secret(&self, ctx: &RequestCtx, id: Uuid) -> Result<Webhook> {
        let mut hook = self.get(ctx, id).await?;
        hook.secret = new_secret()?;
        hook.updated_at = self.memory.now();
        let store = self.memory.store();
        if !store
            .webhook_set_secret(id, &hook.secret, hook.updated_at)
            .await?
        {
            return Err(not_found(id));
        }
        self.audit(ctx, "webhook.rotate_secret", &hook).await?;
        Ok(hook)
    }

    /// The newest delivery attempts of a webhook.
    pub async fn deliveries(
        &self,
        ctx: &RequestCtx,
        id: Uuid,
        limit: usize,
    ) -> Result<Vec<DeliveryAttempt>> {
        self.get(ctx, id).await?;
        if limit == 0 || limit > 1000 {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                "`limit` must be between 1 and 1000",
            ));
        }
        self.memory.store().webhook_attempts(id, limit).await
    }

    /// Deliveries queued or running (the delivery queue's depth).
    pub async fn pending(&self) -> Result<u64> {
        self.memory.store().webhook_pending().await
    }

    /// Webhooks on the node's store, and how many of them are disabled.
    pub async fn counts(&self) -> Result<(usize, usize)> {
        let hooks = self.memory.store().webhook_list().await?;
        Ok((hooks.len(), hooks.iter().filter(|w| !w.enabled).count()))
    }

    /// Queues `event` about `scope` to every enabled webhook that wants it.
    pub async fn emit(&self, event: WebhookEvent, scope: &Scope, data: Value) -> Result<()> {
        self.memory.emit_webhook_event(event, scope, data).await
    }

    /// One attempt at delivery `job`: signs its body, sends it, records
    /// the attempt (disabling the webhook after too many failures in a row).
    pub async fn deliver(&self, job: &Job) -> Result<Delivery> {
        let payload: DeliveryPayload = match serde_json::from_value(job.payload.clone()) {
            Ok(p) => p,
            Err(e) => return Ok(Delivery::Dead(format!("not a delivery: {e}"))),
        };
        let store = self.memory.store();
        let Some(hook) = store.webhook_get(payload.webhook_id).await? else {
            return Ok(Delivery::Done(
                json!({"skipped": "the webhook was deleted"}),
            ));
        };
        if !hook.enabled {
            return Ok(Delivery::Dead(format!(
                "the webhook is disabled ({})",
                hook.disabled_reason.as_deref().unwrap_or("no reason given")
            )));
        }
        let msg_id = format!("msg_{}", job.id.simple());
        let timestamp = self.memory.now().as_second();
        let signature = sign(&hook.secret, &msg_id, timestamp, &payload.body)?;
        let out = Outgoing {
            url: hook.url.clone(),
            headers: vec![
                ("webhook-id", msg_id),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
                ("content-type", "application/json".to_owned()),
            ],
            body: payload.body,
            timeout: self.config.timeout,
        };
        let started = Instant::now();
        let sent = self.sender.send(out).await;
        let latency = started.elapsed();
        let last = job.attempts >= job.max_attempts;
        let (outcome, status, error, delivery) = match sent {
            Sent::Answered { status } if (200..300).contains(&status) => (
                "delivered",
                Some(status),
                None,
                Delivery::Done(json!({"status": status, "attempts": job.attempts})),
            ),
            Sent::Answered { status } => {
                let error = if (300..400).contains(&status) {
                    format!("the receiver answered {status}: redirects are not followed")
                } else {
                    format!("the receiver answered {status}")
                };
                let retryable = status == 429 || status == 408 || status >= 500;
                let d = if retryable {
                    Delivery::Retry(error.clone())
                } else {
                    Delivery::Dead(error.clone())
                };
                ("failed", Some(status), Some(error), d)
            }
            Sent::Failed { error } => ("failed", None, Some(error.clone()), Delivery::Retry(error)),
            Sent::Refused { error } => {
                ("refused", None, Some(error.clone()), Delivery::Dead(error))
            }
        };
        // This failure disables the webhook: the delivery is given up too.
        let disabling = !matches!(delivery, Delivery::Done(_))
            && hook.consecutive_failures.saturating_add(1) >= self.config.max_failures;
        let outcome = match &delivery {
            Delivery::Retry(_) if last || disabling => "dead",
            Delivery::Dead(_) if outcome == "failed" => "dead",
            _ => outcome,
        };
        let attempt = DeliveryAttempt {
            id: Uuid::now_v7(),
            webhook_id: hook.id,
            delivery_id: job.id,
            event: payload.event,
            attempt: job.attempts,
            outcome: outcome.to_owned(),
            status_code: status,
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            error: error.map(|mut e| {
                e.truncate(e.floor_char_boundary(MAX_ERROR));
                e
            }),
            at: self.memory.now(),
        };
        let disabled = store
            .webhook_record(&attempt, self.config.max_failures)
            .await?;
        metrics::counter!("engram_webhook_deliveries_total", "outcome" => outcome).increment(1);
        metrics::histogram!("engram_webhook_delivery_seconds").record(latency.as_secs_f64());
        if disabled {
            metrics::counter!("engram_webhooks_disabled_total").increment(1);
            tracing::warn!(webhook = %hook.id, failures = self.config.max_failures, "webhook disabled after failing too often");
            if let Delivery::Retry(e) = delivery {
                return Ok(Delivery::Dead(format!(
                    "{e}; the webhook is now disabled after {} failures in a row",
                    self.config.max_failures
                )));
            }
        }
        Ok(delivery)
    }
}

impl MemoryService {
    /// Queues `event` about `scope` to every enabled webhook that wants it
    /// — for events outside a write transaction (an erasure, a dead job),
    /// each after its own change committed. Native webhooks only: Mem0 has
    /// no such events.
    pub(crate) async fn emit_webhook_event(
        &self,
        event: WebhookEvent,
        scope: &Scope,
        data: Value,
    ) -> Result<()> {
        self.emit_to(event, scope, data, |h| h.wants(event, scope))
            .await
    }

    /// Queues `event` to every native webhook `reaches` accepts.
    async fn emit_to(
        &self,
        event: WebhookEvent,
        scope: &Scope,
        data: Value,
        reaches: impl Fn(&Webhook) -> bool,
    ) -> Result<()> {
        let store = self.store();
        let now = self.now();
        for hook in store.webhook_list().await? {
            if hook.format == WebhookFormat::Engram && reaches(&hook) {
                let body = envelope(event, now, data.clone());
                store
                    .job_insert(&delivery_job(&hook, event, scope, body, None, now))
                    .await?;
            }
        }
        Ok(())
    }

    /// After erasing `scope`: webhooks bound inside it go too (their scope
    /// names the erased id), and the others that want it and whose scope
    /// overlaps it hear `scope.erased`.
    pub(crate) async fn announce_erasure(&self, scope: &Scope, receipt_id: Uuid) -> Result<()> {
        let store = self.store();
        for hook in store.webhook_list().await? {
            if within(scope, &hook.scope) {
                store.webhook_delete(hook.id).await?;
            }
        }
        let data = json!({
            "receipt_id": receipt_id.to_string(),
            "org_id": scope.org_id,
            "app_id": scope.app_id,
            "user_id": scope.user_id,
            "agent_id": scope.agent_id,
            "run_id": scope.run_id,
        });
        // Every webhook whose scope overlaps the erased one hears of it —
        // but an org-bound webhook only of an erasure that names its org (an
        // operator's erasure of a user spans orgs, and no tenant may learn
        // of another's ids).
        let event = WebhookEvent::ScopeErased;
        self.emit_to(event, scope, data, |h| {
            h.enabled
                && h.events.contains(&event)
                && (h.scope.org_id.is_none() || h.scope.org_id == scope.org_id)
                && overlaps(&h.scope, scope)
        })
        .await
    }
}
