//! Adds to one scope are decided one at a time on a node.
//!
//! A verbatim add reads the scope's nearest memories and decides (ADD,
//! NOOP, or a correction naming the version it replaces); two adds to one
//! scope deciding at once would both correct the same version and one
//! would fail with a conflict. Holding the scope's lock from the decision
//! to the commit makes them take turns; adds to other scopes run (and
//! share embedding batches) in parallel. Across nodes of one Postgres the
//! store's version check still catches a race, and the add decides again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

use crate::memory::Scope;

type Slot = tokio::sync::Mutex<()>;

/// Per-scope async locks, forgotten when nobody holds or waits for them.
#[derive(Default)]
pub(super) struct ScopeLocks {
    slots: Mutex<HashMap<String, Weak<Slot>>>,
}

/// Held locks; released on drop.
pub(super) struct ScopeGuards(#[allow(dead_code)] Vec<OwnedMutexGuard<()>>);

fn key(scope: &Scope) -> String {
    scope
        .iter()
        .map(|(f, v)| format!("{}={v}", f.index()))
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

impl ScopeLocks {
    /// Locks every scope of `scopes` (in one order, so two callers never
    /// wait on each other crosswise).
    pub(super) async fn lock<'a>(
        &self,
        scopes: impl IntoIterator<Item = &'a Scope>,
    ) -> ScopeGuards {
        let mut keys: Vec<String> = scopes.into_iter().map(key).collect();
        keys.sort_unstable();
        keys.dedup();
        let slots: Vec<Arc<Slot>> = {
            // Poisoning: a panic while inserting into a map of weak pointers; the map is whole.
            let mut map = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() > 1024 {
                map.retain(|_, w| w.strong_count() > 0);
            }
            keys.into_iter()
                .map(|k| {
                    if let Some(slot) = map.get(&k).and_then(Weak::upgrade) {
                        return slot;
                    }
                    let slot = Arc::new(Slot::new(()));
                    map.insert(k, Arc::downgrade(&slot));
                    slot
                })
                .collect()
        };
        let mut guards = Vec::with_capacity(slots.len());
        for slot in slots {
            guards.push(slot.lock_owned().await);
        }
        ScopeGuards(guards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str) -> Scope {
        Scope {
            user_id: Some(u.into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn one_scope_waits_others_do_not() {
        let locks = Arc::new(ScopeLocks::default());
        let held = locks.lock([&user("a")]).await;
        // Another scope is free.
        let other = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            locks.lock([&user("b")]),
        )
        .await;
        assert!(other.is_ok());
        // The same scope waits until the first guard goes.
        let again = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock([&user("a"), &user("a")]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!again.is_finished());
        drop(held);
        let again = tokio::time::timeout(std::time::Duration::from_secs(1), again).await;
        assert!(again.is_ok());
    }
}
