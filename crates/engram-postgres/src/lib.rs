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
mod error;
mod jobs;
mod keys;
mod read;
mod reembed;
mod rows;
mod schema;
mod search;
pub mod sql;
mod webhooks;
mod write;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use engram_core::filter::Filter;
use engram_core::fusion::Ranked;
use engram_core::memory::{HistoryEvent, Memory, MemoryId};
use engram_core::ports::{AuditEvent, ErasureCounts, ErasureTarget};
use engram_core::ports::{
    Cursor, ModelInfo, ScopeIdStats, Store, StoreStats, VectorHits, Visibility, WriteOp,
};
use engram_core::{Error, ErrorCode, Result};
use jiff::Timestamp;
use tokio_postgres::{GenericClient, NoTls};

pub(crate) use crate::error::pg_err;
use crate::error::{ApplyError, pool_err, retryable};
use crate::rows::{get, meta_get, ms};
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

    /// How many current visible memories match. When the planner's row
    /// estimate is far above `cap` (a big scope), that estimate is the
    /// answer and nothing is counted; near or below it, the rows are
    /// counted (up to `cap`), so small scopes are sized exactly.
    async fn estimate(
        &self,
        client: &impl GenericClient,
        filter: &Filter,
        vis: Visibility,
        cap: usize,
    ) -> Result<usize> {
        let planned = planned_rows(client, filter, vis).await?;
        if planned >= 2 * cap {
            return Ok(planned);
        }
        count_up_to(client, filter, vis, cap).await
    }

    /// How many current visible memories match: counted up to `cap` (one
    /// query for a small scope), the planner's estimate beyond it.
    async fn size(
        &self,
        client: &impl GenericClient,
        filter: &Filter,
        vis: Visibility,
        cap: usize,
    ) -> Result<usize> {
        let n = count_up_to(client, filter, vis, cap + 1).await?;
        if n <= cap {
            return Ok(n);
        }
        Ok(planned_rows(client, filter, vis).await?.max(n))
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
        write::apply(self, ops).await
    }

    async fn get(&self, id: MemoryId, vis: Visibility) -> Result<Option<Memory>> {
        read::get_one(self, id, vis).await
    }

    async fn get_many(&self, ids: &[MemoryId], vis: Visibility) -> Result<Vec<Memory>> {
        read::get_many(self, ids, vis).await
    }

    async fn list(
        &self,
        filter: &Filter,
        vis: Visibility,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<Memory>> {
        read::list(self, filter, vis, after, limit).await
    }

    async fn versions_at(
        &self,
        filter: &Filter,
        at: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Memory, Vec<f32>)>> {
        read::versions_at(self, filter, at, limit).await
    }

    async fn usage(&self, limit: usize) -> Result<Vec<engram_core::ports::UsageRow>> {
        read::usage(self, limit).await
    }

    async fn count(&self, filter: &Filter, vis: Visibility) -> Result<usize> {
        read::count(self, filter, vis).await
    }

    async fn scope_ids(&self, filter: &Filter, vis: Visibility) -> Result<Vec<ScopeIdStats>> {
        read::scope_ids(self, filter, vis).await
    }

    async fn memory_versions(&self, ids: &[MemoryId]) -> Result<Vec<(Memory, Vec<f32>)>> {
        read::memory_versions(self, ids).await
    }

    async fn history(&self, id: MemoryId) -> Result<Vec<HistoryEvent>> {
        read::history(self, id).await
    }

    async fn vector_search(
        &self,
        filter: &Filter,
        vis: Visibility,
        vector: &[f32],
        k: usize,
    ) -> Result<VectorHits> {
        search::vector_search(self, filter, vis, vector, k).await
    }

    async fn vector_scores(&self, ids: &[MemoryId], vector: &[f32]) -> Result<Ranked<MemoryId>> {
        search::vector_scores(self, ids, vector).await
    }

    async fn keyword_search(
        &self,
        filter: &Filter,
        vis: Visibility,
        terms: &[String],
        k: usize,
    ) -> Result<Ranked<MemoryId>> {
        search::keyword_search(self, filter, vis, terms, k).await
    }

    async fn entity_search(
        &self,
        filter: &Filter,
        vis: Visibility,
        keys: &[String],
        k: usize,
    ) -> Result<Ranked<MemoryId>> {
        search::entity_search(self, filter, vis, keys, k).await
    }

    async fn neighbors(
        &self,
        ids: &[MemoryId],
        filter: &Filter,
        max_gap_ms: i64,
        vis: Visibility,
    ) -> Result<Vec<(MemoryId, Vec<MemoryId>)>> {
        search::neighbors(self, ids, filter, max_gap_ms, vis).await
    }

    async fn stats(&self) -> Result<StoreStats> {
        read::stats(self).await
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

/// The current visible memories matching `filter`, as a `SELECT 1` and its parameters.
fn matching(filter: &Filter, vis: Visibility) -> (String, Params) {
    let mut p = Params::default();
    let live = live("", &mut p, ms(vis.now));
    let cond = compile(filter, "", &mut p);
    (format!("SELECT 1 FROM memories WHERE {live} AND {cond}"), p)
}

/// The planner's estimate of how many memories match (`EXPLAIN`, nothing read).
async fn planned_rows(
    client: &impl GenericClient,
    filter: &Filter,
    vis: Visibility,
) -> Result<usize> {
    let (select, p) = matching(filter, vis);
    let plan: serde_json::Value = client
        .query_one(&format!("EXPLAIN (FORMAT JSON) {select}"), &p.refs())
        .await
        .map_err(pg_err)?
        .get(0);
    Ok(plan[0]["Plan"]["Plan Rows"]
        .as_f64()
        .unwrap_or(0.0)
        .max(0.0) as usize)
}

/// How many memories match, counting at most `limit`.
async fn count_up_to(
    client: &impl GenericClient,
    filter: &Filter,
    vis: Visibility,
    limit: usize,
) -> Result<usize> {
    let (select, mut p) = matching(filter, vis);
    let limit = p.push(limit as i64);
    let n: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM ({select} LIMIT {limit}::bigint) t"),
            &p.refs(),
        )
        .await
        .map_err(pg_err)?
        .get(0);
    Ok(n.max(0) as usize)
}
