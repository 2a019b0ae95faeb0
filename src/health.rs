//! Active health checks: a task per backend probes it every `interval` (±10%), counts
//! consecutive results, and flips the backend's live `up` state after `fall` failures or `rise`
//! successes, logging each flip once with its reason. `rise` successes after a passive ejection
//! also end it, down or not. The request path only reads that state.
//!
//! [`HealthChecks`] owns the tasks of one snapshot's pools; dropping it (on reload or shutdown)
//! stops them. The backends' state itself outlives it, so a reload does not forget who is down.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use tokio::task::JoinSet;

use crate::config::HealthConfig;
use crate::metrics::Metrics;
use crate::pool::{Backend, CheckResult, Pool};
use crate::tls;
use hyper_rustls::HttpsConnector;

/// Most of a probe's response body read when looking for `expect_body`.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// The running checks of a set of pools; dropping this stops them.
pub struct HealthChecks {
    _tasks: JoinSet<()>,
}

impl HealthChecks {
    /// Starts a check task for every backend of every pool that has `[pool.health]`. Must be
    /// called inside a tokio runtime.
    pub fn start(pools: &[Arc<Pool>], metrics: &Arc<Metrics>) -> HealthChecks {
        let mut tasks = JoinSet::new();
        for pool in pools {
            let Some(health) = &pool.config.health else {
                continue;
            };
            // A fresh connection for every probe, so that a check also proves the backend accepts.
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            let connector = tls::backend_connector(&pool.name, pool.config.tls.as_ref(), http);
            let client = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector);
            for backend in &pool.backends {
                let probe = Probe {
                    metrics: Arc::clone(metrics),
                    pool: Arc::clone(&pool.name),
                    backend: Arc::clone(backend),
                    health: health.clone(),
                    client: client.clone(),
                    scheme: if pool.config.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    },
                };
                tasks.spawn(probe.run());
            }
        }
        HealthChecks { _tasks: tasks }
    }
}

/// Everything one backend's check task needs.
struct Probe {
    metrics: Arc<Metrics>,
    pool: Arc<str>,
    backend: Arc<Backend>,
    health: HealthConfig,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// `https` for a pool with `[pool.tls]`.
    scheme: &'static str,
}

impl Probe {
    async fn run(self) {
        let mut successes = 0u32;
        let mut failures = 0u32;
        let labels = |last: &'static str| [&*self.pool, self.backend.config.address.as_str(), last];
        let health = &self.metrics.health;
        loop {
            let jitter = rand::rng().random_range(0.9..1.1);
            tokio::time::sleep(self.health.interval.mul_f64(jitter)).await;
            let started = std::time::Instant::now();
            let result = self.probe().await;
            let duration_ms = started.elapsed().as_millis() as u64;
            self.backend
                .live
                .record_check(check_result(&result, duration_ms));
            let result = result.map_err(|failure| failure.words);
            let outcome = if result.is_ok() { "pass" } else { "fail" };
            health.checks.with_label_values(&labels(outcome)).inc();
            if self
                .backend
                .live
                .record_probe(result.is_ok(), self.health.rise)
            {
                tracing::info!(
                    pool = %self.pool,
                    backend = %self.backend.config.address,
                    rise = self.health.rise,
                    "backend back in rotation after its passive ejection: passed its health checks"
                );
            }
            match result {
                Ok(()) => {
                    successes += 1;
                    failures = 0;
                    if successes >= self.health.rise && self.backend.live.set_up(true) {
                        health.flips.with_label_values(&labels("up")).inc();
                        tracing::info!(
                            pool = %self.pool,
                            backend = %self.backend.config.address,
                            successes,
                            "backend is UP: passed its health checks"
                        );
                    }
                }
                Err(reason) => {
                    failures += 1;
                    successes = 0;
                    self.backend
                        .live
                        .note_error(&format!("health check: {reason}"));
                    if failures >= self.health.fall && self.backend.live.set_up(false) {
                        health.flips.with_label_values(&labels("down")).inc();
                        tracing::warn!(
                            pool = %self.pool,
                            backend = %self.backend.config.address,
                            failures,
                            %reason,
                            "backend is DOWN: failed its health checks"
                        );
                    }
                }
            }
        }
    }

