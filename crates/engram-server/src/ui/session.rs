//! Dashboard sessions: server-side, in this process's memory.
//!
//! A session is opened by signing in with an API key. The browser holds only
//! a random 256-bit token in an `HttpOnly; SameSite=Strict` cookie; the
//! server keeps the key (in memory, never on disk) so every request is
//! re-authenticated through [`engram_core::service::KeyService`] — a revoked
//! key or a changed binding takes effect within the key cache's 5 s, session
//! or not. Each session has its own CSRF token, sent in every form.
//!
//! A session ends on sign-out, after `idle` without a request, or `absolute`
//! after sign-in, whichever comes first. At most `max` sessions live at once;
//! past that the least recently used is dropped. A restart signs everyone out
//! (and behind a load balancer, sessions need sticky routing).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Session lifetimes and bounds.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub absolute: Duration,
    /// Sessions kept at most (the least recently used goes first).
    pub max: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
            max: 10_000,
        }
    }
}

/// Sessions one key (or the local operator) may hold at once.
pub const PER_KEY: usize = 10;

/// What a live session holds.
#[derive(Clone)]
pub struct Session {
    /// The API key it was opened with; `None` for the local operator (`--insecure-no-auth`).
    pub key: Option<String>,
    /// The token every state-changing form must carry.
    pub csrf: String,
    created: Instant,
    seen: Instant,
}

/// Every session of this process.
pub struct Sessions {
    config: SessionConfig,
    /// SHA-256 of the cookie token → session.
    live: Mutex<HashMap<[u8; 32], Session>>,
}

/// A fresh random token, hex (256 bits from the OS).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS random source does not fail on the platforms we build for; if it
    // ever does, refuse to hand out a predictable token.
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    engram_core::memory::hex(&bytes)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    digest(a) == digest(b)
}

impl Sessions {
    pub fn new(config: SessionConfig) -> Sessions {
        Sessions {
            config,
            live: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> SessionConfig {
        self.config
    }

    /// Opens a session; returns its cookie token.
    pub fn open(&self, key: Option<String>) -> String {
        let token = random_token();
        let now = Instant::now();
        let session = Session {
            key,
            csrf: random_token(),
            created: now,
            seen: now,
        };
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, s| self.alive(s, now));
        // One key opens at most PER_KEY sessions: its own oldest goes first, so
        // signing in again and again cannot push other people's sessions out.
        let mine: Vec<([u8; 32], Instant)> = live
            .iter()
            .filter(|(_, s)| s.key == session.key)
            .map(|(k, s)| (*k, s.seen))
            .collect();
        if mine.len() >= PER_KEY
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, seen)| *seen)
        {
            live.remove(oldest);
        }
        if live.len() >= self.config.max
            && let Some(oldest) = live.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| *k)
        {
            live.remove(&oldest);
        }
        live.insert(digest(&token), session);
        metrics::gauge!("engram_ui_sessions").set(live.len() as f64);
        token
    }

    fn alive(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.seen) < self.config.idle
            && now.duration_since(s.created) < self.config.absolute
    }

    /// The session behind `token`, if it is still alive (and marks it used).
    pub fn get(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let id = digest(token);
        let s = live.get_mut(&id)?;
        if !self.alive(s, now) {
            live.remove(&id);
            return None;
        }
        s.seen = now;
        Some(s.clone())
    }

    /// Ends the session behind `token`.
    pub fn close(&self, token: &str) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.remove(&digest(token));
        metrics::gauge!("engram_ui_sessions").set(live.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(max: usize) -> Sessions {
        Sessions::new(SessionConfig {
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(300),
            max,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_absolute_expiry() {
        let s = sessions(10);
        let t = s.open(Some("k".into()));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(s.get(&t).is_some(), "used within the idle time");
        // Kept alive by use, until the absolute limit.
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(50)).await;
            let _ = s.get(&t);
        }
        assert!(
            s.get(&t).is_none(),
            "300 s after sign-in it ends, used or not"
        );
        let idle = s.open(None);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(s.get(&idle).is_none(), "61 s unused ends it");
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_cannot_push_out_the_others() {
        let s = sessions(100);
        let victim = s.open(Some("victim".into()));
        let mut attacker = Vec::new();
        for _ in 0..50 {
            tokio::time::advance(Duration::from_millis(10)).await;
            attacker.push(s.open(Some("attacker".into())));
        }
        assert!(s.get(&victim).is_some(), "another key's session survives");
        let alive = attacker.iter().filter(|t| s.get(t).is_some()).count();
        assert_eq!(alive, PER_KEY, "a key keeps its newest sessions");
        assert!(s.get(attacker.last().unwrap()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_and_closable() {
        let s = sessions(2);
        let a = s.open(None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let b = s.open(None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let _ = s.get(&a);
        tokio::time::advance(Duration::from_secs(1)).await;
        let c = s.open(None);
        assert!(s.get(&b).is_none(), "the least recently used went");
        assert!(s.get(&a).is_some() && s.get(&c).is_some());
        s.close(&a);
        assert!(s.get(&a).is_none());
        assert!(s.get("not-a-token").is_none());
        let a1 = s.get(&c).unwrap().csrf;
        assert_ne!(a1, c, "the CSRF token is not the cookie");
        assert!(same_secret(&a1, &a1) && !same_secret(&a1, "x"));
    }
}
