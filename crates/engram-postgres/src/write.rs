//! The write path: Postgres's steps of a write transaction ([`PgTx`],
//! composed by core's `apply_batch`), one transaction per batch, retried
//! on serialization failures and deadlocks.

use engram_core::Result;
use engram_core::memory::{HistoryEvent, Memory, MemoryId};
use engram_core::ports::write::{Current, WriteTx, apply_batch};
use engram_core::ports::{AuditEvent, UsageRow, WriteOp};
use jiff::Timestamp;
use pgvector::Vector;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::error::ApplyError;
use crate::rows::{int, json, ms};
use crate::{PgStore, audit, jobs};

/// Applies a batch in one transaction (again after a serialization failure
/// or a deadlock).
pub(crate) async fn apply(store: &PgStore, ops: Vec<WriteOp>) -> Result<()> {
    store.retrying(|| apply_once(store, ops.clone())).await
}

/// One attempt at [`apply`].
async fn apply_once(store: &PgStore, ops: Vec<WriteOp>) -> std::result::Result<(), ApplyError> {
    let mut client = store.client().await.map_err(ApplyError::Other)?;
    let tx = client.transaction().await.map_err(ApplyError::Pg)?;
    let mut model: Option<String> = None;
    if ops.iter().any(|op| {
        matches!(
            op,
            WriteOp::Insert { .. } | WriteOp::Update { .. } | WriteOp::Import { .. }
        )
    }) {
        // A shared lock on the model row: a re-embedding switch (which
        // updates that row first) waits for this batch, and a batch
        // queued behind a switch re-reads the new model and is refused.
        let row = tx
            .query_opt(
                "SELECT value FROM engram_meta WHERE key = 'embedding_model' FOR SHARE",
                &[],
            )
            .await?;
        model = row.map(|r| r.get(0));
    }
    apply_batch(&mut PgTx(&tx), ops, model.as_deref(), store.dim()?).await?;
    tx.commit().await.map_err(ApplyError::Pg)
}

/// The steps of one Postgres write transaction; rows are `rowid`s.
struct PgTx<'a, 'c>(&'a Transaction<'c>);

impl WriteTx for PgTx<'_, '_> {
    type Row = i64;
    type Error = ApplyError;

    async fn insert_version(
        &mut self,
        memory: &Memory,
        vector: &[f32],
    ) -> std::result::Result<i64, ApplyError> {
        insert_version(self.0, memory, Vector::from(vector.to_vec())).await
    }

    async fn current(
        &mut self,
        id: MemoryId,
    ) -> std::result::Result<Option<Current<i64>>, ApplyError> {
        // Locked, so concurrent writers on other nodes queue up.
        const LOCK_CURRENT: &str = "SELECT rowid, version, embedding FROM memories \
                                    WHERE id = $1 AND invalid_at IS NULL FOR UPDATE";
        let mut row = self.0.query_opt(LOCK_CURRENT, &[&id]).await?;
        if row.is_none() {
            // Under READ COMMITTED, a writer that queued on our lock re-checks the
            // row it waited for after the holder commits: that row is now closed,
            // and the holder's new version is outside this statement's snapshot.
            // A second statement takes a fresh snapshot and sees it (or sees that
            // the memory is really gone).
            row = self.0.query_opt(LOCK_CURRENT, &[&id]).await?;
        }
        Ok(row.map(|r| {
            let version: i32 = r.get(1);
            let vector: Vector = r.get(2);
            Current {
                row: r.get(0),
                version: u32::try_from(version).unwrap_or(0),
                vector: vector.to_vec(),
            }
        }))
    }

    async fn close(&mut self, row: &i64, at: Timestamp) -> std::result::Result<(), ApplyError> {
        self.0
            .execute(
                "UPDATE memories SET invalid_at = $2 WHERE rowid = $1",
                &[row, &ms(at)],
            )
            .await?;
        self.unindex(row).await
    }

    /// The entity index holds current versions only (the keyword and vector
    /// indexes are partial on `invalid_at IS NULL`).
    async fn unindex(&mut self, row: &i64) -> std::result::Result<(), ApplyError> {
        self.0
            .execute("DELETE FROM entities WHERE memory = $1", &[row])
            .await?;
        Ok(())
    }

