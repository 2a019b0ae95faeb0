//! `random_two`: the power of two choices. Two distinct usable backends at random, and the one
//! with fewer open requests wins; nearly as good as least_conn with no shared scan order.

use std::net::IpAddr;

use rand::Rng;

use super::{Candidates, Select};

/// Stateless: randomness comes from the thread-local generator.
pub struct RandomTwo;

impl Select for RandomTwo {
    fn select(&self, candidates: &Candidates<'_>, _client: IpAddr) -> Option<usize> {
        let backends = candidates.backends;
        let usable: Vec<usize> = (0..backends.len())
            .filter(|&i| candidates.usable(i))
            .collect();
        let mut rng = rand::rng();
        match usable.len() {
            0 => None,
            1 => Some(usable[0]),
            n => {
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (a, b) = (usable[a], usable[b]);
                Some(
                    if backends[b].live.in_flight() < backends[a].live.in_flight() {
                        b
                    } else {
                        a
                    },
                )
            }
        }
    }
}
