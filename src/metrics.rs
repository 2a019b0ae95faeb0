//! Prometheus metrics: one registry per process, passed to whoever records into it (no global
//! registry), rendered in the text format on the admin listener's `/metrics`.
//!
//! Labels are bounded: pool and backend names come from the config, methods and statuses are
//! folded into classes; never a session id, a client address or a path. Every series labelled
//! with a `pool` and a `backend` also carries that backend's `route`, added when rendering (see
//! [`Metrics::render`]), so that a dashboard can name backends as `jvmRoute`s rather than
//! addresses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use prometheus::proto::{LabelPair, MetricFamily};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::cluster::Cluster;
use crate::config::BackendState;
use crate::pool::Pool;
use crate::session::{Change, ChangeListener, EndReason, Origin, Rejection};

/// Buckets of request and upstream durations, in seconds: 1 ms to 60 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// The session store's figures; the store reports to it as a change listener.
    pub sessions: Arc<SessionMetrics>,
    /// Requests, their durations and bytes, retries, failovers, takeovers.
    pub requests: RequestMetrics,
    /// Client connections open now.
    pub client_connections: IntGauge,
    /// Connections closed before any request because their PROXY protocol header was refused,
    /// by reason (`untrusted_peer`, `missing`, `malformed`, `too_long`, `timeout`, `closed`).
    pub proxy_protocol_rejected: IntCounterVec,
    /// Connections to backends open now, by pool and backend.
    pub backend_connections: IntGaugeVec,
    /// Health-check results and flips.
    pub health: HealthMetrics,
    /// Config reloads by result (`ok`, `refused`).
    pub reloads: IntCounterVec,
    /// Log files reopened on SIGUSR1 (log rotation), by result (`ok`, `failed`).
    pub log_reopens: IntCounterVec,
    /// 1 while a peer is alive, 0 once it is dead, by peer node id.
    pub peer_up: IntGaugeVec,
    /// The replication's figures.
    pub replication: ReplicationMetrics,
    /// Session changes waiting to be sent, by peer.
    replication_backlog: IntGaugeVec,
    backends: BackendGauges,
    /// The route of each (pool, backend address) ever configured, for the `route` label (see
    /// [`Metrics::learn_routes`]).
    routes: Mutex<HashMap<(String, String), String>>,
}

/// Figures of the request path.
pub struct RequestMetrics {
    /// Requests answered, by pool, backend, method class and status class.
    pub total: IntCounterVec,
    /// From the request head to the end of the response, by pool.
    pub duration: HistogramVec,
    /// From sending to a backend to its response head, by pool and backend.
    pub upstream_duration: HistogramVec,
    /// Request body bytes received from clients, by pool.
    pub received_bytes: IntCounterVec,
    /// Response body bytes sent to clients, by pool.
    pub sent_bytes: IntCounterVec,
    /// Attempts sent again, by pool and reason (`another_backend`, `fresh_connection`).
    pub retries: IntCounterVec,
    /// Sticky requests served by another backend than their session's, by pool.
    pub failovers: IntCounterVec,
    /// Sessions whose route moved to another backend for good, by pool.
    pub route_takeovers: IntCounterVec,
    /// Requests answered 503 because their backends were at `max_connections`, by pool and
    /// reason (`full`: the queue was full; `timeout`: `queue_timeout` passed in it).
    pub queue_rejected: IntCounterVec,
}

/// Figures of the active health checks.
pub struct HealthMetrics {
    /// Probes, by pool, backend and result (`pass`, `fail`).
    pub checks: IntCounterVec,
    /// Up/down flips, by pool, backend and the state flipped to (`up`, `down`).
    pub flips: IntCounterVec,
}

/// Per-backend state, read from the live pools when `/metrics` is scraped.
struct BackendGauges {
    up: IntGaugeVec,
    state: IntGaugeVec,
    in_flight: IntGaugeVec,
    /// Requests waiting in each pool's queue, by pool.
    queue_length: IntGaugeVec,
}

/// Registers metrics on one registry.
struct Registrar<'r>(&'r Registry);

