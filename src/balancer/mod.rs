//! Balancing: which backend of a pool gets a new request. One file per method.
//!
//! A selector sees the pool's backends in config order and returns an index of one that is
//! usable for this request (see [`Candidates::usable`]). Selectors know nothing of sessions.

mod ip_hash;
mod least_conn;
mod random_two;
mod round_robin;
mod weighted;

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::BalanceMethod;
use crate::pool::Backend;

/// The backends a selector may pick from for one attempt of one request.
pub struct Candidates<'a> {
    /// The pool's backends, in config order.
    pub backends: &'a [Arc<Backend>],
    /// Indexes already tried by this request (a retry goes elsewhere).
    pub exclude: &'a [usize],
    /// Set when every backend is ejected by passive checks: then they are tried anyway, as
    /// nginx does, rather than failing everything.
    pub ignore_ejection: bool,
    /// Whether this pick is among the backup backends (only when no primary is usable).
    pub backups: bool,
    /// Only backends of this domain, when set (a session failing over within its domain).
    pub domain: Option<&'a str>,
    /// The pool's slow start, when this pick applies its ramp.
    pub slow_start: Option<std::time::Duration>,
}

impl Candidates<'_> {
    /// Whether backend `i` may get this attempt: of the kind (primary or backup) and domain
    /// asked for, not tried yet, active and up, not ejected, and past its slow start's dice.
    pub fn usable(&self, i: usize) -> bool {
        let backend = &self.backends[i];
        backend.config.backup == self.backups
            && self
                .domain
                .is_none_or(|domain| backend.config.domain.as_deref() == Some(domain))
            && !self.exclude.contains(&i)
            && backend.takes_new_work()
            && (self.ignore_ejection || !backend.is_ejected())
            && backend.passes_slow_start(self.slow_start)
    }

    /// How many backends the pool has (usable or not).
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether the pool has no backends at all.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

/// A balance method with whatever state it keeps between requests.
pub trait Select: Send + Sync {
    /// Index of the backend for this attempt, `None` if no candidate is usable.
    fn select(&self, candidates: &Candidates<'_>, client: IpAddr) -> Option<usize>;
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

/// The first usable index at or after `start` (wrapping).
fn first_usable_from(candidates: &Candidates<'_>, start: usize) -> Option<usize> {
    let n = candidates.len();
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| candidates.usable(i))
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use crate::config::{BackendConfig, BackendState};
    use crate::pool::{Backend, BackendLive};

    use super::Candidates;

    /// Every backend of `backends` as a candidate.
    pub fn all(backends: &[Arc<Backend>]) -> Candidates<'_> {
        Candidates {
            backends,
            exclude: &[],
            ignore_ejection: false,
            backups: false,
            domain: None,
            slow_start: None,
        }
    }

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
                        backup: false,
                        domain: None,
                        redirect: None,
                    },
                    authority: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    live: Arc::new(BackendLive::new(true)),
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
