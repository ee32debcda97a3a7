//! The key storage port: API keys as stored (never their secrets).

use async_trait::async_trait;
use jiff::Timestamp;
use serde::Serialize;

use crate::Result;
use crate::access::{Principal, Role};
use crate::memory::Scope;
use crate::ports::AuditEvent;

/// A key as stored and listed (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The scope ids the key is tied to; `org_id` is always set.
    pub binding: Scope,
    /// Requests per minute (`None`: the server default).
    pub rate_limit: Option<u32>,
    pub created_at: Timestamp,
    /// Who created it (`key:<id>` or `cli`).
    pub created_by: String,
    pub revoked_at: Option<Timestamp>,
}

impl ApiKey {
    pub fn principal(&self) -> Principal {
        Principal {
            key_id: Some(self.id.clone()),
            role: self.role,
            binding: self.binding.clone(),
            rate_limit: self.rate_limit,
        }
    }
}

/// Where keys live. Implemented by every store backend.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new key and appends `audit`, in one transaction.
    async fn key_insert(&self, key: &ApiKey, secret_hash: &str, audit: &AuditEvent) -> Result<()>;
    /// The key and the SHA-256 (hex) of its secret.
    async fn key_get(&self, id: &str) -> Result<Option<(ApiKey, String)>>;
    /// Every key, revoked ones included, oldest first.
    async fn key_list(&self) -> Result<Vec<ApiKey>>;
    /// Marks a key revoked and appends `audit`; false (and no audit) when it
    /// does not exist or already was.
    async fn key_revoke(&self, id: &str, at: Timestamp, audit: &AuditEvent) -> Result<bool>;
}
