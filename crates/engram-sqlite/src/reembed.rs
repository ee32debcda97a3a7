//! Re-embedding (`engram reembed`): new-model vectors in the `reembed`
//! table beside the current ones, then one switch transaction.

use std::sync::Arc;

use async_trait::async_trait;
use engram_core::ports::AuditEvent;
use engram_core::ports::ModelInfo;
use engram_core::ports::{ReembedItem, ReembedState, ReembedStore, check_reembed, check_start};
use engram_core::{Error, Result};
use rusqlite::{Connection, params};

use crate::read::load_current;
use crate::rows::{meta_get, vec_to_blob};
use crate::{SqliteStore, db_err, idx_err, remove_graph_file};

/// The `meta` keys naming a model: id, dimension.
pub(crate) type ModelKeys = (&'static str, &'static str);
/// The model the vectors come from.
pub(crate) const BOUND: ModelKeys = ("embedding_model", "embedding_dim");
/// The model a migration in progress moves to.
const NEXT: ModelKeys = ("reembed_model", "reembed_dim");

pub(crate) fn model_at(conn: &Connection, (id, dim): ModelKeys) -> Result<Option<ModelInfo>> {
    let id = meta_get(conn, id)?;
    let dim = meta_get(conn, dim)?.and_then(|d| d.parse().ok());
    Ok(id.zip(dim).map(|(id, dim)| ModelInfo { id, dim }))
}

pub(crate) fn put_model(conn: &Connection, (id, dim): ModelKeys, m: &ModelInfo) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2), (?3, ?4)",
        params![id, m.id, dim, m.dim.to_string()],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Drops a migration's vectors and record.
fn clear(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "DELETE FROM reembed; DELETE FROM meta WHERE key IN ('reembed_model', 'reembed_dim');",
    )
    .map_err(db_err)
}

/// The migration in progress, read inside the caller's connection.
pub(crate) fn state(conn: &Connection) -> Result<Option<ReembedState>> {
    let Some(to) = model_at(conn, NEXT)? else {
        return Ok(None);
    };
    let from = model_at(conn, BOUND)?
        .ok_or_else(|| Error::internal("a re-embedding is recorded but no model is bound"))?;
    let count = |sql: &str| -> Result<u64> {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(db_err)
    };
    Ok(Some(ReembedState {
        from,
        to,
        done: count("SELECT count(*) FROM reembed")?,
        total: count("SELECT count(*) FROM memories")?,
    }))
}

fn pending_count(conn: &Connection) -> Result<u64> {
    conn.query_row(
        "SELECT count(*) FROM memories m WHERE NOT EXISTS (SELECT 1 FROM reembed r WHERE r.memory = m.rowid)",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
    .map_err(db_err)
}

#[async_trait]
impl ReembedStore for SqliteStore {
    async fn reembed_start(&self, to: &ModelInfo) -> Result<ReembedState> {
        let to = to.clone();
        self.write_tx("re-embedding", move |_, tx| {
            if let Some(s) = check_start(model_at(&tx, BOUND)?.as_ref(), state(&tx)?, &to)? {
                return Ok(s);
            }
            tx.execute("DELETE FROM reembed", []).map_err(db_err)?;
            put_model(&tx, NEXT, &to)?;
            let s = state(&tx)?.ok_or_else(|| Error::internal("re-embedding not recorded"))?;
            tx.commit().map_err(db_err)?;
            Ok(s)
        })
        .await
    }

    async fn reembed_state(&self) -> Result<Option<ReembedState>> {
        self.read(|conn, _| state(conn)).await
    }

    async fn reembed_pending(&self, after: i64, limit: usize) -> Result<Vec<ReembedItem>> {
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT m.rowid, m.text FROM memories m \
                     WHERE m.rowid > ?1 AND NOT EXISTS (SELECT 1 FROM reembed r WHERE r.memory = m.rowid) \
                     ORDER BY m.rowid LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![after, limit as i64], |r| {
                    Ok(ReembedItem {
                        key: r.get(0)?,
                        text: r.get(1)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
        .await
    }

    async fn reembed_put(&self, to: &ModelInfo, vectors: Vec<(i64, Vec<f32>)>) -> Result<()> {
        let to = to.clone();
        self.write_tx("re-embedding", move |_, tx| {
            check_reembed(state(&tx)?.as_ref(), &to, &vectors)?;
            {
                // A version erased or swept since it was read is skipped.
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO reembed (memory, embedding) \
                         SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM memories WHERE rowid = ?1)",
                    )
                    .map_err(db_err)?;
                for (key, v) in &vectors {
                    stmt.execute(params![key, vec_to_blob(v)]).map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn reembed_switch(&self, to: &ModelInfo, audit: AuditEvent) -> Result<u64> {
        let to = to.clone();
        // The writer lock is held from the check to the index swap: no write
        // can land between them, and reads use the old index until the new
        // one replaces it.
        self.write_tx("switch", move |store, tx| {
            check_reembed(state(&tx)?.as_ref(), &to, &[])?;
            let left = pending_count(&tx)?;
            if left > 0 {
                return Ok(left);
            }
            tx.execute(
                "UPDATE memories SET embedding = (SELECT r.embedding FROM reembed r WHERE r.memory = memories.rowid), \
                 embedding_model = ?1",
                [&to.id],
            )
            .map_err(db_err)?;
            clear(&tx)?;
            put_model(&tx, BOUND, &to)?;
            crate::audit::append(&tx, &audit)?;
            // The new index is built before the commit, so a failure leaves
            // the old model in place everywhere.
            let (catalog, index) = load_current(&tx, to.dim, store.inner.options.index)?;
            index
                .rebuild_graph(store.inner.options.build_threads)
                .map_err(idx_err)?;
            // The saved graph holds the old vectors: gone before the commit,
            // so a crash in between cannot load it against the new ones.
            remove_graph_file(store.dir())?;
            crate::graph_snapshot::clear(&tx)?;
            tx.commit().map_err(db_err)?;
            let index = Arc::new(index);
            *store.inner.catalog.write().unwrap_or_else(|e| e.into_inner()) = catalog;
            *store.inner.index.write().unwrap_or_else(|e| e.into_inner()) = Some(index);
            // The graph file is written by the next `flush` (the CLI's, or the
            // server's at shutdown), not here: the caller swaps its model now.
            Ok(0)
        })
        .await
    }

    async fn reembed_cancel(&self) -> Result<bool> {
        self.write_tx("re-embedding", |_, tx| {
            let had = state(&tx)?.is_some();
            clear(&tx)?;
            tx.commit().map_err(db_err)?;
            Ok(had)
        })
        .await
    }
}
