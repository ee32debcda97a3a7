//! API keys: creation (the secret is shown once), storage as a hash,
//! authentication with a short-lived cache, listing and revocation.
//!
//! A key reads `engram_<id>_<secret>`: `id` is 16 hex digits (public, names
//! the key in lists and logs), `secret` is 32 random bytes in hex. Stores keep
//! the id, the SHA-256 of the secret and the key's binding and role; nothing
//! that would let anyone rebuild the key.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use sha2::{Digest, Sha256};

use crate::access::{Principal, Role};
use crate::clock::{Clock, to_millis};
use crate::memory::{Scope, hex, validate_scope_id};
use crate::ports::{ApiKey, AuditEvent, KeyStore};
use crate::{Error, ErrorCode, Result};

/// Prefix of every key; lets secret scanners recognise leaked keys.
pub const KEY_PREFIX: &str = "engram_";
/// How long a verified key is trusted without asking the store again. A key
/// revoked on another node stops working after at most this long.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Highest per-key rate limit, requests per minute.
pub const MAX_RATE_LIMIT: u32 = 1_000_000;
/// Longest key name accepted.
pub const MAX_KEY_NAME: usize = 128;

/// What to create.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub role: Option<Role>,
    pub binding: Scope,
    pub rate_limit: Option<u32>,
}

/// SHA-256 of a presented key → the principal it resolved to, and when.
type VerifiedKeys = LruCache<[u8; 32], (Principal, Instant)>;

/// Key management and authentication. Cheap to clone.
#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    /// SHA-256 of a whole presented key → the principal it resolved to, and when.
    cache: Arc<Mutex<VerifiedKeys>>,
}

fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf)
        .map_err(|e| Error::internal(format!("no randomness for a new key: {e}")))?;
    Ok(hex(&buf))
}

/// SHA-256 of a key secret, hex.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(detail: &str) -> Error {
    Error::new(ErrorCode::Unauthorized, detail)
}

/// Splits `engram_<id>_<secret>`.
fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (ok(id, 16) && ok(secret, 64)).then_some((id, secret))
}

