//! Pools and backends as the request path sees them: an immutable snapshot built from the config,
//! plus each backend's live state (open requests, health) that outlives a reload.
//!
//! A backend's `max_connections` caps its requests in flight (HAProxy's server `maxconn`). The
//! cap lives in [`BackendLive`], so a reload that changes it applies at once to every request,
//! queued ones included. A request whose pick finds every backend full waits in its pool's
//! [`Queue`] (kept across reloads by pool name) until a request of the pool ends, then picks
//! again: a request free to go anywhere takes the first backend with room, a sticky one waits
//! for its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Instant;

use http::uri::Authority;
use tokio::sync::Notify;

use crate::balancer::{self, Candidates, Select};
use crate::cluster::replication::Replicator;
use crate::config::{
    BackendConfig, BackendState, PassiveConfig, PoolConfig, StickyConfig, StickyMode,
};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::placement::{CookieTemplates, Placement, StickyTable};
use crate::proxy::upstream::Upstream;
use crate::retry::RetryBudget;
use crate::sticky::{self, SessionId};

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
    /// The configured `max_connections`, 0 for none; set by each reload.
    max_connections: AtomicUsize,
    /// What the health checks last concluded; always true in a pool without checks.
    up: AtomicBool,
    /// Passive checks: failures counted in the current window, and when that window began.
    fails: AtomicU32,
    window_start_ms: AtomicU64,
    /// Passive checks: [`clock_ms`] until which the backend is out of rotation; 0 when it is not.
    ejected_until_ms: AtomicU64,
    /// Active checks: probes passed in a row since the last passive ejection began; `rise` of
    /// them end that ejection.
    probes_passed_since_ejection: AtomicU32,
    /// [`clock_ms`] when the backend last came back (health UP, ejection over), for slow start;
    /// 0 when it is not ramping up.
    back_since_ms: AtomicU64,
    /// A state set through the admin API over the configured one (0: none; else
    /// [`BackendState`] as `state_code`). It outlives reloads until the file changes the state.
    state_override: AtomicU8,
    /// Requests sent to it since tandem started (for the status page's request rate).
    sent: AtomicU64,
    /// The last failure seen (a failed request or health probe), for the status page.
    last_error: std::sync::Mutex<Option<LastError>>,
    /// A weight set through the admin API over the configured one (0: none). Like
    /// `state_override`, it outlives reloads until the file changes that backend's weight.
    weight_override: AtomicU32,
    /// What the status page and its exports count: responses, bytes, errors, retries.
    pub counters: BackendCounters,
    /// The latest active health probe, in words, for the status page.
    last_check: std::sync::Mutex<Option<CheckResult>>,
    /// [`clock_ms`] of the last change of health or admin state (HAProxy's `lastchg`).
    last_change_ms: AtomicU64,
    /// [`clock_ms`] since which the health checks hold the backend down; 0 while it is up.
    down_since_ms: AtomicU64,
    /// Milliseconds spent down in the periods that have ended (HAProxy's `downtime`).
    downtime_ended_ms: AtomicU64,
}

/// Per-backend totals since tandem started (kept across reloads with the rest of
/// [`BackendLive`]), for the status page, `/status.json` and `/status.csv`: cheap relaxed
/// atomics bumped where a request completes, fails or is retried.
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Responses finished (whatever their status), HAProxy's `stot`.
    pub responses: AtomicU64,
    /// Response body bytes sent to clients, HAProxy's `bout`.
    pub bytes_out: AtomicU64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx (HAProxy's `hrsp_*`).
    pub by_class: [AtomicU64; 5],
    /// Failed attempts: connect errors, timeouts, resets, `fail_on_status` statuses.
    pub errors: AtomicU64,
    /// Attempts sent again after one failed on this backend (HAProxy's `wretr`).
    pub retries: AtomicU64,
    /// Requests of a session owned elsewhere that this backend served (HAProxy's `wredis`).
    pub failovers: AtomicU64,
}

