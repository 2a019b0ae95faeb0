//! Session locks (`lock_sessions`): requests of one session run one at a time across the
//! cluster, so that two requests through two peers cannot both read a value and each write
//! their own change of it (a lost update). The lock of a session is held by its owner, the
//! member that scores highest for its id (see `topology`); a request on another peer asks the
//! owner for it (a `Lock` message, granted by a `Locked` frame) and gives it back (`Unlock`)
//! once its response no longer waits for peers. A grant ends with its peer's connection, and
//! after a lease at the latest, so a vanished peer cannot hold a session forever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

/// The locks of the sessions this node owns, and those it granted to peers.
#[derive(Default)]
pub struct SessionLocks {
    /// One mutex per session with a holder or waiters (removed when neither is left).
    locks: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
    /// Locks held for peers' requests: (peer, tag) → the lock and when it was granted.
    granted: Mutex<HashMap<(String, u64), (LocalLock, Instant)>>,
    /// Peers' requests waiting for their lock: a grant is kept only for a request still here
    /// (not given back, its connection not ended meanwhile).
    awaited: Mutex<std::collections::HashSet<(String, u64)>>,
}

/// Peers' lock requests waiting at most; past it, more are refused (their requesters go on
/// unlocked after their wait), so a flood of them costs bounded memory.
const MAX_AWAITED: usize = 65_536;

/// A session lock held on this node; dropping it lets the next request in.
pub struct LocalLock {
    id: Arc<str>,
    guard: Option<OwnedMutexGuard<()>>,
    locks: Arc<SessionLocks>,
}

impl Drop for LocalLock {
    fn drop(&mut self) {
        let mut locks = self.locks.lock_table();
        drop(self.guard.take());
        // Only the table holds it now: no holder, no waiter.
        if locks
            .get(&self.id)
            .is_some_and(|mutex| Arc::strong_count(mutex) == 1)
        {
            locks.remove(&self.id);
        }
    }
}

impl SessionLocks {
    fn lock_table(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>> {
        self.locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_granted(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, u64), (LocalLock, Instant)>> {
        self.granted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for session `id`'s lock.
    pub async fn acquire(self: &Arc<Self>, id: &str) -> LocalLock {
        let id: Arc<str> = Arc::from(id);
        let mutex = Arc::clone(self.lock_table().entry(Arc::clone(&id)).or_default());
        let guard = mutex.lock_owned().await;
        LocalLock {
            id,
            guard: Some(guard),
            locks: Arc::clone(self),
        }
    }

    fn lock_awaited(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, u64)>> {
        self.awaited
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Peer `peer`'s request `tag` asks for a lock; false when too many are waiting already
    /// (the request is refused).
    pub fn expect(&self, peer: &str, tag: u64) -> bool {
        let mut awaited = self.lock_awaited();
        if awaited.len() >= MAX_AWAITED {
            return false;
        }
        awaited.insert((peer.to_string(), tag));
        true
    }

    /// Holds `lock` for request `tag` of peer `peer` until it gives it back; returns false
    /// (and lets the lock go) when the request is no longer waiting for it.
    pub fn grant(&self, peer: &str, tag: u64, lock: LocalLock) -> bool {
        let key = (peer.to_string(), tag);
        if !self.lock_awaited().remove(&key) {
            return false;
        }
        self.lock_granted().insert(key, (lock, Instant::now()));
        true
    }

    /// Peer `peer` gave back the lock of its request `tag` (granted, or still awaited).
    pub fn release(&self, peer: &str, tag: u64) {
        let key = (peer.to_string(), tag);
        self.lock_awaited().remove(&key);
        let released = self.lock_granted().remove(&key);
        drop(released);
    }

    /// Peer `peer`'s connection ended: every lock it holds goes.
    pub fn release_peer(&self, peer: &str) {
        let released: Vec<_> = {
            let mut granted = self.lock_granted();
            let tags: Vec<(String, u64)> = granted
                .keys()
                .filter(|(holder, _)| holder == peer)
                .cloned()
                .collect();
            tags.into_iter()
                .filter_map(|key| granted.remove(&key))
                .collect()
        };
        self.lock_awaited().retain(|(holder, _)| holder != peer);
        drop(released);
    }

    /// Takes back the locks granted longer than `lease` ago; returns how many.
    pub fn expire(&self, lease: Duration) -> usize {
        let expired: Vec<_> = {
            let mut granted = self.lock_granted();
            let old: Vec<(String, u64)> = granted
                .iter()
                .filter(|(_, (_, at))| at.elapsed() > lease)
                .map(|(key, _)| key.clone())
                .collect();
            old.into_iter()
                .filter_map(|key| granted.remove(&key))
                .collect()
        };
        expired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_lock_lets_one_request_in_at_a_time_and_frees_its_table_entry() {
        let locks = Arc::new(SessionLocks::default());
        let first = locks.acquire("s").await;
        let waiting = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move { locks.acquire("s").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a second holder got in");
        // Another session is not held up.
        drop(locks.acquire("t").await);
        drop(first);
        let second = waiting.await.unwrap();
        drop(second);
        assert!(locks.lock_table().is_empty());
    }

    #[tokio::test]
    async fn grants_end_when_given_back_with_their_peer_or_past_the_lease() {
        let locks = Arc::new(SessionLocks::default());
        assert!(locks.expect("b", 1));
        let lock = locks.acquire("s").await;
        assert!(locks.grant("b", 1, lock));
        locks.release("b", 1);
        // Given back before the grant: the grant lets go at once.
        assert!(locks.expect("b", 9));
        locks.release("b", 9);
        assert!(!locks.grant("b", 9, locks.acquire("s").await));
        let lock = locks.acquire("s").await;
        assert!(locks.expect("b", 2));
        assert!(locks.grant("b", 2, lock));
        // A request still waiting when its peer's connection ends gets nothing afterwards.
        assert!(locks.expect("b", 3));
        locks.release_peer("b");
        assert!(!locks.grant("b", 3, locks.acquire("t").await));
        let lock = locks.acquire("s").await;
        assert!(locks.expect("c", 3));
        assert!(locks.grant("c", 3, lock));
        assert_eq!(locks.expire(Duration::from_secs(60)), 0);
        assert_eq!(locks.expire(Duration::ZERO), 1);
        drop(locks.acquire("s").await);
    }
}
