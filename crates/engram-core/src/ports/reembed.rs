//! The re-embedding port: where a store keeps a migration of every vector
//! to another embedding model, and the rules every backend applies inside
//! its own transactions.

use async_trait::async_trait;
use serde::Serialize;

use crate::ports::{AuditEvent, ModelInfo};
use crate::{Error, ErrorCode, Result};

/// A migration of every stored vector to another embedding model
/// (`engram reembed`). Searches keep using the `from` vectors until
/// [`ReembedStore::reembed_switch`] swaps them all in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReembedState {
    pub from: ModelInfo,
    pub to: ModelInfo,
    /// Versions (current and superseded) that have their `to` vector.
    pub done: u64,
    /// Every version in the store.
    pub total: u64,
}

/// One stored version still waiting for its vector from the new model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReembedItem {
    /// The version's key in the store (opaque, increasing in write order).
    pub key: i64,
    pub text: String,
}

/// Refuses vectors a migration cannot take: another model than the one the
/// migration is to, or the wrong length.
pub fn check_reembed(
    state: Option<&ReembedState>,
    to: &ModelInfo,
    vectors: &[(i64, Vec<f32>)],
) -> Result<()> {
    match state {
        None => Err(Error::new(
            ErrorCode::Conflict,
            "no re-embedding is in progress (it was switched or cancelled)",
        )),
        Some(s) if s.to != *to => Err(Error::new(
            ErrorCode::Conflict,
            format!(
                "the re-embedding in progress is to `{}`, not `{}`",
                s.to.id, to.id
            ),
        )),
        Some(_) => match vectors.iter().find(|(_, v)| v.len() != to.dim) {
            Some((_, v)) => Err(Error::new(
                ErrorCode::EmbeddingModelMismatch,
                format!(
                    "vector has {} dimensions; `{}` has {}",
                    v.len(),
                    to.id,
                    to.dim
                ),
            )),
            None => Ok(()),
        },
    }
}

/// Where a store keeps a migration: the new vectors beside the current
/// ones, and the switch. Implemented by every store backend.
#[async_trait]
pub trait ReembedStore: Send + Sync + 'static {
    /// Starts a migration of every vector to `to`, or resumes the one to
    /// `to` in progress. Refuses `to` when it is the store's model already
    /// (`InvalidRequest`) or when a migration to another model is in
    /// progress (`Conflict`).
    async fn reembed_start(&self, to: &ModelInfo) -> Result<ReembedState>;

    /// The migration in progress, if any.
    async fn reembed_state(&self) -> Result<Option<ReembedState>>;

    /// Up to `limit` versions with keys above `after` that have no vector
    /// from the new model yet, in key order.
    async fn reembed_pending(&self, after: i64, limit: usize) -> Result<Vec<ReembedItem>>;

    /// Stores new-model vectors beside the current ones (searches do not
    /// see them). Versions removed meanwhile are skipped.
    async fn reembed_put(&self, to: &ModelInfo, vectors: Vec<(i64, Vec<f32>)>) -> Result<()>;

    /// Switches to the new model if every version has its new vector: in
    /// one transaction the vectors replace the old ones, the model binding
    /// changes and `audit` is appended; then the vector index is rebuilt.
    /// Returns how many versions still lack a new vector (0: switched;
    /// otherwise nothing changed — writes landed since the last pass).
    async fn reembed_switch(&self, to: &ModelInfo, audit: AuditEvent) -> Result<u64>;

    /// Abandons the migration in progress (its new vectors are dropped).
    /// Returns whether there was one.
    async fn reembed_cancel(&self) -> Result<bool>;
}

/// What starting a migration to `to` means for a store whose vectors come
/// from `from` (`None`: nothing bound yet), with `current` in progress:
/// `Ok(Some(state))` resumes it, `Ok(None)` starts afresh; an empty store,
/// the same model, or another migration in progress is refused. The stores
/// call it inside their start transaction.
pub fn check_start(
    from: Option<&ModelInfo>,
    current: Option<ReembedState>,
    to: &ModelInfo,
) -> Result<Option<ReembedState>> {
    let from =
        from.ok_or_else(|| Error::invalid("the store holds no vectors yet: nothing to re-embed"))?;
    match current {
        Some(s) if s.to == *to => Ok(Some(s)),
        Some(s) => Err(Error::new(
            ErrorCode::Conflict,
            format!(
                "a re-embedding to `{}` is in progress ({} of {} versions); finish it, or cancel it first",
                s.to.id, s.done, s.total
            ),
        )),
        None if from == to => Err(Error::invalid(format!(
            "the store already uses `{}`",
            to.id
        ))),
        None => Ok(None),
    }
}