/// One active health probe's outcome as an operator reads it.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// Whether the probe passed.
    pub passed: bool,
    /// HAProxy's `check_status` code: `L7OK`, `L7STS`, `L4CON`, `L4TOUT`, ...
    pub code: &'static str,
    /// What happened, in words: `connection refused in 0 ms`, `status 503 in 3 ms`.
    pub words: String,
    /// How long the probe took.
    pub duration_ms: u64,
}

/// A backend's most recent failure.
#[derive(Debug, Clone)]
pub struct LastError {
    /// When it happened.
    pub at: std::time::SystemTime,
    /// What happened.
    pub reason: String,
}

impl BackendLive {
    /// State for a backend tandem has not seen before.
    pub fn new(up: bool) -> BackendLive {
        BackendLive {
            in_flight: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(0),
            up: AtomicBool::new(up),
            fails: AtomicU32::new(0),
            window_start_ms: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            probes_passed_since_ejection: AtomicU32::new(0),
            back_since_ms: AtomicU64::new(0),
            state_override: AtomicU8::new(0),
            sent: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(None),
            weight_override: AtomicU32::new(0),
            counters: BackendCounters::default(),
            last_check: std::sync::Mutex::new(None),
            last_change_ms: AtomicU64::new(clock_ms()),
            down_since_ms: AtomicU64::new(if up { 0 } else { clock_ms() }),
            downtime_ended_ms: AtomicU64::new(0),
        }
    }

