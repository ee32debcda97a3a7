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
mod jobs;
mod keys;
mod reembed;
mod schema;

pub use keys::SqliteKeys;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use engram_core::filter::Filter;
use engram_core::fusion::Ranked;
use engram_core::memory::{Event, HistoryEvent, Memory, MemoryId, Scope, ScopeField};
use engram_core::ports::{
    Cursor, ModelInfo, ScopeIdStats, Store, StoreStats, VectorHits, VectorPath, Visibility, WriteOp,
};
use engram_core::{Error, ErrorCode, Result};
use engram_index::{IndexConfig, SearchPath, VectorIndex};
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::catalog::Catalog;

/// File names inside the data directory.
pub const DB_FILE: &str = "engram.db";
pub const GRAPH_FILE: &str = "vectors.usearch";

/// Options for [`SqliteStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub index: IndexConfig,
    /// Read connections in the pool.
    pub readers: usize,
    /// Threads used to (re)build the HNSW graph.
    pub build_threads: usize,
    /// Encrypt the database with SQLCipher under this key. The HNSW graph is
    /// then never written to disk: it is rebuilt from the database at start.
    pub key: Option<DbKey>,
}

/// An error safe to show when the statement held a key: SQL text dropped.
fn quiet(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => rusqlite::Error::SqliteFailure(*f, None),
        _ => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some("the key statement failed".into()),
        ),
    }
}

/// A SQLCipher key: 64 hex digits (a raw 256-bit key, used as is) or a
/// passphrase (stretched by SQLCipher's PBKDF2, which makes every
/// connection slower to open). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DbKey(String);

impl DbKey {
    /// Checks and wraps a key; surrounding whitespace (a key file's newline) is dropped.
    pub fn new(key: &str) -> Result<DbKey> {
        let key = key.trim();
        if key.is_empty() {
            return Err(Error::invalid("the encryption key is empty"));
        }
        if key.chars().any(char::is_control) {
            return Err(Error::invalid(
                "the encryption key contains control characters",
            ));
        }
        Ok(DbKey(key.to_owned()))
    }

    fn is_raw(&self) -> bool {
        self.0.len() == 64 && self.0.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// The value of `PRAGMA key` / `ATTACH … KEY`, as an SQL literal.
    fn sql_literal(&self) -> String {
        if self.is_raw() {
            // Only hex digits: nothing to escape.
            format!("\"x'{}'\"", self.0)
        } else {
            format!("'{}'", self.0.replace('\'', "''"))
        }
    }

    /// Keys a connection. The error never quotes the statement (it holds the key).
    fn apply(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.execute_batch(&format!("PRAGMA key = {};", self.sql_literal()))
            .map_err(|e| quiet(&e))
    }
}

impl std::fmt::Debug for DbKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbKey(…)")
    }
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            index: IndexConfig::default(),
            readers: 4,
            build_threads: 2,
            key: None,
        }
    }
}

