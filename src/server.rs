//! Client connections: accept with a connection cap, read the PROXY protocol header where it is
//! on, serve HTTP/1.1 and h2c on the same port, close idle connections, and drain everything on
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::service::service_fn;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::ListenConfig;
use crate::pool::clock_ms;
use crate::proxy::{validate, ProxyService};
use crate::proxy_protocol::{self, Prefixed, Rejection};
use crate::runtime::Runtime;

/// Whether a listener shares its address with other processes (`SO_REUSEPORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// The address is this process's alone: a second process cannot bind it.
    Exclusive,
    /// A new tandem started on the same config can bind the address while this one still
    /// serves, and the kernel spreads new connections between them: the seamless restart.
    ReusePort,
}

/// How many finished handshakes wait in each listener's accept queue (tokio's own default).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds every configured address. Done before anything else starts, so that a taken port is an
/// error at startup, not a surprise later.
pub fn bind(addresses: &[SocketAddr], sharing: Sharing) -> io::Result<Vec<TcpListener>> {
    addresses
        .iter()
        .map(|address| {
            bind_one(*address, sharing)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))
        })
        .collect()
}

fn bind_one(address: SocketAddr, sharing: Sharing) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart need not wait for the old connections' TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if sharing == Sharing::ReusePort {
        socket.set_reuseport(true)?;
    }
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What a public listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// HTTP/1.1 and h2c.
    Plain,
    /// TLS, then HTTP/1.1 or h2 (ALPN).
    Tls,
    /// Plain HTTP that answers every request with a redirect to HTTPS on this port.
    RedirectToHttps(u16),
}

/// Serves `listeners` until `shutdown` resolves, then stops accepting, asks every connection to
/// finish its in-flight requests, and waits for them up to `limits.shutdown_timeout`.
/// Returns whether every connection closed in time.
pub async fn serve(
    listeners: Vec<(TcpListener, ListenerKind)>,
    runtime: Arc<Runtime>,
    limits: &ListenConfig,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let (drain, draining) = watch::channel(false);
    let (stop_accepting, accepting_stopped) = watch::channel(false);
    let builder = Arc::new(http_builder(limits));
    let mut acceptors = JoinSet::new();
    for (listener, kind) in listeners {
        let context = ConnectionContext {
            runtime: Arc::clone(&runtime),
            builder: Arc::clone(&builder),
            draining: draining.clone(),
            idle_timeout: limits.idle_timeout,
            header_read_timeout: limits.header_read_timeout,
            send_timeout: limits.send_timeout,
            proxy_protocol_from: limits.proxy_protocol_from.as_deref().map(Arc::from),
        };
        acceptors.spawn(accept_loop(
            listener,
            kind,
            Arc::clone(&connections),
            context,
            accepting_stopped.clone(),
        ));
    }
    shutdown.await;
    let _ = stop_accepting.send(true);
    acceptors.join_all().await;
    let open = limits.max_connections - connections.available_permits();
    tracing::info!(
        open_connections = open,
        "draining: no longer accepting; finishing in-flight requests"
    );
    let _ = drain.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let drained =
        tokio::time::timeout(limits.shutdown_timeout, connections.acquire_many(all)).await;
    match drained {
        Ok(_) => true,
        Err(_) => {
            let left = limits.max_connections - connections.available_permits();
            tracing::warn!(
                open_connections = left,
                "shutdown deadline passed with connections still open"
            );
            false
        }
    }
}

/// The HTTP/1.1 + h2c server settings every connection uses. The head limits leave room for
/// a request within `max_header_size`, `max_headers` and `max_uri_length` to reach
/// `proxy::validate`, which holds both protocols to them alike.
fn http_builder(limits: &ListenConfig) -> auto::Builder<TokioExecutor> {
    let request_limits = validate::Limits::of(limits);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(validate::head_buffer(&request_limits))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(validate::header_list_size(&request_limits))
        .max_concurrent_streams(256);
    builder
}

