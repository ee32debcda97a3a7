//! Engram's embedded store: one SQLite file (WAL, FTS5) plus an in-memory
//! catalog and vector index derived from it.
//!
//! - SQLite is the durable truth: every memory version, its vector, the
//!   keyword (FTS5) and entity indexes and the history, all written in one
//!   transaction per batch.
//! - The [`catalog`] keeps the current version of every memory in memory,
//!   with per-scope-id postings; filters are evaluated there.
//! - The vector index ([`engram_index`]) holds current vectors; its HNSW
//!   graph is saved next to the database and rebuilt from the table when
//!   missing or stale.
//!
//! Threading: one writer connection behind a mutex (writes are serialised;
//! the catalog is updated under the same lock after commit, so a write is
//! visible to reads when `apply` returns) and a small pool of read
//! connections. All SQLite calls run on tokio's blocking pool.

mod audit;
mod catalog;
mod connect;
mod graph_snapshot;
mod jobs;
mod keys;
mod read;
mod reembed;
mod rows;
mod schema;
mod search;
mod webhooks;
mod write;

pub use connect::{DbKey, SqliteOptions, rekey};
pub use keys::SqliteKeys;

use crate::connect::open_conn;
use crate::read::load_current;
use crate::rows::meta_get;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use engram_core::filter::Filter;
use engram_core::fusion::Ranked;
use engram_core::memory::{HistoryEvent, Memory, MemoryId};
use engram_core::ports::{
    Cursor, ModelInfo, ScopeIdStats, Store, StoreStats, VectorHits, VectorPath, Visibility, WriteOp,
};
use engram_core::{Error, ErrorCode, Result};
use engram_index::{SearchPath, VectorIndex};
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags};

use crate::catalog::Catalog;

/// File names inside the data directory.
pub const DB_FILE: &str = "engram.db";
pub const GRAPH_FILE: &str = "vectors.usearch";

/// Deletes the saved HNSW graph in `dir`, if any; returns whether there was one.
fn remove_graph_file(dir: &Path) -> Result<bool> {
    match std::fs::remove_file(dir.join(GRAPH_FILE)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::store(format!(
            "cannot remove the graph file {GRAPH_FILE}: {e}"
        ))),
    }
}

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    options: SqliteOptions,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    catalog: std::sync::RwLock<Catalog>,
    /// Set when the model is bound; replaced whole when a re-embedding
    /// switches the model (under the writer lock).
    index: std::sync::RwLock<Option<Arc<VectorIndex>>>,
    /// Whether opening loaded a saved graph rather than building it.
    graph_loaded: std::sync::atomic::AtomicBool,
}

impl Inner {
    fn index(&self) -> Option<Arc<VectorIndex>> {
        // Poisoning: a panic while swapping an Option<Arc>; the value is whole.
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_index(&self, index: VectorIndex) {
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(index));
    }
}

fn db_err(e: rusqlite::Error) -> Error {
    Error::store(format!("sqlite: {e}"))
}

