//! `round_robin`: each backend in turn, skipping those that take no new work.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{first_usable_from, Select};
use crate::pool::Backend;

/// A shared turn counter; concurrent requests each take the next turn.
#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Select for RoundRobin {
    fn select(&self, backends: &[Arc<Backend>], _client: IpAddr) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        first_usable_from(backends, turn % backends.len())
    }
}