/// What each connection task needs from the server.
#[derive(Clone)]
struct ConnectionContext {
    runtime: Arc<Runtime>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    draining: watch::Receiver<bool>,
    idle_timeout: Duration,
    header_read_timeout: Duration,
    send_timeout: Duration,
    /// With the PROXY protocol on: the balancers' networks (see `ListenConfig`).
    proxy_protocol_from: Option<Arc<[IpNet]>>,
}

/// Accepts connections until `stop` turns true, then takes those already in the accept queue
/// and closes the listener.
async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    connections: Arc<Semaphore>,
    context: ConnectionContext,
    mut stop: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let Ok(permit) = permit else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        match accepted {
            Ok((stream, peer)) => spawn_connection(stream, peer, kind, permit, &context),
            Err(error) => {
                // Out of file descriptors and the like: never fatal, but back off a little.
                tracing::warn!(listener = ?local, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    accept_queued(listener, kind, &connections, &context);
}

/// Serves the connections already waiting in the accept queue of a listener about to close.
/// With `SO_REUSEPORT` the kernel has already completed their handshakes on this socket and
/// would reset them at its close, although a new process on the same address takes new ones;
/// the accept calls are made directly (not through the reactor, whose readiness may lag) until
/// the queue is empty. What arrives between the last accept and the close is still lost: see
/// README, "Seamless restart".
fn accept_queued(
    listener: TcpListener,
    kind: ListenerKind,
    connections: &Arc<Semaphore>,
    context: &ConnectionContext,
) {
    let Ok(listener) = listener.into_std() else {
        return;
    };
    let local = listener.local_addr().ok();
    let mut taken = 0_usize;
    loop {
        let Ok(permit) = Arc::clone(connections).try_acquire_owned() else {
            break;
        };
        match listener.accept() {
            Ok((stream, peer)) => {
                let stream = stream
                    .set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(stream));
                if let Ok(stream) = stream {
                    spawn_connection(stream, peer, kind, permit, context);
                    taken += 1;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) => {
                tracing::warn!(listener = ?local, %error, "accept failed while closing the listener");
                break;
            }
        }
    }
    if taken > 0 {
        tracing::info!(listener = ?local, connections = taken, "served the connections queued at the listener's close");
    }
}

/// Serves one accepted connection on its own task, holding `permit` until it ends.
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    permit: OwnedSemaphorePermit,
    context: &ConnectionContext,
) {
    let _ = stream.set_nodelay(true);
    let context = context.clone();
    tokio::spawn(async move {
        let open = context.runtime.metrics.client_connections.clone();
        open.inc();
        if let Some((stream, client)) = client_of(stream, peer, &context).await {
            match kind {
                ListenerKind::Plain => {
                    serve_connection(stream, client, context, Handler::Proxy("http")).await
                }
                ListenerKind::RedirectToHttps(port) => {
                    let handler = Handler::RedirectToHttps(port);
                    serve_connection(stream, client, context, handler).await
                }
                ListenerKind::Tls => {
                    if let Some(tls) = handshake(stream, client, &context).await {
                        serve_connection(tls, client, context, Handler::Proxy("https")).await;
                    }
                }
            }
        }
        open.dec();
        drop(permit);
    });
}

/// Who a new connection from `peer` serves: `peer` itself, or with the PROXY protocol on, the
/// client its header names (read first, before any TLS: the balancer sends it in the clear).
/// A refused header is logged with the peer, counted, and the connection closed (`None`).
async fn client_of(
    stream: TcpStream,
    peer: SocketAddr,
    context: &ConnectionContext,
) -> Option<(Prefixed<TcpStream>, SocketAddr)> {
    let Some(trusted) = &context.proxy_protocol_from else {
        return Some((Prefixed::plain(stream), peer));
    };
    let accepted = proxy_protocol::accept(stream, peer, trusted, context.header_read_timeout).await;
    match accepted {
        Ok(accepted) => Some(accepted),
        Err(rejection) => {
            let reason = rejection.reason();
            let metrics = &context.runtime.metrics;
            metrics
                .proxy_protocol_rejected
                .with_label_values(&[reason])
                .inc();
            match rejection {
                // A balancer's TCP health check opens and closes without a byte: not news.
                Rejection::Closed(error) => {
                    tracing::debug!(peer = %peer, %error, "connection closed before its PROXY protocol header")
                }
                rejection => {
                    tracing::warn!(peer = %peer, reason, error = %rejection, "PROXY protocol header refused; closing the connection")
                }
            }
            None
        }
    }
}

/// The TLS handshake of a new connection, within the header read timeout, with the
/// certificates in force now. A failed handshake (an old protocol version, no shared cipher, a
/// client that went away) is logged and the connection closed.
async fn handshake(
    stream: Prefixed<TcpStream>,
    peer: SocketAddr,
    context: &ConnectionContext,
) -> Option<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>> {
    let config = context.runtime.tls_config()?;
    let accepting = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    match tokio::time::timeout(context.header_read_timeout, accepting).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(error)) => {
            tracing::info!(client = %peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(client = %peer, "TLS handshake not done within the header read timeout");
            None
        }
    }
}

