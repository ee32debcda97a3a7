//! The audit trail and provable erasure.
//!
//! The audit log is append-only (the stores refuse UPDATE and DELETE on it)
//! and holds who did what to which record, never memory text, scope ids
//! below the org, or secrets: it must survive an erasure without keeping the
//! erased person in it. Memory writes are audited by the store from each
//! write's history row, in the same transaction; other actions (keys,
//! erasures, job retries, resets) append their own event.
//!
//! An erasure removes every trace of one user / agent / run / org inside the
//! caller's binding — every version of every memory, their keyword, entity
//! and vector index entries, history, queued and dead jobs, LLM usage rows,
//! the org's idempotency records — in one transaction, and returns a receipt
//! with counts. The audit keeps that it happened (the receipt id, the
//! counts, who asked), not whom it was about.

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Result;
use crate::memory::{Event, HistoryEvent, Scope, ScopeField};

/// One audited action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: Uuid,
    pub at: Timestamp,
    /// `key:<id>`, or the transport for the local operator (`cli`, `mcp:stdio`…).
    pub actor: String,
    /// `memory.add`, `memory.update`, `memory.delete`, `memory.revert`,
    /// `key.create`, `key.revoke`, `erasure`, `job.retry`…
    pub action: String,
    /// The tenant the action touched (`None`: the operator, across orgs).
    pub org_id: Option<String>,
    /// What it touched: a memory id, key id, job id or erasure receipt id.
    pub target: Option<String>,
    pub request_id: Option<String>,
    /// Counts and flags only; never text, scope ids below the org, or secrets.
    pub detail: serde_json::Value,
}

impl AuditEvent {
    pub fn new(
        at: Timestamp,
        actor: String,
        action: &str,
        org_id: Option<String>,
        target: Option<String>,
        request_id: Option<String>,
    ) -> AuditEvent {
        AuditEvent {
            id: Uuid::now_v7(),
            at,
            actor,
            action: action.to_owned(),
            org_id,
            target,
            request_id,
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    /// Adds removal counts to the detail (every count for an erasure's
    /// receipt; with `nonzero_only`, just the kinds that were touched).
    pub fn add_counts(&mut self, counts: &ErasureCounts, nonzero_only: bool) {
        if let serde_json::Value::Object(detail) = &mut self.detail
            && let Ok(serde_json::Value::Object(c)) = serde_json::to_value(counts)
        {
            detail.extend(
                c.into_iter()
                    .filter(|(_, v)| !nonzero_only || v.as_u64() != Some(0)),
            );
        }
    }

    /// The audit row of a memory write, derived from its history row.
    pub fn of_history(h: &HistoryEvent) -> AuditEvent {
        let action = match h.event {
            Event::Add => "memory.add",
            Event::Update => "memory.update",
            Event::Delete => "memory.delete",
            Event::Revert => "memory.revert",
            Event::Feedback => "memory.feedback",
            Event::Noop => "memory.noop",
        };
        let mut e = AuditEvent::new(
            h.created_at,
            h.actor.clone().unwrap_or_else(|| "unknown".into()),
            action,
            h.scope.org_id.clone(),
            Some(h.memory_id.to_string()),
            h.request_id.clone(),
        );
        e.id = h.id;
        e.detail = serde_json::json!({ "version": h.version });
        e
    }
}

/// Which audit events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this org's events (an admin key's binding); `None`: every org.
    pub org_id: Option<String>,
    pub action: Option<String>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Events after this position (a cursor from a previous page).
    pub after: Option<i64>,
    pub limit: usize,
}

/// Where audit events live. Implemented by every store backend; appending
/// happens inside the stores' own write transactions.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Events in the order they were appended, each with its position.
    async fn audit_list(&self, query: &AuditQuery) -> Result<Vec<(i64, AuditEvent)>>;
}

/// What an erasure removes: every record carrying `field = id` and every
/// id set in `within`.
#[derive(Debug, Clone, PartialEq)]
pub struct ErasureTarget {
    pub field: ScopeField,
    pub id: String,
    /// The ids every erased record must also carry: the caller's binding
    /// (its org, and its app, user or agent when it is bound to one), so a
    /// key erases only what it can read. Empty for the operator (every org).
    pub within: Scope,
}

impl ErasureTarget {
    /// The org the erasure stays in (`None`: every org, the operator's).
    pub fn org_id(&self) -> Option<&str> {
        self.within.org_id.as_deref()
    }

    /// The ids an erased record carries, `(field, value)` for each set one
    /// — the target's, then `within`'s — for stores to match on.
    pub fn conditions(&self) -> Vec<(ScopeField, &str)> {
        std::iter::once((self.field, self.id.as_str()))
            .chain(self.within.iter().filter(|(f, _)| *f != self.field))
            .collect()
    }
}

/// Records removed, per kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErasureCounts {
    /// Distinct memories (all their versions go).
    pub memories: u64,
    /// Memory versions, current and superseded.
    pub versions: u64,
    pub history_events: u64,
    pub entity_index_entries: u64,
    pub keyword_index_entries: u64,
    pub vector_index_entries: u64,
    /// Queued, running, done and dead jobs about the target.
    pub jobs: u64,
    pub idempotency_records: u64,
    pub llm_usage_rows: u64,
    /// API keys bound to the target (they name it).
    pub api_keys: u64,
}
