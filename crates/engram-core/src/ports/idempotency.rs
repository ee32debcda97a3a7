//! `Idempotency-Key` records: the first response to a (caller, key) pair is
//! kept and replayed for the same request; a different request under the
//! same key is a conflict. Stores implement [`IdempotencyStore`]; the HTTP
//! layer decides what a "request" is (method, path, query, body).

use async_trait::async_trait;
use jiff::Timestamp;

use crate::Result;

/// Longest key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// A reservation older than this whose request never finished (its node died)
/// may be taken over by a retry.
pub const IDEMPOTENCY_ABANDONED_AFTER_SECS: i64 = 60;
/// Records kept per caller by default: reserving one more drops that
/// caller's oldest, so no caller can grow the table without bound.
pub const IDEMPOTENCY_MAX_PER_CALLER: usize = 10_000;

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// What [`IdempotencyStore::idem_begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemBegin {
    /// First time: reserved; run the request, then complete or abort.
    New,
    /// The same request was answered before: replay this.
    Replay(StoredResponse),
    /// The key was used for a different request.
    Mismatch,
    /// The same request is running right now.
    InFlight,
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Reserves `(caller, key)` for `request_hash`, or says what is there.
    /// A new reservation leaves the caller at most `max_per_caller` records
    /// (its oldest are dropped).
    async fn idem_begin(
        &self,
        caller: &str,
        key: &str,
        request_hash: &str,
        now: Timestamp,
        max_per_caller: usize,
    ) -> Result<IdemBegin>;
    async fn idem_complete(&self, caller: &str, key: &str, response: &StoredResponse)
    -> Result<()>;
    /// Drops a reservation (the request failed in a way a retry may fix).
    async fn idem_abort(&self, caller: &str, key: &str) -> Result<()>;
    /// Removes up to `limit` records made before `before` (their time to
    /// live is over); returns how many.
    async fn idem_purge(&self, before: Timestamp, limit: usize) -> Result<u64>;
}