/// Re-encrypts the database in `dir` — plaintext to encrypted, one key to
/// another, or encrypted to plaintext (`new: None`) — by exporting it into a
/// new file under the new key and renaming that over the old one, so a
/// failure leaves the old database as it was. No other process may have the
/// store open. Returns the number of memory versions carried over.
pub fn rekey(dir: &Path, old: Option<&DbKey>, new: Option<&DbKey>) -> Result<u64> {
    let db_path = dir.join(DB_FILE);
    if !db_path.exists() {
        return Err(Error::store(format!(
            "no database at {}",
            db_path.display()
        )));
    }
    let tmp = dir.join(format!("{DB_FILE}.rekey"));
    let _ = std::fs::remove_file(&tmp);
    let conn = open_conn(&db_path, false, old)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    let versions: i64 = conn
        .query_row("SELECT count(*) FROM memories", [], |r| r.get(0))
        .map_err(db_err)?;
    let target = tmp
        .to_str()
        .ok_or_else(|| Error::store("the data directory's path is not UTF-8"))?
        .replace('\'', "''");
    let key = new.map_or_else(|| "''".to_owned(), DbKey::sql_literal);
    conn.execute_batch(&format!(
        "PRAGMA wal_checkpoint(TRUNCATE);
         ATTACH DATABASE '{target}' AS rekeyed KEY {key};
         SELECT sqlcipher_export('rekeyed');
         PRAGMA rekeyed.user_version = {version};
         DETACH DATABASE rekeyed;"
    ))
    .map_err(|e| Error::store(format!("re-encrypting the database: {}", quiet(&e))))?;
    drop(conn);
    let check = open_conn(&tmp, false, new)?;
    let copied: i64 = check
        .query_row("SELECT count(*) FROM memories", [], |r| r.get(0))
        .map_err(db_err)?;
    drop(check);
    if copied != versions {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::store(format!(
            "re-encryption copied {copied} of {versions} memory versions; the database is unchanged"
        )));
    }
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("{DB_FILE}{suffix}")));
    }
    std::fs::rename(&tmp, &db_path)
        .map_err(|e| Error::store(format!("replacing the database: {e}")))?;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("{DB_FILE}.rekey{suffix}")));
    }
    if new.is_some() {
        // The plaintext graph must not outlive the plaintext database.
        let _ = std::fs::remove_file(dir.join(GRAPH_FILE));
    }
    Ok(versions.max(0) as u64)
}

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

/// Opens a raw connection. A process's first open runs SQLite's global
/// initialisation, and SQLCipher's part of it (`sqlcipher_extra_init`)
/// finishes only after SQLite already reports itself initialised: another
/// thread's connection keyed in that window fails `PRAGMA key` with a bare
/// "SQL logic error" ("sqlcipher not initialized" on stderr). So one open
/// runs alone, to completion, before any other of ours.
fn connect(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    static INITIALISED: std::sync::Once = std::sync::Once::new();
    INITIALISED.call_once(|| {
        // Only the initialisation matters; an in-memory open cannot fail
        // for a reason the real open below would not report again.
        let _ = Connection::open_in_memory();
    });
    Connection::open_with_flags(path, flags)
}

/// Opens a connection, keyed when the store is encrypted, and proves the key
/// (or its absence) fits by reading the schema before anything is written.
fn open_conn(path: &Path, read_only: bool, key: Option<&DbKey>) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let cannot =
        |e: rusqlite::Error| Error::store(format!("cannot open database {}: {e}", path.display()));
    let conn = connect(path, flags).map_err(cannot)?;
    if let Some(k) = key {
        k.apply(&conn).map_err(cannot)?;
    }
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::NotADatabase =>
        {
            return Err(Error::store(match key {
                Some(_) => format!(
                    "cannot open database {}: wrong encryption key, or the database is not encrypted \
                     (encrypt it with `engram rekey`)",
                    path.display()
                ),
                None => format!(
                    "cannot open database {}: it is encrypted (give its key with ENGRAM_ENCRYPTION_KEY \
                     or --encryption-key-file), or it is not an Engram database",
                    path.display()
                ),
            }));
        }
        Err(e) => return Err(cannot(e)),
    }
    configure(&conn, read_only).map_err(cannot)?;
    Ok(conn)
}

fn configure(conn: &Connection, read_only: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Sorts and temporary indexes stay in memory, never in plaintext temp files.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Deleted content is overwritten, not just unlinked (erasure).
        conn.pragma_update(None, "secure_delete", "ON")?;
    }
    Ok(())
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
        drop(conn);

        let graph_path = self.inner.dir.join(GRAPH_FILE);
        let loaded = graph_path.exists() && index.load_graph(&graph_path).is_ok();
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

    /// Saves the HNSW graph beside the database — unless the database is
    /// encrypted: the graph holds the vectors in the clear, so it is rebuilt
    /// from the database at each start instead.
    fn save_graph(&self, index: &VectorIndex) -> Result<()> {
        if self.inner.options.key.is_some() {
            return Ok(());
        }
        index
            .save_graph(&self.inner.dir.join(GRAPH_FILE))
            .map_err(idx_err)
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
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&store.inner.writer);
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            f(&store, tx)
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
            let _writer = lock(&store.inner.writer);
            let index = store.index()?;
            index
                .rebuild_graph(store.inner.options.build_threads)
                .map_err(idx_err)?;
            store.save_graph(&index)
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

