//! The ports: every trait a backend or a model adapter implements, and the
//! plain data they exchange with the service.
//!
//! Architecture invariant: a port imports only domain modules (`memory`,
//! `filter`, `fusion`, `access`), the clock and the error type — never the
//! service, the job queue or the LLM pipeline (`tests/layering.rs` checks).
//! A backend crate needs nothing else from `engram-core` to implement them.

mod audit;
mod embed;
mod idempotency;
mod jobs;
mod keys;
mod llm;
mod reembed;
mod store;
mod webhooks;
pub mod write;

pub use audit::{AuditEvent, AuditQuery, AuditStore, ErasureCounts, ErasureTarget};
pub use embed::Embedder;
pub use idempotency::{
    IDEMPOTENCY_ABANDONED_AFTER_SECS, IDEMPOTENCY_MAX_PER_CALLER, IdemBegin, IdempotencyStore,
    MAX_IDEMPOTENCY_KEY_LEN, StoredResponse,
};
pub use jobs::{Job, JobCounts, JobState, JobStore};
pub use keys::{ApiKey, KeyStore};
pub use llm::{ChatMessage, ChatRequest, ChatResponse, JsonSchema, Llm, LlmQueue, LlmState, Usage};
pub use reembed::{ReembedItem, ReembedState, ReembedStore, check_reembed, check_start};
pub use store::{
    Cursor, ModelInfo, ScopeIdStats, Store, StoreStats, UsageRow, VectorHits, VectorPath,
    Visibility, WriteOp, check_dimensions, check_model,
};
pub use webhooks::{
    ATTEMPTS_KEPT, DeliveryAttempt, Expired, Outgoing, Sent, WebhookSender, WebhookStore,
    delivery_job, expiry_jobs, memory_ordering,
};
