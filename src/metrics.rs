//! Prometheus metrics: one registry per process, passed to whoever records into it (no global
//! registry), rendered in the text format on the admin listener's `/metrics`.

use std::sync::Arc;

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::session::{Change, ChangeListener, EndReason, Rejection};

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// The session store's figures; the store reports to it as a change listener.
    pub sessions: Arc<SessionMetrics>,
}

impl Metrics {
    /// Every metric, registered and at zero.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let sessions = Arc::new(SessionMetrics::register(&registry));
        Metrics { registry, sessions }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
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
    fn register(registry: &Registry) -> SessionMetrics {
        let gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("valid metric name");
            registry
                .register(Box::new(gauge.clone()))
                .expect("registered once");
            gauge
        };
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("valid metric name");
            registry
                .register(Box::new(counter.clone()))
                .expect("registered once");
            counter
        };
        let rejected = IntCounterVec::new(
            Opts::new(
                "tandem_session_updates_rejected_total",
                "Session updates refused and not applied, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(rejected.clone()))
            .expect("registered once");
        // Every reason shows from the start, at 0, so that a rate() over it works at once.
        for reason in Rejection::REASONS {
            rejected.with_label_values(&[reason]);
        }
        SessionMetrics {
            live: gauge("tandem_sessions_live", "Sessions held by this node."),
            bytes: gauge(
                "tandem_session_bytes",
                "Encoded bytes of the attributes of all sessions held.",
            ),
            created: counter("tandem_sessions_created_total", "Sessions created."),
            expired: counter(
                "tandem_sessions_expired_total",
                "Sessions ended by their idle or absolute timeout.",
            ),
            invalidated: counter(
                "tandem_sessions_invalidated_total",
                "Sessions ended by a backend or the session API.",
            ),
            renewed: counter("tandem_sessions_renewed_total", "Session ids renewed."),
            rejected,
        }
    }
}

impl ChangeListener for SessionMetrics {
    fn changed(&self, change: &Change<'_>) {
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
            Change::Touched { .. } | Change::TimeoutsSet { .. } | Change::Rerouted { .. } => {}
        }
    }

    fn rejected(&self, rejection: &Rejection) {
        self.rejected.with_label_values(&[rejection.reason()]).inc();
    }
}
