//! Balancing: which backend of a pool gets a new request. One file per method.
//!
//! A selector sees the pool's backends in config order and returns an index; it skips backends
//! that take no new work (draining, stopped). Selectors know nothing of sessions or health.

mod ip_hash;
mod least_conn;
mod random_two;
mod round_robin;
mod weighted;

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::BalanceMethod;
use crate::pool::Backend;

/// A balance method with whatever state it keeps between requests.
pub trait Select: Send + Sync {
    /// Index into `backends` of the backend for this request, `None` if none takes new work.
    fn select(&self, backends: &[Arc<Backend>], client: IpAddr) -> Option<usize>;
}

/// Builds the selector for `method` over `backends` (the same slice later passed to `select`).
pub fn for_method(method: BalanceMethod, backends: &[Arc<Backend>]) -> Box<dyn Select> {
    match method {
        BalanceMethod::RoundRobin => Box::new(round_robin::RoundRobin::default()),
        BalanceMethod::Weighted => Box::new(weighted::SmoothWeighted::new(backends.len())),
        BalanceMethod::LeastConn => Box::new(least_conn::LeastConn::default()),
        BalanceMethod::IpHash => Box::new(ip_hash::HashRing::new(backends)),
        BalanceMethod::RandomTwo => Box::new(random_two::RandomTwo),
    }
}

/// The first index at or after `start` (wrapping) whose backend takes new work.
fn first_usable_from(backends: &[Arc<Backend>], start: usize) -> Option<usize> {
    let n = backends.len();
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| backends[i].takes_new_work())
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use crate::config::{BackendConfig, BackendState};
    use crate::pool::{Backend, BackendLive};

    /// Backends named b0, b1, ... with the given weights, all active.
    pub fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                Arc::new(Backend {
                    config: BackendConfig {
                        address: format!("127.0.0.1:{}", 9000 + i),
                        route: format!("b{i}"),
                        weight,
                        state: BackendState::Active,
                    },
                    authority: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    live: Arc::new(BackendLive::default()),
                })
            })
            .collect()
    }

    /// The same backend with another state.
    pub fn with_state(backend: &Backend, state: BackendState) -> Arc<Backend> {
        Arc::new(Backend {
            config: BackendConfig {
                state,
                ..backend.config.clone()
            },
            authority: backend.authority.clone(),
            live: Arc::clone(&backend.live),
        })
    }
}
