//! The three signals over a scope-filtered set in SQL: vectors (exact
//! below the threshold, pgvector HNSW above it), `ts_rank_cd` keywords,
//! entities; and a memory's conversational neighbours.

use std::collections::HashMap;

use engram_core::Result;
use engram_core::filter::Filter;
use engram_core::fusion::Ranked;
use engram_core::memory::MemoryId;
use engram_core::ports::{VectorHits, VectorPath, Visibility};
use pgvector::Vector;
use tokio_postgres::Row;

use crate::rows::{get, ms};
use crate::sql::{Params, compile, live};
use crate::{PgStore, pg_err};

pub(crate) async fn vector_search(
    store: &PgStore,
    filter: &Filter,
    vis: Visibility,
    vector: &[f32],
    k: usize,
) -> Result<VectorHits> {
    if store.dim().is_err() || k == 0 {
        return Ok(empty_hits(0));
    }
    let o = &store.inner.options;
    let mut client = store.client().await?;
    // Counted up to the larger of the threshold and k, so a set smaller
    // than k is known exactly.
    let cap = o.exact_threshold.max(k);
    let estimated = store.estimate(&**client, filter, vis, cap).await?;
    if estimated == 0 {
        return Ok(empty_hits(0));
    }
    let search = |exact: bool| {
        let mut p = Params::default();
        let q = p.push(Vector::from(vector.to_vec()));
        let live = live("", &mut p, ms(vis.now));
        let cond = compile(filter, "", &mut p);
        let limit = p.push(k as i64);
        // `+ 0` keeps the planner off the HNSW index: an exact scan.
        let order = if exact {
            format!("(embedding <=> {q}::vector) + 0")
        } else {
            format!("embedding <=> {q}::vector")
        };
        let sql = format!(
            "SELECT id, 1 - (embedding <=> {q}::vector) FROM memories WHERE {live} AND {cond} \
             ORDER BY {order} LIMIT {limit}::bigint"
        );
        (sql, p)
    };
    let hits = |rows: Vec<Row>| -> Result<Ranked<MemoryId>> {
        rows.iter()
            .map(|r| Ok((get(r, 0)?, get::<f64>(r, 1)? as f32)))
            .collect()
    };
    if estimated < o.exact_threshold {
        let (sql, p) = search(true);
        let rows = client.query(&sql, &p.refs()).await.map_err(pg_err)?;
        return Ok(VectorHits {
            hits: hits(rows)?,
            path: VectorPath::Exact,
            estimated,
        });
    }
    let ef = o.ef_search.max(k * 4).clamp(1, 1000);
    let rows = {
        let tx = client.transaction().await.map_err(pg_err)?;
        // An integer we computed, not input.
        tx.batch_execute(&format!("SET LOCAL hnsw.ef_search = {ef}"))
            .await
            .map_err(pg_err)?;
        let (sql, p) = search(false);
        let rows = tx.query(&sql, &p.refs()).await.map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        rows
    };
    let needed = if estimated < cap { estimated.min(k) } else { k };
    if rows.len() >= needed {
        return Ok(VectorHits {
            hits: hits(rows)?,
            path: VectorPath::Hnsw,
            estimated,
        });
    }
    // The filter removed too many of the graph's candidates: scan exactly.
    let (sql, p) = search(true);
    let rows = client.query(&sql, &p.refs()).await.map_err(pg_err)?;
    Ok(VectorHits {
        hits: hits(rows)?,
        path: VectorPath::Exact,
        estimated,
    })
}

pub(crate) async fn vector_scores(
    store: &PgStore,
    ids: &[MemoryId],
    vector: &[f32],
) -> Result<Ranked<MemoryId>> {
    if ids.is_empty() || store.dim().is_err() {
        return Ok(Vec::new());
    }
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT id, 1 - (embedding <=> $1::vector) FROM memories \
             WHERE id = ANY($2::uuid[]) AND invalid_at IS NULL",
            &[&Vector::from(vector.to_vec()), &ids.to_vec()],
        )
        .await
        .map_err(pg_err)?;
    let mut found: HashMap<MemoryId, f32> = HashMap::with_capacity(rows.len());
    for r in &rows {
        found.insert(get(r, 0)?, get::<f64>(r, 1)? as f32);
    }
    Ok(ids
        .iter()
        .filter_map(|id| found.get(id).map(|s| (*id, *s)))
        .collect())
}

