//! The HNSW graph of an encrypted store, kept inside its database.
//!
//! A plaintext store saves its graph in a file beside the database; an
//! encrypted one may not (the graph holds every vector in the clear), so it
//! used to rebuild the graph from the table at each start — about a minute
//! per million memories here. The serialised graph is stored instead in
//! `graph_snapshot`, in parts, where SQLCipher encrypts it like every other
//! page. Written when the plaintext store would save its file (flush,
//! rebuild, compaction), read at open; a missing or unreadable snapshot
//! means a rebuild, as before.

use engram_index::VectorIndex;
use rusqlite::{Connection, params};

use crate::{db_err, idx_err};
use engram_core::Result;

/// Bytes per row: SQLite's default blob limit is 1 GB; parts keep each
/// statement's buffer small.
const PART: usize = 32 << 20;

/// Replaces the stored snapshot with `index`'s graph, in one transaction.
pub(crate) fn save(conn: &Connection, index: &VectorIndex) -> Result<()> {
    let bytes = index.graph_bytes().map_err(idx_err)?;
    let tx = conn.unchecked_transaction().map_err(db_err)?;
    tx.execute("DELETE FROM graph_snapshot", [])
        .map_err(db_err)?;
    {
        let mut insert = tx
            .prepare("INSERT INTO graph_snapshot (part, data) VALUES (?1, ?2)")
            .map_err(db_err)?;
        for (i, part) in bytes.chunks(PART).enumerate() {
            insert.execute(params![i as i64, part]).map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)
}

/// The stored snapshot, if there is one.
pub(crate) fn load(conn: &Connection) -> Result<Option<Vec<u8>>> {
    let mut stmt = conn
        .prepare("SELECT data FROM graph_snapshot ORDER BY part")
        .map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    let mut bytes: Vec<u8> = Vec::new();
    let mut any = false;
    while let Some(row) = rows.next().map_err(db_err)? {
        let part = row.get_ref(0).map_err(db_err)?.as_blob().map_err(|e| {
            engram_core::Error::store(format!("graph snapshot part is not a blob: {e}"))
        })?;
        bytes.extend_from_slice(part);
        any = true;
    }
    Ok(any.then_some(bytes))
}

/// Drops the stored snapshot (its vectors are of another model, or gone).
pub(crate) fn clear(conn: &Connection) -> Result<()> {
    conn.execute("DELETE FROM graph_snapshot", [])
        .map(|_| ())
        .map_err(db_err)
}
