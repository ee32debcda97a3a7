//! The write path: SQLite's steps of a write transaction ([`SqliteTx`],
//! composed by core's `apply_batch`), then the catalog and vector index
//! brought in step after the commit, under the same writer lock.

use std::sync::Arc;

use engram_core::memory::{HistoryEvent, Memory, MemoryId};
use engram_core::ports::write::{Applied, Current, WriteTx, apply_batch, to_json};
use engram_core::ports::{AuditEvent, UsageRow, WriteOp};
use engram_core::{Error, Result};
use futures::FutureExt;
use jiff::Timestamp;
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use crate::rows::{blob_to_vec, meta_get, scope_tokens, vec_to_blob};
use crate::{SqliteStore, audit, db_err, jobs, reembed};

/// Applies a batch in one IMMEDIATE transaction, then updates the catalog
/// and the vector index before releasing the writer lock, so the write is
/// visible to every read when this returns.
pub(crate) async fn apply(store: &SqliteStore, ops: Vec<WriteOp>) -> Result<()> {
    store
        .write_tx("write", move |store, tx| {
            // Under the writer lock: a re-embedding switches index and model under it too.
            let index = store.index()?;
            let model = meta_get(&tx, reembed::BOUND.0)?;
            let applied = apply_batch(&mut SqliteTx(&tx), ops, model.as_deref(), index.dim())
                // SqliteTx's steps never await, so the batch completes on its first poll.
                .now_or_never()
                .ok_or_else(|| Error::internal("a SQLite write step suspended"))??;
            tx.commit().map_err(db_err)?;

            // Committed: bring the derived state in step while still holding the writer lock.
            let mut catalog = store
                .inner
                .catalog
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let mut added: Vec<(u64, Vec<f32>)> = Vec::new();
            let mut closed: Vec<u64> = Vec::new();
            for a in applied {
                match a {
                    Applied::Added {
                        row,
                        memory,
                        vector,
                    } => {
                        catalog.insert(row, Arc::new(memory));
                        added.push((row as u64, vector));
                    }
                    Applied::Closed { row } => {
                        catalog.remove(row);
                        added.retain(|(k, _)| *k != row as u64);
                        closed.push(row as u64);
                    }
                    Applied::Expiry { id, expires_at } => {
                        if let (Some(rowid), Some(m)) = (catalog.rowid_of(id), catalog.get(id)) {
                            let mut m = (**m).clone();
                            m.expires_at = expires_at;
                            catalog.insert(rowid, Arc::new(m));
                        }
                    }
                    Applied::Feedback { id, feedback } => {
                        if let (Some(rowid), Some(m)) = (catalog.rowid_of(id), catalog.get(id)) {
                            let mut m = (**m).clone();
                            m.feedback = feedback;
                            catalog.insert(rowid, Arc::new(m));
                        }
                    }
                }
            }
            drop(catalog);
            // The write is committed: an index failure here must not turn it into an
            // error. Vectors missing from the graph are added again at the next start.
            if let Err(e) = index.remove(&closed) {
                tracing::error!(error = %e, "removing closed versions from the vector index");
            }
            let items: Vec<(u64, &[f32])> = added.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            if let Err(e) = index.insert(&items) {
                tracing::error!(error = %e, "adding vectors to the vector index");
            }
            Ok(())
        })
        .await
}

/// The steps of one SQLite write transaction; rows are rowids. Every method
/// runs its statements synchronously (the `async` is the trait's).
struct SqliteTx<'a, 'c>(&'a rusqlite::Transaction<'c>);

impl WriteTx for SqliteTx<'_, '_> {
    type Row = i64;
    type Error = Error;

    async fn insert_version(&mut self, memory: &Memory, vector: &[f32]) -> Result<i64> {
        insert_version(self.0, memory, vector)
    }

    async fn current(&mut self, id: MemoryId) -> Result<Option<Current<i64>>> {
        let row: Option<(i64, u32, Vec<u8>)> = self
            .0
            .prepare_cached(
                "SELECT rowid, version, embedding FROM memories WHERE id = ?1 AND invalid_at IS NULL",
            )
            .and_then(|mut s| {
                s.query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(db_err)?;
        Ok(row.map(|(row, version, blob)| Current {
            row,
            version,
            vector: blob_to_vec(&blob),
        }))
    }

    async fn close(&mut self, row: &i64, at: Timestamp) -> Result<()> {
        self.0
            .prepare_cached("UPDATE memories SET invalid_at = ?2 WHERE rowid = ?1")
            .and_then(|mut s| s.execute(params![row, at.as_millisecond()]))
            .map_err(db_err)?;
        unindex(self.0, *row)
    }

    async fn unindex(&mut self, row: &i64) -> Result<()> {
        unindex(self.0, *row)
    }

    async fn holds(&mut self, id: MemoryId) -> Result<bool> {
        self.0
            .prepare_cached("SELECT 1 FROM memories WHERE id = ?1 LIMIT 1")
            .and_then(|mut s| s.exists([id.to_string()]))
            .map_err(db_err)
    }

    async fn insert_history(&mut self, event: &HistoryEvent) -> Result<()> {
        insert_history(self.0, event)
    }

    async fn append_audit(&mut self, event: &AuditEvent) -> Result<()> {
        audit::append(self.0, event)
    }

    async fn set_expiry(
        &mut self,
        id: MemoryId,
        version: u32,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> Result<bool> {
        let changed = self
            .0
            .prepare_cached(
                "UPDATE memories SET expires_at = ?4 WHERE id = ?1 AND invalid_at IS NULL \
                 AND version = ?2 AND expires_at IS ?3",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id.to_string(),
                    version,
                    from.map(|t| t.as_millisecond()),
                    to.map(|t| t.as_millisecond())
                ])
            })
            .map_err(db_err)?;
        Ok(changed > 0)
    }

