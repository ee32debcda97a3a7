//! How a memory is laid out in a row, and the conversions both ways.

use engram_core::memory::{Memory, Scope};
use engram_core::{Error, Result};
use jiff::Timestamp;
use pgvector::Vector;
use tokio_postgres::{GenericClient, Row};

use crate::pg_err;

pub(crate) fn ts(ms: i64) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms)
        .map_err(|e| Error::store(format!("bad timestamp {ms} in database: {e}")))
}

pub(crate) fn opt_ts(ms: Option<i64>) -> Result<Option<Timestamp>> {
    ms.map(ts).transpose()
}

/// Column list matching [`row_to_memory`].
pub(crate) const COLUMNS: &str = "rowid, id, version, text, kind, hash, org_id, app_id, user_id, agent_id, run_id, \
     metadata, categories, entities, role, created_at, updated_at, valid_at, invalid_at, expires_at, \
     embedding_model, tokens, idle_ttl_ms, feedback";
pub(crate) const COLUMN_COUNT: usize = 24;

pub(crate) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i)
        .map_err(|e| Error::store(format!("reading column {i}: {e}")))
}

pub(crate) fn row_to_memory(row: &Row) -> Result<(i64, Memory)> {
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
        feedback: get::<Option<String>>(row, 23)?
            .map(|f| engram_core::memory::Feedback::parse(&f))
            .transpose()?,
    };
    Ok((get(row, 0)?, memory))
}

pub(crate) fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

pub(crate) fn json(v: &impl serde::Serialize) -> serde_json::Value {
    // Maps, vectors of strings and plain derived structs always serialise.
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

pub(crate) fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Memory rows selected with their vector after the memory columns.
pub(crate) fn with_vectors(rows: &[Row]) -> Result<Vec<(Memory, Vec<f32>)>> {
    rows.iter()
        .map(|r| {
            let (_, m) = row_to_memory(r)?;
            let v: Vector = get(r, COLUMN_COUNT)?;
            Ok((m, v.to_vec()))
        })
        .collect()
}

pub(crate) async fn meta_get(client: &impl GenericClient, key: &str) -> Result<Option<String>> {
    Ok(client
        .query_opt("SELECT value FROM engram_meta WHERE key = $1", &[&key])
        .await
        .map_err(pg_err)?
        .map(|r| r.get(0)))
}
