//! The client side: a keep-alive connection pool per tandem pool, and the timeouts of one exchange.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use std::sync::Arc;

use crate::config::{BackendTlsConfig, PoolConfig};
use crate::error::{chain, ProxyError};
use crate::metrics::Metrics;
use crate::proxy::body::{BodyIdle, ClientBodyError, RequestBody};
use crate::proxy::connector::{self, StampingConnector};
use crate::tls;
use hyper_rustls::HttpsConnector;

/// The settings a client is built from; a reload keeps the client (and its idle connections)
/// when they are unchanged.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    connect_timeout: Duration,
    response_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_backend: usize,
    tls: Option<BackendTlsConfig>,
}

impl Settings {
    fn of(pool: &PoolConfig) -> Settings {
        Settings {
            connect_timeout: pool.connect_timeout,
            response_timeout: pool.response_timeout,
            idle_timeout: pool.idle_timeout,
            max_idle_per_backend: pool.max_idle_per_backend,
            tls: pool.tls.clone(),
        }
    }
}

/// Sends requests to a pool's backends over pooled HTTP/1.1 connections.
pub struct Upstream {
    client: Client<HttpsConnector<StampingConnector>, RequestBody>,
    settings: Settings,
}

impl Upstream {
    /// A client with `pool`'s timeouts and keep-alive limits.
    pub fn new(pool: &PoolConfig, metrics: &Metrics) -> Upstream {
        let settings = Settings::of(pool);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        // `https` URIs too: TLS is layered on top for pools with `[pool.tls]`.
        connector.enforce_http(false);
        let stamping = StampingConnector {
            inner: connector,
            pool: Arc::from(pool.name.as_str()),
            open: metrics.backend_connections.clone(),
        };
        let connector = tls::backend_connector(&pool.name, pool.tls.as_ref(), stamping);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(settings.max_idle_per_backend)
            .build(connector);
        Upstream { client, settings }
    }

    /// Whether a client built for `pool` would be the same as this one.
    pub fn settings_match(&self, pool: &PoolConfig) -> bool {
        self.settings == Settings::of(pool)
    }

    /// Sends `request` (its URI absolute, naming the backend) and waits for the response head.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let limit = self.settings.response_timeout;
        let started = Instant::now();
        let mut request = request;
        let body_finished = request.body().finished();
        let connection = hyper_util::client::legacy::connect::capture_connection(&mut request);
        // One turn to the runtime before anything is dialled: a client stream that is already
        // reset (an h2 request sent together with a frame that made the server reset it:
        // MadeYouReset, CVE-2025-8671) is then dropped by hyper here, instead of opening a
        // backend connection that would be closed at once, having carried nothing.
        tokio::task::yield_now().await;
        match tokio::time::timeout(limit, self.client.request(request)).await {
            Err(_) => Err(ProxyError::Timeout(format!(
                "no response head within {limit:?}"
            ))),
            Ok(Ok(response)) => {
                // A backend that answered before it had the whole body may not read the rest
                // as a body: its connection is not used again.
                if body_finished.is_some_and(|finished| !finished.load(Ordering::Relaxed)) {
                    if let Some(connected) = connection.connection_metadata().as_ref() {
                        connected.poison();
                    }
                }
                Ok(response)
            }
            Ok(Err(error)) => Err(classify(&error, started)),
        }
    }
}

/// Maps a client error to 502 or 504: a connect that timed out is a timeout, any other connect
/// failure or a broken exchange is a bad gateway; a request body that broke on the client's
/// side (malformed, or the client gone) is the client's doing; a connection from the pool (opened before the attempt
/// `started`) that closed before any response is stale.
fn classify(error: &hyper_util::client::legacy::Error, started: Instant) -> ProxyError {
    let described = chain(error);
    if error.is_connect() {
        let mut source = std::error::Error::source(error);
        while let Some(inner) = source {
            if inner
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
            {
                return ProxyError::ConnectTimeout(described);
            }
            source = inner.source();
        }
        return ProxyError::Connect(described);
    }
    // The client's body failed: it stopped coming (slow POST), broke its framing, or the
    // client went away; none of it is the backend's doing.
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if let Some(idle) = inner.downcast_ref::<BodyIdle>() {
            return ProxyError::BodyTimeout(idle.0);
        }
        if let Some(failure) = inner.downcast_ref::<ClientBodyError>() {
            return ProxyError::from(failure.clone());
        }
        source = inner.source();
    }
    let pooled = connector::opened_at(error).is_some_and(|opened| opened < started);
    if pooled && closed_before_response(error) {
        return ProxyError::StaleConnection(described);
    }
    ProxyError::Upstream(described)
}

/// Whether the connection closed (EOF or reset) before a whole response head arrived.
fn closed_before_response(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if inner
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        if inner.downcast_ref::<io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            )
        }) {
            return true;
        }
        source = inner.source();
    }
    false
}
