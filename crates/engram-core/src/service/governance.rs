//! Erasure with a receipt, the audit trail, LLM usage and the scope ids
//! inside a caller's binding.

use jiff::Timestamp;
use serde::Serialize;
use uuid::Uuid;

use crate::access::{Principal, Role};
use crate::ctx::RequestCtx;
use crate::filter::Filter;
use crate::memory::{Scope, ScopeField};
use crate::ports::{AuditEvent, AuditQuery, ErasureCounts, ErasureTarget, ScopeIdStats};
use crate::service::{MAX_PAGE, MemoryService};
use crate::{Error, ErrorCode, Result};

/// What an erasure returns, and what the audit log keeps (without the id).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ErasureReceipt {
    pub receipt_id: Uuid,
    /// `user_id`, `agent_id`, `run_id` or `org_id`.
    pub field: String,
    pub id: String,
    pub org_id: Option<String>,
    /// Exactly what was erased: the target id and the caller's binding it
    /// stayed within (an app-bound admin erasing a user erases that user's
    /// data in its app only).
    pub scope: Scope,
    pub erased: ErasureCounts,
    /// Whether the store's files were compacted afterwards (freed pages
    /// overwritten), so the erased bytes are gone from disk too.
    pub compacted: bool,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
}

/// Checks an id named in an erasure path.
pub fn validate_target(field: ScopeField, id: &str) -> Result<()> {
    crate::memory::validate_scope_id(field, id)
        .map_err(|e| Error::invalid(format!("cannot erase: {}", e.message)))
}

impl MemoryService {
    /// LLM usage tallies (per scope, day and model) inside the caller's binding, newest day first.
    pub async fn llm_usage(
        &self,
        ctx: &RequestCtx,
        limit: usize,
    ) -> Result<Vec<crate::ports::UsageRow>> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("`limit` must be between 1 and {MAX_PAGE}"),
            ));
        }
        let mut rows = self.inner.store.usage(10 * limit).await?;
        rows.retain(|r| ctx.principal.covers(&r.scope));
        rows.truncate(limit);
        Ok(rows)
    }

    /// The scope ids the caller can see (Mem0's users / entities), with counts.
    pub async fn scope_ids(&self, ctx: &RequestCtx) -> Result<Vec<ScopeIdStats>> {
        let filter = ctx.principal.bind_filter(Filter::all())?;
        self.inner.store.scope_ids(&filter, self.vis()).await
    }

    /// Erases every trace of one user / agent / run / org inside the caller's
    /// binding (see [`crate::audit`]) and, with `compact`, rewrites the
    /// store's files so the bytes are gone from disk too. Admins erase within
    /// their org; a read-write key may erase the user or agent it is bound to.
    pub async fn erase(
        &self,
        ctx: &RequestCtx,
        field: ScopeField,
        id: &str,
        compact: bool,
    ) -> Result<ErasureReceipt> {
        validate_target(field, id)?;
        let target = erasure_target(&ctx.principal, field, id)?;
        let started_at = self.now();
        let receipt_id = Uuid::now_v7();
        let mut audit = AuditEvent::new(
            started_at,
            ctx.actor(),
            "erasure",
            target.org_id().map(str::to_owned),
            Some(receipt_id.to_string()),
            ctx.request_id.clone(),
        );
        // What kind of id was erased, never which one.
        audit.detail = serde_json::json!({ "field": field.as_str() });
        let erased = self.inner.store.erase(&target, audit).await?;
        // Query embeddings may hold the person's words.
        self.query_cache().clear();
        let compacted = if compact {
            self.compact_store().await?
        } else {
            false
        };
        tracing::info!(receipt = %receipt_id, field = field.as_str(), versions = erased.versions, "erasure done");
        let mut scope = target.within.clone();
        scope.set(field, Some(id.to_owned()));
        self.announce_erasure(&scope, receipt_id).await?;
        Ok(ErasureReceipt {
            receipt_id,
            field: field.as_str().to_owned(),
            id: id.to_owned(),
            org_id: target.within.org_id,
            scope,
            erased,
            compacted,
            started_at,
            finished_at: self.now(),
        })
    }

    /// Rewrites the store's files so erased records' bytes are gone from disk
    /// (the operator only: it costs the whole store, and every tenant waits).
    pub async fn compact(&self, ctx: &RequestCtx) -> Result<bool> {
        ctx.principal
            .require(Role::Operator, "compacting the store")?;
        self.compact_store().await
    }

    /// [`compact`](Self::compact) for the node's own background compactor.
    pub async fn compact_store(&self) -> Result<bool> {
        let started = std::time::Instant::now();
        let done = self.inner.store.compact().await?;
        metrics::counter!("engram_compactions_total").increment(1);
        metrics::histogram!("engram_compaction_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(done)
    }

    /// Audit events (admins: their org's; the operator: all), oldest first.
    pub async fn audit(
        &self,
        ctx: &RequestCtx,
        mut query: AuditQuery,
    ) -> Result<Vec<(i64, AuditEvent)>> {
        ctx.principal
            .require(Role::Admin, "reading the audit log")?;
        // Audit events name orgs, never the ids below them: a key bound to
        // one app or user cannot be shown only its part, so it sees none.
        if let Some(narrow) = narrower_than_org(&ctx.principal) {
            return Err(Error::new(
                ErrorCode::Forbidden,
                format!(
                    "reading the audit log needs an admin key bound to the whole org; this key is bound to {narrow}"
                ),
            ));
        }
        if query.limit == 0 || query.limit > MAX_PAGE {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("`limit` must be between 1 and {MAX_PAGE}"),
            ));
        }
        if let Some(org) = &ctx.principal.binding.org_id {
            if query.org_id.as_ref().is_some_and(|o| o != org) {
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    "an admin key reads only its own org's audit log",
                ));
            }
            query.org_id = Some(org.clone());
        }
        self.inner.store.audit_list(&query).await
    }
}

/// The binding field below the org a principal is tied to, if any
/// (`app_id acme-app`), for messages.
fn narrower_than_org(p: &Principal) -> Option<String> {
    p.binding
        .iter()
        .find(|(f, _)| *f != ScopeField::Org)
        .map(|(f, v)| format!("{} `{v}`", f.as_str()))
}

/// What `p` may erase when it names `field = id`: exactly what it can read.
/// A key erasing its own user or agent needs read-write; any other erasure
/// needs an admin. The erasure stays within the key's binding (its org, and
/// its app, user or agent); an org is erased only by an admin bound to that
/// whole org, or by the operator.
fn erasure_target(p: &Principal, field: ScopeField, id: &str) -> Result<ErasureTarget> {
    let own = p.binding.get(field) == Some(id) && field != ScopeField::Org;
    if own {
        p.require(Role::ReadWrite, "erasing data")?;
    } else {
        p.require(Role::Admin, "erasing another scope's data")?;
    }
    if p.binding.get(field).is_some_and(|b| b != id) {
        return Err(Error::new(
            ErrorCode::Forbidden,
            format!(
                "this key is bound to {} `{}`; it cannot erase another",
                field.as_str(),
                p.binding.get(field).unwrap_or_default()
            ),
        ));
    }
    if field == ScopeField::Org
        && let Some(narrow) = narrower_than_org(p)
    {
        return Err(Error::new(
            ErrorCode::Forbidden,
            format!(
                "erasing an org needs an admin key bound to the whole org; this key is bound to {narrow}"
            ),
        ));
    }
    let mut within = p.binding.clone();
    if field == ScopeField::Org {
        within.org_id = Some(id.to_owned());
    }
    Ok(ErasureTarget {
        field,
        id: id.to_owned(),
        within,
    })
}