    /// Counts a finished response of this backend: its status class and body bytes.
    pub fn record_response(&self, status: http::StatusCode, bytes_out: u64) {
        let counters = &self.counters;
        counters.responses.fetch_add(1, Ordering::Relaxed);
        counters.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        if let Some(class) = counters
            .by_class
            .get((status.as_u16() / 100).wrapping_sub(1) as usize)
        {
            class.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an attempt on this backend that failed and was sent again.
    pub fn count_retry(&self) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request this backend served for a session owned by another backend.
    pub fn count_failover(&self) {
        self.counters.failovers.fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers the latest active health probe's outcome.
    pub fn record_check(&self, result: CheckResult) {
        *self
            .last_check
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(result);
    }

    /// The latest active health probe's outcome; `None` before the first or without checks.
    pub fn last_check(&self) -> Option<CheckResult> {
        self.last_check
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Time since the health or admin state last changed (or since tandem first saw it).
    pub fn since_last_change(&self) -> std::time::Duration {
        let at = self.last_change_ms.load(Ordering::Relaxed);
        std::time::Duration::from_millis(clock_ms().saturating_sub(at))
    }

    /// Total time the health checks have held this backend down, the current period included.
    pub fn downtime(&self) -> std::time::Duration {
        let since = self.down_since_ms.load(Ordering::Relaxed);
        let current = if since == 0 {
            0
        } else {
            clock_ms().saturating_sub(since)
        };
        std::time::Duration::from_millis(self.downtime_ended_ms.load(Ordering::Relaxed) + current)
    }

    /// Sets (or, with `None`, clears) the weight the admin API gave this backend.
    pub fn set_weight_override(&self, weight: Option<u32>) {
        self.weight_override
            .store(weight.unwrap_or(0), Ordering::Relaxed);
    }

    /// The weight the admin API gave this backend, if any.
    pub fn weight_override(&self) -> Option<u32> {
        Some(self.weight_override.load(Ordering::Relaxed)).filter(|&weight| weight != 0)
    }

    /// Requests sent to this backend since tandem started.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Remembers `reason` as this backend's latest failure.
    pub fn note_error(&self, reason: &str) {
        let error = LastError {
            at: std::time::SystemTime::now(),
            reason: reason.chars().take(200).collect(),
        };
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error);
    }

    /// This backend's latest failure, if any.
    pub fn last_error(&self) -> Option<LastError> {
        self.last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Sets (or, with `None`, clears) the state the admin API gave this backend.
    pub fn set_state_override(&self, state: Option<BackendState>) {
        let code = state.map_or(0, state_code);
        if self.state_override.swap(code, Ordering::Relaxed) != code {
            self.last_change_ms.store(clock_ms(), Ordering::Relaxed);
        }
    }

    /// The state the admin API gave this backend, if any.
    pub fn state_override(&self) -> Option<BackendState> {
        match self.state_override.load(Ordering::Relaxed) {
            1 => Some(BackendState::Active),
            2 => Some(BackendState::Draining),
            3 => Some(BackendState::Stopped),
            _ => None,
        }
    }

    /// Whether the health checks count this backend as up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records the health checks' verdict; returns whether it changed. Coming up starts the
    /// slow start ramp and ends a passive ejection: the active checks have just seen the
    /// backend serve again (as HAProxy's checks bring back a server its traffic marked down).
    pub fn set_up(&self, up: bool) -> bool {
        let changed = self.up.swap(up, Ordering::Relaxed) != up;
        if changed {
            let now = clock_ms();
            self.last_change_ms.store(now, Ordering::Relaxed);
            if up {
                let since = self.down_since_ms.swap(0, Ordering::Relaxed);
                if since != 0 {
                    self.downtime_ended_ms
                        .fetch_add(now.saturating_sub(since), Ordering::Relaxed);
                }
            } else {
                self.down_since_ms.store(now, Ordering::Relaxed);
            }
        }
        if changed && up {
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            self.back_since_ms.store(clock_ms(), Ordering::Relaxed);
        }
        changed
    }

    /// Records an active health probe's result. The `rise`-th probe in a row to pass since a
    /// passive ejection began ends that ejection, whether or not the backend was ever down: a
    /// restarted Tomcat that answers its checks again is back in seconds, not after
    /// `recover_after` (as HAProxy's checks and mod_jk's recovery probes take it back).
    /// Returns whether an ejection ended.
    pub fn record_probe(&self, passed: bool, rise: u32) -> bool {
        let passes = &self.probes_passed_since_ejection;
        if !passed {
            passes.store(0, Ordering::Relaxed);
            return false;
        }
        let passed_in_a_row = passes.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        let ended = passed_in_a_row >= rise
            && until != 0
            && self
                .ejected_until_ms
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if ended {
            self.back_since_ms.store(clock_ms(), Ordering::Relaxed);
        }
        ended
    }

    /// Counts a request as open until the returned guard is dropped, if the backend has room
    /// under its `max_connections`; `None` when it is full. The guard's drop wakes `queue`.
    pub fn try_start(self: &Arc<Self>, queue: &Arc<Queue>) -> Option<InFlight> {
        let cap = self.max_connections.load(Ordering::SeqCst);
        // SeqCst with `Queue`'s counter: see `InFlight`'s drop.
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (cap == 0 || open < cap).then_some(open + 1)
            })
            .ok()?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            live: Arc::clone(self),
            queue: Arc::clone(queue),
        })
    }

    /// Whether a request may start now under `max_connections`.
    pub fn has_room(&self) -> bool {
        let cap = self.max_connections.load(Ordering::SeqCst);
        cap == 0 || self.in_flight.load(Ordering::SeqCst) < cap
    }

    /// Sets the cap from the config (`None`: no cap).
    fn set_max_connections(&self, cap: Option<usize>) {
        self.max_connections
            .store(cap.unwrap_or(0), Ordering::SeqCst);
    }

    /// Requests open on this backend now (for `least_conn` and `random_two`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// An open request on a backend; dropping it closes the request in the backend's count and
/// wakes the requests waiting in the pool's queue. The response body holds it to its end.
#[derive(Debug)]
pub struct InFlight {
    live: Arc<BackendLive>,
    queue: Arc<Queue>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.live.in_flight.fetch_sub(1, Ordering::SeqCst);
        // A waiter counts itself, then registers, then looks for room: in the SeqCst order
        // either it sees this slot free, or this load sees it waiting and wakes it.
        if self.queue.waiting.load(Ordering::SeqCst) > 0 {
            self.queue.freed.notify_waiters();
        }
    }
}