fn idx_err(e: engram_index::IndexError) -> Error {
    Error::store(format!("vector index: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned mutex means a thread panicked holding it; SQLite's own
    // transaction rollback keeps the data consistent, so continue.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`, migrates the schema and
    /// loads the catalog and vector index. Blocking: call from a blocking context
    /// or through [`SqliteStore::open_async`].
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<SqliteStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::store(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let db_path = dir.join(DB_FILE);
        let key = options.key.as_ref();
        let mut writer = open_conn(&db_path, false, key)?;
        if options.durable {
            // Every commit synced: nothing acknowledged is lost at a power loss.
            writer
                .pragma_update(None, "synchronous", "FULL")
                .map_err(db_err)?;
        }
        if key.is_some() {
            // Encrypted: no plaintext copy of the vectors may stay beside the
            // database. The graph is rebuilt from the database at start.
            if remove_graph_file(dir)? {
                tracing::info!("removed the unencrypted HNSW graph file");
            }
        }
        schema::migrate(&mut writer)
            .map_err(db_err)?
            .map_err(Error::store)?;
        let readers = (0..options.readers.max(1))
            .map(|_| open_conn(&db_path, true, key))
            .collect::<Result<Vec<_>>>()?;
        let store = SqliteStore {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                options,
                writer: Mutex::new(writer),
                readers: Mutex::new(readers),
                catalog: std::sync::RwLock::new(Catalog::default()),
                index: std::sync::RwLock::new(None),
                graph_loaded: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        store.load()?;
        Ok(store)
    }

    /// [`open`](Self::open) on the blocking pool.
    pub async fn open_async(dir: PathBuf, options: SqliteOptions) -> Result<SqliteStore> {
        tokio::task::spawn_blocking(move || SqliteStore::open(&dir, options))
            .await
            .map_err(|e| Error::internal(format!("open task failed: {e}")))?
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Loads current versions into the catalog and vector index.
    fn load(&self) -> Result<()> {
        let conn = lock(&self.inner.writer);
        let dim: Option<usize> = meta_get(&conn, "embedding_dim")?.and_then(|d| d.parse().ok());
        let Some(dim) = dim else { return Ok(()) };
        let (catalog, index) = load_current(&conn, dim, self.inner.options.index)?;
        let loaded = if self.inner.options.key.is_some() {
            match graph_snapshot::load(&conn) {
                Ok(Some(bytes)) => index.load_graph_bytes(&bytes).is_ok(),
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the graph snapshot; rebuilding");
                    false
                }
            }
        } else {
            let graph_path = self.inner.dir.join(GRAPH_FILE);
            graph_path.exists() && index.load_graph(&graph_path).is_ok()
        };
        drop(conn);
        self.inner
            .graph_loaded
            .store(loaded, std::sync::atomic::Ordering::Relaxed);
        if loaded {
            let added = index.index_pending().map_err(idx_err)?;
            tracing::info!(
                vectors = index.len(),
                caught_up = added,
                "loaded HNSW graph"
            );
        } else if !index.is_empty() {
            tracing::info!(vectors = index.len(), "building HNSW graph from the table");
            index
                .rebuild_graph(self.inner.options.build_threads)
                .map_err(idx_err)?;
        }
        *self
            .inner
            .catalog
            .write()
            .unwrap_or_else(|e| e.into_inner()) = catalog;
        self.inner.set_index(index);
        Ok(())
    }

    /// Drops removed current versions (committed) from the catalog and the
    /// vector index. Called with the writer lock held.
    fn forget_rows(&self, rows: &[i64]) -> Result<()> {
        let mut catalog = self
            .inner
            .catalog
            .write()
            .unwrap_or_else(|e| e.into_inner());
        for r in rows {
            catalog.remove(*r);
        }
        drop(catalog);
        if let Some(index) = self.inner.index() {
            let keys: Vec<u64> = rows.iter().map(|r| *r as u64).collect();
            index.remove(&keys).map_err(idx_err)?;
        }
        Ok(())
    }

    /// Saves the HNSW graph beside the database — or, when the database is
    /// encrypted (the graph holds the vectors in the clear), inside it
    /// (`graph_snapshot.rs`). `conn` is the writer, held by the caller.
    fn save_graph(&self, conn: &Connection, index: &VectorIndex) -> Result<()> {
        if self.inner.options.key.is_some() {
            return graph_snapshot::save(conn, index);
        }
        index
            .save_graph(&self.inner.dir.join(GRAPH_FILE))
            .map_err(idx_err)
    }

    /// Whether opening loaded the saved HNSW graph (the file beside a
    /// plaintext database, the snapshot inside an encrypted one) rather
    /// than building it from the table's vectors.
    pub fn graph_loaded(&self) -> bool {
        self.inner
            .graph_loaded
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the database is encrypted (opened with a key).
    pub fn encrypted(&self) -> bool {
        self.inner.options.key.is_some()
    }

    fn index(&self) -> Result<Arc<VectorIndex>> {
        self.inner.index().ok_or_else(|| {
            Error::new(
                ErrorCode::Internal,
                "the store has no embedding model bound yet (bind_model was not called)",
            )
        })
    }

    /// Runs `f` with a pooled read connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = lock(&inner.readers).pop();
            let conn = match conn {
                Some(c) => c,
                None => open_conn(&inner.dir.join(DB_FILE), true, inner.options.key.as_ref())?,
            };
            let out = f(&conn, &inner);
            lock(&inner.readers).push(conn);
            out
        })
        .await
        .map_err(|e| Error::internal(format!("read task failed: {e}")))?
    }

    /// Runs `f` with the writer connection on the blocking pool (for small
    /// writes outside the memory tables: keys).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&lock(&inner.writer)))
            .await
            .map_err(|e| Error::internal(format!("write task failed: {e}")))?
    }

    /// Runs `f` in an IMMEDIATE transaction of the writer connection, on the
    /// blocking pool. `f` commits, then brings derived state (catalog,
    /// vector index) in step while the writer lock is still held; `what`
    /// names the task in errors.
    async fn write_tx<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl for<'c> FnOnce(&SqliteStore, rusqlite::Transaction<'c>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.write_tx_as(what, false, f).await
    }

    /// [`write_tx`](Self::write_tx), with `durable`: the commit is synced to
    /// disk before it returns whatever `--durability` says (an erasure whose
    /// receipt was handed out must not roll back at a power loss).
    async fn write_tx_as<T: Send + 'static>(
        &self,
        what: &'static str,
        durable: bool,
        f: impl for<'c> FnOnce(&SqliteStore, rusqlite::Transaction<'c>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&store.inner.writer);
            let raise = durable && !store.inner.options.durable;
            if raise {
                conn.pragma_update(None, "synchronous", "FULL")
                    .map_err(db_err)?;
            }
            let out = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)
                .and_then(|tx| f(&store, tx));
            if raise {
                conn.pragma_update(None, "synchronous", "NORMAL")
                    .map_err(db_err)?;
            }
            out
        })
        .await
        .map_err(|e| Error::internal(format!("{what} task failed: {e}")))?
    }

    /// Runs `f` with the catalog (and index) on the blocking pool.
    async fn with_catalog<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Catalog, Option<&VectorIndex>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let catalog = inner.catalog.read().unwrap_or_else(|e| e.into_inner());
            f(&catalog, inner.index().as_deref())
        })
        .await
        .map_err(|e| Error::internal(format!("catalog task failed: {e}")))?
    }

    /// Forces a WAL checkpoint (truncating the WAL file).
    pub async fn checkpoint(&self) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            lock(&inner.writer)
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .map_err(db_err)
        })
        .await
        .map_err(|e| Error::internal(format!("checkpoint task failed: {e}")))?
    }

    /// Runs SQLite's integrity check; returns its report (`ok` when healthy).
    pub async fn integrity_check(&self) -> Result<String> {
        self.read(|conn, _| {
            conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .map_err(db_err)
        })
        .await
    }

    /// Drops and rebuilds the HNSW graph from the table's vectors.
    pub async fn rebuild_index(&self) -> Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            // No writes while the graph is rebuilt, so none is lost in the swap.
            let writer = lock(&store.inner.writer);
            let index = store.index()?;
            index
                .rebuild_graph(store.inner.options.build_threads)
                .map_err(idx_err)?;
            store.save_graph(&writer, &index)
        })
        .await
        .map_err(|e| Error::internal(format!("rebuild task failed: {e}")))?
    }

    /// Which path a filter's vector search would take, and the estimate behind it.
    pub fn plan_vector_search(&self, filter: &Filter) -> (VectorPath, usize) {
        let catalog = self.inner.catalog.read().unwrap_or_else(|e| e.into_inner());
        let estimated = catalog.estimate(filter);
        match self.inner.index() {
            None => (VectorPath::Empty, 0),
            Some(_) if estimated == 0 => (VectorPath::Empty, 0),
            Some(index) => match index.choose(estimated) {
                SearchPath::Exact => (VectorPath::Exact, estimated),
                SearchPath::Hnsw => (VectorPath::Hnsw, estimated),
            },
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn bind_model(&self, model: &ModelInfo) -> Result<()> {
        let store = self.clone();
        let model = model.clone();
        tokio::task::spawn_blocking(move || {
            let conn = lock(&store.inner.writer);
            match reembed::model_at(&conn, reembed::BOUND)? {
                Some(bound) if bound != model => {
                    return Err(Error::new(
                        ErrorCode::EmbeddingModelMismatch,
                        format!(
                            "this data directory ({}) holds vectors from embedding model `{}` ({} dimensions), \
                             but the configured model is `{}` ({} dimensions); start Engram with the same model, \
                             or use a new data directory",
                            store.inner.dir.display(),
                            bound.id,
                            bound.dim,
                            model.id,
                            model.dim
                        ),
                    ));
                }
                Some(_) => {}
                None => reembed::put_model(&conn, reembed::BOUND, &model)?,
            }
            drop(conn);
            if store.inner.index().is_none() {
                let index = VectorIndex::new(model.dim, store.inner.options.index).map_err(idx_err)?;
                store.inner.set_index(index);
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(format!("bind task failed: {e}")))?
    }

    async fn apply(&self, ops: Vec<WriteOp>) -> Result<()> {
        write::apply(self, ops).await
    }

    async fn get(&self, id: MemoryId, vis: Visibility) -> Result<Option<Memory>> {
        read::get(self, id, vis).await
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
        // A connection of its own with a short timeout: the probe must not wait
        // behind the writer mutex, and must see what another process holds.
        let path = self.inner.dir.join(DB_FILE);
        let key = self.inner.options.key.clone();
        tokio::task::spawn_blocking(move || {
            let probe = || -> rusqlite::Result<()> {
                let conn = connect::connect(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                if let Some(k) = &key {
                    k.apply(&conn)?;
                }
                conn.busy_timeout(std::time::Duration::from_millis(500))?;
                // Taking the write lock proves a write could happen now; nothing is written.
                conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            };
            probe().map_err(|e| Error::store(format!("the database cannot take writes: {e}")))
        })
        .await
        .map_err(|e| Error::internal(format!("probe task failed: {e}")))?
    }

    async fn flush(&self) -> Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let writer = lock(&store.inner.writer); // no writes while the graph is saved
            if let Some(index) = store.inner.index() {
                store.save_graph(&writer, &index)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(format!("flush task failed: {e}")))??;
        self.checkpoint().await
    }

    async fn erase(
        &self,
        target: &engram_core::ports::ErasureTarget,
        audit_event: engram_core::ports::AuditEvent,
    ) -> Result<engram_core::ports::ErasureCounts> {
        let target = target.clone();
        // Durable whatever the setting: the caller gets a receipt.
        self.write_tx_as("erase", true, move |store, tx| {
            let (counts, current) = audit::erase(&tx, &target, audit_event)?;
            tx.commit().map_err(db_err)?;
            store.forget_rows(&current)?;
            Ok(counts)
        })
        .await
    }

    async fn compact(&self) -> Result<bool> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = lock(&store.inner.writer);
            // Merge the keyword index's segments (drops deleted entries), move
            // the WAL into the file, rewrite the file without free pages, and
            // empty the WAL again; then rebuild and save the HNSW graph so no
            // removed vector remains in it.
            conn.execute_batch(
                "INSERT INTO memories_fts (memories_fts) VALUES ('optimize');
                 PRAGMA wal_checkpoint(TRUNCATE);
                 VACUUM;
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .map_err(db_err)?;
            if let Some(index) = store.inner.index() {
                index
                    .rebuild_graph(store.inner.options.build_threads)
                    .map_err(idx_err)?;
                store.save_graph(&conn, &index)?;
            }
            Ok(true)
        })
        .await
        .map_err(|e| Error::internal(format!("compact task failed: {e}")))?
    }

    async fn sweep_expired(
        &self,
        now: Timestamp,
        limit: usize,
        audit_event: engram_core::ports::AuditEvent,
    ) -> Result<engram_core::ports::ErasureCounts> {
        self.write_tx("sweep", move |store, tx| {
            let (counts, current) = audit::sweep(&tx, now, limit, audit_event)?;
            tx.commit().map_err(db_err)?;
            store.forget_rows(&current)?;
            Ok(counts)
        })
        .await
    }

    async fn bound_model(&self) -> Result<Option<ModelInfo>> {
        self.read(|conn, _| reembed::model_at(conn, reembed::BOUND))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `synchronous` as the writer sees it inside a write transaction.
    async fn synchronous_in_tx(store: &SqliteStore, durable: bool) -> i64 {
        store
            .write_tx_as("probe", durable, |_, tx| {
                tx.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
                    .map_err(db_err)
            })
            .await
            .unwrap()
    }

    /// 14. A receipt's erasure is synced to disk whatever `--durability`
    /// says (`erase` runs through `write_tx_as(…, true, …)`), and
    /// `--durability full` syncs every commit.
    #[tokio::test]
    async fn durable_writes_sync_every_commit() {
        const NORMAL: i64 = 1;
        const FULL: i64 = 2;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_async(dir.path().to_owned(), SqliteOptions::default())
            .await
            .unwrap();
        assert_eq!(synchronous_in_tx(&store, false).await, NORMAL);
        assert_eq!(synchronous_in_tx(&store, true).await, FULL);
        assert_eq!(
            synchronous_in_tx(&store, false).await,
            NORMAL,
            "restored after"
        );
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            durable: true,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_async(dir.path().to_owned(), options)
            .await
            .unwrap();
        assert_eq!(synchronous_in_tx(&store, false).await, FULL);
        assert_eq!(synchronous_in_tx(&store, true).await, FULL);
    }
}
