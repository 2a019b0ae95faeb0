//! `ip_hash`: consistent hashing on the client address. Each backend owns points on a ring in
//! proportion to its weight; a client goes to the owner of the first point after its hash that
//! takes new work. Adding, removing or stopping one backend moves only the clients that land on
//! that backend's points, unlike pen's `hash % n`, which reshuffles everyone.

use std::net::IpAddr;
use std::sync::Arc;

use super::{Candidates, Select};
use crate::pool::Backend;

/// Ring points per unit of weight: enough for an even spread over a handful of backends.
const POINTS_PER_WEIGHT: u32 = 160;

/// The ring, sorted by point; each point names a backend by index.
pub struct HashRing {
    points: Vec<(u64, usize)>,
}

impl HashRing {
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        let mut points = Vec::new();
        for (index, backend) in backends.iter().enumerate() {
            // Points derive from the address, not the index, so that reordering the config or
            // removing another backend leaves this backend's points where they were.
            for replica in 0..backend.weight() * POINTS_PER_WEIGHT {
                let key = format!("{}#{replica}", backend.config.address);
                points.push((hash64(key.as_bytes()), index));
            }
        }
        points.sort_unstable();
        HashRing { points }
    }
}

impl Select for HashRing {
    fn select(&self, candidates: &Candidates<'_>, client: IpAddr) -> Option<usize> {
        let key = match client {
            IpAddr::V4(v4) => hash64(&v4.octets()),
            IpAddr::V6(v6) => hash64(&v6.octets()),
        };
        let start = self.points.partition_point(|&(point, _)| point < key);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1)
            .find(|&i| candidates.usable(i))
    }
}

/// FNV-1a with a final avalanche (from SplitMix64). Written out because the ring must hash the
/// same way in every build and on every peer, which std's `DefaultHasher` does not promise.
fn hash64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::{all, backends, with_state};
    use crate::config::BackendState;

    fn clients() -> impl Iterator<Item = IpAddr> {
        (0..2000u32).map(|i| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]))
    }

    #[test]
    fn stopping_one_backend_moves_only_its_clients_and_spreads_them() {
        let pool = backends(&[1, 1, 1, 1]);
        let ring = HashRing::new(&pool);
        let mut changed_pool = pool.clone();
        changed_pool[2] = with_state(&pool[2], BackendState::Stopped);
        let mut counts = [0usize; 4];
        for client in clients() {
            let before = ring.select(&all(&pool), client).unwrap();
            let after = ring.select(&all(&changed_pool), client).unwrap();
            counts[before] += 1;
            if before != 2 {
                assert_eq!(
                    before, after,
                    "client {client} moved although its backend did not change"
                );
            } else {
                assert_ne!(after, 2);
            }
        }
        for count in counts {
            assert!((300..700).contains(&count), "uneven spread {counts:?}");
        }
    }
}
