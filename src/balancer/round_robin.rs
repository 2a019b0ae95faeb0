//! `round_robin`: each backend that takes new work in turn.

use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;

use super::{next_turn, Candidates, Select};

/// A shared turn counter; concurrent requests each take the next turn.
#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Select for RoundRobin {
    fn select(&self, candidates: &Candidates<'_>, _client: IpAddr) -> Option<usize> {
        let rotation = candidates.eligible_indexes();
        let admitted = candidates.admitted(&rotation);
        next_turn(&self.next, &rotation, &admitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::{all, backends, with_state};
    use crate::config::BackendState;

    #[test]
    fn a_draining_backend_gives_up_its_turn_to_no_one_in_particular() {
        let mut pool = backends(&[1, 1, 1]);
        pool[1] = with_state(&pool[1], BackendState::Draining);
        let selector = RoundRobin::default();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let picks: Vec<usize> = (0..6)
            .map(|_| selector.select(&all(&pool), ip).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn a_retry_skips_the_tried_backend_and_the_rotation_goes_on() {
        let pool = backends(&[1, 1, 1]);
        let selector = RoundRobin::default();
        let ip = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(selector.select(&all(&pool), ip), Some(0));
        let retry = Candidates {
            exclude: &[1],
            ..all(&pool)
        };
        assert_eq!(selector.select(&retry, ip), Some(2));
        assert_eq!(selector.select(&all(&pool), ip), Some(0));
        let nothing_left = Candidates {
            exclude: &[0, 1, 2],
            ..all(&pool)
        };
        assert_eq!(selector.select(&nothing_left, ip), None);
        assert_eq!(selector.select(&all(&pool), ip), Some(1));
    }
}
