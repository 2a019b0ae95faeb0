//! `least_conn`: the backend with the fewest open requests; ties go round robin over the
//! backends that take new work, so an idle pool is still spread evenly.

use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;

use super::{next_turn, Candidates, Select};

/// The turn counter that breaks ties, moved on by each request.
#[derive(Default)]
pub struct LeastConn {
    next: AtomicUsize,
}

impl Select for LeastConn {
    fn select(&self, candidates: &Candidates<'_>, _client: IpAddr) -> Option<usize> {
        let rotation = candidates.eligible_indexes();
        let admitted = candidates.admitted(&rotation);
        // One reading of each count, so that the least busy are judged on the same figures.
        let open: Vec<usize> = admitted
            .iter()
            .map(|&i| candidates.backends[i].live.in_flight())
            .collect();
        let fewest = *open.iter().min()?;
        let least_busy: Vec<usize> = admitted
            .iter()
            .zip(&open)
            .filter(|&(_, &count)| count == fewest)
            .map(|(&i, _)| i)
            .collect();
        next_turn(&self.next, &rotation, &least_busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::{all, backends};

    #[test]
    fn busy_backend_is_avoided_and_idle_ones_alternate() {
        let pool = backends(&[1, 1, 1]);
        let _busy = pool[0].live.try_start(&Default::default());
        let selector = LeastConn::default();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let picks: Vec<usize> = (0..4)
            .map(|_| selector.select(&all(&pool), ip).unwrap())
            .collect();
        assert!(!picks.contains(&0), "{picks:?}");
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
    }
}
