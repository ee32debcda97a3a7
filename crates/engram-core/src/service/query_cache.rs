//! The query-embedding cache: an LRU of query texts' vectors in front of
//! an [`Embedder`].

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::Result;
use crate::ports::Embedder;

/// An LRU cache in front of an [`Embedder`] for query texts.
pub struct QueryCache {
    inner: Arc<dyn Embedder>,
    /// `None` when caching is disabled (capacity 0).
    cache: Option<Mutex<LruCache<String, Arc<[f32]>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl QueryCache {
    /// A cache of `capacity` queries; 0 disables caching.
    pub fn new(inner: Arc<dyn Embedder>, capacity: usize) -> QueryCache {
        let cache = NonZeroUsize::new(capacity).map(|cap| Mutex::new(LruCache::new(cap)));
        QueryCache {
            inner,
            cache,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The wrapped embedder.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.inner
    }

    fn with_cache<T>(&self, f: impl FnOnce(&mut LruCache<String, Arc<[f32]>>) -> T) -> Option<T> {
        // A poisoned lock only means another thread panicked mid-update; the map itself is still valid.
        self.cache
            .as_ref()
            .map(|c| f(&mut c.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// The embedding of `query` and whether it came from the cache.
    pub async fn embed_query(&self, query: &str) -> Result<(Arc<[f32]>, bool)> {
        if let Some(v) = self.with_cache(|c| c.get(query).cloned()).flatten() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((v, true));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let mut vectors = self.inner.embed(&[query.to_owned()]).await?;
        let v: Arc<[f32]> = vectors
            .pop()
            .ok_or_else(|| crate::Error::embedder("embedder returned no vector"))?
            .into();
        self.with_cache(|c| c.put(query.to_owned(), v.clone()));
        Ok((v, false))
    }

    /// (hits, misses) since start.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    pub fn clear(&self) {
        self.with_cache(|c| c.clear());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;

    use super::*;
    use crate::ports::ModelInfo;

    /// Counts calls; returns a one-hot vector per text length.
    struct Counting {
        info: ModelInfo,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Embedder for Counting {
        fn model(&self) -> &ModelInfo {
            &self.info
        }
        async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            Ok(texts
                .iter()
                .map(|t| {
                    (0..4)
                        .map(|i| if i == t.len() % 4 { 1.0 } else { 0.0 })
                        .collect()
                })
                .collect())
        }
        fn count_tokens(&self, text: &str) -> usize {
            text.split_whitespace().count()
        }
    }

    fn counting() -> Arc<Counting> {
        Arc::new(Counting {
            info: ModelInfo {
                id: "count".into(),
                dim: 4,
            },
            calls: AtomicUsize::new(0),
        })
    }

    #[test]
    fn cache_hits_skip_the_model_and_evict_lru() {
        futures::executor::block_on(async {
            let inner = counting();
            let cache = QueryCache::new(inner.clone(), 2);
            let (a, hit) = cache.embed_query("alpha").await.unwrap();
            assert!(!hit);
            let (a2, hit) = cache.embed_query("alpha").await.unwrap();
            assert!(hit);
            assert_eq!(a, a2);
            cache.embed_query("beta").await.unwrap();
            cache.embed_query("gamma").await.unwrap(); // evicts alpha
            assert!(!cache.embed_query("alpha").await.unwrap().1);
            assert_eq!(inner.calls.load(Ordering::Relaxed), 4);
            assert_eq!(cache.counters(), (1, 4));
        });
    }

    #[test]
    fn zero_capacity_disables_caching() {
        futures::executor::block_on(async {
            let inner = counting();
            let cache = QueryCache::new(inner.clone(), 0);
            cache.embed_query("x").await.unwrap();
            assert!(!cache.embed_query("x").await.unwrap().1);
            assert_eq!(inner.calls.load(Ordering::Relaxed), 2);
        });
    }
}