/// Requests of one pool waiting for a backend with room under its `max_connections`.
#[derive(Debug, Default)]
pub struct Queue {
    /// Woken whenever a request of the pool ends (and by a reload, which may raise a cap).
    freed: Notify,
    /// Requests waiting now.
    waiting: AtomicUsize,
}

impl Queue {
    /// Requests waiting now (the `tandem_queue_length` gauge).
    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request's place in a [`Queue`]; leaving drops it.
struct Waiting<'q>(&'q Queue);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a pick found: a backend with room, or only usable backends that are full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// This backend (an index into `Pool::backends`) takes the attempt now.
    Backend(usize),
    /// The backends this request may use are all at their `max_connections`: wait.
    Full,
}

fn state_code(state: BackendState) -> u8 {
    match state {
        BackendState::Active => 1,
        BackendState::Draining => 2,
        BackendState::Stopped => 3,
    }
}

impl Backend {
    /// The state in force: the admin API's, else the configured one.
    pub fn state(&self) -> BackendState {
        self.live.state_override().unwrap_or(self.config.state)
    }

    /// The weight in force: the admin API's, else the configured one. Balancers read this,
    /// never `config.weight`.
    pub fn weight(&self) -> u32 {
        self.live.weight_override().unwrap_or(self.config.weight)
    }

    /// Whether the balancer may give this backend a new request: active and up.
    pub fn takes_new_work(&self) -> bool {
        self.state() == BackendState::Active && self.live.is_up()
    }

    /// Whether requests of sessions it already holds may still go to it: a draining backend
    /// keeps its sessions until they end, a stopped, down or ejected one takes nothing (mod_jk's
    /// activations).
    pub fn takes_sticky_work(&self) -> bool {
        self.state() != BackendState::Stopped && self.live.is_up() && !self.is_ejected()
    }

    /// Whether passive checks have taken this backend out of rotation. The first call after
    /// the ejection ends puts it back, and says so in the log.
    pub fn is_ejected(&self) -> bool {
        let until = self.live.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if clock_ms() < until {
            return true;
        }
        let back = self.live.ejected_until_ms.compare_exchange(
            until,
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if back.is_ok() {
            self.live.back_since_ms.store(clock_ms(), Ordering::Relaxed);
            tracing::info!(backend = %self.config.address, "backend back in rotation after its passive ejection");
        }
        false
    }

    /// Slow start: whether this backend, which came back `slow_start` ago or less, takes this
    /// turn. Its chance grows from 0 to 1 over `slow_start`, so its share ramps up.
    pub fn passes_slow_start(&self, slow_start: Option<std::time::Duration>) -> bool {
        let Some(slow_start) = slow_start else {
            return true;
        };
        let since = self.live.back_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return true;
        }
        let elapsed = clock_ms().saturating_sub(since);
        let ramp = slow_start.as_millis().max(1) as u64;
        if elapsed >= ramp {
            self.live.back_since_ms.store(0, Ordering::Relaxed);
            return true;
        }
        rand::random::<f64>() < elapsed as f64 / ramp as f64
    }

