//! Reads: single memories, listings, versions `as_of`, counts, history,
//! usage and statistics.

use std::collections::HashMap;

use crate::rows::{COLUMNS, get, ms, row_to_memory, ts, with_vectors};
use crate::sql::{Params, compile, live};
use crate::{PgStore, jobs, pg_err};
use engram_core::filter::Filter;
use engram_core::memory::{Event, HistoryEvent, Memory, MemoryId, Scope, ScopeField};
use engram_core::ports::{Cursor, ScopeIdStats, Store, StoreStats, Visibility};
use engram_core::{Error, Result};
use jiff::Timestamp;

pub(crate) async fn get_one(
    store: &PgStore,
    id: MemoryId,
    vis: Visibility,
) -> Result<Option<Memory>> {
    Ok(store.get_many(&[id], vis).await?.into_iter().next())
}

pub(crate) async fn get_many(
    store: &PgStore,
    ids: &[MemoryId],
    vis: Visibility,
) -> Result<Vec<Memory>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let client = store.client().await?;
    let mut p = Params::default();
    let live = live("", &mut p, ms(vis.now));
    let ids_p = p.push(ids.to_vec());
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM memories WHERE id = ANY({ids_p}::uuid[]) AND {live}"),
            &p.refs(),
        )
        .await
        .map_err(pg_err)?;
    let mut found: HashMap<MemoryId, Memory> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let (_, m) = row_to_memory(row)?;
        found.insert(m.id, m);
    }
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}

pub(crate) async fn list(
    store: &PgStore,
    filter: &Filter,
    vis: Visibility,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Vec<Memory>> {
    let client = store.client().await?;
    let mut p = Params::default();
    let live = live("", &mut p, ms(vis.now));
    let cond = compile(filter, "", &mut p);
    let cursor = match after {
        Some(c) => {
            let at = p.push(ms(c.created_at));
            let id = p.push(c.id);
            format!("AND (created_at, id) < ({at}::bigint, {id}::uuid)")
        }
        None => String::new(),
    };
    let limit = p.push(limit as i64);
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM memories WHERE {live} AND {cond} {cursor} \
                 ORDER BY created_at DESC, id DESC LIMIT {limit}::bigint"
            ),
            &p.refs(),
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| row_to_memory(r).map(|(_, m)| m))
        .collect()
}

pub(crate) async fn versions_at(
    store: &PgStore,
    filter: &Filter,
    at: Timestamp,
    limit: usize,
) -> Result<Vec<(Memory, Vec<f32>)>> {
    let client = store.client().await?;
    let mut p = Params::default();
    let at_p = p.push(ms(at));
    let cond = compile(filter, "", &mut p);
    let limit_p = p.push(i64::try_from(limit).unwrap_or(i64::MAX));
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS}, embedding FROM memories WHERE updated_at <= {at_p}::bigint \
                 AND (invalid_at IS NULL OR invalid_at > {at_p}::bigint) \
                 AND (expires_at IS NULL OR expires_at > {at_p}::bigint) AND {cond} LIMIT {limit_p}::bigint"
            ),
            &p.refs(),
        )
        .await
        .map_err(pg_err)?;
    with_vectors(&rows)
}

pub(crate) async fn usage(
    store: &PgStore,
    limit: usize,
) -> Result<Vec<engram_core::ports::UsageRow>> {
    jobs::usage(&**store.client().await?, limit).await
}

pub(crate) async fn count(store: &PgStore, filter: &Filter, vis: Visibility) -> Result<usize> {
    let client = store.client().await?;
    let mut p = Params::default();
    let live = live("", &mut p, ms(vis.now));
    let cond = compile(filter, "", &mut p);
    let n: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM memories WHERE {live} AND {cond}"),
            &p.refs(),
        )
        .await
        .map_err(pg_err)?
        .get(0);
    Ok(n.max(0) as usize)
}

pub(crate) async fn scope_ids(
    store: &PgStore,
    filter: &Filter,
    vis: Visibility,
) -> Result<Vec<ScopeIdStats>> {
    let client = store.client().await?;
    let mut p = Params::default();
    let live = live("m.", &mut p, ms(vis.now));
    let cond = compile(filter, "m.", &mut p);
    let rows = client
        .query(
            &format!(
                "SELECT s.f, s.v, count(*), min(m.created_at), max(m.created_at) FROM memories m \
                 CROSS JOIN LATERAL (VALUES (0, m.org_id), (1, m.app_id), (2, m.user_id), (3, m.agent_id), \
                 (4, m.run_id)) AS s(f, v) \
                 WHERE {live} AND {cond} AND s.v IS NOT NULL \
                 GROUP BY s.f, s.v ORDER BY s.f, s.v COLLATE \"C\""
            ),
            &p.refs(),
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            let f: i32 = get(r, 0)?;
            let n: i64 = get(r, 2)?;
            Ok(ScopeIdStats {
                field: ScopeField::ALL[f.clamp(0, 4) as usize],
                id: get(r, 1)?,
                memories: n.max(0) as usize,
                first: ts(get(r, 3)?)?,
                last: ts(get(r, 4)?)?,
            })
        })
        .collect()
}

pub(crate) async fn memory_versions(
    store: &PgStore,
    ids: &[MemoryId],
) -> Result<Vec<(Memory, Vec<f32>)>> {
    let client = store.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS}, embedding FROM memories \
                 JOIN unnest($1::uuid[]) WITH ORDINALITY AS wanted(wid, pos) ON id = wanted.wid \
                 ORDER BY wanted.pos, version"
            ),
            &[&ids],
        )
        .await
        .map_err(pg_err)?;
    with_vectors(&rows)
}

pub(crate) async fn history(store: &PgStore, id: MemoryId) -> Result<Vec<HistoryEvent>> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT id, event, old_text, new_text, version, actor, reason, request_id, org_id, app_id, \
             user_id, agent_id, run_id, created_at FROM history WHERE memory_id = $1 ORDER BY seq",
            &[&id],
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            let event: String = get(r, 1)?;
            let version: i32 = get(r, 4)?;
            Ok(HistoryEvent {
                id: get(r, 0)?,
                memory_id: id,
                event: Event::parse(&event)
                    .ok_or_else(|| Error::store(format!("bad history event `{event}`")))?,
                old_text: get(r, 2)?,
                new_text: get(r, 3)?,
                version: u32::try_from(version).unwrap_or_default(),
                actor: get(r, 5)?,
                reason: get(r, 6)?,
                request_id: get(r, 7)?,
                scope: Scope {
                    org_id: get(r, 8)?,
                    app_id: get(r, 9)?,
                    user_id: get(r, 10)?,
                    agent_id: get(r, 11)?,
                    run_id: get(r, 12)?,
                },
                created_at: ts(get(r, 13)?)?,
            })
        })
        .collect()
}

pub(crate) async fn stats(store: &PgStore) -> Result<StoreStats> {
    let client = store.client().await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM memories WHERE invalid_at IS NULL), \
             (SELECT count(*) FROM memories), (SELECT count(*) FROM history), \
             pg_database_size(current_database())",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let n = |i: usize| -> Result<u64> { Ok(get::<i64>(&row, i)?.max(0) as u64) };
    Ok(StoreStats {
        memories: n(0)?,
        versions: n(1)?,
        history_events: n(2)?,
        bytes: n(3)?,
        // The HNSW index covers every current version.
        indexed_vectors: n(0)?,
    })
}
