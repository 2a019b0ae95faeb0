//! Pools and backends as the request path sees them: an immutable snapshot built from the config,
//! plus each backend's live state (open requests, health) that outlives a reload.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::Authority;

use crate::balancer::{self, Select};
use crate::config::{BackendConfig, BackendState, PoolConfig};
use crate::proxy::upstream::Upstream;
use crate::sticky;

/// One backend of one pool.
#[derive(Debug)]
pub struct Backend {
    /// The backend as configured.
    pub config: BackendConfig,
    /// `address` parsed once, for building each upstream request's URI.
    pub authority: Authority,
    /// Open requests and health, shared across reloads.
    pub live: Arc<BackendLive>,
}

/// Live state of a backend, kept by (pool, address) across config reloads.
#[derive(Debug)]
pub struct BackendLive {
    /// Requests sent whose responses have not finished.
    in_flight: AtomicUsize,
    /// What the health checks last concluded; always true in a pool without checks.
    up: AtomicBool,
}

impl Default for BackendLive {
    fn default() -> Self {
        BackendLive::new(true)
    }
}

impl BackendLive {
    /// State for a backend tandem has not seen before.
    pub fn new(up: bool) -> BackendLive {
        BackendLive {
            in_flight: AtomicUsize::new(0),
            up: AtomicBool::new(up),
        }
    }

    /// Whether the health checks count this backend as up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records the health checks' verdict; returns whether it changed.
    pub fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed) != up
    }

    /// Counts a request as open until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Requests open on this backend now (for `least_conn` and `random_two`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// An open request on a backend; dropping it closes the request in the backend's count.
#[derive(Debug)]
pub struct InFlight(Arc<BackendLive>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Backend {
    /// Whether the balancer may give this backend a new request: active and up.
    pub fn takes_new_work(&self) -> bool {
        self.config.state == BackendState::Active && self.live.is_up()
    }

    /// Whether requests of sessions it already holds may still go to it: a draining backend
    /// keeps its sessions until they end, a stopped or down one takes nothing (mod_jk's
    /// activations).
    pub fn takes_sticky_work(&self) -> bool {
        self.config.state != BackendState::Stopped && self.live.is_up()
    }
}

/// A pool: its backends, the balancer over them and the client that talks to them.
pub struct Pool {
    /// The pool's name, shared with the access-log records of its requests.
    pub name: Arc<str>,
    /// The pool as configured.
    pub config: PoolConfig,
    /// The backends, in config order; the balancer returns indexes into this.
    pub backends: Vec<Arc<Backend>>,
    balancer: Box<dyn Select>,
    /// Route name to index in `backends`, for sticky requests.
    by_route: HashMap<String, usize>,
    /// The keep-alive client for this pool's backends; shared with the previous snapshot when
    /// its settings did not change.
    pub upstream: Arc<Upstream>,
}

impl Pool {
    /// Builds a pool. `previous` is the pool of the same name before a reload, if any: its
    /// backends' live state (open requests, health) and, when the connection settings are
    /// unchanged, its keep-alive connections are kept.
    pub fn new(config: PoolConfig, previous: Option<&Pool>) -> Pool {
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|backend| {
                let live = previous
                    .and_then(|p| {
                        p.backends
                            .iter()
                            .find(|b| b.config.address == backend.address)
                    })
                    .map(|b| Arc::clone(&b.live))
                    .unwrap_or_else(|| {
                        let up = config.health.as_ref().is_none_or(|health| health.start_up);
                        Arc::new(BackendLive::new(up))
                    });
                // Without health checks nobody would ever bring a backend back up.
                if config.health.is_none() {
                    live.set_up(true);
                }
                Arc::new(Backend {
                    authority: backend.address.parse().expect("validated host:port"),
                    config: backend.clone(),
                    live,
                })
            })
            .collect();
        let upstream = match previous {
            Some(p) if p.upstream.settings_match(&config) => Arc::clone(&p.upstream),
            _ => Arc::new(Upstream::new(&config)),
        };
        let balancer = balancer::for_method(config.balance, &backends);
        let by_route = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.config.route.clone(), i))
            .collect();
        Pool {
            name: Arc::from(config.name.as_str()),
            config,
            backends,
            balancer,
            by_route,
            upstream,
        }
    }

    /// The backend a session sticks to: the first of `session_ids` whose route names a backend
    /// of this pool that still takes its sessions' requests.
    pub fn sticky_backend(&self, session_ids: &[&str], separator: char) -> Option<&Arc<Backend>> {
        session_ids
            .iter()
            .filter_map(|id| sticky::route_of(id, separator))
            .filter_map(|route| self.by_route.get(route))
            .map(|&i| &self.backends[i])
            .find(|backend| backend.takes_sticky_work())
    }

    /// Picks a backend for a new request from `client`, or `None` when no backend takes new work.
    pub fn select(&self, client: IpAddr) -> Option<&Arc<Backend>> {
        self.balancer
            .select(&self.backends, client)
            .map(|i| &self.backends[i])
    }
}
