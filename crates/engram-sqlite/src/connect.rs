//! Opening connections: SQLCipher keys, pragmas, the process's first
//! open run alone, and re-encryption (`rekey`).

use std::path::Path;

use crate::{DB_FILE, GRAPH_FILE, db_err};
use engram_core::{Error, Result};
use engram_index::IndexConfig;
use rusqlite::{Connection, OpenFlags};

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
    /// Sync every commit to disk (`synchronous=FULL`): acknowledged writes
    /// survive a power loss, at the cost of an fsync per write. Otherwise
    /// (`NORMAL`, WAL) they survive a crash of the process, and a power loss
    /// can undo the last ones (erasures are always synced).
    pub durable: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            index: IndexConfig::default(),
            readers: 4,
            build_threads: 2,
            key: None,
            durable: false,
        }
    }
}

/// An error safe to show when the statement held a key: SQL text dropped.
pub(crate) fn quiet(e: &rusqlite::Error) -> rusqlite::Error {
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

    pub(crate) fn is_raw(&self) -> bool {
        self.0.len() == 64 && self.0.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// The value of `PRAGMA key` / `ATTACH … KEY`, as an SQL literal.
    pub(crate) fn sql_literal(&self) -> String {
        if self.is_raw() {
            // Only hex digits: nothing to escape.
            format!("\"x'{}'\"", self.0)
        } else {
            format!("'{}'", self.0.replace('\'', "''"))
        }
    }

    /// Keys a connection. The error never quotes the statement (it holds the key).
    pub(crate) fn apply(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.execute_batch(&format!("PRAGMA key = {};", self.sql_literal()))
            .map_err(|e| quiet(&e))
    }
}

impl std::fmt::Debug for DbKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbKey(…)")
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

/// Opens a raw connection. A process's first open runs SQLite's global
/// initialisation, and SQLCipher's part of it (`sqlcipher_extra_init`)
/// finishes only after SQLite already reports itself initialised: another
/// thread's connection keyed in that window fails `PRAGMA key` with a bare
/// "SQL logic error" ("sqlcipher not initialized" on stderr). So one open
/// runs alone, to completion, before any other of ours.
pub(crate) fn connect(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
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
pub(crate) fn open_conn(path: &Path, read_only: bool, key: Option<&DbKey>) -> Result<Connection> {
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

pub(crate) fn configure(conn: &Connection, read_only: bool) -> rusqlite::Result<()> {
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