impl Registrar<'_> {
    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.0
            .register(Box::new(metric.clone()))
            .expect("each metric is registered once");
        metric
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn histograms(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let options = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
        self.register(HistogramVec::new(options, labels).expect("valid metric"))
    }
}

impl Metrics {
    /// Every metric, registered and at zero.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = Registrar(&registry);
        let requests = RequestMetrics {
            total: r.counters(
                "tandem_requests_total",
                "Requests answered, by pool, backend (- when tandem answered), method and status class.",
                &["pool", "backend", "method", "status"],
            ),
            duration: r.histograms(
                "tandem_request_duration_seconds",
                "Time from the request head to the end of the response.",
                &["pool"],
            ),
            upstream_duration: r.histograms(
                "tandem_upstream_response_duration_seconds",
                "Time from sending a request to a backend to its response head.",
                &["pool", "backend"],
            ),
            received_bytes: r.counters(
                "tandem_request_body_bytes_total",
                "Request body bytes received from clients and sent on.",
                &["pool"],
            ),
            sent_bytes: r.counters(
                "tandem_response_body_bytes_total",
                "Response body bytes sent to clients.",
                &["pool"],
            ),
            retries: r.counters(
                "tandem_retries_total",
                "Attempts sent again, by reason.",
                &["pool", "reason"],
            ),
            failovers: r.counters(
                "tandem_failovers_total",
                "Sticky requests served by another backend than their session's.",
                &["pool"],
            ),
            route_takeovers: r.counters(
                "tandem_route_takeovers_total",
                "Sessions whose route moved to another backend.",
                &["pool"],
            ),
            queue_rejected: r.counters(
                "tandem_queue_rejected_total",
                "Requests refused (503) while their backends were at max_connections, by reason: the queue was full, or queue_timeout passed.",
                &["pool", "reason"],
            ),
        };
        let health = HealthMetrics {
            checks: r.counters(
                "tandem_health_checks_total",
                "Active health probes, by result.",
                &["pool", "backend", "result"],
            ),
            flips: r.counters(
                "tandem_backend_flips_total",
                "Backends marked up or down by their health checks.",
                &["pool", "backend", "to"],
            ),
        };
        let backends = BackendGauges {
            up: r.gauges(
                "tandem_backend_up",
                "1 when the backend is up (health checks) and not ejected (passive checks).",
                &["pool", "backend"],
            ),
            state: r.gauges(
                "tandem_backend_state",
                "1 for the backend's configured state (active, draining, stopped).",
                &["pool", "backend", "state"],
            ),
            in_flight: r.gauges(
                "tandem_backend_requests_in_flight",
                "Requests sent to the backend whose responses have not finished.",
                &["pool", "backend"],
            ),
            queue_length: r.gauges(
                "tandem_queue_length",
                "Requests waiting for a backend under its max_connections.",
                &["pool"],
            ),
        };
        let reloads = r.counters(
            "tandem_config_reloads_total",
            "Config reloads, by result (ok, refused).",
            &["result"],
        );
        for result in ["ok", "refused"] {
            reloads.with_label_values(&[result]);
        }
        let log_reopens = r.counters(
            "tandem_log_reopens_total",
            "Log files reopened on SIGUSR1 (log rotation), by result (ok, failed).",
            &["result"],
        );
        for result in ["ok", "failed"] {
            log_reopens.with_label_values(&[result]);
        }
        let backend_connections = r.gauges(
            "tandem_backend_connections",
            "Connections to backends open now (in use or kept alive).",
            &["pool", "backend"],
        );
        let peer_up = r.gauges(
            "tandem_cluster_peer_up",
            "1 while the peer is heard from, 0 once it is counted dead.",
            &["peer"],
        );
        let replication = ReplicationMetrics {
            messages: r.counters(
                "tandem_replication_messages_total",
                "Replication messages, by direction (sent, received) and kind.",
                &["direction", "kind"],
            ),
            bytes: r.counters(
                "tandem_replication_bytes_total",
                "Bytes of replication frames, by direction (sent, received).",
                &["direction"],
            ),
            resyncs: r.counter(
                "tandem_replication_resyncs_total",
                "Peer connections started over with a full transfer because the peer fell behind.",
            ),
            sync_timeouts: r.counter(
                "tandem_replication_sync_timeouts_total",
                "Peers that did not acknowledge a session change within sync_timeout (sync mode).",
            ),
            lag: r.histograms(
                "tandem_replication_lag_seconds",
                "From sending a batch of session changes to a peer to its acknowledgement that they are merged.",
                &["peer"],
            ),
        };
        let replication_backlog = r.gauges(
            "tandem_replication_backlog",
            "Session changes queued for a peer and not sent yet.",
            &["peer"],
        );
        let client_connections = r.gauge(
            "tandem_client_connections",
            "Client connections open on the public listeners.",
        );
        let proxy_protocol_rejected = r.counters(
            "tandem_proxy_protocol_rejected_total",
            "Client connections closed because their PROXY protocol header was refused, by reason.",
            &["reason"],
        );
        let sessions = Arc::new(SessionMetrics::register(&r));
        r.gauges(
            "tandem_build_info",
            "Always 1; the version of the tandem binary is in the label.",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        // CPU time, resident memory, open and most file descriptors, start time, threads.
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process metrics are registered once");
        Metrics {
            registry,
            sessions,
            requests,
            client_connections,
            proxy_protocol_rejected,
            backend_connections,
            health,
            reloads,
            log_reopens,
            peer_up,
            replication,
            replication_backlog,
            backends,
            routes: Mutex::default(),
        }
    }

