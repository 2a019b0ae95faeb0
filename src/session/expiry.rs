//! The expiry queue: each session's deadline in a min-heap, so that finding what expired costs
//! the expired sessions, not a scan of all of them.
//!
//! A session has exactly one live entry, whose deadline it remembers (`Session::queued_ms`).
//! Touching a session only moves its deadline later, so the entry is left alone: when it comes
//! due, the sweeper finds the session still fresh and queues it again at its real deadline. An
//! entry whose deadline the session no longer remembers (renewed away, re-queued earlier) is
//! stale and dropped when it comes up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

/// Deadlines (Unix ms) and the session ids they belong to, soonest first.
#[derive(Debug, Default)]
pub struct ExpiryQueue(BinaryHeap<Reverse<(u64, Arc<str>)>>);

impl ExpiryQueue {
    /// Queues `id` to be looked at when `deadline_ms` has passed.
    pub fn push(&mut self, deadline_ms: u64, id: Arc<str>) {
        self.0.push(Reverse((deadline_ms, id)));
    }

    /// The soonest entry whose deadline is at or before `now_ms`, taken off the queue.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, Arc<str>)> {
        match self.0.peek() {
            Some(Reverse((deadline, _))) if *deadline <= now_ms => {
                self.0.pop().map(|Reverse(entry)| entry)
            }
            _ => None,
        }
    }
}
