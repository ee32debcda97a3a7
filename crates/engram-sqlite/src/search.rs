//! The three signals over a scope-filtered set: vectors (exact scan or
//! HNSW with the filter in traversal), BM25 through FTS5, entities; and a
//! memory's conversational neighbours.

use crate::rows::{fts_quote, scope_token};
use crate::{SqliteStore, db_err, idx_err};
use engram_core::Result;
use engram_core::filter::Filter;
use engram_core::fusion::Ranked;
use engram_core::memory::MemoryId;
use engram_core::ports::{VectorHits, VectorPath, Visibility};
use engram_index::SearchPath;
use rusqlite::params;

pub(crate) async fn vector_search(
    store: &SqliteStore,
    filter: &Filter,
    vis: Visibility,
    vector: &[f32],
    k: usize,
) -> Result<VectorHits> {
    let filter = filter.clone();
    let vector = vector.to_vec();
    store
        .with_catalog(move |c, index| {
            let Some(index) = index else {
                return Ok(VectorHits {
                    hits: Vec::new(),
                    path: VectorPath::Empty,
                    estimated: 0,
                });
            };
            let estimated = c.estimate(&filter);
            if estimated == 0 {
                return Ok(VectorHits {
                    hits: Vec::new(),
                    path: VectorPath::Empty,
                    estimated,
                });
            }
            let keep = |key: u64| c.matches(key as i64, &filter, vis.now);
            let (raw, path) = match index.choose(estimated) {
                SearchPath::Exact => {
                    let candidates = c.candidates(&filter).into_iter().map(|r| r as u64);
                    (
                        index.exact(&vector, candidates, k, keep).map_err(idx_err)?,
                        VectorPath::Exact,
                    )
                }
                SearchPath::Hnsw => (
                    index.hnsw(&vector, k, keep).map_err(idx_err)?,
                    VectorPath::Hnsw,
                ),
            };
            let hits = raw
                .into_iter()
                .filter_map(|(key, s)| c.id_of(key as i64).map(|id| (id, s)))
                .collect();
            Ok(VectorHits {
                hits,
                path,
                estimated,
            })
        })
        .await
}

pub(crate) async fn vector_scores(
    store: &SqliteStore,
    ids: &[MemoryId],
    vector: &[f32],
) -> Result<Ranked<MemoryId>> {
    let ids = ids.to_vec();
    let vector = vector.to_vec();
    store
        .with_catalog(move |c, index| {
            let Some(index) = index else {
                return Ok(Vec::new());
            };
            Ok(ids
                .iter()
                .filter_map(|id| {
                    c.rowid_of(*id)
                        .and_then(|r| index.similarity(&vector, r as u64))
                        .map(|s| (*id, s))
                })
                .collect())
        })
        .await
}

pub(crate) async fn keyword_search(
    store: &SqliteStore,
    filter: &Filter,
    vis: Visibility,
    terms: &[String],
    k: usize,
) -> Result<Ranked<MemoryId>> {
    if terms.is_empty() || k == 0 {
        return Ok(Vec::new());
    }
    let scope: Vec<String> = filter
        .required_ids()
        .into_iter()
        .map(|(f, v)| scope_token(f, v))
        .collect();
    let text = terms
        .iter()
        .map(|t| fts_quote(t))
        .collect::<Vec<_>>()
        .join(" OR ");
    let query = if scope.is_empty() {
        format!("text : ({text})")
    } else {
        format!("scope : ({}) AND text : ({text})", scope.join(" AND "))
    };
    // Over-fetch: closed or expired versions and non-scope conditions are filtered afterwards.
    let fetch = if scope.is_empty() {
        k * 10 + 50
    } else {
        k * 2 + 20
    };
    let hits: Vec<(i64, f64)> = store
        .read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT rowid, bm25(memories_fts, 1.0, 0.0) AS r FROM memories_fts \
                     WHERE memories_fts MATCH ?1 ORDER BY r LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![query, fetch as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
        .await?;
    let filter = filter.clone();
    store
        .with_catalog(move |c, _| {
            Ok(hits
                .into_iter()
                .filter(|(rowid, _)| c.matches(*rowid, &filter, vis.now))
                .filter_map(|(rowid, bm25)| c.id_of(rowid).map(|id| (id, -bm25 as f32)))
                .take(k)
                .collect())
        })
        .await
}

pub(crate) async fn entity_search(
    store: &SqliteStore,
    filter: &Filter,
    vis: Visibility,
    keys: &[String],
    k: usize,
) -> Result<Ranked<MemoryId>> {
    if keys.is_empty() || k == 0 {
        return Ok(Vec::new());
    }
    let keys = keys.to_vec();
    // Filtered sets small enough to scan exactly are walked in memory; only
    // large ones go to the SQL entity index (then filtered the same way).
    let small = {
        let filter = filter.clone();
        let keys = keys.clone();
        store
            .with_catalog(move |c, index| {
                let threshold = index.map_or(usize::MAX, |i| i.config().exact_threshold);
                Ok((c.estimate(&filter) < threshold)
                    .then(|| c.entity_rows(&filter, &keys, vis.now)))
            })
            .await?
    };
    let rows: Vec<(String, i64)> = match small {
        Some(rows) => rows,
        None => {
            let keys = keys.clone();
            store.read(move |conn, _| {
                let placeholders = vec!["?"; keys.len()].join(", ");
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT key, memory FROM entities WHERE key IN ({placeholders}) ORDER BY memory DESC LIMIT 50000"
                    ))
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(keys.iter()), |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(db_err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
            })
            .await?
        }
    };
    let filter = filter.clone();
    store
        .with_catalog(move |c, _| {
            let rows: Vec<(String, i64)> = rows
                .into_iter()
                .filter(|(_, r)| c.matches(*r, &filter, vis.now))
                .collect();
            Ok(
                engram_core::fusion::score_entities(&keys, &rows, c.estimate(&filter), k)
                    .into_iter()
                    .filter_map(|(rowid, s)| c.id_of(rowid).map(|id| (id, s)))
                    .collect(),
            )
        })
        .await
}

pub(crate) async fn neighbors(
    store: &SqliteStore,
    ids: &[MemoryId],
    filter: &Filter,
    max_gap_ms: i64,
    vis: Visibility,
) -> Result<Vec<(MemoryId, Vec<MemoryId>)>> {
    let ids = ids.to_vec();
    let filter = filter.clone();
    store
        .with_catalog(move |c, _| {
            Ok(ids
                .iter()
                .map(|id| (*id, c.neighbors(*id, &filter, max_gap_ms, vis.now)))
                .collect())
        })
        .await
}
