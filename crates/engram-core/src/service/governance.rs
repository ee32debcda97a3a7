//! Erasure with a receipt, the audit trail, LLM usage and the scope ids
//! inside a caller's binding.

use jiff::Timestamp;
use serde::Serialize;
use uuid::Uuid;

use crate::access::Role;
use crate::ctx::RequestCtx;
use crate::filter::Filter;
use crate::memory::ScopeField;
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
        let p = &ctx.principal;
        let own = p.binding.get(field) == Some(id) && field != ScopeField::Org;
        if !own {
            p.require(Role::Admin, "erasing another scope's data")?;
        } else {
            p.require(Role::ReadWrite, "erasing data")?;
        }
        let org_id = p.binding.org_id.clone();
        if field == ScopeField::Org && org_id.as_deref().is_some_and(|o| o != id) {
            return Err(Error::new(
                ErrorCode::Forbidden,
                "an admin key can erase only its own org",
            ));
        }
        // Below the org, a bound key's other ids narrow nothing: erasure of
        // `user_id = X` in its org covers every agent and app that user spoke to.
        let target = ErasureTarget {
            field,
            id: id.to_owned(),
            org_id: if field == ScopeField::Org {
                Some(id.to_owned())
            } else {
                org_id.clone()
            },
        };
        let started_at = self.now();
        let receipt_id = Uuid::now_v7();
        let mut audit = AuditEvent::new(
            started_at,
            ctx.actor(),
            "erasure",
            target.org_id.clone(),
            Some(receipt_id.to_string()),
            ctx.request_id.clone(),
        );
        // What kind of id was erased, never which one.
        audit.detail = serde_json::json!({ "field": field.as_str() });
        let erased = self.inner.store.erase(&target, audit).await?;
        // Query embeddings may hold the person's words.
        self.query_cache().clear();
        let compacted = if compact {
            self.inner.store.compact().await?
        } else {
            false
        };
        tracing::info!(receipt = %receipt_id, field = field.as_str(), versions = erased.versions, "erasure done");
        Ok(ErasureReceipt {
            receipt_id,
            field: field.as_str().to_owned(),
            id: id.to_owned(),
            org_id: target.org_id,
            erased,
            compacted,
            started_at,
            finished_at: self.now(),
        })
    }

    /// Audit events (admins: their org's; the operator: all), oldest first.
    pub async fn audit(
        &self,
        ctx: &RequestCtx,
        mut query: AuditQuery,
    ) -> Result<Vec<(i64, AuditEvent)>> {
        ctx.principal
            .require(Role::Admin, "reading the audit log")?;
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