    /// Counts a failed request (connect error, timeout, reset, or a `fail_on_status` status)
    /// against this backend; `max_fails` of them in a row within `fail_window` eject it for
    /// `recover_after`, or with active checks until `rise` probes in a row pass after this.
    pub fn record_failure(&self, passive: &PassiveConfig, pool: &str, reason: &str) {
        self.live.note_error(reason);
        self.live.counters.errors.fetch_add(1, Ordering::Relaxed);
        if passive.max_fails == 0 {
            return;
        }
        let now = clock_ms();
        let live = &self.live;
        let window = passive.fail_window.as_millis() as u64;
        if now.saturating_sub(live.window_start_ms.load(Ordering::Relaxed)) > window {
            live.window_start_ms.store(now, Ordering::Relaxed);
            live.fails.store(0, Ordering::Relaxed);
        }
        let fails = live.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails >= passive.max_fails {
            live.fails.store(0, Ordering::Relaxed);
            let until = now + passive.recover_after.as_millis() as u64;
            live.probes_passed_since_ejection
                .store(0, Ordering::Relaxed);
            if live.ejected_until_ms.swap(until, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    pool,
                    backend = %self.config.address,
                    fails,
                    recover_after = ?passive.recover_after,
                    %reason,
                    "backend ejected: it failed requests"
                );
            }
        }
    }

    /// Counts a successful request: the failures so far no longer count as "in a row".
    pub fn record_success(&self) {
        if self.live.fails.load(Ordering::Relaxed) != 0 {
            self.live.fails.store(0, Ordering::Relaxed);
        }
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
    /// Tokens for retries, filled by each request.
    pub retry_budget: RetryBudget,
    /// Where sessions live when their id does not say (takeovers, learned ids); kept across
    /// reloads.
    pub sticky_table: Arc<StickyTable>,
    /// How the backends set their session cookies; kept across reloads.
    pub cookie_templates: Arc<CookieTemplates>,
    /// Where placements recorded here go to the cluster's peers; `None` on a single node.
    shared: Option<Arc<Replicator>>,
    /// The keep-alive client for this pool's backends; shared with the previous snapshot when
    /// its settings did not change.
    pub upstream: Arc<Upstream>,
    /// Requests waiting for a backend under its `max_connections`; kept across reloads.
    pub queue: Arc<Queue>,
}