impl KeyService {
    pub fn new(store: Arc<dyn KeyStore>, clock: Arc<dyn Clock>) -> KeyService {
        KeyService {
            store,
            clock,
            cache: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN),
            ))),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, VerifiedKeys> {
        // Poisoning only means a panic elsewhere; the cache holds no invariant.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a key inside `by`'s binding. Returns the key and its token,
    /// which is never stored and cannot be shown again.
    pub async fn create(&self, by: &Principal, new: NewKey) -> Result<(ApiKey, String)> {
        by.require(Role::Admin, "creating API keys")?;
        let name = new.name.trim().to_owned();
        if name.is_empty() || name.len() > MAX_KEY_NAME {
            return Err(Error::invalid(format!(
                "`name` must be 1 to {MAX_KEY_NAME} bytes"
            )));
        }
        for (field, id) in new.binding.iter() {
            validate_scope_id(field, id)?;
        }
        if new.binding.run_id.is_some() {
            return Err(Error::invalid(
                "a key cannot be bound to a run_id (sessions are short-lived); bind it to an org, app, user or agent",
            ));
        }
        let binding = by.bind_scope(new.binding)?;
        if binding.org_id.is_none() {
            return Err(Error::invalid("a key must be bound to an `org_id`"));
        }
        let role = new.role.unwrap_or(Role::ReadWrite);
        if role > by.role {
            return Err(Error::new(
                ErrorCode::Forbidden,
                "a key cannot create a key with a higher role than its own",
            ));
        }
        if let Some(r) = new.rate_limit
            && !(1..=MAX_RATE_LIMIT).contains(&r)
        {
            return Err(Error::invalid(format!(
                "`rate_limit` must be between 1 and {MAX_RATE_LIMIT} requests per minute"
            )));
        }
        let id = random_hex(8)?;
        let secret = random_hex(32)?;
        let key = ApiKey {
            id: id.clone(),
            name,
            role,
            binding,
            rate_limit: new.rate_limit,
            created_at: to_millis(self.clock.now()),
            created_by: by.actor("cli"),
            revoked_at: None,
        };
        let mut audit = AuditEvent::new(
            key.created_at,
            key.created_by.clone(),
            "key.create",
            key.binding.org_id.clone(),
            Some(key.id.clone()),
            None,
        );
        audit.detail = serde_json::json!({ "role": key.role.as_str() });
        self.store
            .key_insert(&key, &hash_secret(&secret), &audit)
            .await?;
        Ok((key, format!("{KEY_PREFIX}{id}_{secret}")))
    }

    /// Keys inside `by`'s binding (an admin sees its org's keys).
    pub async fn list(&self, by: &Principal) -> Result<Vec<ApiKey>> {
        by.require(Role::Admin, "listing API keys")?;
        let keys = self.store.key_list().await?;
        Ok(keys.into_iter().filter(|k| by.covers(&k.binding)).collect())
    }

    /// Revokes a key inside `by`'s binding; it stops working at once on this
    /// node and within [`CACHE_TTL`] on others.
    pub async fn revoke(&self, by: &Principal, id: &str) -> Result<ApiKey> {
        by.require(Role::Admin, "revoking API keys")?;
        let not_found = || Error::not_found(format!("API key {id} not found"));
        let Some((mut key, _)) = self.store.key_get(id).await? else {
            return Err(not_found());
        };
        if !by.covers(&key.binding) {
            return Err(not_found());
        }
        if by.key_id.as_deref() == Some(id) {
            return Err(Error::new(
                ErrorCode::Conflict,
                "a key cannot revoke itself (that would lock its holder out); use another admin key or `engram keys revoke`",
            ));
        }
        if key.revoked_at.is_none() {
            let at = to_millis(self.clock.now());
            let audit = AuditEvent::new(
                at,
                by.actor("cli"),
                "key.revoke",
                key.binding.org_id.clone(),
                Some(id.to_owned()),
                None,
            );
            self.store.key_revoke(id, at, &audit).await?;
            key.revoked_at = Some(at);
        }
        let mut cache = self.cache();
        let stale: Vec<[u8; 32]> = cache
            .iter()
            .filter(|(_, (p, _))| p.key_id.as_deref() == Some(id))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            cache.pop(&k);
        }
        Ok(key)
    }

    /// Whether no key exists yet (first start).
    /// Forgets every verified key on this node, so each is checked against
    /// the store again at its next use (after an erasure removed keys).
    pub fn forget_verified(&self) {
        self.cache().clear();
    }

    pub async fn none_yet(&self) -> Result<bool> {
        Ok(self.store.key_list().await?.is_empty())
    }

    /// The principal a presented key stands for. Every failure reads the
    /// same to the caller (`unauthorized`), whatever part was wrong.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((p, at)) = self.cache().get(&digest)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(p.clone());
        }
        let invalid = || unauthorized("the API key is invalid or revoked");
        let (id, secret) = parse_token(token).ok_or_else(invalid)?;
        let (key, stored) = self.store.key_get(id).await?.ok_or_else(invalid)?;
        if !constant_time_eq(hash_secret(secret).as_bytes(), stored.as_bytes())
            || key.revoked_at.is_some()
        {
            return Err(invalid());
        }
        let principal = key.principal();
        self.cache()
            .put(digest, (principal.clone(), Instant::now()));
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_strictly() {
        let id = "0123456789abcdef";
        let secret = "ab".repeat(32);
        let token = format!("engram_{id}_{secret}");
        assert_eq!(parse_token(&token), Some((id, secret.as_str())));
        assert_eq!(parse_token(&format!("engram_{id}_{secret}x")), None);
        assert_eq!(parse_token(&format!("other_{id}_{secret}")), None);
        assert_eq!(parse_token("engram_"), None);
        assert_eq!(hash_secret("abc").len(), 64);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