/// Every current version read into a fresh catalog, and its vector into a
/// fresh index's arena (the caller builds or loads the graph).
fn load_current(
    conn: &Connection,
    dim: usize,
    config: IndexConfig,
) -> Result<(Catalog, VectorIndex)> {
    let index = VectorIndex::new(dim, config).map_err(idx_err)?;
    let mut catalog = Catalog::default();
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

fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .map_err(db_err)
}

const COLUMNS: &str = "rowid, id, version, text, kind, hash, org_id, app_id, user_id, agent_id, run_id, metadata, \
     categories, entities, role, created_at, updated_at, valid_at, invalid_at, expires_at, embedding_model, tokens, idle_ttl_ms";
const COLUMN_COUNT: usize = 23;

fn ts(ms: i64) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms)
        .map_err(|e| Error::store(format!("bad timestamp {ms} in database: {e}")))
}

fn row_to_memory(row: &rusqlite::Row<'_>) -> Result<(i64, Memory)> {
    let get_err = |e: rusqlite::Error| Error::store(format!("reading memory row: {e}"));
    let id: String = row.get(1).map_err(get_err)?;
    let json = |i: usize| -> Result<serde_json::Value> {
        let s: String = row.get(i).map_err(get_err)?;
        serde_json::from_str(&s).map_err(|e| Error::store(format!("bad JSON in column {i}: {e}")))
    };
    let opt_ts = |i: usize| -> Result<Option<Timestamp>> {
        row.get::<_, Option<i64>>(i)
            .map_err(get_err)?
            .map(ts)
            .transpose()
    };
    let kind: String = row.get(4).map_err(get_err)?;
    let memory = Memory {
        id: id
            .parse()
            .map_err(|e| Error::store(format!("bad memory id `{id}`: {e}")))?,
        version: row.get(2).map_err(get_err)?,
        text: row.get(3).map_err(get_err)?,
        kind: kind.parse()?,
        hash: row.get(5).map_err(get_err)?,
        scope: Scope {
            org_id: row.get(6).map_err(get_err)?,
            app_id: row.get(7).map_err(get_err)?,
            user_id: row.get(8).map_err(get_err)?,
            agent_id: row.get(9).map_err(get_err)?,
            run_id: row.get(10).map_err(get_err)?,
        },
        metadata: match json(11)? {
            serde_json::Value::Object(m) => m,
            _ => Default::default(),
        },
        categories: serde_json::from_value(json(12)?)
            .map_err(|e| Error::store(format!("bad categories: {e}")))?,
        entities: serde_json::from_value(json(13)?)
            .map_err(|e| Error::store(format!("bad entities: {e}")))?,
        role: row.get(14).map_err(get_err)?,
        created_at: ts(row.get(15).map_err(get_err)?)?,
        updated_at: ts(row.get(16).map_err(get_err)?)?,
        valid_at: opt_ts(17)?,
        invalid_at: opt_ts(18)?,
        expires_at: opt_ts(19)?,
        embedding_model: row.get(20).map_err(get_err)?,
        tokens: row.get(21).map_err(get_err)?,
        idle_ttl: row
            .get::<_, Option<i64>>(22)
            .map_err(get_err)?
            .map(jiff::SignedDuration::from_millis),
    };
    Ok((row.get(0).map_err(get_err)?, memory))
}

