//! The embedding model in use: one swappable slot (the embedder and its
//! query cache together), and the check that the store still uses it.

use std::sync::Arc;

use crate::ports::Embedder;
use crate::service::{MemoryService, QueryCache};
use crate::{Error, ErrorCode, Result};

/// An embedding model with its query cache: swapped together.
pub(super) struct ModelSlot {
    embedder: Arc<dyn Embedder>,
    queries: Arc<QueryCache>,
}

impl ModelSlot {
    pub(super) fn new(embedder: Arc<dyn Embedder>, query_cache: usize) -> ModelSlot {
        // Concurrent adds and fresh queries share the model's batches.
        let embedder =
            super::embed_batch::BatchingEmbedder::wrap(embedder, super::embed_batch::MAX_BATCH);
        let queries = Arc::new(QueryCache::new(embedder.clone(), query_cache));
        ModelSlot { embedder, queries }
    }
}

/// How long a seen match between the store's model and this node's stands
/// before a search checks again.
pub(super) const MODEL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the store still uses this node's model. Another node may
/// re-embed a shared store; this one must then stop answering searches
/// (its queries would be embedded with the old model) rather than rank
/// old-model queries against new-model vectors.
#[derive(Default)]
pub(super) struct ModelCheck {
    /// When the store's model last matched this node's.
    matched: std::sync::Mutex<Option<std::time::Instant>>,
    /// Held by this node's own re-embedding from the store's switch to the
    /// embedder swap: a search that sees the store switched waits for the
    /// swap instead of calling its node stale.
    switching: futures::lock::Mutex<()>,
}

impl ModelCheck {
    pub(super) fn recent(&self) -> bool {
        let matched = *self.matched.lock().unwrap_or_else(|e| e.into_inner());
        matched.is_some_and(|at| at.elapsed() < MODEL_CHECK_EVERY)
    }

    pub(super) fn seen(&self) {
        *self.matched.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
    }
}

impl MemoryService {
    /// The embedding model in use now.
    pub fn embedder(&self) -> Arc<dyn Embedder> {
        self.slot().embedder.clone()
    }

    pub fn query_cache(&self) -> Arc<QueryCache> {
        self.slot().queries.clone()
    }

    /// The model slot to embed a search's query with, once the store is
    /// known (within [`MODEL_CHECK_EVERY`]) to still use that model.
    pub(super) async fn query_slot(&self) -> Result<Arc<ModelSlot>> {
        let check = &self.inner.model_check;
        if check.recent() {
            return Ok(self.slot());
        }
        let slot = self.current_slot().await?;
        check.seen();
        Ok(slot)
    }

    /// A search's query vector (and whether it came from the cache), from
    /// this node's model once the store is known to still use it.
    pub(super) async fn embed_query(&self, query: &str) -> Result<(Arc<[f32]>, bool)> {
        self.query_slot().await?.queries.embed_query(query).await
    }

    /// Whether the store still uses this node's model: an
    /// `EmbeddingModelMismatch` naming the model to restart with when another
    /// node re-embedded the store (`/readyz` asks; searches ask through a
    /// once-a-second cache).
    pub async fn check_store_model(&self) -> Result<()> {
        self.current_slot().await.map(drop)
    }

    /// This node's model slot, once the store is known to use its model.
    pub(super) async fn current_slot(&self) -> Result<Arc<ModelSlot>> {
        let bound = self.inner.store.bound_model().await?;
        let slot = self.slot();
        let Some(bound) = bound.filter(|b| b != slot.embedder.model()) else {
            return Ok(slot);
        };
        // This node may be re-embedding itself, between the switch and the swap.
        drop(self.inner.model_check.switching.lock().await);
        let slot = self.slot();
        if &bound == slot.embedder.model() {
            return Ok(slot);
        }
        Err(Error::new(
            ErrorCode::EmbeddingModelMismatch,
            format!(
                "this node embeds queries with `{}`, but the store's vectors now come from `{}` \
                 (re-embedded); restart this node with that model",
                slot.embedder.model().id,
                bound.id
            ),
        ))
    }

    /// Runs `switch` (a re-embedding's switch of the store) and, when it
    /// reports the store switched, makes `to` this service's model, with
    /// searches that notice the new model in between waiting for the swap.
    pub(crate) async fn switch_model(
        &self,
        to: &Arc<dyn Embedder>,
        switch: impl std::future::Future<Output = Result<bool>>,
    ) -> Result<bool> {
        let _swapping = self.inner.model_check.switching.lock().await;
        let switched = switch.await?;
        if switched {
            self.set_embedder(to.clone());
        }
        Ok(switched)
    }

    pub(super) fn slot(&self) -> Arc<ModelSlot> {
        // A poisoned lock means a thread panicked while swapping two Arcs;
        // the slot it holds is whole either way.
        self.inner
            .model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes `embedder` the model for every later call (after a re-embedding
    /// switched the store to it), with a fresh query cache.
    pub(super) fn set_embedder(&self, embedder: Arc<dyn Embedder>) {
        let slot = Arc::new(ModelSlot::new(embedder, self.inner.query_cache));
        *self.inner.model.write().unwrap_or_else(|e| e.into_inner()) = slot;
    }

    /// One vector per text, in order, from `embedder` (the model whose id
    /// labels the vectors; an embedder answering with another count is an
    /// error, not a silent misalignment).
    pub(crate) async fn embed_with(
        embedder: &dyn Embedder,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>> {
        let vectors = embedder.embed(texts).await?;
        if vectors.len() != texts.len() {
            return Err(Error::embedder(format!(
                "embedder returned {} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        Ok(vectors)
    }

    /// One text's vector and the id of the model that made it (its label).
    pub(crate) async fn embed_one(&self, text: &str) -> Result<(Vec<f32>, String)> {
        let embedder = self.embedder();
        let vector = embedder
            .embed(&[text.to_owned()])
            .await?
            .pop()
            .ok_or_else(|| Error::embedder("embedder returned no vector"))?;
        Ok((vector, embedder.model().id.clone()))
    }
}
