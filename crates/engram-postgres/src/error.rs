//! Errors: driver errors turned into core's, and the split a write
//! transaction needs between a driver error that may be retried
//! (serialization failure, deadlock) and a final one.

use engram_core::{Error, ErrorCode};
use tokio_postgres::error::SqlState;

/// Converts a driver error, keeping the server's message and SQLSTATE.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::QUERY_CANCELED => Error::store(format!(
            "postgres: statement timed out or was cancelled: {}",
            db.message()
        )),
        Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => Error::new(
            ErrorCode::Conflict,
            format!(
                "a concurrent write touched the same record ({}); retry",
                db.message()
            ),
        ),
        Some(db) => Error::store(format!(
            "postgres: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        )),
        None => Error::store(format!("postgres: {e}")),
    }
}

pub(crate) fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => Error::store(format!("postgres connection pool: {other}")),
    }
}

/// Whether a failed transaction may simply be run again.
pub(crate) fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// Why a write batch failed: a driver error may be retryable, ours are final.
pub(crate) enum ApplyError {
    Pg(tokio_postgres::Error),
    Other(Error),
}

pub(crate) fn apply_err(e: ApplyError) -> Error {
    match e {
        ApplyError::Pg(e) => pg_err(e),
        ApplyError::Other(e) => e,
    }
}

impl From<Error> for ApplyError {
    fn from(e: Error) -> Self {
        ApplyError::Other(e)
    }
}

impl From<tokio_postgres::Error> for ApplyError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApplyError::Pg(e)
    }
}
