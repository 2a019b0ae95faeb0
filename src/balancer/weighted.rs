//! `weighted`: smooth weighted round robin as nginx does it. With weights 5:1:1 a cycle of seven
//! requests goes a a b a c a a, never five to one backend in a row.

use std::net::IpAddr;
use std::sync::Mutex;

use super::{Candidates, Select};

/// Each backend's current weight; a step raises every eligible backend's current weight by its
/// weight, goes to the highest, and lowers that one by the total.
pub struct SmoothWeighted {
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub fn new(backend_count: usize) -> Self {
        SmoothWeighted {
            current: Mutex::new(vec![0; backend_count]),
        }
    }
}

impl Select for SmoothWeighted {
    fn select(&self, candidates: &Candidates<'_>, _client: IpAddr) -> Option<usize> {
        let rotation = candidates.eligible_indexes();
        let admitted = candidates.admitted(&rotation);
        let first_admitted = *admitted.first()?;
        let weight = |i: usize| i64::from(candidates.backends[i].weight());
        let total: i64 = rotation.iter().map(|&i| weight(i)).sum();
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A step that falls on a backend this request cannot take (tried already, held back by
        // its slow start) is that backend's turn gone, as in round robin: taking the next step
        // keeps the others' shares exact. A cycle of `total` steps reaches every backend.
        for _ in 0..total {
            let mut best = rotation[0];
            for &i in &rotation {
                current[i] += weight(i);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            if admitted.contains(&best) {
                return Some(best);
            }
        }
        Some(first_admitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::{all, backends};

    #[test]
    fn five_one_one_is_spread_as_nginx_spreads_it() {
        let pool = backends(&[5, 1, 1]);
        let selector = SmoothWeighted::new(pool.len());
        let ip = IpAddr::from([127, 0, 0, 1]);
        let picks: Vec<usize> = (0..7)
            .map(|_| selector.select(&all(&pool), ip).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }
}