    /// One probe: `Ok` if the backend answered in time with an expected status (and body).
    async fn probe(&self) -> Result<(), ProbeFailure> {
        let health = &self.health;
        let uri = format!(
            "{}://{}{}",
            self.scheme, self.backend.authority, health.path
        );
        let host = match &health.host {
            Some(host) => HeaderValue::from_str(host),
            None => HeaderValue::from_str(self.backend.authority.as_str()),
        }
        .map_err(|e| ProbeFailure::new("L7RSP", format!("bad Host for the probe: {e}")))?;
        let request = Request::builder()
            .method(health.method.clone())
            .uri(uri)
            .header(HOST, host)
            .header(USER_AGENT, "tandem-health-check")
            .body(Empty::new())
            .map_err(|e| ProbeFailure::new("L7RSP", format!("cannot build the probe: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| connect_failure(&e))?;
            let status = response.status().as_u16();
            let expected = if health.expect_status.is_empty() {
                (200..400).contains(&status)
            } else {
                health.expect_status.contains(&status)
            };
            if !expected {
                return Err(ProbeFailure::new("L7STS", format!("status {status}")));
            }
            if let Some(text) = &health.expect_body {
                let body = Limited::new(response.into_body(), MAX_PROBE_BODY)
                    .collect()
                    .await
                    .map_err(|e| ProbeFailure::new("L7RSP", format!("reading the body: {e}")))?
                    .to_bytes();
                if !String::from_utf8_lossy(&body).contains(text.as_str()) {
                    return Err(ProbeFailure::new(
                        "L7RSP",
                        format!("body does not contain `{text}`"),
                    ));
                }
            }
            Ok(())
        };
        match tokio::time::timeout(health.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ProbeFailure::new(
                "L7TOUT",
                format!("timed out after {} ms", health.timeout.as_millis()),
            )),
        }
    }
}

/// Why a probe failed: HAProxy's `check_status` code and the reason in words.
#[derive(Debug)]
struct ProbeFailure {
    code: &'static str,
    words: String,
}

impl ProbeFailure {
    fn new(code: &'static str, words: String) -> ProbeFailure {
        ProbeFailure { code, words }
    }
}

/// A probe's result as the status page shows it: `passed in 1 ms`, `status 503 in 3 ms`
/// (a timeout already says how long it waited).
fn check_result(result: &Result<(), ProbeFailure>, duration_ms: u64) -> CheckResult {
    let (passed, code, words) = match result {
        Ok(()) => (true, "L7OK", format!("passed in {duration_ms} ms")),
        Err(failure) if failure.code == "L7TOUT" => (false, failure.code, failure.words.clone()),
        Err(failure) => (
            false,
            failure.code,
            format!("{} in {duration_ms} ms", failure.words),
        ),
    };
    CheckResult {
        passed,
        code,
        words,
        duration_ms,
    }
}

/// A failure to reach the backend in words an operator reads (`connection refused`), from the
/// I/O error at the bottom of the client's error chain; the whole chain when there is none.
fn connect_failure(error: &(dyn std::error::Error + 'static)) -> ProbeFailure {
    use std::io::ErrorKind;
    let mut source = Some(error);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            let (code, words) = match io.kind() {
                ErrorKind::ConnectionRefused => ("L4CON", "connection refused"),
                ErrorKind::ConnectionReset => ("L4CON", "connection reset"),
                ErrorKind::ConnectionAborted => ("L4CON", "connection aborted"),
                ErrorKind::TimedOut => ("L4TOUT", "connect timed out"),
                ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                    ("L4CON", "host unreachable")
                }
                ErrorKind::UnexpectedEof => ("L7RSP", "connection closed before the answer"),
                _ => ("L4CON", ""),
            };
            let words = if words.is_empty() {
                io.to_string()
            } else {
                words.to_string()
            };
            return ProbeFailure::new(code, words);
        }
        source = inner.source();
    }
    ProbeFailure::new("L7RSP", crate::error::chain(error))
}
