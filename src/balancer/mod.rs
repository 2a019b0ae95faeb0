//! Balancing: which backend of a pool gets a new request. One file per method.
//!
//! A selector sees the pool's backends in config order and returns an index of one that is
//! usable for this request (see [`Candidates::usable`]). Selectors know nothing of sessions.
//!
//! The backends that take no new work (draining, stopped, down, ejected, backups while a
//! primary can serve) are left out before a method picks, so that the others share the work
//! evenly whatever state those are in; round robin goes round the eligible backends only.

mod ip_hash;
mod least_conn;
mod random_two;
mod round_robin;
mod weighted;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Whether backend `i` takes new work in this pick: of the kind (primary or backup) and
    /// domain asked for, active and up, and not ejected. These backends make up the rotation
    /// that the turn-taking methods go round.
    pub fn eligible(&self, i: usize) -> bool {
        let backend = &self.backends[i];
        backend.config.backup == self.backups
            && self
                .domain
                .is_none_or(|domain| backend.config.domain.as_deref() == Some(domain))
            && backend.takes_new_work()
            && (self.ignore_ejection || !backend.is_ejected())
    }

    /// The indexes of the eligible backends, in config order.
    pub fn eligible_indexes(&self) -> Vec<usize> {
        (0..self.backends.len())
            .filter(|&i| self.eligible(i))
            .collect()
    }

    /// Those of `rotation` (eligible backends) that this request may go to ([`Self::admits`]).
    pub fn admitted(&self, rotation: &[usize]) -> Vec<usize> {
        rotation
            .iter()
            .copied()
            .filter(|&i| self.admits(i))
            .collect()
    }

    /// Whether this request may go to eligible backend `i`: not tried by it yet, under its
    /// `max_connections`, and past its slow start's dice (rolled anew on each call). A full
    /// backend keeps its place in the rotation and gives up its turn, as a tried one does.
    pub fn admits(&self, i: usize) -> bool {
        !self.exclude.contains(&i)
            && self.backends[i].live.has_room()
            && self.backends[i].passes_slow_start(self.slow_start)
    }

    /// Whether an eligible backend not tried by this request exists: when no selector found
    /// one it admits, those are full, and the request waits for them.
    pub fn any_untried(&self) -> bool {
        (0..self.backends.len()).any(|i| self.eligible(i) && !self.exclude.contains(&i))
    }

    /// Whether backend `i` may get this attempt: eligible, and admitted for this request.
    pub fn usable(&self, i: usize) -> bool {
        self.eligible(i) && self.admits(i)
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

/// Turn taking over a rotation, for `round_robin` and `least_conn`'s ties: the next turn of
/// `turns` that falls on one of `wanted` (a subset of `rotation`).
///
/// The rotation is the pool's eligible backends only, and a turn that falls on a backend this
/// request cannot take (tried already, held back by its slow start, or busier than the least
/// busy) is skipped, not handed to the next backend in line: handing it on would give that
/// neighbour two turns per cycle (a draining backend between a and c made it a c c a c c).
/// `None` only when `wanted` is empty.
fn next_turn(turns: &AtomicUsize, rotation: &[usize], wanted: &[usize]) -> Option<usize> {
    let first = *wanted.first()?;
    // One cycle of turns reaches every backend of the rotation, unless concurrent requests took
    // some of them: then the first wanted one.
    (0..rotation.len())
        .map(|_| rotation[turns.fetch_add(1, Ordering::Relaxed) % rotation.len()])
        .find(|i| wanted.contains(i))
        .or(Some(first))
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
                        max_connections: None,
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
