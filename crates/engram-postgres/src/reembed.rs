//! Re-embedding (`engram reembed`) on Postgres: new-model vectors in the
//! `reembed` table beside the current ones, then one switch transaction
//! that every node sees at once.

use async_trait::async_trait;
use engram_core::ports::AuditEvent;
use engram_core::ports::ModelInfo;
use engram_core::ports::{ReembedItem, ReembedState, ReembedStore, check_reembed, check_start};
use engram_core::{Error, Result};
use pgvector::Vector;
use tokio_postgres::GenericClient;

use crate::error::ApplyError;
use crate::rows::meta_get;
use crate::{PgStore, pg_err, schema};

/// The `engram_meta` keys naming a model: id, dimension.
pub(crate) type ModelKeys = (&'static str, &'static str);
/// The model the vectors come from.
pub(crate) const BOUND: ModelKeys = ("embedding_model", "embedding_dim");
/// The model a migration in progress moves to.
const NEXT: ModelKeys = ("reembed_model", "reembed_dim");

pub(crate) async fn model_at(
    c: &impl GenericClient,
    (id, dim): ModelKeys,
) -> Result<Option<ModelInfo>> {
    let id = meta_get(c, id).await?;
    let dim = meta_get(c, dim).await?.and_then(|d| d.parse().ok());
    Ok(id.zip(dim).map(|(id, dim)| ModelInfo { id, dim }))
}

pub(crate) async fn put_model(
    c: &impl GenericClient,
    (id, dim): ModelKeys,
    m: &ModelInfo,
) -> std::result::Result<(), tokio_postgres::Error> {
    c.execute(
        "INSERT INTO engram_meta (key, value) VALUES ($1, $2), ($3, $4) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&id, &m.id, &dim, &m.dim.to_string()],
    )
    .await
    .map(|_| ())
}

/// The migration in progress, if any.
pub(crate) async fn state(c: &impl GenericClient) -> Result<Option<ReembedState>> {
    let Some(to) = model_at(c, NEXT).await? else {
        return Ok(None);
    };
    let from = model_at(c, BOUND)
        .await?
        .ok_or_else(|| Error::internal("a re-embedding is recorded but no model is bound"))?;
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM reembed), (SELECT count(*) FROM memories)",
            &[],
        )
        .await
        .map_err(pg_err)?;
    Ok(Some(ReembedState {
        from,
        to,
        done: row.get::<_, i64>(0) as u64,
        total: row.get::<_, i64>(1) as u64,
    }))
}

const CLEAR: &str =
    "DELETE FROM reembed; DELETE FROM engram_meta WHERE key IN ('reembed_model', 'reembed_dim');";

#[async_trait]
impl ReembedStore for PgStore {
    async fn reembed_start(&self, to: &ModelInfo) -> Result<ReembedState> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        schema::lock(&*tx, false).await.map_err(pg_err)?;
        let from = model_at(&*tx, BOUND).await?;
        if let Some(s) = check_start(from.as_ref(), state(&*tx).await?, to)? {
            return Ok(s);
        }
        tx.batch_execute("DELETE FROM reembed")
            .await
            .map_err(pg_err)?;
        put_model(&*tx, NEXT, to).await.map_err(pg_err)?;
        let s = state(&*tx)
            .await?
            .ok_or_else(|| Error::internal("re-embedding not recorded"))?;
        tx.commit().await.map_err(pg_err)?;
        Ok(s)
    }

    async fn reembed_state(&self) -> Result<Option<ReembedState>> {
        let client = self.client().await?;
        state(&**client).await
    }

    async fn reembed_pending(&self, after: i64, limit: usize) -> Result<Vec<ReembedItem>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT m.rowid, m.text FROM memories m \
                 WHERE m.rowid > $1 AND NOT EXISTS (SELECT 1 FROM reembed r WHERE r.memory = m.rowid) \
                 ORDER BY m.rowid LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| ReembedItem {
                key: r.get(0),
                text: r.get(1),
            })
            .collect())
    }

    async fn reembed_put(&self, to: &ModelInfo, vectors: Vec<(i64, Vec<f32>)>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // Shared: puts run side by side, but never across a start, cancel
        // or switch (which take it exclusively), so a cancelled run's
        // vectors cannot land in the next migration.
        schema::lock(&*tx, true).await.map_err(pg_err)?;
        check_reembed(state(&*tx).await?.as_ref(), to, &vectors)?;
        // A version erased or swept since it was read is skipped.
        let stmt = tx
            .prepare(
                "INSERT INTO reembed (memory, embedding) \
                 SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM memories WHERE rowid = $1) \
                 ON CONFLICT (memory) DO UPDATE SET embedding = excluded.embedding",
            )
            .await
            .map_err(pg_err)?;
        for (key, v) in vectors {
            tx.execute(&stmt, &[&key, &Vector::from(v)])
                .await
                .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    async fn reembed_switch(&self, to: &ModelInfo, audit: AuditEvent) -> Result<u64> {
        let left = self.retrying(|| self.switch_once(to, &audit)).await?;
        if left > 0 {
            return Ok(left);
        }
        self.inner
            .dim
            .store(to.dim, std::sync::atomic::Ordering::Release);
        // Built in the background after the commit, blocking neither reads
        // nor writes (nor the caller, whose service swaps its model now).
        self.spawn_hnsw_build(false);
        Ok(0)
    }

    async fn reembed_cancel(&self) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // Serialised with a switch (which holds the same lock).
        schema::lock(&*tx, false).await.map_err(pg_err)?;
        let had = state(&*tx).await?.is_some();
        tx.batch_execute(CLEAR).await.map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(had)
    }
}

impl PgStore {
    async fn switch_once(
        &self,
        to: &ModelInfo,
        audit: &AuditEvent,
    ) -> std::result::Result<u64, ApplyError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The UPDATE and retype rewrite the whole table: no statement timeout.
        tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
        schema::lock(&*tx, false).await?;
        // The model row first: batches that read the old model under a
        // shared lock finish before this, later ones wait and are refused.
        tx.execute(
            "SELECT value FROM engram_meta WHERE key = 'embedding_model' FOR UPDATE",
            &[],
        )
        .await?;
        check_reembed(state(&*tx).await?.as_ref(), to, &[])?;
        let left: i64 = tx
            .query_one(
                "SELECT count(*) FROM memories m WHERE NOT EXISTS (SELECT 1 FROM reembed r WHERE r.memory = m.rowid)",
                &[],
            )
            .await?
            .get(0);
        if left > 0 {
            return Ok(left as u64);
        }
        // The dimension is an integer we produce, not input.
        tx.batch_execute(
            "DROP INDEX IF EXISTS memories_hnsw; ALTER TABLE memories ALTER COLUMN embedding TYPE vector;",
        )
        .await?;
        tx.execute(
            "UPDATE memories m SET embedding = r.embedding, embedding_model = $1 FROM reembed r WHERE r.memory = m.rowid",
            &[&to.id],
        )
        .await?;
        tx.batch_execute(&format!(
            "ALTER TABLE memories ALTER COLUMN embedding TYPE vector({}); {CLEAR}",
            to.dim
        ))
        .await?;
        put_model(&*tx, BOUND, to).await?;
        crate::audit::append(&tx, audit).await?;
        tx.commit().await?;
        Ok(0)
    }
}
