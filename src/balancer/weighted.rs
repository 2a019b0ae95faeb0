//! `weighted`: smooth weighted round robin as nginx does it. With weights 5:1:1 a cycle of seven
//! requests goes a a b a c a a, never five to one backend in a row.

use std::net::IpAddr;
use std::sync::Mutex;

use super::{Candidates, Select};

/// Each backend's current weight; a request raises every usable backend's current weight by its
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
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, backend) in candidates.backends.iter().enumerate() {
            if !candidates.usable(i) {
                continue;
            }
            let weight = i64::from(backend.config.weight);
            current[i] += weight;
            total += weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        current[chosen] -= total;
        Some(chosen)
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