    async fn holds(&mut self, id: MemoryId) -> std::result::Result<bool, ApplyError> {
        // Two nodes importing the same file: the second waits here, then skips.
        self.0
            .execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))",
                &[&id.to_string()],
            )
            .await?;
        Ok(self
            .0
            .query_opt("SELECT 1 FROM memories WHERE id = $1 LIMIT 1", &[&id])
            .await?
            .is_some())
    }

    async fn insert_history(
        &mut self,
        event: &HistoryEvent,
    ) -> std::result::Result<(), ApplyError> {
        insert_history(self.0, event).await
    }

    async fn append_audit(&mut self, event: &AuditEvent) -> std::result::Result<(), ApplyError> {
        audit::append(self.0, event).await
    }

    async fn set_expiry(
        &mut self,
        id: MemoryId,
        version: u32,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> std::result::Result<bool, ApplyError> {
        let changed = self
            .0
            .execute(
                "UPDATE memories SET expires_at = $4 WHERE id = $1 AND invalid_at IS NULL \
                 AND version = $2 AND expires_at IS NOT DISTINCT FROM $3",
                &[&id, &int(version), &from.map(ms), &to.map(ms)],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn finish_job(
        &mut self,
        id: Uuid,
        worker: &str,
        result: &serde_json::Value,
        at: Timestamp,
    ) -> std::result::Result<(), ApplyError> {
        jobs::finish(self.0, id, worker, result, at).await
    }

    async fn record_usage(&mut self, row: &UsageRow) -> std::result::Result<(), ApplyError> {
        jobs::record_usage(self.0, row).await
    }

    async fn set_feedback(
        &mut self,
        id: MemoryId,
        version: u32,
        feedback: Option<engram_core::memory::Feedback>,
    ) -> std::result::Result<bool, ApplyError> {
        let n = self
            .0
            .execute(
                "UPDATE memories SET feedback = $3 WHERE id = $1 AND version = $2 AND invalid_at IS NULL",
                &[&id, &int(version), &feedback.map(|f| f.as_str())],
            )
            .await?;
        Ok(n > 0)
    }

    async fn webhooks(
        &mut self,
    ) -> std::result::Result<Vec<engram_core::webhook::Webhook>, ApplyError> {
        crate::webhooks::enabled(self.0).await
    }

    async fn insert_job(
        &mut self,
        job: &engram_core::ports::Job,
    ) -> std::result::Result<(), ApplyError> {
        Ok(jobs::insert(self.0, job).await?)
    }
}

async fn insert_version(
    tx: &Transaction<'_>,
    m: &Memory,
    embedding: Vector,
) -> std::result::Result<i64, ApplyError> {
    let row = tx
        .query_one(
            "INSERT INTO memories (id, version, text, kind, hash, org_id, app_id, user_id, agent_id, run_id, \
             metadata, categories, entities, role, created_at, updated_at, valid_at, invalid_at, expires_at, \
             embedding_model, tokens, embedding, idle_ttl_ms, feedback) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::json, $12, $13, $14, $15, $16, $17, $18, $19, \
             $20, $21, $22, $23, $24) RETURNING rowid",
            &[
                &m.id,
                &int(m.version),
                &m.text,
                &m.kind.as_str(),
                &m.hash,
                &m.scope.org_id,
                &m.scope.app_id,
                &m.scope.user_id,
                &m.scope.agent_id,
                &m.scope.run_id,
                &serde_json::Value::Object(m.metadata.clone()),
                &json(&m.categories),
                &json(&m.entities),
                &m.role,
                &ms(m.created_at),
                &ms(m.updated_at),
                &m.valid_at.map(ms),
                &m.invalid_at.map(ms),
                &m.expires_at.map(ms),
                &m.embedding_model,
                &int(m.tokens),
                &embedding,
                &m.idle_ttl.map(|d| d.as_millis() as i64),
                &m.feedback.map(|f| f.as_str()),
            ],
        )
        .await?;
    let rowid: i64 = row.get(0);
    // The entity index holds current versions only (the keyword and vector
    // indexes are partial on `invalid_at IS NULL`).
    let keys = match m.invalid_at {
        None => engram_core::memory::entity_keys(&m.entities),
        Some(_) => Vec::new(),
    };
    if !keys.is_empty() {
        tx.execute(
            "INSERT INTO entities (key, memory) SELECT k, $2 FROM unnest($1::text[]) AS k \
             ON CONFLICT DO NOTHING",
            &[&keys, &rowid],
        )
        .await?;
    }
    Ok(rowid)
}

async fn insert_history(
    tx: &Transaction<'_>,
    h: &HistoryEvent,
) -> std::result::Result<(), ApplyError> {
    tx.execute(
        "INSERT INTO history (id, memory_id, event, old_text, new_text, version, actor, reason, request_id, \
         org_id, app_id, user_id, agent_id, run_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        &[
            &h.id,
            &h.memory_id,
            &h.event.as_str(),
            &h.old_text,
            &h.new_text,
            &int(h.version),
            &h.actor,
            &h.reason,
            &h.request_id,
            &h.scope.org_id,
            &h.scope.app_id,
            &h.scope.user_id,
            &h.scope.agent_id,
            &h.scope.run_id,
            &ms(h.created_at),
        ],
    )
    .await?;
    Ok(())
}