impl Pool {
    /// Builds a pool. `previous` is the pool of the same name before a reload, if any: its
    /// backends' live state (open requests, health) and, when the connection settings are
    /// unchanged, its keep-alive connections are kept.
    pub fn new(
        config: PoolConfig,
        previous: Option<&Pool>,
        metrics: &Metrics,
        shared: Option<Arc<Replicator>>,
    ) -> Pool {
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
                    .map(|b| {
                        // What the admin API set lasts until the file changes that setting.
                        let live = &b.live;
                        if b.config.state != backend.state && live.state_override().is_some() {
                            live.set_state_override(None);
                            tracing::info!(
                                pool = %config.name,
                                backend = %backend.address,
                                "the config file changed the backend's state: the one set through the admin API is dropped"
                            );
                        }
                        if b.config.weight != backend.weight && live.weight_override().is_some() {
                            live.set_weight_override(None);
                            tracing::info!(
                                pool = %config.name,
                                backend = %backend.address,
                                "the config file changed the backend's weight: the one set through the admin API is dropped"
                            );
                        }
                        Arc::clone(live)
                    })
                    .unwrap_or_else(|| {
                        let up = config.health.as_ref().is_none_or(|health| health.start_up);
                        Arc::new(BackendLive::new(up))
                    });
                // Without health checks nobody would ever bring a backend back up.
                if config.health.is_none() {
                    live.set_up(true);
                }
                live.set_max_connections(backend.max_connections);
                Arc::new(Backend {
                    authority: backend.address.parse().expect("validated host:port"),
                    config: backend.clone(),
                    live,
                })
            })
            .collect();
        let upstream = match previous {
            Some(p) if p.upstream.settings_match(&config) => Arc::clone(&p.upstream),
            _ => Arc::new(Upstream::new(&config, metrics)),
        };
        let balancer = balancer::for_method(config.balance, &backends);
        let by_route = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.config.route.clone(), i))
            .collect();
        // Kept across reloads while the sticky mode stays (a changed table_ttl or table_max
        // applies after a restart); a new mode means new keys, so the table starts empty.
        let mode = |config: &PoolConfig| config.sticky.as_ref().map(|sticky| sticky.mode);
        let sticky_table = previous
            .filter(|p| mode(&p.config) == mode(&config))
            .map(|p| Arc::clone(&p.sticky_table))
            .unwrap_or_else(|| {
                let (ttl, max) = config
                    .sticky
                    .as_ref()
                    .map_or((std::time::Duration::from_secs(1800), 1), |s| {
                        (s.table_ttl, s.table_max)
                    });
                Arc::new(StickyTable::new(ttl, max))
            });
        let cookie_templates = previous
            .map(|p| Arc::clone(&p.cookie_templates))
            .unwrap_or_default();
        let queue: Arc<Queue> = previous.map(|p| Arc::clone(&p.queue)).unwrap_or_default();
        // The caps may have been raised: the waiting requests look again.
        queue.freed.notify_waiters();
        Pool {
            queue,
            shared,
            sticky_table,
            cookie_templates,
            retry_budget: RetryBudget::new(config.retry.budget),
            name: Arc::from(config.name.as_str()),
            config,
            backends,
            balancer,
            by_route,
            upstream,
        }
    }

    /// The session a request belongs to and the backend that owns it: for the first of `ids`
    /// whose session is in the sticky table (taken over, or learned), or whose route (in
    /// `route` mode; in `insert` mode, once its signature verifies) names a backend of this
    /// pool, whether or not that backend can serve it now (the caller fails over and records
    /// the move).
    pub fn sticky_target(
        &self,
        ids: &[SessionId<'_>],
        sticky: &StickyConfig,
    ) -> Option<StickyTarget> {
        ids.iter().find_map(|id| {
            let key = sticky::session_key(id.value, sticky);
            // Insert mode never records placements (its cookie carries the route): no lookup.
            let recorded = (sticky.mode != StickyMode::Insert).then(|| self.sticky_table.get(key));
            let placed = recorded.flatten().and_then(|placement| {
                Some((
                    *self.by_route.get(&placement.route)?,
                    Some(placement.backend_id),
                ))
            });
            let by_route = || {
                let route = match sticky.mode {
                    StickyMode::Route => sticky::route_of(id.value, sticky.separator)?,
                    StickyMode::Insert => {
                        sticky::verified_route(&sticky.secret, &self.name, id.value)?
                    }
                    StickyMode::Learn => return None,
                };
                Some((*self.by_route.get(route)?, None))
            };
            let (owner, backend_id) = placed.or_else(by_route)?;
            Some(StickyTarget {
                id: id.value.to_string(),
                cookie: id.cookie.map(str::to_string),
                key: key.to_string(),
                owner,
                backend_id,
            })
        })
    }

    /// Records where session `key` lives now (a takeover, a learned id), here and on the
    /// cluster's peers, so that every tandem routes the session alike.
    pub fn record_placement(&self, key: &str, placement: Placement) {
        if let Some(shared) = &self.shared {
            shared.placement(&self.name, key, &placement);
        }
        self.sticky_table.record(key, placement);
    }

    /// Forgets where session `key` lives, here and on the cluster's peers: its backend
    /// replaced it with a new session.
    pub fn forget_placement(&self, key: &str) {
        if let Some(shared) = &self.shared {
            shared.placement_forgotten(&self.name, key);
        }
        self.sticky_table.remove(key);
    }

    /// The backend whose route is `route`, if this pool has one.
    pub fn backend_by_route(&self, route: &str) -> Option<usize> {
        self.by_route.get(route).copied()
    }

    /// Picks a backend (an index into `backends`) for an attempt by `client`, other than those
    /// in `exclude`; `None` when none is usable. Primaries first, then backups; when passive
    /// checks have ejected every one of them, they are tried anyway, in the same order. Full
    /// backends (at their `max_connections`) are skipped; when all of a kind are full the
    /// request waits for them ([`Pick::Full`]) rather than go to the next kind.
    pub fn select(&self, client: IpAddr, exclude: &[usize]) -> Option<Pick> {
        self.select_in(None, client, exclude)
    }

    /// Where a session of backend `owner` goes when `owner` cannot serve it, in mod_jk's
    /// order: its `redirect`, else a backend of its `domain`, else any backend.
    pub fn failover(&self, owner: usize, client: IpAddr, exclude: &[usize]) -> Option<Pick> {
        let config = &self.backends[owner].config;
        let redirect = config
            .redirect
            .as_ref()
            .and_then(|route| self.by_route.get(route).copied());
        let usable_redirect = redirect.filter(|&i| {
            let backend = &self.backends[i];
            !exclude.contains(&i)
                && backend.takes_new_work()
                && !backend.is_ejected()
                && backend.live.has_room()
        });
        usable_redirect
            .map(Pick::Backend)
            .or_else(|| {
                config
                    .domain
                    .as_deref()
                    .and_then(|domain| self.select_in(Some(domain), client, exclude))
            })
            .or_else(|| self.select(client, exclude))
    }

    /// `select`, limited to `domain` when one is given. Each phase (primaries, backups, then
    /// the same ignoring ejection) is tried with slow start's ramp first, then without, so a ramp
    /// never leaves a request with no backend. A phase whose backends are all full is
    /// [`Pick::Full`].
    fn select_in(&self, domain: Option<&str>, client: IpAddr, exclude: &[usize]) -> Option<Pick> {
        let phases = [(false, false), (false, true), (true, false), (true, true)];
        phases.into_iter().find_map(|(ignore_ejection, backups)| {
            let candidates = |slow_start| Candidates {
                backends: &self.backends,
                exclude,
                ignore_ejection,
                backups,
                domain,
                slow_start,
            };
            [self.config.slow_start, None]
                .into_iter()
                .find_map(|slow_start| self.balancer.select(&candidates(slow_start), client))
                .map(Pick::Backend)
                .or_else(|| candidates(None).any_untried().then_some(Pick::Full))
        })
    }

    /// Backend `index` for a request that must go there (its session's, or a resend on a
    /// fresh connection), if it has room.
    pub fn pick_backend(&self, index: usize) -> Pick {
        if self.backends[index].live.has_room() {
            Pick::Backend(index)
        } else {
            Pick::Full
        }
    }

    /// Opens the attempt `first` picked: at once on a backend with room, else after waiting in
    /// the pool's queue, picking again with `repick` each time a request of the pool ends.
    /// Returns the backend's index and its in-flight guard. A full queue (`max_queue`) and the
    /// end of `queue_timeout` are 503s, not the backend's fault.
    pub async fn admit(
        &self,
        first: Pick,
        mut repick: impl FnMut() -> Option<Pick>,
    ) -> Result<(usize, InFlight), ProxyError> {
        let arrived = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.queue_timeout;
        let mut place: Option<Waiting<'_>> = None;
        let mut pick = Some(first);
        loop {
            match pick {
                None => {
                    return Err(ProxyError::NoBackend {
                        pool: self.name.to_string(),
                    })
                }
                Some(Pick::Backend(index)) => {
                    if let Some(in_flight) = self.backends[index].live.try_start(&self.queue) {
                        return Ok((index, in_flight));
                    }
                    // Another request took the room first: wait as for a full backend.
                }
                Some(Pick::Full) => {}
            }
            if place.is_none() {
                let max_queue = self.config.max_queue;
                self.queue
                    .waiting
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |waiting| {
                        (waiting < max_queue).then_some(waiting + 1)
                    })
                    .map_err(|_| ProxyError::QueueFull {
                        pool: self.name.to_string(),
                    })?;
                place = Some(Waiting(&self.queue));
            }
            let freed = self.queue.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            pick = repick();
            if pick == Some(Pick::Full) {
                if tokio::time::timeout_at(deadline, freed).await.is_err() {
                    return Err(ProxyError::QueueTimeout {
                        pool: self.name.to_string(),
                        waited: arrived.elapsed(),
                    });
                }
                pick = repick();
            }
        }
    }
}

/// Milliseconds since the first call, plus one, so that 0 can mean "never": a cheap monotonic
/// clock for timestamps kept in atomics (backends' ejections, connections' send timeout).
pub(crate) fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The session a request belongs to, as `Pool::sticky_target` found it.
#[derive(Debug, Clone)]
pub struct StickyTarget {
    /// The session id as the request sent it.
    pub id: String,
    /// The cookie it came in; `None` when it came in the URL.
    pub cookie: Option<String>,
    /// The session's key in the sticky table (see `sticky::session_key`).
    pub key: String,
    /// Index of the backend that owns the session (by takeover, else by route).
    pub owner: usize,
    /// The id the backends know the session by, when a takeover recorded one.
    pub backend_id: Option<String>,
}
