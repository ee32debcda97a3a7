//! API keys in Postgres (only the SHA-256 of each secret).

use async_trait::async_trait;
use engram_core::access::Role;
use engram_core::memory::Scope;
use engram_core::ports::AuditEvent;
use engram_core::ports::{ApiKey, KeyStore};
use engram_core::{Error, Result};
use jiff::Timestamp;
use tokio_postgres::Row;

use crate::rows::{get, ts};
use crate::{PgStore, pg_err};

const KEY_COLUMNS: &str = "id, name, role, org_id, app_id, user_id, agent_id, rate_limit, created_at, \
     created_by, revoked_at, secret_hash";

fn row_to_key(row: &Row) -> Result<(ApiKey, String)> {
    let role: String = get(row, 2)?;
    let rate: Option<i64> = get(row, 7)?;
    let key = ApiKey {
        id: get(row, 0)?,
        name: get(row, 1)?,
        role: Role::parse(&role).map_err(|e| Error::store(e.message))?,
        binding: Scope {
            org_id: get(row, 3)?,
            app_id: get(row, 4)?,
            user_id: get(row, 5)?,
            agent_id: get(row, 6)?,
            run_id: None,
        },
        rate_limit: rate.map(|r| r.clamp(0, u32::MAX as i64) as u32),
        created_at: ts(get(row, 8)?)?,
        created_by: get(row, 9)?,
        revoked_at: get::<Option<i64>>(row, 10)?.map(ts).transpose()?,
    };
    Ok((key, get(row, 11)?))
}

#[async_trait]
impl KeyStore for PgStore {
    async fn key_insert(&self, key: &ApiKey, secret_hash: &str, audit: &AuditEvent) -> Result<()> {
        let b = &key.binding;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute(
            &format!(
                "INSERT INTO api_keys ({KEY_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            &[
                &key.id,
                &key.name,
                &key.role.as_str(),
                &b.org_id,
                &b.app_id,
                &b.user_id,
                &b.agent_id,
                &key.rate_limit.map(i64::from),
                &key.created_at.as_millisecond(),
                &key.created_by,
                &key.revoked_at.map(|t| t.as_millisecond()),
                &secret_hash,
            ],
        )
        .await
        .map_err(pg_err)?;
        crate::audit::append(&tx, audit)
            .await
            .map_err(crate::error::apply_err)?;
        tx.commit().await.map_err(pg_err)
    }

    async fn key_get(&self, id: &str) -> Result<Option<(ApiKey, String)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg_err)?;
        row.as_ref().map(row_to_key).transpose()
    }

    async fn key_list(&self) -> Result<Vec<ApiKey>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"),
                &[],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(|r| row_to_key(r).map(|(k, _)| k)).collect()
    }

    async fn key_revoke(&self, id: &str, at: Timestamp, audit: &AuditEvent) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let n = tx
            .execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &at.as_millisecond()],
            )
            .await
            .map_err(pg_err)?;
        if n > 0 {
            crate::audit::append(&tx, audit)
                .await
                .map_err(crate::error::apply_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(n > 0)
    }
}
