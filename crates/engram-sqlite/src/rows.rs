//! How a memory is laid out in a row: columns, conversion, vectors as
//! blobs, the opaque FTS scope tokens, the meta table.

use crate::db_err;
use engram_core::memory::{Feedback, Memory, Scope, ScopeField};
use engram_core::{Error, Result};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension};

pub(crate) fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .map_err(db_err)
}

pub(crate) const COLUMNS: &str = "rowid, id, version, text, kind, hash, org_id, app_id, user_id, agent_id, run_id, metadata, \
     categories, entities, role, created_at, updated_at, valid_at, invalid_at, expires_at, embedding_model, tokens, idle_ttl_ms, feedback";

pub(crate) const COLUMN_COUNT: usize = 24;

pub(crate) fn ts(ms: i64) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms)
        .map_err(|e| Error::store(format!("bad timestamp {ms} in database: {e}")))
}

pub(crate) fn row_to_memory(row: &rusqlite::Row<'_>) -> Result<(i64, Memory)> {
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
        feedback: row
            .get::<_, Option<String>>(23)
            .map_err(get_err)?
            .map(|f| Feedback::parse(&f))
            .transpose()?,
    };
    Ok((row.get(0).map_err(get_err)?, memory))
}

pub(crate) fn vec_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn blob_to_vec(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The opaque FTS token for a scope id: field letter + 16 hex digits of its MD5.
pub(crate) fn scope_token(field: ScopeField, value: &str) -> String {
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

pub(crate) fn scope_tokens(scope: &Scope) -> String {
    scope
        .iter()
        .map(|(f, v)| scope_token(f, v))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes a term for an FTS5 query string.
pub(crate) fn fts_quote(term: &str) -> String {
    format!("\"{}\"", term.replace('"', "\"\""))
}