pub(crate) async fn keyword_search(
    store: &PgStore,
    filter: &Filter,
    vis: Visibility,
    terms: &[String],
    k: usize,
) -> Result<Ranked<MemoryId>> {
    if terms.is_empty() || k == 0 {
        return Ok(Vec::new());
    }
    let client = store.client().await?;
    let mut p = Params::default();
    // Any of the terms, each stemmed the way the column is.
    let query = terms
        .iter()
        .map(|t| format!("plainto_tsquery('english', {}::text)", p.push(t.clone())))
        .collect::<Vec<_>>()
        .join(" || ");
    let terms_p = p.push(terms.iter().take(MAX_TERMS).cloned().collect::<Vec<_>>());
    let live = live("m.", &mut p, ms(vis.now));
    let cond = compile(filter, "m.", &mut p);
    let cap = p.push(TERM_MATCHES);
    let limit = p.push(k as i64);
    // Candidates: per term, its newest matches in the scope (a bounded read
    // however common the term); only they are ranked. `OFFSET 0` keeps the
    // planner from walking the table newest first to serve the limit: the
    // matches come from the text index (and the scope's), then are cut.
    let rows = client
        .query(
            &format!(
                "WITH c AS (SELECT DISTINCT x.rowid FROM unnest({terms_p}::text[]) AS t(term) \
                 CROSS JOIN LATERAL (SELECT s.rowid FROM (SELECT m.rowid FROM memories m \
                 WHERE m.tsv @@ plainto_tsquery('english', t.term) AND {live} AND {cond} \
                 OFFSET 0) s ORDER BY s.rowid DESC LIMIT {cap}::bigint) x) \
                 SELECT m.id, ts_rank_cd(m.tsv, q.q, 1) AS r FROM c JOIN memories m ON m.rowid = c.rowid, \
                 (SELECT {query} AS q) q \
                 ORDER BY r DESC, m.rowid DESC LIMIT {limit}::bigint"
            ),
            &p.refs(),
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| Ok((get(r, 0)?, get::<f32>(r, 1)?)))
        .collect()
}

/// A term's matches ranked per search, newest first: bounds the cost of a
/// common term in a large scope.
const TERM_MATCHES: i64 = 2_000;
/// Query terms looked up per search.
const MAX_TERMS: usize = 16;
/// An entity's mentions read per search, newest first.
const ENTITY_MATCHES: i64 = 5_000;

