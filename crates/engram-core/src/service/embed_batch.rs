//! Embedding requests that arrive together are embedded together.
//!
//! A model embeds a batch of texts in little more time than one text (one
//! forward pass over a padded batch): on this machine MiniLM embeds ~245
//! texts/s in batches and ~150/s one at a time. Concurrent single-text adds
//! and fresh queries would otherwise queue for the model one by one. The
//! batcher is continuous, as text-embeddings-inference batches: one worker
//! takes every request waiting when the model becomes free (up to
//! `max_batch` texts), embeds them in one call and hands each caller its
//! vectors. A lone request waits for nothing; requests of `max_batch` texts
//! or more go to the model directly.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::Result;
use crate::ports::{Embedder, ModelInfo};

/// Texts per batch the worker forms at most.
pub const MAX_BATCH: usize = 64;

struct Request {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
}

/// An [`Embedder`] that merges concurrent requests into batches.
pub struct BatchingEmbedder {
    inner: Arc<dyn Embedder>,
    queue: mpsc::UnboundedSender<Request>,
    max_batch: usize,
}

impl BatchingEmbedder {
    /// Wraps `inner`; its worker runs on the current tokio runtime. Outside a
    /// runtime there is nothing to batch on: `inner` is returned as is.
    pub fn wrap(inner: Arc<dyn Embedder>, max_batch: usize) -> Arc<dyn Embedder> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return inner;
        };
        let (queue, requests) = mpsc::unbounded_channel();
        runtime.spawn(worker(inner.clone(), requests, max_batch.max(1)));
        Arc::new(BatchingEmbedder {
            inner,
            queue,
            max_batch: max_batch.max(1),
        })
    }
}

/// Runs until every handle to the batcher is gone.
async fn worker(
    inner: Arc<dyn Embedder>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    max_batch: usize,
) {
    while let Some(first) = requests.recv().await {
        let mut texts = first.texts.len();
        let mut batch = vec![first];
        while texts < max_batch {
            match requests.try_recv() {
                Ok(r) => {
                    texts += r.texts.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let all: Vec<String> = batch.iter().flat_map(|r| r.texts.iter().cloned()).collect();
        match inner.embed(&all).await {
            Ok(vectors) if vectors.len() == all.len() => {
                let mut vectors = vectors.into_iter();
                for r in batch {
                    let mine = vectors.by_ref().take(r.texts.len()).collect();
                    // The caller may have gone (its request was cancelled).
                    let _ = r.reply.send(Ok(mine));
                }
            }
            Ok(_) | Err(_) if batch.len() > 1 => {
                // One request's texts may be what failed: each alone, so
                // only that caller gets the error.
                for r in batch {
                    let _ = r.reply.send(inner.embed(&r.texts).await);
                }
            }
            other => {
                for r in batch {
                    let _ = r.reply.send(match &other {
                        Ok(v) => Err(crate::Error::internal(format!(
                            "the embedder answered {} vectors for {} texts",
                            v.len(),
                            r.texts.len()
                        ))),
                        Err(e) => Err(crate::Error::new(e.code, e.message.clone())),
                    });
                }
            }
        }
    }
}

#[async_trait]
impl Embedder for BatchingEmbedder {
    fn model(&self) -> &ModelInfo {
        self.inner.model()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        if texts.len() >= self.max_batch {
            return self.inner.embed(texts).await;
        }
        let (reply, answer) = oneshot::channel();
        let request = Request {
            texts: texts.to_vec(),
            reply,
        };
        if self.queue.send(request).is_err() {
            // The worker is gone (its runtime shut down): embed directly.
            return self.inner.embed(texts).await;
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => self.inner.embed(texts).await,
        }
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.inner.count_tokens(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records each call's batch; "bad" texts make the whole call fail.
    struct Recorder {
        model: ModelInfo,
        calls: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl Embedder for Recorder {
        fn model(&self) -> &ModelInfo {
            &self.model
        }
        async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
            self.calls.lock().unwrap().push(texts.len());
            // Slow enough that concurrent callers queue behind it.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if texts.iter().any(|t| t == "bad") {
                return Err(crate::Error::invalid("bad text"));
            }
            Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0]).collect())
        }
        fn count_tokens(&self, text: &str) -> usize {
            text.len()
        }
    }

    fn recorder() -> Arc<Recorder> {
        Arc::new(Recorder {
            model: ModelInfo {
                id: "test".into(),
                dim: 2,
            },
            calls: Mutex::default(),
        })
    }

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_get_their_own_vectors() {
        let inner = recorder();
        let batcher = BatchingEmbedder::wrap(inner.clone(), 64);
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move {
                    let text = "x".repeat(i + 1);
                    (i, b.embed(&[text]).await.unwrap())
                })
            })
            .collect();
        for t in tasks {
            let (i, v) = t.await.unwrap();
            assert_eq!(v, vec![vec![(i + 1) as f32, 1.0]], "request {i}");
        }
        let calls = inner.calls.lock().unwrap().clone();
        assert_eq!(calls.iter().sum::<usize>(), 20);
        assert!(
            calls.len() < 20 && calls.iter().any(|n| *n > 1),
            "requests were merged: {calls:?}"
        );
    }

    #[tokio::test]
    async fn a_failing_request_fails_alone_and_big_ones_go_direct() {
        let inner = recorder();
        let batcher = BatchingEmbedder::wrap(inner.clone(), 4);
        let texts: [Vec<String>; 3] = [
            vec!["fine".into()],
            vec!["bad".into()],
            vec!["also fine".into()],
        ];
        let (good, bad, other) = tokio::join!(
            batcher.embed(&texts[0]),
            batcher.embed(&texts[1]),
            batcher.embed(&texts[2]),
        );
        assert_eq!(good.unwrap(), vec![vec![4.0, 1.0]]);
        assert!(bad.is_err());
        assert_eq!(other.unwrap(), vec![vec![9.0, 1.0]]);
        inner.calls.lock().unwrap().clear();
        let big: Vec<String> = (0..4).map(|i| format!("t{i}")).collect();
        assert_eq!(batcher.embed(&big).await.unwrap().len(), 4);
        assert_eq!(*inner.calls.lock().unwrap(), vec![4]);
        assert!(batcher.embed(&[]).await.unwrap().is_empty());
    }
}