    async fn finish_job(
        &mut self,
        id: Uuid,
        worker: &str,
        result: &serde_json::Value,
        at: Timestamp,
    ) -> Result<()> {
        jobs::finish(self.0, id, worker, result, at)
    }

    async fn record_usage(&mut self, row: &UsageRow) -> Result<()> {
        jobs::record_usage(self.0, row)
    }

    async fn set_feedback(
        &mut self,
        id: MemoryId,
        version: u32,
        feedback: Option<engram_core::memory::Feedback>,
    ) -> Result<bool> {
        let n = self
            .0
            .prepare_cached(
                "UPDATE memories SET feedback = ?3 WHERE id = ?1 AND version = ?2 AND invalid_at IS NULL",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![id.to_string(), version, feedback.map(|f| f.as_str())])
            })
            .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn webhooks(&mut self) -> Result<Vec<engram_core::webhook::Webhook>> {
        crate::webhooks::enabled(self.0)
    }

    async fn insert_job(&mut self, job: &engram_core::ports::Job) -> Result<()> {
        jobs::insert(self.0, job)
    }
}

fn insert_version(tx: &rusqlite::Transaction<'_>, m: &Memory, embedding: &[f32]) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO memories (id, version, text, kind, hash, org_id, app_id, user_id, agent_id, run_id, metadata, \
         categories, entities, role, created_at, updated_at, valid_at, invalid_at, expires_at, embedding_model, tokens, embedding, idle_ttl_ms, feedback) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            m.id.to_string(),
            m.version,
            m.text,
            m.kind.as_str(),
            m.hash,
            m.scope.org_id,
            m.scope.app_id,
            m.scope.user_id,
            m.scope.agent_id,
            m.scope.run_id,
            to_json(&m.metadata),
            to_json(&m.categories),
            to_json(&m.entities),
            m.role,
            m.created_at.as_millisecond(),
            m.updated_at.as_millisecond(),
            m.valid_at.map(|t| t.as_millisecond()),
            m.invalid_at.map(|t| t.as_millisecond()),
            m.expires_at.map(|t| t.as_millisecond()),
            m.embedding_model,
            m.tokens,
            vec_to_blob(embedding),
            m.idle_ttl.map(|d| d.as_millis() as i64),
            m.feedback.map(|f| f.as_str()),
        ])
    })
    .map_err(db_err)?;
    let rowid = tx.last_insert_rowid();
    tx.prepare_cached("INSERT INTO memories_fts (rowid, text, scope) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![rowid, m.text, scope_tokens(&m.scope)]))
        .map_err(db_err)?;
    for key in engram_core::memory::entity_keys(&m.entities) {
        tx.prepare_cached("INSERT OR IGNORE INTO entities (key, memory) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![key, rowid]))
            .map_err(db_err)?;
    }
    Ok(rowid)
}

/// Drops a closed version from the keyword and entity indexes (they hold
/// current versions only). The contentless FTS5 table does not take a
/// deleted row's tokens out of its BM25 totals, so a version that was ever
/// current leaves its mark on keyword scores: importers index and drop
/// superseded versions too, to score exactly like the store they came from.
fn unindex(tx: &rusqlite::Transaction<'_>, rowid: i64) -> Result<()> {
    tx.prepare_cached("DELETE FROM memories_fts WHERE rowid = ?1")
        .and_then(|mut s| s.execute([rowid]))
        .map_err(db_err)?;
    tx.prepare_cached("DELETE FROM entities WHERE memory = ?1")
        .and_then(|mut s| s.execute([rowid]))
        .map_err(db_err)?;
    Ok(())
}

fn insert_history(tx: &rusqlite::Transaction<'_>, h: &HistoryEvent) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO history (id, memory_id, event, old_text, new_text, version, actor, reason, request_id, \
         org_id, app_id, user_id, agent_id, run_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .and_then(|mut s| {
        s.execute(params![
            h.id.to_string(),
            h.memory_id.to_string(),
            h.event.as_str(),
            h.old_text,
            h.new_text,
            h.version,
            h.actor,
            h.reason,
            h.request_id,
            h.scope.org_id,
            h.scope.app_id,
            h.scope.user_id,
            h.scope.agent_id,
            h.scope.run_id,
            h.created_at.as_millisecond(),
        ])
    })
    .map_err(db_err)?;
    Ok(())
}
