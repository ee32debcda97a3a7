//! Reads: single memories, listings, versions `as_of`, counts, history,
//! usage and statistics — from the catalog where it holds the answer, else
//! from a pooled read connection. Also the catalog and index load at start.

use std::sync::Arc;

use engram_core::filter::Filter;
use engram_core::memory::{Event, HistoryEvent, Memory, MemoryId, Scope};
use engram_core::ports::{Cursor, ScopeIdStats, StoreStats, Visibility};
use engram_core::{Error, Result};
use engram_index::{IndexConfig, VectorIndex};
use jiff::Timestamp;
use rusqlite::Connection;

use crate::catalog::Catalog;
use crate::rows::{COLUMN_COUNT, COLUMNS, blob_to_vec, row_to_memory, ts};
use crate::{DB_FILE, GRAPH_FILE, SqliteStore, db_err, idx_err, jobs};

pub(crate) async fn get(
    store: &SqliteStore,
    id: MemoryId,
    vis: Visibility,
) -> Result<Option<Memory>> {
    store
        .with_catalog(move |c, _| {
            Ok(c.get(id)
                .filter(|m| m.is_live(vis.now))
                .map(|m| (**m).clone()))
        })
        .await
}

pub(crate) async fn get_many(
    store: &SqliteStore,
    ids: &[MemoryId],
    vis: Visibility,
) -> Result<Vec<Memory>> {
    let ids = ids.to_vec();
    store
        .with_catalog(move |c, _| {
            Ok(ids
                .iter()
                .filter_map(|id| c.get(*id))
                .filter(|m| m.is_live(vis.now))
                .map(|m| (**m).clone())
                .collect())
        })
        .await
}

pub(crate) async fn list(
    store: &SqliteStore,
    filter: &Filter,
    vis: Visibility,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Vec<Memory>> {
    let filter = filter.clone();
    store
        .with_catalog(move |c, _| Ok(c.list(&filter, vis.now, after, limit)))
        .await
}

pub(crate) async fn versions_at(
    store: &SqliteStore,
    filter: &Filter,
    at: Timestamp,
    limit: usize,
) -> Result<Vec<(Memory, Vec<f32>)>> {
    let filter = filter.clone();
    store.read(move |conn, _| {
        // Narrow in SQL by the ids the filter requires (column names come
        // from a fixed list, values are parameters); the filter decides the rest.
        let required = filter.required_ids();
        let mut sql = format!(
            "SELECT {COLUMNS}, embedding FROM memories WHERE updated_at <= ?1 \
             AND (invalid_at IS NULL OR invalid_at > ?1) AND (expires_at IS NULL OR expires_at > ?1)"
        );
        let mut values: Vec<rusqlite::types::Value> = vec![at.as_millisecond().into()];
        for (field, value) in &required {
            values.push(value.to_string().into());
            sql.push_str(&format!(" AND {} = ?{}", field.as_str(), values.len()));
        }
        let mut stmt = conn.prepare(&sql).map_err(db_err)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(values))
            .map_err(db_err)?;
        let mut out = Vec::new();
        while out.len() < limit
            && let Some(row) = rows.next().map_err(db_err)?
        {
            let (_, m) = row_to_memory(row)?;
            if filter.matches(&m) {
                let blob: Vec<u8> = row.get(COLUMN_COUNT).map_err(db_err)?;
                out.push((m, blob_to_vec(&blob)));
            }
        }
        Ok(out)
    })
    .await
}

pub(crate) async fn usage(
    store: &SqliteStore,
    limit: usize,
) -> Result<Vec<engram_core::ports::UsageRow>> {
    store.read(move |conn, _| jobs::usage(conn, limit)).await
}

pub(crate) async fn count(store: &SqliteStore, filter: &Filter, vis: Visibility) -> Result<usize> {
    let filter = filter.clone();
    store
        .with_catalog(move |c, _| Ok(c.count_matching(&filter, vis.now)))
        .await
}

pub(crate) async fn scope_ids(
    store: &SqliteStore,
    filter: &Filter,
    vis: Visibility,
) -> Result<Vec<ScopeIdStats>> {
    let filter = filter.clone();
    store
        .with_catalog(move |c, _| Ok(c.scope_ids(&filter, vis.now)))
        .await
}