    /// The Prometheus text exposition of every metric, with the backends of `pools` and the
    /// replication backlog of `cluster` as they are now, and the `route` label on every
    /// per-backend series.
    pub fn render(&self, pools: &[Arc<Pool>], cluster: Option<&Cluster>) -> String {
        self.observe_pools(pools);
        self.replication_backlog.reset();
        if let Some(cluster) = cluster {
            for (peer, _) in cluster.peers() {
                if let Some(waiting) = cluster.backlog(&peer) {
                    self.replication_backlog
                        .with_label_values(&[&peer])
                        .set(waiting as i64);
                }
            }
        }
        let mut families = self.registry.gather();
        self.label_routes(&mut families);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Sets the per-backend gauges from the live pools (a reload may have removed backends, so
    /// the old label sets go first), and shows each pool's failover and takeover counters from
    /// the start, at 0, so that a dashboard's rate() over them reads 0 rather than no data.
    fn observe_pools(&self, pools: &[Arc<Pool>]) {
        let gauges = &self.backends;
        gauges.up.reset();
        gauges.state.reset();
        gauges.in_flight.reset();
        gauges.queue_length.reset();
        for pool in pools {
            self.requests.failovers.with_label_values(&[&*pool.name]);
            self.requests
                .route_takeovers
                .with_label_values(&[&*pool.name]);
            gauges
                .queue_length
                .with_label_values(&[&*pool.name])
                .set(pool.queue.len() as i64);
            for backend in &pool.backends {
                let labels = [&*pool.name, backend.config.address.as_str()];
                let up = backend.live.is_up() && !backend.is_ejected();
                gauges.up.with_label_values(&labels).set(i64::from(up));
                gauges
                    .in_flight
                    .with_label_values(&labels)
                    .set(backend.live.in_flight() as i64);
                for (name, state) in BackendState::NAMES {
                    gauges
                        .state
                        .with_label_values(&[labels[0], labels[1], name])
                        .set(i64::from(backend.state() == state));
                }
            }
        }
    }

    /// Remembers the route of each backend of `pools` (a new snapshot's, at start and on each
    /// reload) for the `route` label of its series, which it keeps after a reload removes it.
    pub fn learn_routes(&self, pools: &[Arc<Pool>]) {
        let mut routes = self
            .routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for pool in pools {
            for backend in &pool.backends {
                let key = (pool.name.to_string(), backend.config.address.clone());
                routes.insert(key, backend.config.route.clone());
            }
        }
    }

    /// Adds `route` to every series labelled with a `pool` and a `backend`: the route that
    /// backend has, or had when last configured; empty for `backend="-"` (tandem answered
    /// itself). Done here rather than where each series is recorded, so that every per-backend
    /// series has it, including those recorded where only the address is known (a backend
    /// connection).
    fn label_routes(&self, families: &mut [MetricFamily]) {
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for metric in families.iter_mut().flat_map(|family| family.mut_metric()) {
            let mut labels = metric.take_label();
            let value = |name: &str| {
                labels
                    .iter()
                    .find(|label| label.name() == name)
                    .map(|label| label.value().to_string())
            };
            if let (Some(pool), Some(backend)) = (value("pool"), value("backend")) {
                let mut route = LabelPair::default();
                route.set_name("route".to_string());
                route.set_value(routes.get(&(pool, backend)).cloned().unwrap_or_default());
                // Label pairs stay sorted by name, as the crate gives them.
                let at = labels.partition_point(|label| label.name() < "route");
                labels.insert(at, route);
            }
            metric.set_label(labels);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The method label: the common methods by name, anything else as `other`.
pub fn method_class(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The status label: `1xx` to `5xx`.
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Replication among peers.
#[derive(Clone)]
pub struct ReplicationMetrics {
    /// Messages by direction and kind.
    pub messages: IntCounterVec,
    /// Frame bytes by direction.
    pub bytes: IntCounterVec,
    /// Connections started over because the peer fell behind.
    pub resyncs: IntCounter,
    /// Peers late to acknowledge in sync mode.
    pub sync_timeouts: IntCounter,
    /// Time from sending changes to a peer to its acknowledgement, by peer.
    pub lag: HistogramVec,
}

/// Sessions of the store: fed by its changes, never labelled by session.
pub struct SessionMetrics {
    live: IntGauge,
    bytes: IntGauge,
    created: IntCounter,
    expired: IntCounter,
    invalidated: IntCounter,
    renewed: IntCounter,
    rejected: IntCounterVec,
}

impl SessionMetrics {
    /// Encoded bytes of all sessions held now.
    pub fn bytes(&self) -> i64 {
        self.bytes.get()
    }

    fn register(r: &Registrar<'_>) -> SessionMetrics {
        let rejected = r.counters(
            "tandem_session_updates_rejected_total",
            "Session updates refused and not applied, by reason.",
            &["reason"],
        );
        // Every reason shows from the start, at 0, so that a rate() over it works at once.
        for reason in Rejection::REASONS {
            rejected.with_label_values(&[reason]);
        }
        SessionMetrics {
            live: r.gauge("tandem_sessions_live", "Sessions held by this node."),
            bytes: r.gauge(
                "tandem_session_bytes",
                "Encoded bytes of the attributes of all sessions held.",
            ),
            created: r.counter("tandem_sessions_created_total", "Sessions created."),
            expired: r.counter(
                "tandem_sessions_expired_total",
                "Sessions ended by their idle or absolute timeout.",
            ),
            invalidated: r.counter(
                "tandem_sessions_invalidated_total",
                "Sessions ended by a backend or the session API.",
            ),
            renewed: r.counter("tandem_sessions_renewed_total", "Session ids renewed."),
            rejected,
        }
    }
}

impl ChangeListener for SessionMetrics {
    fn changed(&self, change: &Change<'_>, _origin: Origin) {
        match change {
            Change::Created { session, .. } => {
                self.live.inc();
                self.created.inc();
                self.bytes.add(session.data.len() as i64);
            }
            Change::Patched {
                bytes_before,
                bytes_after,
                ..
            } => self.bytes.add(*bytes_after as i64 - *bytes_before as i64),
            Change::Renewed { .. } => self.renewed.inc(),
            Change::Ended { reason, bytes, .. } => {
                self.live.dec();
                self.bytes.sub(*bytes as i64);
                match reason {
                    EndReason::Expired => self.expired.inc(),
                    EndReason::Invalidated => self.invalidated.inc(),
                }
            }
            Change::Released { bytes, .. } => {
                self.live.dec();
                self.bytes.sub(*bytes as i64);
            }
            Change::Touched { .. } | Change::TimeoutsSet { .. } | Change::Rerouted { .. } => {}
        }
    }

    fn rejected(&self, rejection: &Rejection) {
        self.rejected.with_label_values(&[rejection.reason()]).inc();
    }
}