fn vec_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn blob_to_vec(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The opaque FTS token for a scope id: field letter + 16 hex digits of its MD5.
fn scope_token(field: ScopeField, value: &str) -> String {
    let letter = match field {
        ScopeField::Org => 'o',
        ScopeField::App => 'p',
        ScopeField::User => 'u',
        ScopeField::Agent => 'g',
        ScopeField::Run => 'r',
    };
    let hash = engram_core::memory::text_hash(value);
    format!("{letter}{}", &hash[..16])
}

fn scope_tokens(scope: &Scope) -> String {
    scope
        .iter()
        .map(|(f, v)| scope_token(f, v))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes a term for an FTS5 query string.
fn fts_quote(term: &str) -> String {
    format!("\"{}\"", term.replace('"', "\"\""))
}

fn insert_version(tx: &rusqlite::Transaction<'_>, m: &Memory, embedding: &[f32]) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO memories (id, version, text, kind, hash, org_id, app_id, user_id, agent_id, run_id, metadata, \
         categories, entities, role, created_at, updated_at, valid_at, invalid_at, expires_at, embedding_model, tokens, embedding, idle_ttl_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
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

/// Closes the current version of `id` at `at`; returns its rowid and vector.
/// With `expect_version`, the current version must be that one (else a conflict:
/// someone else updated the memory since it was read).
fn close_current(
    tx: &rusqlite::Transaction<'_>,
    id: MemoryId,
    at: Timestamp,
    expect_version: Option<u32>,
) -> Result<(i64, Vec<u8>)> {
    let (rowid, version, blob): (i64, u32, Vec<u8>) = tx
        .prepare_cached(
            "SELECT rowid, version, embedding FROM memories WHERE id = ?1 AND invalid_at IS NULL",
        )
        .and_then(|mut s| {
            s.query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(db_err)?
        .ok_or_else(|| Error::not_found(format!("memory {id} not found")))?;
    if let Some(v) = expect_version
        && v != version
    {
        return Err(Error::new(
            ErrorCode::Conflict,
            format!(
                "memory {id} changed while this request ran (now version {version}); read it again and retry"
            ),
        ));
    }
    tx.prepare_cached("UPDATE memories SET invalid_at = ?2 WHERE rowid = ?1")
        .and_then(|mut s| s.execute(params![rowid, at.as_millisecond()]))
        .map_err(db_err)?;
    unindex(tx, rowid)?;
    Ok((rowid, blob))
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

/// Serialises a value for a JSON TEXT column.
fn to_json(v: &impl serde::Serialize) -> String {
    // Maps, vectors of strings and plain derived structs always serialise.
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// What a committed batch changes in the catalog and index.
enum Applied {
    Added {
        rowid: i64,
        memory: Arc<Memory>,
        vector: Vec<f32>,
    },
    Closed {
        rowid: i64,
    },
    Expiry {
        id: MemoryId,
        expires_at: Option<Timestamp>,
    },
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
        self.write_tx("write", move |store, tx| {
            // Under the writer lock: a re-embedding switches index and model under it too.
            let index = store.index()?;
            // The model first: a write from before a re-embedding switch is
            // `ModelSwitched` (retryable) whatever its vectors' length.
            let model = meta_get(&tx, reembed::BOUND.0)?;
            if let Some(model) = &model {
                engram_core::ports::check_model(&ops, model)?;
            }
            engram_core::ports::check_dimensions(&ops, index.dim())?;
            let mut applied = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    WriteOp::Insert {
                        memory,
                        embedding,
                        history,
                    } => {
                        let rowid = insert_version(&tx, &memory, &embedding)?;
                        insert_history(&tx, &history)?;
                        audit::append(&tx, &engram_core::ports::AuditEvent::of_history(&history))?;
                        applied.push(Applied::Added {
                            rowid,
                            memory: Arc::new(memory),
                            vector: embedding,
                        });
                    }
                    WriteOp::Update {
                        mut memory,
                        embedding,
                        history,
                    } => {
                        let expect = memory.version.checked_sub(1);
                        let (old, blob) = close_current(&tx, memory.id, memory.updated_at, expect)?;
                        if let (None, Some(m)) = (&embedding, &model) {
                            // The previous vector is kept: it has the store's model.
                            memory.embedding_model = m.clone();
                        }
                        let vector = embedding.unwrap_or_else(|| blob_to_vec(&blob));
                        let rowid = insert_version(&tx, &memory, &vector)?;
                        insert_history(&tx, &history)?;
                        audit::append(&tx, &engram_core::ports::AuditEvent::of_history(&history))?;
                        applied.push(Applied::Closed { rowid: old });
                        applied.push(Applied::Added {
                            rowid,
                            memory: Arc::new(memory),
                            vector,
                        });
                    }
                    WriteOp::Delete { id, at, history } => {
                        let (old, _) = close_current(&tx, id, at, None)?;
                        insert_history(&tx, &history)?;
                        audit::append(&tx, &engram_core::ports::AuditEvent::of_history(&history))?;
                        applied.push(Applied::Closed { rowid: old });
                    }
                    WriteOp::Import { versions, history } => {
                        let Some(id) = versions.first().map(|(m, _)| m.id) else {
                            continue;
                        };
                        let known = tx
                            .prepare_cached("SELECT 1 FROM memories WHERE id = ?1 LIMIT 1")
                            .and_then(|mut s| s.exists([id.to_string()]))
                            .map_err(db_err)?;
                        if known {
                            continue;
                        }
                        for (memory, vector) in versions {
                            let rowid = insert_version(&tx, &memory, &vector)?;
                            if memory.invalid_at.is_some() {
                                // Indexed, then dropped like any closed version,
                                // so keyword statistics match the exporting store.
                                unindex(&tx, rowid)?;
                            } else {
                                applied.push(Applied::Added {
                                    rowid,
                                    memory: Arc::new(memory),
                                    vector,
                                });
                            }
                        }
                        for h in &history {
                            insert_history(&tx, h)?;
                        }
                    }
                    WriteOp::SetExpiry {
                        id,
                        version,
                        from,
                        to,
                    } => {
                        let changed = tx
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
                        if changed > 0 {
                            applied.push(Applied::Expiry { id, expires_at: to });
                        }
                    }
                    WriteOp::FinishJob {
                        id,
                        worker,
                        result,
                        at,
                    } => jobs::finish(&tx, id, &worker, &result, at)?,
                    WriteOp::RecordUsage(row) => jobs::record_usage(&tx, &row)?,
                    WriteOp::Audit(event) => audit::append(&tx, &event)?,
                }
            }
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
                        rowid,
                        memory,
                        vector,
                    } => {
                        catalog.insert(rowid, memory);
                        added.push((rowid as u64, vector));
                    }
                    Applied::Closed { rowid } => {
                        catalog.remove(rowid);
                        added.retain(|(k, _)| *k != rowid as u64);
                        closed.push(rowid as u64);
                    }
                    Applied::Expiry { id, expires_at } => {
                        if let (Some(rowid), Some(m)) = (catalog.rowid_of(id), catalog.get(id)) {
                            let mut m = (**m).clone();
                            m.expires_at = expires_at;
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

    async fn get(&self, id: MemoryId, vis: Visibility) -> Result<Option<Memory>> {
        self.with_catalog(move |c, _| {
            Ok(c.get(id)
                .filter(|m| m.is_live(vis.now))
                .map(|m| (**m).clone()))
        })
        .await
    }

    async fn get_many(&self, ids: &[MemoryId], vis: Visibility) -> Result<Vec<Memory>> {
        let ids = ids.to_vec();
        self.with_catalog(move |c, _| {
            Ok(ids
                .iter()
                .filter_map(|id| c.get(*id))
                .filter(|m| m.is_live(vis.now))
                .map(|m| (**m).clone())
                .collect())
        })
        .await
    }

    async fn list(
        &self,
        filter: &Filter,
        vis: Visibility,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<Memory>> {
        let filter = filter.clone();
        self.with_catalog(move |c, _| Ok(c.list(&filter, vis.now, after, limit)))
            .await
    }

    async fn versions_at(&self, filter: &Filter, at: Timestamp) -> Result<Vec<(Memory, Vec<f32>)>> {
        let filter = filter.clone();
        self.read(move |conn, _| {
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
            while let Some(row) = rows.next().map_err(db_err)? {
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

    async fn usage(&self, limit: usize) -> Result<Vec<engram_core::ports::UsageRow>> {
        self.read(move |conn, _| jobs::usage(conn, limit)).await
    }

    async fn count(&self, filter: &Filter, vis: Visibility) -> Result<usize> {
        let filter = filter.clone();
        self.with_catalog(move |c, _| Ok(c.count_matching(&filter, vis.now)))
            .await
    }

    async fn scope_ids(&self, filter: &Filter, vis: Visibility) -> Result<Vec<ScopeIdStats>> {
        let filter = filter.clone();
        self.with_catalog(move |c, _| Ok(c.scope_ids(&filter, vis.now)))
            .await
    }

    async fn memory_versions(&self, ids: &[MemoryId]) -> Result<Vec<(Memory, Vec<f32>)>> {
        let ids = ids.to_vec();
        self.read(move |conn, _| {
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

    async fn history(&self, id: MemoryId) -> Result<Vec<HistoryEvent>> {
        self.read(move |conn, _| {
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

    async fn vector_search(
        &self,
        filter: &Filter,
        vis: Visibility,
        vector: &[f32],
        k: usize,
    ) -> Result<VectorHits> {
        let filter = filter.clone();
        let vector = vector.to_vec();
        self.with_catalog(move |c, index| {
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

    async fn vector_scores(&self, ids: &[MemoryId], vector: &[f32]) -> Result<Ranked<MemoryId>> {
        let ids = ids.to_vec();
        let vector = vector.to_vec();
        self.with_catalog(move |c, index| {
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
        let hits: Vec<(i64, f64)> = self
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
        self.with_catalog(move |c, _| {
            Ok(hits
                .into_iter()
                .filter(|(rowid, _)| c.matches(*rowid, &filter, vis.now))
                .filter_map(|(rowid, bm25)| c.id_of(rowid).map(|id| (id, -bm25 as f32)))
                .take(k)
                .collect())
        })
        .await
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
        let keys = keys.to_vec();
        // Filtered sets small enough to scan exactly are walked in memory; only
        // large ones go to the SQL entity index (then filtered the same way).
        let small = {
            let filter = filter.clone();
            let keys = keys.clone();
            self.with_catalog(move |c, index| {
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
                self.read(move |conn, _| {
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
        self.with_catalog(move |c, _| {
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

    async fn neighbors(
        &self,
        ids: &[MemoryId],
        filter: &Filter,
        max_gap_ms: i64,
        vis: Visibility,
    ) -> Result<Vec<(MemoryId, Vec<MemoryId>)>> {
        let ids = ids.to_vec();
        let filter = filter.clone();
        self.with_catalog(move |c, _| {
            Ok(ids
                .iter()
                .map(|id| (*id, c.neighbors(*id, &filter, max_gap_ms, vis.now)))
                .collect())
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats> {
        self.read(|conn, inner| {
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

    async fn check_writable(&self) -> Result<()> {
        // A connection of its own with a short timeout: the probe must not wait
        // behind the writer mutex, and must see what another process holds.
        let path = self.inner.dir.join(DB_FILE);
        let key = self.inner.options.key.clone();
        tokio::task::spawn_blocking(move || {
            let probe = || -> rusqlite::Result<()> {
                let conn = connect(
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
            let _writer = lock(&store.inner.writer); // no writes while the graph is saved
            if let Some(index) = store.inner.index() {
                store.save_graph(&index)?;
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
        self.write_tx("erase", move |store, tx| {
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
                store.save_graph(&index)?;
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
