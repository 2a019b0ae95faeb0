//! Ids of ended sessions, remembered so that a peer's late update cannot bring one back: each
//! for a while, and at most a fixed number of them, the oldest forgotten first. A backend that
//! creates and ends sessions in a loop costs bounded memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// See the module doc.
pub struct EndedIds {
    capacity: usize,
    inner: Mutex<Remembered>,
}

#[derive(Default)]
struct Remembered {
    /// Id → until when it is remembered (Unix ms).
    until: HashMap<Arc<str>, u64>,
    /// The same, in the order they were remembered (an id remembered again appears twice).
    order: VecDeque<(u64, Arc<str>)>,
}

impl Remembered {
    /// Drops the oldest entry; its id is forgotten unless it was remembered again since.
    fn drop_oldest(&mut self) -> Option<u64> {
        let (until, id) = self.order.pop_front()?;
        if self.until.get(&id) == Some(&until) {
            self.until.remove(&id);
        }
        Some(until)
    }
}

impl EndedIds {
    /// Remembers at most `capacity` ids.
    pub fn new(capacity: usize) -> EndedIds {
        EndedIds {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers `id` until `until` (Unix ms); past the capacity, the oldest id is forgotten.
    pub fn remember(&self, id: &str, until: u64) {
        let mut remembered = self.lock();
        let id: Arc<str> = Arc::from(id);
        remembered.until.insert(Arc::clone(&id), until);
        remembered.order.push_back((until, id));
        while remembered.until.len() > self.capacity || remembered.order.len() > 2 * self.capacity {
            remembered.drop_oldest();
        }
    }

    /// Whether `id` is remembered as ended.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().until.contains_key(id)
    }

    /// Forgets the ids remembered until `now` or before.
    pub fn forget_before(&self, now: u64) {
        let mut remembered = self.lock();
        while remembered
            .order
            .front()
            .is_some_and(|(until, _)| *until <= now)
        {
            remembered.drop_oldest();
        }
    }

    /// Every id remembered.
    pub fn ids(&self) -> Vec<Arc<str>> {
        self.lock().until.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_capacity_the_oldest_ids_are_forgotten() {
        let ended = EndedIds::new(3);
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            ended.remember(id, 100 + i as u64);
        }
        assert!(!ended.contains("a"));
        assert!(ended.contains("b") && ended.contains("d"));
        assert_eq!(ended.ids().len(), 3);
    }

    #[test]
    fn ids_are_forgotten_once_their_time_is_up_unless_remembered_again() {
        let ended = EndedIds::new(10);
        ended.remember("a", 100);
        ended.remember("b", 100);
        ended.remember("a", 300);
        ended.forget_before(200);
        assert!(ended.contains("a"));
        assert!(!ended.contains("b"));
        ended.forget_before(300);
        assert!(ended.ids().is_empty());
    }
}
