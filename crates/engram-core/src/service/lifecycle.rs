//! Ageing: a new memory's expiry, sliding expiries moved on use, the
//! episodic cap, and the sweep of expired memories.

use jiff::{SignedDuration, Timestamp};

use crate::clock::to_millis;
use crate::ctx::RequestCtx;
use crate::filter::Filter;
use crate::lifecycle::{self};
use crate::memory::{Memory, MemoryId, MemoryKind, Scope};
use crate::ports::{AuditEvent, Cursor, WriteOp};
use crate::service::{AddInput, MAX_PAGE, MemoryService, SweepReport};
use crate::telemetry;
use crate::{Error, Result};

/// `now + ttl` in whole milliseconds (`None` past the end of time).
pub(super) fn expiry_after(now: Timestamp, ttl: SignedDuration) -> Option<Timestamp> {
    now.checked_add(ttl).ok().map(to_millis)
}

/// A new version is a use: a sliding expiry starts again from `now`.
pub(super) fn slide(m: &mut Memory, now: Timestamp) {
    if let Some(ttl) = m.idle_ttl {
        m.expires_at = expiry_after(now, ttl);
    }
}

/// Where a memory counted against the episodic cap is.
pub(super) enum Placed {
    /// Inserted by the batch, at this index of its ops.
    New(usize),
    /// Already stored: its current version and expiry.
    Stored(u32, Option<Timestamp>),
}

impl MemoryService {
    /// The expiry of a new memory: fixed (`expires_at`), sliding (the
    /// request's `ttl` or its scope policy's) or none.
    pub(crate) fn expiry_of(
        &self,
        input: &AddInput,
        now: Timestamp,
    ) -> Result<(Option<Timestamp>, Option<SignedDuration>)> {
        if let Some(at) = input.expires_at {
            if input.ttl.is_some() {
                return Err(Error::invalid(
                    "give `expires_at` (a fixed expiry) or `ttl` (a sliding one), not both",
                ));
            }
            return Ok((Some(to_millis(at)), None));
        }
        let policy = self.inner.lifecycle.policy(&input.scope);
        let ttl = policy.idle_ttl(&input.scope, input.ttl)?;
        Ok((ttl.and_then(|t| expiry_after(now, t)), ttl))
    }

    /// Moves the sliding expiry of memories just used (read or said again)
    /// and updates the copies given. Best effort: a failed touch is logged and
    /// never fails the read. Not audited and not versioned (no content changes).
    pub(super) async fn touch(&self, memories: impl IntoIterator<Item = &mut Memory>) {
        let now = self.now();
        let mut ops = Vec::new();
        for m in memories {
            if let (Some(ttl), Some(at)) = (m.idle_ttl, m.expires_at)
                && lifecycle::needs_touch(at, ttl, now)
            {
                m.expires_at = expiry_after(now, ttl);
                ops.push(WriteOp::SetExpiry {
                    id: m.id,
                    version: m.version,
                    from: Some(at),
                    to: m.expires_at,
                });
            }
        }
        if ops.is_empty() {
            return;
        }
        let n = ops.len();
        match self.inner.store.apply(ops).await {
            Ok(()) => telemetry::expiry_touched(n),
            Err(e) => tracing::warn!(error = %e, memories = n, "could not extend sliding expiries"),
        }
    }

    /// Keeps at most the scope policy's cap of current episodic memories in
    /// each scope `ops` adds to: the oldest (by `created_at`) beyond it expire
    /// now, in the same transaction — existing ones by `SetExpiry` (audited as
    /// `memory.expire`), new ones by being written already expired.
    pub(crate) async fn cap_episodic(
        &self,
        ctx: &RequestCtx,
        ops: &mut Vec<WriteOp>,
    ) -> Result<()> {
        let mut scopes: Vec<Scope> = Vec::new();
        for op in ops.iter() {
            if let WriteOp::Insert { memory, .. } = op
                && memory.kind == MemoryKind::Episodic
                && !scopes.contains(&memory.scope)
            {
                scopes.push(memory.scope.clone());
            }
        }
        let vis = self.vis();
        let now = vis.now;
        for scope in scopes {
            let Some(cap) = self.inner.lifecycle.policy(&scope).episodic_cap else {
                continue;
            };
            let filter = Filter::exact_scope(&scope).and(Filter::Cond(crate::filter::Cond::Kind(
                vec![MemoryKind::Episodic],
                false,
            )));
            // Memories this batch deletes no longer count.
            let deleted: Vec<MemoryId> = ops
                .iter()
                .filter_map(|op| match op {
                    WriteOp::Delete { id, .. } => Some(*id),
                    _ => None,
                })
                .collect();
            // (created_at, id, where: the new insert's index in `ops`, or the
            // existing memory's version and expiry)
            let mut all: Vec<(Timestamp, MemoryId, Placed)> = ops
                .iter()
                .enumerate()
                .filter_map(|(i, op)| match op {
                    WriteOp::Insert { memory, .. }
                        if memory.kind == MemoryKind::Episodic
                            && memory.scope == scope
                            && memory.is_live(now) =>
                    {
                        Some((memory.created_at, memory.id, Placed::New(i)))
                    }
                    _ => None,
                })
                .collect();
            let existing = self.inner.store.count(&filter, vis).await?;
            if existing.saturating_sub(deleted.len()) + all.len() <= cap {
                continue;
            }
            let mut after = None;
            loop {
                let page = self.inner.store.list(&filter, vis, after, MAX_PAGE).await?;
                all.extend(
                    page.iter()
                        .filter(|m| !deleted.contains(&m.id))
                        .map(|m| (m.created_at, m.id, Placed::Stored(m.version, m.expires_at))),
                );
                match page.last() {
                    Some(last) if page.len() == MAX_PAGE => after = Some(Cursor::of(last)),
                    _ => break,
                }
            }
            all.sort_by_key(|m| std::cmp::Reverse((m.0, m.1)));
            for (_, id, placed) in all.into_iter().skip(cap) {
                match placed {
                    Placed::New(i) => {
                        if let WriteOp::Insert { memory, .. } = &mut ops[i] {
                            memory.expires_at = Some(now);
                            memory.idle_ttl = None;
                        }
                    }
                    Placed::Stored(version, from) => {
                        ops.push(WriteOp::SetExpiry {
                            id,
                            version,
                            from,
                            to: Some(now),
                        });
                        let mut e = AuditEvent::new(
                            now,
                            ctx.actor(),
                            "memory.expire",
                            scope.org_id.clone(),
                            Some(id.to_string()),
                            ctx.request_id.clone(),
                        );
                        e.detail = serde_json::json!({ "reason": "episodic_cap", "cap": cap });
                        ops.push(WriteOp::Audit(e));
                    }
                }
            }
            telemetry::episodic_capped();
        }
        Ok(())
    }

    /// Removes expired memories (every version, their history and index
    /// entries), in batches of the lifecycle's `sweep_batch`, until none is
    /// left. Each batch is one transaction with one `memory.sweep` audit event.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let started = std::time::Instant::now();
        let now = self.now();
        let batch = self.inner.lifecycle.sweep_batch.max(1);
        let mut report = SweepReport::default();
        loop {
            let audit = AuditEvent::new(now, "system".into(), "memory.sweep", None, None, None);
            let c = self.inner.store.sweep_expired(now, batch, audit).await?;
            report.batches += 1;
            report.memories += c.memories;
            report.versions += c.versions;
            report.history_events += c.history_events;
            if (c.memories as usize) < batch {
                break;
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        telemetry::sweep(&report, now);
        Ok(report)
    }
}
