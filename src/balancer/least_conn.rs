//! `least_conn`: the backend with the fewest open requests; ties go round robin, so an idle pool
//! is still spread evenly.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidates, Select};

/// Where the scan for the least loaded backend starts, moved on by each request.
#[derive(Default)]
pub struct LeastConn {
    next: AtomicUsize,
}

impl Select for LeastConn {
    fn select(&self, candidates: &Candidates<'_>, _client: IpAddr) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| candidates.usable(i))
            .min_by_key(|&i| candidates.backends[i].live.in_flight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::{all, backends};

    #[test]
    fn busy_backend_is_avoided_and_idle_ones_alternate() {
        let pool = backends(&[1, 1, 1]);
        let _busy = pool[0].live.start();
        let selector = LeastConn::default();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let picks: Vec<usize> = (0..4)
            .map(|_| selector.select(&all(&pool), ip).unwrap())
            .collect();
        assert!(!picks.contains(&0), "{picks:?}");
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
    }
}
