//! The write rules every backend shares, written once.
//!
//! A backend offers the row-level steps of one write transaction
//! ([`WriteTx`]: insert a version, lock the current one, close it, append a
//! history row …); [`apply_batch`] gives each [`WriteOp`] its meaning by
//! composing them — which rows an update writes, that an update names the
//! version it replaces (else a [`conflict`]), that every history row is also
//! an audit event, that an import skips a memory the store already holds.
//! A backend keeps only what is its own: SQL, locking, and (SQLite) the
//! in-memory catalog and index it brings in step after the commit, from the
//! [`Applied`] list this returns.

use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::memory::{Feedback, HistoryEvent, Memory, MemoryId};
use crate::ports::{
    AuditEvent, Job, UsageRow, WriteOp, check_dimensions, check_model, delivery_job,
    memory_ordering,
};
use crate::webhook::{Webhook, WebhookEvent, memory_body};
use crate::{Error, ErrorCode, Result};

/// The current version of a memory, as a write transaction found (and,
/// where the backend locks, locked) it.
pub struct Current<R> {
    pub row: R,
    pub version: u32,
    pub vector: Vec<f32>,
}

/// The steps of one write transaction of a backend. Each is one statement
/// or a few; none commits. Called only from [`apply_batch`].
///
/// The methods are `async` for backends that talk to a server (Postgres);
/// an embedded backend (SQLite) implements them without awaiting anything.
#[allow(async_fn_in_trait)] // Callers use concrete types, so the futures' `Send` is known.
pub trait WriteTx {
    /// The backend's handle on one stored version (a row id).
    type Row;
    /// The backend's error: core errors convert into it, and a backend may
    /// keep its own (Postgres retries serialization failures).
    type Error: From<Error>;

    /// Inserts a version with its vector, indexed for keywords and entities
    /// when current. Returns its row.
    async fn insert_version(
        &mut self,
        memory: &Memory,
        vector: &[f32],
    ) -> Result<Self::Row, Self::Error>;

    /// The current version of `id`, locked against concurrent writers where
    /// the backend has any; `None` when the memory has none.
    async fn current(&mut self, id: MemoryId) -> Result<Option<Current<Self::Row>>, Self::Error>;

    /// Closes version `row` at `at` and drops it from the keyword and entity
    /// indexes (they hold current versions only).
    async fn close(&mut self, row: &Self::Row, at: Timestamp) -> Result<(), Self::Error>;

    /// Drops a version inserted closed (an import's superseded version) from
    /// the keyword and entity indexes, as closing it would have.
    async fn unindex(&mut self, row: &Self::Row) -> Result<(), Self::Error>;

    /// Whether the store holds any version of `id` (taking whatever lock
    /// makes two importers of one id queue behind each other).
    async fn holds(&mut self, id: MemoryId) -> Result<bool, Self::Error>;

    async fn insert_history(&mut self, event: &HistoryEvent) -> Result<(), Self::Error>;

    async fn append_audit(&mut self, event: &AuditEvent) -> Result<(), Self::Error>;

