//! The core error type and its stable codes.
//!
//! Every error has a [`ErrorCode`]; transports map a code to their own
//! representation (HTTP status + problem+json type, MCP tool error) through
//! one table, so a new variant can never silently become a 500.

#![deny(clippy::wildcard_enum_match_arm)]

use std::fmt;

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Stable, snake_case error codes. Part of the public API: never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or a field has an invalid value.
    InvalidRequest,
    /// A filter expression could not be parsed.
    InvalidFilter,
    /// A read or write named no scope id.
    MissingScope,
    /// The requested memory does not exist (or is not visible).
    NotFound,
    /// The memory changed since it was read (a concurrent update); retry.
    Conflict,
    /// No or bad credentials.
    Unauthorized,
    /// Credentials are fine but may not do this.
    Forbidden,
    /// The embedding model does not match the one the store was built with.
    EmbeddingModelMismatch,
    /// A write embedded with the store's previous model arrived after a
    /// re-embedding switched it; retrying embeds it with the new one.
    ModelSwitched,
    /// A request or payload exceeds a configured limit.
    LimitExceeded,
    /// The store failed (I/O, corruption, constraint).
    StoreFailure,
    /// The embedder failed.
    EmbedderFailure,
    /// The LLM cannot be reached now (down, timing out, rate limiting, circuit open).
    LlmUnavailable,
    /// The LLM answered, but with an error or with output that cannot be used.
    LlmFailure,
    /// A bug: an invariant was violated.
    Internal,
    /// The caller's share of the background queue is full; retry later.
    QueueFull,
}

impl ErrorCode {
    /// The stable string form, e.g. `invalid_filter`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidFilter => "invalid_filter",
            ErrorCode::MissingScope => "missing_scope",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::EmbeddingModelMismatch => "embedding_model_mismatch",
            ErrorCode::ModelSwitched => "model_switched",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::StoreFailure => "store_failure",
            ErrorCode::EmbedderFailure => "embedder_failure",
            ErrorCode::LlmUnavailable => "llm_unavailable",
            ErrorCode::LlmFailure => "llm_failure",
            ErrorCode::Internal => "internal",
            ErrorCode::QueueFull => "queue_full",
        }
    }

    /// Whether the caller caused this error (4xx) rather than the server (5xx).
    #[deny(clippy::wildcard_enum_match_arm)]
    pub fn is_user_error(self) -> bool {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::InvalidFilter
            | ErrorCode::MissingScope
            | ErrorCode::NotFound
            | ErrorCode::Conflict
            | ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::EmbeddingModelMismatch
            | ErrorCode::LimitExceeded
            | ErrorCode::QueueFull => true,
            // Transient: a retry (e.g. of a job) prepares the write anew.
            ErrorCode::ModelSwitched
            | ErrorCode::StoreFailure
            | ErrorCode::EmbedderFailure
            | ErrorCode::LlmUnavailable
            | ErrorCode::LlmFailure
            | ErrorCode::Internal => false,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a stable code and a message.
///
/// For user errors the message is written for the caller and is safe to show.
/// For internal errors (`!code.is_user_error()`) the message is for the log
/// only; transports show a generic text instead.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn filter(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidFilter, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn store(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::StoreFailure, message)
    }
    pub fn embedder(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::EmbedderFailure, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}
