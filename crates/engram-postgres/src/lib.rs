//! Engram's shared store: PostgreSQL with pgvector.
//!
//! Everything lives in the database — records, history, the keyword index
//! (`tsvector` + GIN), the entity index, the vector index (pgvector HNSW,
//! cosine), keys, jobs, idempotency records, usage — so any number of
//! Engram nodes can serve the same data: a node keeps nothing another node
//! needs. Filters compile to parameterised SQL ([`sql`]); each write batch
//! is one transaction, retried on serialization failures and deadlocks.
//!
//! Vector search mirrors the embedded store's two paths: a filtered set
//! smaller than [`PgOptions::exact_threshold`] is scanned exactly (the sort
//! key is written so the planner cannot use the HNSW index); larger sets
//! walk HNSW with `hnsw.ef_search` raised for the request and fall back to
//! the exact scan when the filter leaves fewer than `k` hits.

mod audit;
mod jobs;
mod keys;
mod reembed;
mod schema;
pub mod sql;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use engram_core::filter::Filter;
use engram_core::fusion::Ranked;
use engram_core::memory::{Event, HistoryEvent, Memory, MemoryId, Scope, ScopeField};
use engram_core::ports::{AuditEvent, ErasureCounts, ErasureTarget};
use engram_core::ports::{
    Cursor, ModelInfo, ScopeIdStats, Store, StoreStats, VectorHits, VectorPath, Visibility, WriteOp,
};
use engram_core::{Error, ErrorCode, Result};
use jiff::Timestamp;
use pgvector::Vector;
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, NoTls, Row, Transaction};

use crate::sql::{Params, compile, live};

/// Options for [`PgStore::connect`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections in this node's pool.
    pub pool_size: usize,
    /// Server-side limit on any one statement.
    pub statement_timeout: Duration,
    /// How long to wait for a connection (from the pool, or to the server).
    pub connect_timeout: Duration,
    /// Filtered sets smaller than this are scanned exactly.
    pub exact_threshold: usize,
    /// `hnsw.ef_search` for graph searches (raised to `4k` for large `k`).
    pub ef_search: usize,
    /// HNSW build parameters, used when the index is created.
    pub hnsw_m: usize,
    pub hnsw_ef_construction: usize,
    /// Attempts for a write batch that hits a serialization failure or deadlock.
    pub write_attempts: u32,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 16,
            statement_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            exact_threshold: 12_000,
            ef_search: 100,
            hnsw_m: 16,
            hnsw_ef_construction: 64,
            write_attempts: 5,
        }
    }
}

/// The Postgres store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    options: PgOptions,
    /// The bound embedding dimension, once known (0 before); changed by a
    /// re-embedding switch made through this node.
    dim: AtomicUsize,
    /// Host, port and database, for messages (never the password).
    target: String,
    /// The HNSW rebuild a re-embedding switch started here (awaited by `flush`).
    index_build: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Converts a driver error, keeping the server's message and SQLSTATE.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::QUERY_CANCELED => Error::store(format!(
            "postgres: statement timed out or was cancelled: {}",
            db.message()
        )),
        Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => Error::new(
            ErrorCode::Conflict,
            format!(
                "a concurrent write touched the same record ({}); retry",
                db.message()
            ),
        ),
        Some(db) => Error::store(format!(
            "postgres: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        )),
        None => Error::store(format!("postgres: {e}")),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => Error::store(format!("postgres connection pool: {other}")),
    }
}

/// Whether a failed transaction may simply be run again.
fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

pub(crate) fn ts(ms: i64) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms)
        .map_err(|e| Error::store(format!("bad timestamp {ms} in database: {e}")))
}

fn opt_ts(ms: Option<i64>) -> Result<Option<Timestamp>> {
    ms.map(ts).transpose()
}

/// Column list matching [`row_to_memory`].
const COLUMNS: &str = "rowid, id, version, text, kind, hash, org_id, app_id, user_id, agent_id, run_id, \
     metadata, categories, entities, role, created_at, updated_at, valid_at, invalid_at, expires_at, \
     embedding_model, tokens, idle_ttl_ms";
const COLUMN_COUNT: usize = 23;

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i)
        .map_err(|e| Error::store(format!("reading column {i}: {e}")))
}