pub(crate) async fn memory_versions(
    store: &SqliteStore,
    ids: &[MemoryId],
) -> Result<Vec<(Memory, Vec<f32>)>> {
    let ids = ids.to_vec();
    store
        .read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS}, embedding FROM memories WHERE id = ?1 ORDER BY version"
                ))
                .map_err(db_err)?;
            let mut out = Vec::new();
            for id in ids {
                let mut rows = stmt.query([id.to_string()]).map_err(db_err)?;
                while let Some(row) = rows.next().map_err(db_err)? {
                    let (_, m) = row_to_memory(row)?;
                    let blob: Vec<u8> = row.get(COLUMN_COUNT).map_err(db_err)?;
                    out.push((m, blob_to_vec(&blob)));
                }
            }
            Ok(out)
        })
        .await
}

pub(crate) async fn history(store: &SqliteStore, id: MemoryId) -> Result<Vec<HistoryEvent>> {
    store.read(move |conn, _| {
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, event, old_text, new_text, version, actor, reason, request_id, org_id, app_id, \
                 user_id, agent_id, run_id, created_at FROM history WHERE memory_id = ?1 ORDER BY seq",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map([id.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    Scope {
                        org_id: r.get(8)?,
                        app_id: r.get(9)?,
                        user_id: r.get(10)?,
                        agent_id: r.get(11)?,
                        run_id: r.get(12)?,
                    },
                    r.get::<_, i64>(13)?,
                ))
            })
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (hid, event, old_text, new_text, version, actor, reason, request_id, scope, at) =
                row.map_err(db_err)?;
            out.push(HistoryEvent {
                id: hid.parse().map_err(|e| Error::store(format!("bad history id: {e}")))?,
                memory_id: id,
                event: Event::parse(&event).ok_or_else(|| Error::store(format!("bad history event `{event}`")))?,
                old_text,
                new_text,
                version,
                actor,
                reason,
                request_id,
                scope,
                created_at: ts(at)?,
            });
        }
        Ok(out)
    })
    .await
}

pub(crate) async fn stats(store: &SqliteStore) -> Result<StoreStats> {
    store
        .read(|conn, inner| {
            let count = |sql: &str| {
                conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                    .map_err(db_err)
            };
            let versions = count("SELECT count(*) FROM memories")? as u64;
            let history_events = count("SELECT count(*) FROM history")? as u64;
            let mut bytes = 0;
            for name in [
                DB_FILE.to_owned(),
                format!("{DB_FILE}-wal"),
                GRAPH_FILE.to_owned(),
            ] {
                bytes += std::fs::metadata(inner.dir.join(name))
                    .map(|m| m.len())
                    .unwrap_or(0);
            }
            let memories = inner
                .catalog
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .len() as u64;
            let indexed_vectors = inner.index().map(|i| i.graph_len() as u64).unwrap_or(0);
            Ok(StoreStats {
                memories,
                versions,
                history_events,
                bytes,
                indexed_vectors,
            })
        })
        .await
}

/// Every current version read into a fresh catalog, and its vector into a
/// fresh index's arena (the caller builds or loads the graph).
pub(crate) fn load_current(
    conn: &Connection,
    dim: usize,
    config: IndexConfig,
) -> Result<(Catalog, VectorIndex)> {
    let index = VectorIndex::new(dim, config).map_err(idx_err)?;
    // Sized up front: growing by doubling would hold two copies at the peak.
    let current: i64 = conn
        .query_row(
            "SELECT count(*) FROM memories WHERE invalid_at IS NULL",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    let current = usize::try_from(current).unwrap_or(0);
    index.reserve(current);
    let mut catalog = Catalog::with_capacity(current);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {COLUMNS}, embedding FROM memories WHERE invalid_at IS NULL"
        ))
        .map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    let mut batch: Vec<(u64, Vec<f32>)> = Vec::with_capacity(1024);
    let flush = |batch: &mut Vec<(u64, Vec<f32>)>| -> Result<()> {
        let items: Vec<(u64, &[f32])> = batch.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        index.insert_arena(&items).map_err(idx_err)?;
        batch.clear();
        Ok(())
    };
    while let Some(row) = rows.next().map_err(db_err)? {
        let (rowid, memory) = row_to_memory(row)?;
        let blob: Vec<u8> = row.get(COLUMN_COUNT).map_err(db_err)?;
        batch.push((rowid as u64, blob_to_vec(&blob)));
        if batch.len() == 1024 {
            flush(&mut batch)?;
        }
        catalog.insert(rowid, Arc::new(memory));
    }
    flush(&mut batch)?;
    drop(rows);
    drop(stmt);
    Ok((catalog, index))
}