/// What a connection's requests get.
#[derive(Debug, Clone, Copy)]
enum Handler {
    /// Proxied; the scheme is what X-Forwarded-Proto says.
    Proxy(&'static str),
    /// A redirect to HTTPS on this port.
    RedirectToHttps(u16),
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    mut context: ConnectionContext,
    handler: Handler,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let proxy = match handler {
        Handler::Proxy(scheme) => ProxyService::new(Arc::clone(&context.runtime), peer, scheme),
        Handler::RedirectToHttps(port) => {
            ProxyService::redirecting(Arc::clone(&context.runtime), peer, port)
        }
    };
    let service_activity = Arc::clone(&activity);
    let service_draining = context.draining.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let http1 = request.version() < Version::HTTP_2;
        if !http1 {
            service_activity.http2.store(true, Ordering::Relaxed);
        }
        let answer = proxy.handle(request, service_activity.open());
        let draining = service_draining.clone();
        async move {
            let mut response = answer.await;
            // While draining, an HTTP/1 response ends its connection, so that a keep-alive
            // client's next request goes to a new connection (a new process, on a restart)
            // rather than racing an idle close. An upgrade keeps its connection.
            if http1 && *draining.borrow() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let connection = context
        .builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut idle_check =
        tokio::time::interval((context.idle_timeout / 2).max(Duration::from_millis(1)));
    idle_check.tick().await;
    let mut idle = IdleTracker::new(&activity);
    let mut closing = false;
    // Armed when the drain begins, for connections that may still bring a request.
    let drain_grace = tokio::time::sleep(DRAIN_GRACE);
    tokio::pin!(drain_grace);
    let mut drain_grace_armed = *context.draining.borrow();
    // A connection must bring its first request within the header read timeout, whatever the
    // protocol: hyper's own timer starts only once it knows the protocol, which takes bytes.
    let first_request = tokio::time::sleep(context.header_read_timeout);
    tokio::pin!(first_request);
    let mut awaiting_first_request = true;
    // A graceful close waits on the client (HTTP/2 wants a PING ACK after GOAWAY); an idle client
    // that does not cooperate is cut off one idle period later.
    let hard_close = tokio::time::sleep(context.idle_timeout);
    tokio::pin!(hard_close);
    let mut hard_close_armed = false;
    let mut send_check =
        tokio::time::interval((context.send_timeout / 4).max(Duration::from_millis(1)));
    send_check.tick().await;
    // Note: a branch's `if` is evaluated only when `select!` is entered, and on a busy
    // connection nothing may re-enter it for a long time; so each timer branch re-checks its
    // condition when it fires instead of trusting the precondition.
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(client = %peer, error = %crate::error::chain(&*error), "client connection ended with an error");
                }
                return;
            }
            _ = idle_check.tick(), if !closing => {
                if idle.quiet_for_two_checks(&activity) {
                    tracing::debug!(client = %peer, "closing idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    hard_close.as_mut().reset(tokio::time::Instant::now() + context.idle_timeout);
                    hard_close_armed = true;
                }
            }
            _ = &mut first_request, if awaiting_first_request => {
                if activity.started() == 0 {
                    tracing::debug!(client = %peer, "no request within the header read timeout; closing");
                    return;
                }
                awaiting_first_request = false;
            }
            _ = &mut hard_close, if hard_close_armed => {
                if activity.is_idle() {
                    tracing::debug!(client = %peer, "idle connection did not close gracefully; dropping it");
                    return;
                }
                // A request came in while the graceful close was under way: let it finish.
                hard_close.as_mut().reset(tokio::time::Instant::now() + context.idle_timeout);
            }
            _ = send_check.tick() => {
                if activity.stalled_on_client(context.send_timeout) {
                    tracing::info!(client = %peer, timeout = ?context.send_timeout, "the client took none of the response within the send timeout; closing");
                    return;
                }
            }
            _ = context.draining.changed(), if !closing && !drain_grace_armed => {
                if activity.http2.load(Ordering::Relaxed) {
                    // GOAWAY tells the client which streams were taken: nothing to wait for.
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                } else {
                    drain_grace.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                    drain_grace_armed = true;
                }
            }
            _ = &mut drain_grace, if drain_grace_armed && !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// How long a draining connection not known to speak HTTP/2 is given to bring one more request
/// (answered with `Connection: close`) before it is closed. Closing an idle HTTP/1 connection
/// races the client's next request, which it then sees fail; a keep-alive client under load
/// sends that request within milliseconds, so after this grace only a quiet client is closed.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Tells when a connection has been idle for the idle timeout: checked every half period, it is
/// idle after two checks in a row that saw no new request and none open, so an idle connection
/// closes between one and one and a half idle periods after its last request.
struct IdleTracker {
    last_seen: u64,
    quiet_checks: u32,
}

impl IdleTracker {
    fn new(activity: &Activity) -> IdleTracker {
        IdleTracker {
            last_seen: activity.started(),
            quiet_checks: 0,
        }
    }

    fn quiet_for_two_checks(&mut self, activity: &Activity) -> bool {
        let seen = activity.started();
        if seen == self.last_seen && activity.is_idle() {
            self.quiet_checks += 1;
        } else {
            self.quiet_checks = 0;
        }
        self.last_seen = seen;
        self.quiet_checks >= 2
    }
}

/// Request activity on one client connection, for the idle and send timeouts.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    /// Whether a request came over HTTP/2: then the drain sends GOAWAY at once.
    http2: AtomicBool,
    open: AtomicUsize,
    /// Whether the last response-body poll handed data to hyper: if hyper then stops asking,
    /// the client is not reading.
    waiting_on_client: AtomicBool,
    /// When a response body was last asked for data ([`clock_ms`]; 0: never).
    last_body_poll_ms: AtomicU64,
}

impl Activity {
    fn open(self: &Arc<Self>) -> OpenRequest {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenRequest(Arc::clone(self))
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    fn is_idle(&self) -> bool {
        self.open.load(Ordering::Relaxed) == 0
    }

    /// Whether a response has waited on the client for longer than `limit`: data was handed
    /// over and hyper has not asked for more since, because the client does not read.
    fn stalled_on_client(&self, limit: Duration) -> bool {
        !self.is_idle()
            && self.waiting_on_client.load(Ordering::Relaxed)
            && clock_ms().saturating_sub(self.last_body_poll_ms.load(Ordering::Relaxed))
                > limit.as_millis() as u64
    }
}

/// A request whose response is not finished yet; the connection is not idle while one exists.
#[derive(Debug)]
pub struct OpenRequest(Arc<Activity>);

impl OpenRequest {
    /// Records that hyper asked the response body for data, and whether it got some.
    pub fn body_polled(&self, handed_over: bool) {
        self.0
            .waiting_on_client
            .store(handed_over, Ordering::Relaxed);
        self.0
            .last_body_poll_ms
            .store(clock_ms(), Ordering::Relaxed);
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}