fn row_to_memory(row: &Row) -> Result<(i64, Memory)> {
    let kind: String = get(row, 4)?;
    let version: i32 = get(row, 2)?;
    let tokens: i32 = get(row, 21)?;
    let memory = Memory {
        id: get(row, 1)?,
        version: u32::try_from(version).unwrap_or_default(),
        text: get(row, 3)?,
        kind: kind.parse()?,
        hash: get(row, 5)?,
        scope: Scope {
            org_id: get(row, 6)?,
            app_id: get(row, 7)?,
            user_id: get(row, 8)?,
            agent_id: get(row, 9)?,
            run_id: get(row, 10)?,
        },
        metadata: match get::<serde_json::Value>(row, 11)? {
            serde_json::Value::Object(m) => m,
            _ => Default::default(),
        },
        categories: serde_json::from_value(get(row, 12)?)
            .map_err(|e| Error::store(format!("bad categories: {e}")))?,
        entities: serde_json::from_value(get(row, 13)?)
            .map_err(|e| Error::store(format!("bad entities: {e}")))?,
        role: get(row, 14)?,
        created_at: ts(get(row, 15)?)?,
        updated_at: ts(get(row, 16)?)?,
        valid_at: opt_ts(get(row, 17)?)?,
        invalid_at: opt_ts(get(row, 18)?)?,
        expires_at: opt_ts(get(row, 19)?)?,
        embedding_model: get(row, 20)?,
        tokens: u32::try_from(tokens).unwrap_or_default(),
        idle_ttl: get::<Option<i64>>(row, 22)?.map(jiff::SignedDuration::from_millis),
    };
    Ok((get(row, 0)?, memory))
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn json(v: &impl serde::Serialize) -> serde_json::Value {
    // Maps, vectors of strings and plain derived structs always serialise.
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl PgStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`), checks that
    /// pgvector is available and migrates the schema.
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgStore> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            Error::invalid(format!(
                "`--store` is not a valid Postgres URL: {e} (expected postgres://user:password@host:port/database)"
            ))
        })?;
        let timeout_ms = options.statement_timeout.as_millis();
        config
            .application_name("engram")
            .connect_timeout(options.connect_timeout)
            .options(format!("-c statement_timeout={timeout_ms}"));
        let target = format!(
            "{}:{}/{}",
            config
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into()),
            config.get_ports().first().copied().unwrap_or(5432),
            config.get_dbname().unwrap_or("(default)")
        );
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::store(format!("postgres pool: {e}")))?;
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                options,
                dim: AtomicUsize::new(0),
                target,
                index_build: std::sync::Mutex::new(None),
            }),
        };
        let mut client = store.client().await.map_err(|e| {
            Error::store(format!(
                "cannot connect to Postgres at {}: {}",
                store.inner.target, e.message
            ))
        })?;
        let ran = schema::migrate(&mut client).await.map_err(|e| {
            let e = pg_err(e);
            Error::store(format!(
                "cannot migrate the Engram schema in {} (the pgvector extension must be installed): {}",
                store.inner.target, e.message
            ))
        })?;
        if ran > 0 {
            tracing::info!(
                migrations = ran,
                schema = schema::latest(),
                "migrated Postgres schema"
            );
        }
        if let Some(dim) = meta_get(&**client, "embedding_dim")
            .await?
            .and_then(|d| d.parse().ok())
        {
            store.inner.dim.store(dim, Ordering::Release);
        }
        Ok(store)
    }

    /// Refreshes the planner's statistics (autovacuum does this on its own
    /// schedule; call it after a bulk load so plans are good at once).
    pub async fn analyze(&self) -> Result<()> {
        self.client()
            .await?
            .batch_execute("ANALYZE memories, entities, history")
            .await
            .map_err(pg_err)
    }

    /// `host:port/database`, for logs.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(pool_err)
    }

    /// Creates the HNSW index over current versions unless it exists (its
    /// options are integers we produce, not input).
    pub(crate) fn hnsw_sql(&self, concurrently: bool) -> String {
        let o = &self.inner.options;
        format!(
            "CREATE INDEX {c} IF NOT EXISTS memories_hnsw ON memories \
             USING hnsw (embedding vector_cosine_ops) WITH (m = {m}, ef_construction = {ef}) \
             WHERE invalid_at IS NULL;",
            c = if concurrently { "CONCURRENTLY" } else { "" },
            m = o.hnsw_m,
            ef = o.hnsw_ef_construction,
        )
    }

    /// Starts [`build_hnsw_concurrently`](Self::build_hnsw_concurrently) in
    /// the background (`flush` waits for it); until it is ready, vector
    /// searches scan (exact, slower).
    /// With `replace_invalid`, an INVALID index (a concurrent build that
    /// failed) is dropped first.
    pub(crate) fn spawn_hnsw_build(&self, replace_invalid: bool) {
        let store = self.clone();
        let build = tokio::spawn(async move {
            let started = std::time::Instant::now();
            match store.build_hnsw_concurrently(replace_invalid).await {
                Ok(()) => tracing::info!(
                    seconds = started.elapsed().as_secs_f64(),
                    "HNSW index ready"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "building the HNSW index failed; searches scan until a node starts \
                     (it rebuilds the index)"
                ),
            }
        });
        *self
            .inner
            .index_build
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(build);
    }

    /// Builds the HNSW index, if missing, without blocking reads or writes
    /// and without the statement timeout.
    pub(crate) async fn build_hnsw_concurrently(&self, replace_invalid: bool) -> Result<()> {
        let client = self.client().await?;
        client
            .batch_execute("SET statement_timeout = 0")
            .await
            .map_err(pg_err)?;
        // Separate statements: neither may run in a (multi-statement, implicit) transaction.
        let build = async {
            if replace_invalid {
                client
                    .batch_execute("DROP INDEX CONCURRENTLY IF EXISTS memories_hnsw")
                    .await?;
            }
            client.batch_execute(&self.hnsw_sql(true)).await
        };
        let out = build.await.map_err(pg_err);
        // The connection goes back to the pool: its timeout with it.
        let reset = client
            .batch_execute("RESET statement_timeout")
            .await
            .map_err(pg_err);
        out.and(reset)
    }

    fn dim(&self) -> Result<usize> {
        Some(self.inner.dim.load(Ordering::Acquire))
            .filter(|d| *d > 0)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::Internal,
                    "the store has no embedding model bound yet (bind_model was not called)",
                )
            })
    }

    /// How many current visible memories match, counting at most `cap`.
    /// When the planner's row estimate is far above the cap (a big scope),
    /// that is answer enough and nothing is counted; near or below it, the
    /// rows are counted (up to `cap`), so small scopes are sized exactly.
    async fn estimate(
        &self,
        client: &impl GenericClient,
        filter: &Filter,
        vis: Visibility,
        cap: usize,
    ) -> Result<usize> {
        let mut p = Params::default();
        let live = live("", &mut p, ms(vis.now));
        let cond = compile(filter, "", &mut p);
        let select = format!("SELECT 1 FROM memories WHERE {live} AND {cond}");
        let plan: serde_json::Value = client
            .query_one(&format!("EXPLAIN (FORMAT JSON) {select}"), &p.refs())
            .await
            .map_err(pg_err)?
            .get(0);
        let planned = plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0);
        if planned >= 2.0 * cap as f64 {
            return Ok(cap);
        }
        let cap_p = p.push(cap as i64);
        let n: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM ({select} LIMIT {cap_p}::bigint) t"),
                &p.refs(),
            )
            .await
            .map_err(pg_err)?
            .get(0);
        Ok(n.max(0) as usize)
    }

    /// Runs `once` (one transaction) until it commits, again after a
    /// serialization failure or deadlock (with backoff, at most
    /// `write_attempts` times); other errors are final.
    async fn retrying<T, F, Fut>(&self, mut once: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, ApplyError>>,
    {
        let attempts = self.inner.options.write_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match once().await {
                Ok(v) => return Ok(v),
                Err(ApplyError::Pg(e)) if retryable(&e) && attempt < attempts => {
                    tracing::debug!(attempt, error = %e, "retrying a write transaction");
                    let backoff = 5u64 << attempt.min(6);
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
                Err(ApplyError::Pg(e)) => return Err(pg_err(e)),
                Err(ApplyError::Other(e)) => return Err(e),
            }
        }
    }

    /// Runs `ops` in one transaction (one attempt; see [`retrying`](Self::retrying)).
    async fn apply_once(&self, ops: &[WriteOp]) -> std::result::Result<(), ApplyError> {
        let mut client = self.client().await.map_err(ApplyError::Other)?;
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
            if let Some(m) = &model {
                engram_core::ports::check_model(ops, m)?;
            }
        }
        engram_core::ports::check_dimensions(ops, self.dim()?)?;
        for op in ops {
            match op {
                WriteOp::Insert {
                    memory,
                    embedding,
                    history,
                } => {
                    insert_version(&tx, memory, Vector::from(embedding.clone())).await?;
                    insert_history(&tx, history).await?;
                    audit::append(&tx, &AuditEvent::of_history(history)).await?;
                }
                WriteOp::Update {
                    memory,
                    embedding,
                    history,
                } => {
                    let expect = memory.version.checked_sub(1);
                    let old = close_current(&tx, memory.id, memory.updated_at, expect).await?;
                    match (embedding, &model) {
                        (Some(v), _) => {
                            insert_version(&tx, memory, Vector::from(v.clone())).await?;
                        }
                        // The previous vector is kept: it has the store's model.
                        (None, Some(m)) if memory.embedding_model != *m => {
                            let mut relabelled = memory.clone();
                            relabelled.embedding_model = m.clone();
                            insert_version(&tx, &relabelled, old).await?;
                        }
                        (None, _) => insert_version(&tx, memory, old).await?,
                    }
                    insert_history(&tx, history).await?;
                    audit::append(&tx, &AuditEvent::of_history(history)).await?;
                }
                WriteOp::Delete { id, at, history } => {
                    close_current(&tx, *id, *at, None).await?;
                    insert_history(&tx, history).await?;
                    audit::append(&tx, &AuditEvent::of_history(history)).await?;
                }
                WriteOp::Import { versions, history } => {
                    let Some(id) = versions.first().map(|(m, _)| m.id) else {
                        continue;
                    };
                    // Two nodes importing the same file: the second waits here, then skips.
                    tx.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))",
                        &[&id.to_string()],
                    )
                    .await?;
                    let known = tx
                        .query_opt("SELECT 1 FROM memories WHERE id = $1 LIMIT 1", &[&id])
                        .await?
                        .is_some();
                    if known {
                        continue;
                    }
                    for (memory, vector) in versions {
                        insert_version(&tx, memory, Vector::from(vector.clone())).await?;
                    }
                    for h in history {
                        insert_history(&tx, h).await?;
                    }
                }
                WriteOp::SetExpiry {
                    id,
                    version,
                    from,
                    to,
                } => {
                    tx.execute(
                        "UPDATE memories SET expires_at = $4 WHERE id = $1 AND invalid_at IS NULL \
                         AND version = $2 AND expires_at IS NOT DISTINCT FROM $3",
                        &[id, &int(*version), &from.map(ms), &to.map(ms)],
                    )
                    .await?;
                }
                WriteOp::FinishJob {
                    id,
                    worker,
                    result,
                    at,
                } => jobs::finish(&tx, *id, worker, result, *at).await?,
                WriteOp::RecordUsage(row) => jobs::record_usage(&tx, row).await?,
                WriteOp::Audit(event) => audit::append(&tx, event).await?,
            }
        }
        tx.commit().await.map_err(ApplyError::Pg)
    }
}

/// Why a write batch failed: a driver error may be retryable, ours are final.
pub(crate) enum ApplyError {
    Pg(tokio_postgres::Error),
    Other(Error),
}

pub(crate) fn apply_err(e: ApplyError) -> Error {
    match e {
        ApplyError::Pg(e) => pg_err(e),
        ApplyError::Other(e) => e,
    }
}

impl From<Error> for ApplyError {
    fn from(e: Error) -> Self {
        ApplyError::Other(e)
    }
}

impl From<tokio_postgres::Error> for ApplyError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApplyError::Pg(e)
    }
}

/// Memory rows selected with their vector after the memory columns.
fn with_vectors(rows: &[Row]) -> Result<Vec<(Memory, Vec<f32>)>> {
    rows.iter()
        .map(|r| {
            let (_, m) = row_to_memory(r)?;
            let v: Vector = get(r, COLUMN_COUNT)?;
            Ok((m, v.to_vec()))
        })
        .collect()
}

async fn meta_get(client: &impl GenericClient, key: &str) -> Result<Option<String>> {
    Ok(client
        .query_opt("SELECT value FROM engram_meta WHERE key = $1", &[&key])
        .await
        .map_err(pg_err)?
        .map(|r| r.get(0)))
}

async fn insert_version(
    tx: &Transaction<'_>,
    m: &Memory,
    embedding: Vector,
) -> std::result::Result<(), ApplyError> {
    let row = tx
        .query_one(
            "INSERT INTO memories (id, version, text, kind, hash, org_id, app_id, user_id, agent_id, run_id, \
             metadata, categories, entities, role, created_at, updated_at, valid_at, invalid_at, expires_at, \
             embedding_model, tokens, embedding, idle_ttl_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::json, $12, $13, $14, $15, $16, $17, $18, $19, \
             $20, $21, $22, $23) RETURNING rowid",
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
    Ok(())
}

/// Closes the current version of `id` at `at` (locking it first, so concurrent
/// writers on other nodes queue up); returns its vector.
async fn close_current(
    tx: &Transaction<'_>,
    id: MemoryId,
    at: Timestamp,
    expect_version: Option<u32>,
) -> std::result::Result<Vector, ApplyError> {
    const LOCK_CURRENT: &str = "SELECT rowid, version, embedding FROM memories \
                                WHERE id = $1 AND invalid_at IS NULL FOR UPDATE";
    let mut row = tx.query_opt(LOCK_CURRENT, &[&id]).await?;
    if row.is_none() {
        // Under READ COMMITTED, a writer that queued on our lock re-checks the
        // row it waited for after the holder commits: that row is now closed,
        // and the holder's new version is outside this statement's snapshot.
        // A second statement takes a fresh snapshot and sees it (or sees that
        // the memory is really gone).
        row = tx.query_opt(LOCK_CURRENT, &[&id]).await?;
    }
    let row = row.ok_or_else(|| Error::not_found(format!("memory {id} not found")))?;
    let rowid: i64 = row.get(0);
    let version: i32 = row.get(1);
    if let Some(v) = expect_version
        && int(v) != version
    {
        return Err(Error::new(
            ErrorCode::Conflict,
            format!(
                "memory {id} changed while this request ran (now version {version}); read it again and retry"
            ),
        )
        .into());
    }
    tx.execute(
        "UPDATE memories SET invalid_at = $2 WHERE rowid = $1",
        &[&rowid, &ms(at)],
    )
    .await?;
    // The entity index holds current versions only (the keyword and vector
    // indexes are partial on `invalid_at IS NULL`).
    tx.execute("DELETE FROM entities WHERE memory = $1", &[&rowid])
        .await?;
    Ok(row.get(2))
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

fn empty_hits(estimated: usize) -> VectorHits {
    VectorHits {
        hits: Vec::new(),
        path: VectorPath::Empty,
        estimated,
    }
}

/// What a starting node does about an HNSW index that is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HnswRepair {
    /// Missing: a re-embedding switch stopped before its build finished.
    Build,
    /// INVALID and no build in progress: a concurrent build failed.
    ReplaceInvalid,
}

/// Whether the HNSW index needs building, read before any CREATE INDEX (one,
/// even IF NOT EXISTS, would wait on — and stall writes behind — a
/// concurrent build in progress). Repairs run in the background,
/// concurrently: a build in the bind transaction could deadlock with one a
/// switch started elsewhere.
async fn hnsw_repair(c: &impl GenericClient) -> Result<Option<HnswRepair>> {
    let row = c
        .query_one(
            "SELECT (SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('memories_hnsw')), \
                    EXISTS (SELECT 1 FROM pg_stat_progress_create_index WHERE relid = to_regclass('memories'))",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let (valid, building): (Option<bool>, bool) = (get(&row, 0)?, get(&row, 1)?);
    Ok(match (valid, building) {
        (None, _) => Some(HnswRepair::Build),
        (Some(true), _) => None,
        (Some(false), true) => {
            tracing::info!("the HNSW index is being built; searches scan until it is ready");
            None
        }
        (Some(false), false) => {
            tracing::warn!("the HNSW index is INVALID (its build failed); rebuilding it");
            Some(HnswRepair::ReplaceInvalid)
        }
    })
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn bind_model(&self, model: &ModelInfo) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        schema::lock(&*tx, false).await.map_err(pg_err)?;
        let mut repair = None;
        match reembed::model_at(&*tx, reembed::BOUND).await? {
            Some(bound) if bound != *model => {
                return Err(Error::new(
                    ErrorCode::EmbeddingModelMismatch,
                    format!(
                        "the database {} holds vectors from embedding model `{}` ({} dimensions), \
                         but the configured model is `{}` ({} dimensions); start Engram with the same model, \
                         or use a new database",
                        self.inner.target, bound.id, bound.dim, model.id, model.dim
                    ),
                ));
            }
            Some(_) => repair = hnsw_repair(&*tx).await?,
            None => {
                reembed::put_model(&*tx, reembed::BOUND, model)
                    .await
                    .map_err(pg_err)?;
                // The dimension is known now: type the column and build the
                // HNSW index over current versions (typmods and index options
                // are integers we produce, not input).
                tx.batch_execute(&format!(
                    "ALTER TABLE memories ALTER COLUMN embedding TYPE vector({dim}); {hnsw}",
                    dim = model.dim,
                    hnsw = self.hnsw_sql(false),
                ))
                .await
                .map_err(pg_err)?;
            }
        }
        tx.commit().await.map_err(pg_err)?;
        self.inner.dim.store(model.dim, Ordering::Release);
        if let Some(repair) = repair {
            self.spawn_hnsw_build(repair == HnswRepair::ReplaceInvalid);
        }
        Ok(())
    }

    async fn apply(&self, ops: Vec<WriteOp>) -> Result<()> {
        self.retrying(|| self.apply_once(&ops)).await
    }

    async fn get(&self, id: MemoryId, vis: Visibility) -> Result<Option<Memory>> {
        Ok(self.get_many(&[id], vis).await?.into_iter().next())
    }

    async fn get_many(&self, ids: &[MemoryId], vis: Visibility) -> Result<Vec<Memory>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let mut p = Params::default();
        let live = live("", &mut p, ms(vis.now));
        let ids_p = p.push(ids.to_vec());
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM memories WHERE id = ANY({ids_p}::uuid[]) AND {live}"
                ),
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

    async fn list(
        &self,
        filter: &Filter,
        vis: Visibility,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<Memory>> {
        let client = self.client().await?;
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

    async fn versions_at(&self, filter: &Filter, at: Timestamp) -> Result<Vec<(Memory, Vec<f32>)>> {
        let client = self.client().await?;
        let mut p = Params::default();
        let at_p = p.push(ms(at));
        let cond = compile(filter, "", &mut p);
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS}, embedding FROM memories WHERE updated_at <= {at_p}::bigint \
                     AND (invalid_at IS NULL OR invalid_at > {at_p}::bigint) \
                     AND (expires_at IS NULL OR expires_at > {at_p}::bigint) AND {cond}"
                ),
                &p.refs(),
            )
            .await
            .map_err(pg_err)?;
        with_vectors(&rows)
    }

    async fn usage(&self, limit: usize) -> Result<Vec<engram_core::ports::UsageRow>> {
        jobs::usage(&**self.client().await?, limit).await
    }

    async fn count(&self, filter: &Filter, vis: Visibility) -> Result<usize> {
        let client = self.client().await?;
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

    async fn scope_ids(&self, filter: &Filter, vis: Visibility) -> Result<Vec<ScopeIdStats>> {
        let client = self.client().await?;
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

    async fn memory_versions(&self, ids: &[MemoryId]) -> Result<Vec<(Memory, Vec<f32>)>> {
        let client = self.client().await?;
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

    async fn history(&self, id: MemoryId) -> Result<Vec<HistoryEvent>> {
        let client = self.client().await?;
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

    async fn vector_search(
        &self,
        filter: &Filter,
        vis: Visibility,
        vector: &[f32],
        k: usize,
    ) -> Result<VectorHits> {
        if self.dim().is_err() || k == 0 {
            return Ok(empty_hits(0));
        }
        let o = &self.inner.options;
        let mut client = self.client().await?;
        // Counted up to the larger of the threshold and k, so a set smaller
        // than k is known exactly.
        let cap = o.exact_threshold.max(k);
        let estimated = self.estimate(&**client, filter, vis, cap).await?;
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

    async fn vector_scores(&self, ids: &[MemoryId], vector: &[f32]) -> Result<Ranked<MemoryId>> {
        if ids.is_empty() || self.dim().is_err() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
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

    async fn keyword_search(
        &self,
        filter: &Filter,
        vis: Visibility,
        terms: &[String],
        k: usize,
    ) -> Result<Ranked<MemoryId>> {
        if terms.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let mut p = Params::default();
        // Any of the terms, each stemmed the way the column is.
        let query = terms
            .iter()
            .map(|t| format!("plainto_tsquery('english', {}::text)", p.push(t.clone())))
            .collect::<Vec<_>>()
            .join(" || ");
        let live = live("m.", &mut p, ms(vis.now));
        let cond = compile(filter, "m.", &mut p);
        let limit = p.push(k as i64);
        let rows = client
            .query(
                &format!(
                    "SELECT m.id, ts_rank_cd(m.tsv, q.q, 1) AS r FROM memories m, (SELECT {query} AS q) q \
                     WHERE m.tsv @@ q.q AND {live} AND {cond} \
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

    async fn entity_search(
        &self,
        filter: &Filter,
        vis: Visibility,
        keys: &[String],
        k: usize,
    ) -> Result<Ranked<MemoryId>> {
        if keys.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        // The filtered set's size weighs entity rarity (an index-only count).
        let n = self.count(filter, vis).await?;
        let mut p = Params::default();
        let keys_p = p.push(keys.to_vec());
        let live = live("m.", &mut p, ms(vis.now));
        let cond = compile(filter, "m.", &mut p);
        let rows = client
            .query(
                &format!(
                    "SELECT e.key, m.rowid, m.id FROM entities e JOIN memories m ON m.rowid = e.memory \
                     WHERE e.key = ANY({keys_p}::text[]) AND {live} AND {cond} \
                     ORDER BY m.rowid DESC LIMIT 50000"
                ),
                &p.refs(),
            )
            .await
            .map_err(pg_err)?;
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

    async fn neighbors(
        &self,
        ids: &[MemoryId],
        filter: &Filter,
        max_gap_ms: i64,
        vis: Visibility,
    ) -> Result<Vec<(MemoryId, Vec<MemoryId>)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
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

    async fn stats(&self) -> Result<StoreStats> {
        let client = self.client().await?;
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

    async fn check_writable(&self) -> Result<()> {
        let probe = async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            let (recovery, read_only): (bool, String) = (get(&row, 0)?, get(&row, 1)?);
            if recovery || read_only == "on" {
                return Err(Error::store(format!(
                    "{} is read-only (a replica, or default_transaction_read_only is on)",
                    self.inner.target
                )));
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(r) => r.map_err(|e| {
                Error::store(format!("the database cannot take writes: {}", e.message))
            }),
            Err(_) => Err(Error::store(format!(
                "the database cannot take writes: {} did not answer within 2 s",
                self.inner.target
            ))),
        }
    }

    async fn flush(&self) -> Result<()> {
        // Nothing is kept outside the database; an index build started by a
        // re-embedding switch is waited for (a CLI run or a shutdown would
        // otherwise cut it short).
        let build = self
            .inner
            .index_build
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(build) = build {
            tracing::info!("waiting for the HNSW index build to finish");
            let _ = build.await;
        }
        Ok(())
    }

    async fn erase(
        &self,
        target: &ErasureTarget,
        audit_event: AuditEvent,
    ) -> Result<ErasureCounts> {
        self.retrying(|| async {
            let mut client = self.client().await.map_err(ApplyError::Other)?;
            let tx = client.transaction().await?;
            let counts = audit::erase(&tx, target, audit_event.clone()).await?;
            tx.commit().await?;
            Ok(counts)
        })
        .await
    }

    async fn compact(&self) -> Result<bool> {
        // VACUUM makes the deleted rows' space reusable and drops their index
        // entries, but Postgres's WAL, replicas and backups keep old pages for
        // their retention period: we cannot promise the bytes are gone.
        let client = self.client().await?;
        client
            .batch_execute(
                "VACUUM memories, entities, history, jobs, idempotency, llm_usage, api_keys",
            )
            .await
            .map_err(pg_err)?;
        Ok(false)
    }

    async fn sweep_expired(
        &self,
        now: Timestamp,
        limit: usize,
        audit_event: AuditEvent,
    ) -> Result<ErasureCounts> {
        self.retrying(|| async {
            let mut client = self.client().await.map_err(ApplyError::Other)?;
            let tx = client.transaction().await?;
            let counts = audit::sweep(&tx, now, limit, audit_event.clone()).await?;
            tx.commit().await?;
            Ok(counts)
        })
        .await
    }

    async fn bound_model(&self) -> Result<Option<ModelInfo>> {
        let client = self.client().await?;
        reembed::model_at(&**client, reembed::BOUND).await
    }
}
