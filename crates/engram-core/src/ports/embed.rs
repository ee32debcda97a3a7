//! The embedding port and the query-embedding cache.

use async_trait::async_trait;

use crate::Result;
use crate::ports::ModelInfo;

/// Turns texts into unit-length vectors.
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// The model's id and dimension; recorded by the store.
    fn model(&self) -> &ModelInfo;

    /// Embeds a batch. Every vector has `model().dim` components and unit L2 norm.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;

    /// Counts the tokens of `text` with the model's tokenizer (no special tokens).
    fn count_tokens(&self, text: &str) -> usize;
}