    /// The compare-and-set of [`WriteOp::SetExpiry`]; whether it applied.
    async fn set_expiry(
        &mut self,
        id: MemoryId,
        version: u32,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> Result<bool, Self::Error>;

    /// [`WriteOp::SetFeedback`]: sets the feedback of `id`'s current version
    /// if it is `version`; whether it did.
    async fn set_feedback(
        &mut self,
        id: MemoryId,
        version: u32,
        feedback: Option<Feedback>,
    ) -> Result<bool, Self::Error>;

    /// [`WriteOp::FinishJob`]: a `Conflict` naming the lease when `worker`
    /// no longer holds it.
    async fn finish_job(
        &mut self,
        id: Uuid,
        worker: &str,
        result: &serde_json::Value,
        at: Timestamp,
    ) -> Result<(), Self::Error>;

    async fn record_usage(&mut self, row: &UsageRow) -> Result<(), Self::Error>;

    /// The enabled webhooks, read once per batch inside the transaction.
    async fn webhooks(&mut self) -> Result<Vec<Webhook>, Self::Error>;

    /// Queues `job` inside the transaction (a webhook delivery: it exists
    /// exactly when the change it announces committed).
    async fn insert_job(&mut self, job: &Job) -> Result<(), Self::Error>;
}

/// What a batch changed, for a backend that keeps derived state in memory.
// Lives for one batch; boxing the memory would cost an allocation per write.
#[allow(clippy::large_enum_variant)]
pub enum Applied<R> {
    /// A new current version.
    Added {
        row: R,
        memory: Memory,
        vector: Vec<f32>,
    },
    /// A version that stopped being current.
    Closed { row: R },
    /// The expiry of `id`'s current version changed in place.
    Expiry {
        id: MemoryId,
        expires_at: Option<Timestamp>,
    },
    /// The feedback of `id`'s current version changed in place.
    Feedback {
        id: MemoryId,
        feedback: Option<Feedback>,
    },
}

/// Applies `ops` through `tx`, in order: every rule of [`WriteOp`] lives
/// here. `model` is the store's embedding model (read inside the same
/// transaction), `dim` its vector length; a batch embedded with another
/// model is refused before its vectors' length is looked at.
pub async fn apply_batch<T: WriteTx>(
    tx: &mut T,
    ops: Vec<WriteOp>,
    model: Option<&str>,
    dim: usize,
) -> Result<Vec<Applied<T::Row>>, T::Error> {
    if let Some(model) = model {
        check_model(&ops, model)?;
    }
    check_dimensions(&ops, dim)?;
    let mut applied = Vec::with_capacity(ops.len());
    let mut hooks = None;
    for op in ops {
        match op {
            WriteOp::Insert {
                memory,
                embedding,
                history,
            } => {
                let row = tx.insert_version(&memory, &embedding).await?;
                write_history(tx, &history).await?;
                announce(tx, &mut hooks, &history).await?;
                applied.push(Applied::Added {
                    row,
                    memory,
                    vector: embedding,
                });
            }
            WriteOp::Update {
                mut memory,
                embedding,
                history,
            } => {
                let old = close_current(
                    tx,
                    memory.id,
                    memory.updated_at,
                    memory.version.checked_sub(1),
                )
                .await?;
                let vector = match embedding {
                    Some(v) => v,
                    None => {
                        // The previous vector is kept: it has the store's model.
                        if let Some(m) = model {
                            m.clone_into(&mut memory.embedding_model);
                        }
                        old.vector
                    }
                };
                let row = tx.insert_version(&memory, &vector).await?;
                write_history(tx, &history).await?;
                announce(tx, &mut hooks, &history).await?;
                applied.push(Applied::Closed { row: old.row });
                applied.push(Applied::Added {
                    row,
                    memory,
                    vector,
                });
            }
            WriteOp::Delete { id, at, history } => {
                let old = close_current(tx, id, at, None).await?;
                write_history(tx, &history).await?;
                announce(tx, &mut hooks, &history).await?;
                applied.push(Applied::Closed { row: old.row });
            }
            WriteOp::Import { versions, history } => {
                let Some(id) = versions.first().map(|(m, _)| m.id) else {
                    continue;
                };
                if tx.holds(id).await? {
                    continue;
                }
                for (memory, vector) in versions {
                    let row = tx.insert_version(&memory, &vector).await?;
                    if memory.invalid_at.is_some() {
                        // Indexed, then dropped like any closed version, so
                        // keyword statistics match the exporting store.
                        tx.unindex(&row).await?;
                    } else {
                        applied.push(Applied::Added {
                            row,
                            memory,
                            vector,
                        });
                    }
                }
                // Not audited per row: the batch carries one `Audit` op.
                for h in &history {
                    tx.insert_history(h).await?;
                }
            }
            WriteOp::SetExpiry {
                id,
                version,
                from,
                to,
            } => {
                if tx.set_expiry(id, version, from, to).await? {
                    applied.push(Applied::Expiry { id, expires_at: to });
                }
            }
            WriteOp::SetFeedback {
                id,
                version,
                feedback,
                history,
            } => {
                if !tx.set_feedback(id, version, feedback).await? {
                    return Err(match tx.current(id).await? {
                        Some(c) => conflict(id, c.version),
                        None => Error::not_found(format!("memory {id} not found")),
                    }
                    .into());
                }
                write_history(tx, &history).await?;
                applied.push(Applied::Feedback { id, feedback });
            }
            WriteOp::FinishJob {
                id,
                worker,
                result,
                at,
            } => tx.finish_job(id, &worker, &result, at).await?,
            WriteOp::RecordUsage(row) => tx.record_usage(&row).await?,
            WriteOp::Audit(event) => tx.append_audit(&event).await?,
        }
    }
    Ok(applied)
}

/// A history row, and the audit event every history row is.
async fn write_history<T: WriteTx>(tx: &mut T, history: &HistoryEvent) -> Result<(), T::Error> {
    tx.insert_history(history).await?;
    tx.append_audit(&AuditEvent::of_history(history)).await
}

/// Queues a delivery of `history` to every enabled webhook that wants it,
/// in the same transaction: a change that rolls back announces nothing.
/// The webhooks are read on the batch's first change.
async fn announce<T: WriteTx>(
    tx: &mut T,
    hooks: &mut Option<Vec<Webhook>>,
    history: &HistoryEvent,
) -> Result<(), T::Error> {
    let Some(event) = WebhookEvent::of_history(history) else {
        return Ok(());
    };
    if hooks.is_none() {
        *hooks = Some(tx.webhooks().await?);
    }
    for hook in hooks.iter().flatten() {
        if !hook.wants(event, &history.scope) {
            continue;
        }
        let job = delivery_job(
            hook,
            event,
            &history.scope,
            memory_body(hook, event, history),
            Some(memory_ordering(hook.id, history.memory_id)),
            history.created_at,
        );
        tx.insert_job(&job).await?;
    }
    Ok(())
}

/// Closes the current version of `id` at `at`. With `expect`, it must be
/// that version (else someone else updated the memory since it was read).
async fn close_current<T: WriteTx>(
    tx: &mut T,
    id: MemoryId,
    at: Timestamp,
    expect: Option<u32>,
) -> Result<Current<T::Row>, T::Error> {
    let current = tx
        .current(id)
        .await?
        .ok_or_else(|| Error::not_found(format!("memory {id} not found")))?;
    if let Some(v) = expect
        && v != current.version
    {
        return Err(conflict(id, current.version).into());
    }
    tx.close(&current.row, at).await?;
    Ok(current)
}

/// The answer to a write that names a version no longer current.
pub fn conflict(id: MemoryId, now_version: u32) -> Error {
    Error::new(
        ErrorCode::Conflict,
        format!(
            "memory {id} changed while this request ran (now version {now_version}); read it again and retry"
        ),
    )
}

/// A value serialised for a JSON text column. Maps, lists of strings and
/// plain derived structs always serialise; anything else is stored as `null`.
pub fn to_json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// A JSON text column read back; `what` names it in the error.
pub fn from_json<T: DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::store(format!("bad {what} in a stored row: {e}")))
}