pub(crate) async fn entity_search(
    store: &PgStore,
    filter: &Filter,
    vis: Visibility,
    keys: &[String],
    k: usize,
) -> Result<Ranked<MemoryId>> {
    if keys.is_empty() || k == 0 {
        return Ok(Vec::new());
    }
    let client = store.client().await?;
    // The filtered set's size weighs entity rarity: counted when small,
    // the planner's estimate when large (counting would cost the scope).
    let n = store
        .size(&**client, filter, vis, store.inner.options.exact_threshold)
        .await?;
    let mut p = Params::default();
    let keys_p = p.push(keys.to_vec());
    let live = live("m.", &mut p, ms(vis.now));
    let cond = compile(filter, "m.", &mut p);
    // A small scope is read from its own rows (the scope's index, then each
    // row's entities); a large one per key, its newest mentions only — a
    // bounded read however common the entity.
    let sql = if n < store.inner.options.exact_threshold {
        format!(
            "SELECT e.key, m.rowid, m.id FROM entities e JOIN memories m ON m.rowid = e.memory \
             WHERE e.key = ANY({keys_p}::text[]) AND {live} AND {cond}"
        )
    } else {
        let cap = p.push(ENTITY_MATCHES);
        format!(
            "SELECT k.key, x.rowid, x.id FROM unnest({keys_p}::text[]) AS k(key) \
             CROSS JOIN LATERAL (SELECT m.rowid, m.id FROM entities e \
             JOIN memories m ON m.rowid = e.memory \
             WHERE e.key = k.key AND {live} AND {cond} \
             ORDER BY e.memory DESC LIMIT {cap}::bigint) x"
        )
    };
    let rows = client.query(&sql, &p.refs()).await.map_err(pg_err)?;
    let mut ids: HashMap<i64, MemoryId> = HashMap::with_capacity(rows.len());
    let mut pairs = Vec::with_capacity(rows.len());
    for r in &rows {
        let rowid: i64 = get(r, 1)?;
        ids.insert(rowid, get(r, 2)?);
        pairs.push((get::<String>(r, 0)?, rowid));
    }
    Ok(engram_core::fusion::score_entities(keys, &pairs, n, k)
        .into_iter()
        .filter_map(|(rowid, s)| ids.get(&rowid).map(|id| (*id, s)))
        .collect())
}

pub(crate) async fn neighbors(
    store: &PgStore,
    ids: &[MemoryId],
    filter: &Filter,
    max_gap_ms: i64,
    vis: Visibility,
) -> Result<Vec<(MemoryId, Vec<MemoryId>)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let client = store.client().await?;
    let mut p = Params::default();
    let ids_p = p.push(ids.to_vec());
    let gap = p.push(max_gap_ms);
    let live = live("n.", &mut p, ms(vis.now));
    let cond = compile(filter, "n.", &mut p);
    // A neighbour is a live turn of exactly the same scope, the closest
    // one said before and the closest after, within the gap.
    let same = "n.org_id IS NOT DISTINCT FROM a.org_id AND n.app_id IS NOT DISTINCT FROM a.app_id \
         AND n.user_id IS NOT DISTINCT FROM a.user_id AND n.agent_id IS NOT DISTINCT FROM a.agent_id \
         AND n.run_id IS NOT DISTINCT FROM a.run_id";
    let side = |before: bool| {
        let (cmp, order, bound) = if before {
            (
                "<",
                "DESC",
                format!("n.created_at >= a.created_at - {gap}::bigint"),
            )
        } else {
            (
                ">",
                "ASC",
                format!("n.created_at <= a.created_at + {gap}::bigint"),
            )
        };
        format!(
            "(SELECT n.id, {tag} AS side FROM memories n WHERE {same} AND {live} AND {cond} AND {bound} \
             AND (n.created_at, n.rowid) {cmp} (a.created_at, a.rowid) \
             ORDER BY n.created_at {order}, n.rowid {order} LIMIT 1)",
            tag = if before { 0 } else { 1 },
        )
    };
    let sql = format!(
        "SELECT a.id, x.id FROM memories a CROSS JOIN LATERAL ({} UNION ALL {}) x \
         WHERE a.id = ANY({ids_p}::uuid[]) AND a.invalid_at IS NULL \
         AND num_nonnulls(a.org_id, a.app_id, a.user_id, a.agent_id, a.run_id) > 0 \
         ORDER BY a.id, x.side",
        side(true),
        side(false)
    );
    let rows = client.query(&sql, &p.refs()).await.map_err(pg_err)?;
    let mut found: HashMap<MemoryId, Vec<MemoryId>> = HashMap::new();
    for r in &rows {
        found.entry(get(r, 0)?).or_default().push(get(r, 1)?);
    }
    Ok(ids
        .iter()
        .map(|id| (*id, found.remove(id).unwrap_or_default()))
        .collect())
}

pub(crate) fn empty_hits(estimated: usize) -> VectorHits {
    VectorHits {
        hits: Vec::new(),
        path: VectorPath::Empty,
        estimated,
    }
}
