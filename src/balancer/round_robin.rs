//! `round_robin`: each backend in turn, skipping those that take no new work.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{first_usable_from, Candidates, Select};

/// A shared turn counter; concurrent requests each take the next turn.
#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Select for RoundRobin {
    fn select(&self, candidates: &Candidates<'_>, _client: IpAddr) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        first_usable_from(candidates, turn % candidates.len())
    }
}
