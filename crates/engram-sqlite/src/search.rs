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

/// A term's matches read per search, newest first: bounds the cost of a
/// common term in a large scope (its document frequency then counts as
/// this many, which only understates how common it is).
const TERM_MATCHES: i64 = 2_000;
/// Query terms looked up per search.
const MAX_TERMS: usize = 16;

/// BM25 over the filtered set. FTS5 finds each term's matches inside the
/// scope (its scope tokens ANDed with the term, which FTS5 answers by
/// seeking through both posting lists); the scoring is ours
/// ([`score_keywords`](engram_core::fusion::score_keywords)): the filtered
/// set's size and each term's matches in it as statistics, lengths from
/// the catalog. FTS5's `bm25()` would instead count each term over the
/// whole table and read every match's length from disk, a cost that grows
/// with the store, not the scope.
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
    let queries: Vec<String> = terms
        .iter()
        .take(MAX_TERMS)
        .map(|t| {
            if scope.is_empty() {
                format!("text : {}", fts_quote(t))
            } else {
                format!(
                    "scope : ({}) AND text : {}",
                    scope.join(" AND "),
                    fts_quote(t)
                )
            }
        })
        .collect();
    let per_term: Vec<Vec<i64>> = store
        .read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?1 \
                     ORDER BY rowid DESC LIMIT ?2",
                )
                .map_err(db_err)?;
            queries
                .iter()
                .map(|q| {
                    let rows = stmt
                        .query_map(params![q, TERM_MATCHES], |r| r.get(0))
                        .map_err(db_err)?;
                    rows.collect::<rusqlite::Result<Vec<i64>>>().map_err(db_err)
                })
                .collect()
        })
        .await?;
    let filter = filter.clone();
    store
        .with_catalog(move |c, _| {
            // Closed or expired versions and non-scope conditions drop out here.
            let matches: Vec<Vec<(i64, u32)>> = per_term
                .into_iter()
                .map(|rows| {
                    rows.into_iter()
                        .filter_map(|r| c.matching_tokens(r, &filter, vis.now).map(|t| (r, t)))
                        .collect()
                })
                .collect();
            let n = c.estimate(&filter);
            Ok(
                engram_core::fusion::score_keywords(&matches, n, c.average_tokens(&filter), k)
                    .into_iter()
                    .filter_map(|(rowid, s)| c.id_of(rowid).map(|id| (id, s)))
                    .collect(),
            )
        })
        .await
}

/// An entity's mentions read per search in a large scope, newest first.
const ENTITY_MATCHES: i64 = 5_000;

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
            store
                .read(move |conn, _| {
                    // Per key, its newest mentions: a bounded read however
                    // common the entity (the scope filter applies after).
                    let mut stmt = conn
                        .prepare_cached(
                            "SELECT memory FROM entities WHERE key = ?1 \
                             ORDER BY memory DESC LIMIT ?2",
                        )
                        .map_err(db_err)?;
                    let mut out = Vec::new();
                    for key in &keys {
                        let rows = stmt
                            .query_map(params![key, ENTITY_MATCHES], |r| r.get::<_, i64>(0))
                            .map_err(db_err)?;
                        for row in rows {
                            out.push((key.clone(), row.map_err(db_err)?));
                        }
                    }
                    Ok(out)
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
