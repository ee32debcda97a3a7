//! API keys in the `api_keys` table: [`KeyStore`] for [`SqliteStore`], and
//! [`SqliteKeys`], which opens only the database (no catalog, no vectors) so
//! `engram keys …` works beside a running server.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use engram_core::access::Role;
use engram_core::memory::Scope;
use engram_core::ports::AuditEvent;
use engram_core::ports::{ApiKey, KeyStore};
use engram_core::{Error, Result};
use jiff::Timestamp;
use rusqlite::{Connection, params};

use crate::connect::open_conn;
use crate::rows::ts;
use crate::{DB_FILE, SqliteStore, db_err, lock};

const KEY_COLUMNS: &str = "id, name, role, org_id, app_id, user_id, agent_id, rate_limit, created_at, created_by, revoked_at, secret_hash";

fn row_to_key(row: &rusqlite::Row<'_>) -> Result<(ApiKey, String)> {
    let get_err = |e: rusqlite::Error| Error::store(format!("reading key row: {e}"));
    let role: String = row.get(2).map_err(get_err)?;
    let created: i64 = row.get(8).map_err(get_err)?;
    let revoked: Option<i64> = row.get(10).map_err(get_err)?;
    let rate: Option<i64> = row.get(7).map_err(get_err)?;
    let key = ApiKey {
        id: row.get(0).map_err(get_err)?,
        name: row.get(1).map_err(get_err)?,
        role: Role::parse(&role).map_err(|e| Error::store(e.message))?,
        binding: Scope {
            org_id: row.get(3).map_err(get_err)?,
            app_id: row.get(4).map_err(get_err)?,
            user_id: row.get(5).map_err(get_err)?,
            agent_id: row.get(6).map_err(get_err)?,
            run_id: None,
        },
        rate_limit: rate.map(|r| r.clamp(0, u32::MAX as i64) as u32),
        created_at: ts(created)?,
        created_by: row.get(9).map_err(get_err)?,
        revoked_at: revoked.map(ts).transpose()?,
    };
    Ok((key, row.get(11).map_err(get_err)?))
}

pub(crate) fn insert(
    conn: &Connection,
    key: &ApiKey,
    secret_hash: &str,
    audit: &AuditEvent,
) -> Result<()> {
    let b = &key.binding;
    // The key and its audit event land together.
    let tx = conn.unchecked_transaction().map_err(db_err)?;
    tx.execute(
        "INSERT INTO api_keys (id, name, role, org_id, app_id, user_id, agent_id, rate_limit, created_at, created_by, revoked_at, secret_hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            key.id,
            key.name,
            key.role.as_str(),
            b.org_id,
            b.app_id,
            b.user_id,
            b.agent_id,
            key.rate_limit,
            key.created_at.as_millisecond(),
            key.created_by,
            key.revoked_at.map(|t| t.as_millisecond()),
            secret_hash
        ],
    )
    .map_err(db_err)?;
    crate::audit::append(&tx, audit)?;
    tx.commit().map_err(db_err)
}

pub(crate) fn get(conn: &Connection, id: &str) -> Result<Option<(ApiKey, String)>> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))
        .map_err(db_err)?;
    let mut rows = stmt.query([id]).map_err(db_err)?;
    match rows.next().map_err(db_err)? {
        Some(row) => Ok(Some(row_to_key(row)?)),
        None => Ok(None),
    }
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<ApiKey>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        ))
        .map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        out.push(row_to_key(row)?.0);
    }
    Ok(out)
}

pub(crate) fn revoke(
    conn: &Connection,
    id: &str,
    at: Timestamp,
    audit: &AuditEvent,
) -> Result<bool> {
    let tx = conn.unchecked_transaction().map_err(db_err)?;
    let n = tx
        .execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, at.as_millisecond()],
        )
        .map_err(db_err)?;
    if n > 0 {
        crate::audit::append(&tx, audit)?;
    }
    tx.commit().map_err(db_err)?;
    Ok(n > 0)
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn key_insert(&self, key: &ApiKey, secret_hash: &str, audit: &AuditEvent) -> Result<()> {
        let (key, hash, audit) = (key.clone(), secret_hash.to_owned(), audit.clone());
        self.write(move |conn| insert(conn, &key, &hash, &audit))
            .await
    }

    async fn key_get(&self, id: &str) -> Result<Option<(ApiKey, String)>> {
        let id = id.to_owned();
        self.read(move |conn, _| get(conn, &id)).await
    }

    async fn key_list(&self) -> Result<Vec<ApiKey>> {
        self.read(|conn, _| list(conn)).await
    }

    async fn key_revoke(&self, id: &str, at: Timestamp, audit: &AuditEvent) -> Result<bool> {
        let (id, audit) = (id.to_owned(), audit.clone());
        self.write(move |conn| revoke(conn, &id, at, &audit)).await
    }
}

/// The key table of a data directory, without loading the rest of the store.
#[derive(Clone)]
pub struct SqliteKeys {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteKeys {
    /// Opens (creating and migrating if needed) the database in `dir`.
    pub fn open(dir: &Path, key: Option<&crate::DbKey>) -> Result<SqliteKeys> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::store(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(DB_FILE);
        let mut conn = open_conn(&path, false, key)?;
        crate::schema::migrate(&mut conn)
            .map_err(db_err)?
            .map_err(Error::store)?;
        Ok(SqliteKeys {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&lock(&conn)))
            .await
            .map_err(|e| Error::internal(format!("key task failed: {e}")))?
    }
}

#[async_trait]
impl KeyStore for SqliteKeys {
    async fn key_insert(&self, key: &ApiKey, secret_hash: &str, audit: &AuditEvent) -> Result<()> {
        let (key, hash, audit) = (key.clone(), secret_hash.to_owned(), audit.clone());
        self.run(move |conn| insert(conn, &key, &hash, &audit))
            .await
    }

    async fn key_get(&self, id: &str) -> Result<Option<(ApiKey, String)>> {
        let id = id.to_owned();
        self.run(move |conn| get(conn, &id)).await
    }

    async fn key_list(&self) -> Result<Vec<ApiKey>> {
        self.run(list).await
    }

    async fn key_revoke(&self, id: &str, at: Timestamp, audit: &AuditEvent) -> Result<bool> {
        let (id, audit) = (id.to_owned(), audit.clone());
        self.run(move |conn| revoke(conn, &id, at, &audit)).await
    }
}
