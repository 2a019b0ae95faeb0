//! The request path: pick a pool and a backend, rewrite the request for it, relay the response.
//!
//! [`ProxyService::handle`] never fails: every error becomes a response through `error.rs`, so
//! hyper never sees an `Err` (which would drop the client connection without an answer).

pub mod body;
pub mod connector;
pub mod headers;
pub mod upgrade;
pub mod upstream;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, SET_COOKIE,
    TRANSFER_ENCODING,
};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use crate::cluster::replication::Visit;
use crate::cluster::Cluster;
use crate::cluster::SessionLock;
use crate::config::{InvalidUpdate, StickyConfig, StickyMode};
use crate::error::ProxyError;
use crate::placement::Placement;
use crate::pool::{Backend, InFlight, Pool, StickyTarget};
use crate::routes::normalize_host;
use crate::runtime::{Runtime, Snapshot};
use crate::server::OpenRequest;
use crate::session::cookie as session_cookie;
use crate::session::{CookieChange, Current, SessionStore};
use crate::{retry, session, sticky};
use body::{Completion, RequestBody, ResponseBody};

/// The per-connection service: what hyper calls for each request on one client connection.
#[derive(Clone)]
pub struct ProxyService {
    runtime: Arc<Runtime>,
    client: SocketAddr,
    /// `http` or `https`, for X-Forwarded-Proto.
    scheme: &'static str,
    /// On a plain listener with `redirect_to_https`: the HTTPS port every request is sent to.
    redirect_to: Option<u16>,
}

impl ProxyService {
    /// A service for one client connection from `client`.
    pub fn new(runtime: Arc<Runtime>, client: SocketAddr, scheme: &'static str) -> ProxyService {
        ProxyService {
            runtime,
            client,
            scheme,
            redirect_to: None,
        }
    }

    /// A service that answers every request of `client` with a redirect to HTTPS on `port`.
    pub fn redirecting(runtime: Arc<Runtime>, client: SocketAddr, port: u16) -> ProxyService {
        ProxyService {
            redirect_to: Some(port),
            ..ProxyService::new(runtime, client, "http")
        }
    }

    /// Answers one request; `open_request` marks the connection busy until the response is done.
    ///
    /// The request's access-log line is prepared at once, before the returned future is first
    /// polled: a request that hyper drops unanswered, even unpolled (its client closed the
    /// connection or reset the stream), is still logged, as 499.
    pub fn handle(
        &self,
        request: Request<Incoming>,
        open_request: OpenRequest,
    ) -> impl std::future::Future<Output = Response<ResponseBody>> + Send + 'static {
        let started = Instant::now();
        let snapshot = self.runtime.snapshot();
        let logged = LoggedHead::of(&request, &snapshot);
        let completion = Completion {
            started,
            client: self.client,
            method: request.method().clone(),
            path: loggable_path(request.uri().path()),
            query: logged.query,
            host: logged.host,
            user_agent: logged.user_agent,
            referer: logged.referer,
            request_id: headers::request_id(request.headers(), self.trusts(&snapshot)),
            version: request.version(),
            // Until an answer is chosen: should hyper drop the request first, the client
            // went away (closed its connection, reset its stream).
            status: crate::error::CLIENT_CLOSED_REQUEST,
            pool: None,
            backend: None,
            attempts: 0,
            bytes_sent: 0,
            upstream_started: None,
            upstream_answered: None,
            in_flight: None,
            open_request,
            metrics: Arc::clone(&self.runtime.metrics),
        };
        let service = self.clone();
        async move { service.respond(request, completion, snapshot).await }
    }

    /// What [`ProxyService::handle`] answers, `completion` learning what happens.
    async fn respond(
        &self,
        request: Request<Incoming>,
        mut completion: Completion,
        snapshot: Arc<Snapshot>,
    ) -> Response<ResponseBody> {
        // One validation step for every request, whatever its protocol, before anything reads it.
        let host = match validate::check(&request, &validate::Limits::of(&snapshot.config.listen)) {
            Ok(host) => host,
            Err(rejection) => return refuse(ProxyError::Invalid(rejection), completion),
        };
        if let Some(port) = self.redirect_to {
            return redirect_to_https(&request, port, completion);
        }
        match self
            .forward(&snapshot, request, host, &mut completion)
            .await
        {
            Ok((response, in_flight)) => {
                completion.upstream_answered = Some(Instant::now());
                let (parts, body) = response.into_parts();
                completion.status = parts.status;
                completion.in_flight = Some(in_flight);
                let sessions = self.runtime.sessions.as_deref();
                let session_fields = sessions.map(|store| Arc::clone(store.headers()));
                Response::from_parts(
                    parts,
                    ResponseBody::upstream(body, completion, session_fields),
                )
            }
            Err(error) => refuse(error, completion),
        }
    }

    /// Routes, balances and relays; `completion` learns the pool and backend as they are chosen.
    async fn forward(
        &self,
        snapshot: &Snapshot,
        mut request: Request<Incoming>,
        host: Option<HeaderValue>,
        completion: &mut Completion,
    ) -> Result<(Response<Incoming>, InFlight), ProxyError> {
        let store = self.runtime.sessions.as_deref();
        // A client never speaks for tandem: its session headers go before anything is read.
        let cluster = self.runtime.cluster.as_ref();
        let (session, _hold) = match store {
            Some(store) => open_session(store, cluster, &mut request).await,
            None => (None, SessionHold::default()),
        };
        let cluster = cluster.map(|cluster| &**cluster);
        let pool = self.choose_pool(snapshot, &mut request, host.as_ref())?;
        completion.pool = Some(Arc::clone(&pool.name));
        pool.retry_budget.deposit();
        let sticky = pool.config.sticky.as_ref();
        let Stickiness {
            target,
            first: sticky_index,
            forced,
        } = stick(pool, &mut request)?;
        // In proxy mode a session's route is an affinity hint (in `route` sticky mode): any
        // backend can serve the session, the one that served it last is preferred.
        let affine = sticky.is_some_and(|sticky| sticky.mode == StickyMode::Route);
        let session_owner = session
            .as_ref()
            .filter(|_| affine && target.is_none())
            .and_then(|current| pool.backend_by_route(&current.route));
        let sticky_index = sticky_index
            .or_else(|| session_owner.filter(|&index| pool.backends[index].takes_sticky_work()));
        let client_upgrade = self.prepare(&mut request, host, snapshot);
        headers::set_request_id(request.headers_mut(), &completion.request_id);
        if let (Some(store), Some(current)) = (store, &session) {
            store
                .headers()
                .attach(request.headers_mut(), &current.id, current.data.clone());
        }
        let retry = &pool.config.retry;
        // A request can be sent again when tandem holds all of it: no body, or a small one read
        // beforehand (nginx's request buffering). A larger body streams and is sent once.
        let replayable = client_upgrade.is_none()
            && retry.attempts > 1
            && request
                .body()
                .size_hint()
                .exact()
                .is_some_and(|length| length <= MAX_REPLAY_BODY);
        let metrics = &self.runtime.metrics.requests;
        let received = metrics.received_bytes.with_label_values(&[&*pool.name]);
        let resend = if replayable {
            let timeout = snapshot.config.listen.header_read_timeout;
            let replay = Replay::read(request, timeout).await?;
            received.inc_by(replay.body.len() as u64);
            Resend::Whole(replay)
        } else {
            let idle_timeout = snapshot.config.listen.body_idle_timeout;
            let session_fields = store.map(|store| Arc::clone(store.headers()));
            Resend::Streamed(Streamed::new(
                request,
                received,
                idle_timeout,
                session_fields,
            ))
        };
        completion.upstream_started = Some(Instant::now());
        let mut tried: Vec<usize> = Vec::new();
        // A session whose owner cannot serve it fails over in mod_jk's order.
        let owner = target.as_ref().map(|t| t.owner).or(session_owner);
        let choose = |tried: &[usize]| match owner {
            Some(owner) if tried.is_empty() || tried.contains(&owner) => {
                pool.failover(owner, self.client.ip(), tried)
            }
            _ => pool.select(self.client.ip(), tried),
        };
        // The backend the attempt must go to, if any: the session's, or the same one again on
        // a fresh connection.
        let mut fixed = sticky_index;
        let mut pick = match fixed {
            Some(index) => pool.pick_backend(index),
            None => choose(&tried).ok_or_else(|| ProxyError::NoBackend {
                pool: pool.name.to_string(),
            })?,
        };
        let mut stale_retries = 0;
        loop {
            // Past a backend's max_connections the attempt waits in the pool's queue.
            let admitted = pool
                .admit(pick, || match fixed {
                    Some(index) => Some(pool.pick_backend(index)),
                    None => choose(&tried),
                })
                .await;
            let (index, in_flight) = match admitted {
                Ok(admitted) => admitted,
                Err(error) => {
                    let reason = match error {
                        ProxyError::QueueFull { .. } => "full",
                        ProxyError::QueueTimeout { .. } => "timeout",
                        _ => return Err(error),
                    };
                    metrics
                        .queue_rejected
                        .with_label_values(&[&*pool.name, reason])
                        .inc();
                    return Err(error);
                }
            };
            let backend = &pool.backends[index];
            completion.backend = Some(Arc::clone(backend));
            completion.attempts += 1;
            let mut attempt = resend
                .build()
                .expect("an attempt is made only while the request can be sent");
            let scheme = if pool.config.tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            };
            aim(&mut attempt, backend, scheme);
            let sent = Instant::now();
            match pool.upstream.send(attempt).await {
                Ok(response) => {
                    check_framing(&response)?;
                    metrics
                        .upstream_duration
                        .with_label_values(&[&*pool.name, &backend.config.address])
                        .observe(sent.elapsed().as_secs_f64());
                    if owner.is_some_and(|owner| owner != index) {
                        metrics.failovers.with_label_values(&[&*pool.name]).inc();
                        backend.live.count_failover();
                    }
                    let status = response.status();
                    if pool
                        .config
                        .passive
                        .fail_on_status
                        .contains(&status.as_u16())
                    {
                        backend.record_failure(
                            &pool.config.passive,
                            &pool.name,
                            &format!("status {status}"),
                        );
                    } else {
                        backend.record_success();
                    }
                    let mut response = response;
                    let takeovers = metrics.route_takeovers.with_label_values(&[&*pool.name]);
                    if let Some(store) = store {
                        let served_route = &backend.config.route;
                        let rerouted = affine
                            && session
                                .as_ref()
                                .is_some_and(|current| *current.route != **served_route);
                        let settled = SessionOutcome {
                            store,
                            current: session.as_ref(),
                            served_route,
                            rerouted,
                            tls: self.scheme == "https",
                        };
                        let before = cluster.map(Cluster::sequence);
                        settled.apply(&mut response, backend)?;
                        // In sync mode the client hears of its change once the peers hold it.
                        if let (Some(cluster), Some(before)) = (cluster, before) {
                            cluster.wait_for_peers(before).await;
                        }
                        if rerouted {
                            takeovers.inc();
                        }
                    }
                    if let Some(sticky) = sticky {
                        settle_session(
                            pool,
                            sticky,
                            target.as_ref(),
                            index,
                            &completion.path,
                            &mut response,
                            &takeovers,
                        );
                    }
                    return relay(response, in_flight, client_upgrade, backend);
                }
                Err(error) => {
                    // The slot is free before the next attempt looks for room.
                    drop(in_flight);
                    if error.blames_backend() {
                        backend.record_failure(
                            &pool.config.passive,
                            &pool.name,
                            &error.to_string(),
                        );
                    }
                    let stale = matches!(error, ProxyError::StaleConnection(_));
                    if stale && stale_retries < MAX_STALE_RETRIES && resend.can_resend() {
                        // The backend never saw this request on a connection it had closed:
                        // the same backend again, on another connection, whatever the method.
                        stale_retries += 1;
                        metrics
                            .retries
                            .with_label_values(&[&*pool.name, "fresh_connection"])
                            .inc();
                        backend.live.count_retry();
                        tracing::info!(
                            pool = %pool.name,
                            backend = %backend.config.address,
                            reason = %error,
                            "retrying on a fresh connection"
                        );
                        fixed = Some(index);
                        pick = pool.pick_backend(index);
                        continue;
                    }
                    tried.push(index);
                    let next = if resend.can_resend()
                        && !forced
                        // Resends on a fresh connection do not count: the backend never
                        // saw those.
                        && completion.attempts - stale_retries < retry.attempts
                        && retry::may_retry(&error, &completion.method, retry)
                    {
                        choose(&tried)
                    } else {
                        None
                    };
                    // The budget is spent only on a retry that has somewhere to go.
                    match next {
                        Some(next)
                            if !retry::spends_budget(&error) || pool.retry_budget.withdraw() =>
                        {
                            metrics
                                .retries
                                .with_label_values(&[&*pool.name, "another_backend"])
                                .inc();
                            backend.live.count_retry();
                            tracing::info!(
                                pool = %pool.name,
                                backend = %backend.config.address,
                                attempt = completion.attempts,
                                reason = %error,
                                "retrying on another backend"
                            );
                            fixed = None;
                            pick = next;
                        }
                        _ => return Err(error),
                    }
                }
            }
        }
    }

    /// The pool that serves `request` for `host`, the authority [`validate::check`] found. An
    /// authority from the target (absolute form, HTTP/2's `:authority`) becomes the forwarded
    /// Host too (RFC 9112 §3.2.2).
    fn choose_pool<'s>(
        &self,
        snapshot: &'s Snapshot,
        request: &mut Request<Incoming>,
        host: Option<&HeaderValue>,
    ) -> Result<&'s Arc<Pool>, ProxyError> {
        let host_name = match host {
            Some(host) => {
                if request.uri().authority().is_some() {
                    request.headers_mut().insert(HOST, host.clone());
                }
                // `check` let only ASCII through.
                normalize_host(host.to_str().unwrap_or_default())
            }
            None => String::new(),
        };
        let pool_index = snapshot
            .routes
            .lookup(&host_name, request.uri().path())
            .ok_or(ProxyError::NoPool { host: host_name })?;
        Ok(&snapshot.pools[pool_index])
    }

    /// Rewrites `request`'s head for any backend: hop-by-hop headers out, X-Forwarded-* in,
    /// an HTTP/2 client's Cookie fields joined, HTTP/1.1. Returns the client side of a requested protocol switch.
    fn prepare(
        &self,
        request: &mut Request<Incoming>,
        host: Option<HeaderValue>,
        snapshot: &Snapshot,
    ) -> Option<hyper::upgrade::OnUpgrade> {
        let protocol = headers::strip_hop_by_hop(request.headers_mut());
        let client_upgrade = match protocol {
            Some(protocol) if request.version() == Version::HTTP_11 => {
                headers::restore_upgrade(request.headers_mut(), protocol);
                Some(hyper::upgrade::on(&mut *request))
            }
            _ => None,
        };
        headers::join_split_cookies(request.version(), request.headers_mut());
        *request.version_mut() = Version::HTTP_11;
        headers::set_forwarded(
            request.headers_mut(),
            self.client.ip(),
            self.scheme,
            host,
            self.trusts(snapshot),
        );
        client_upgrade
    }

    /// Whether the client is another proxy (`[forwarded] trusted`), whose X-Forwarded-* and
    /// X-Request-Id are kept.
    fn trusts(&self, snapshot: &Snapshot) -> bool {
        snapshot
            .forwarded
            .trusted
            .iter()
            .any(|net| net.contains(&self.client.ip()))
    }
}

/// What the access log takes from a request's head, gathered only while it is on.
#[derive(Default)]
struct LoggedHead {
    query: String,
    host: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
}

impl LoggedHead {
    /// The query (session parameters of `snapshot`'s config redacted) and the headers; nothing,
    /// and no allocation, while the access log is off.
    fn of<B>(request: &Request<B>, snapshot: &Snapshot) -> LoggedHead {
        if !crate::logging::access_log_on() {
            return LoggedHead::default();
        }
        let session_parameters = || {
            let sticky = snapshot
                .pools
                .iter()
                .filter_map(|pool| pool.config.sticky.as_ref()?.url_parameter.as_deref());
            snapshot
                .config
                .session
                .url_parameter
                .as_deref()
                .into_iter()
                .chain(sticky)
                .chain(["jsessionid"])
        };
        let query = request.uri().query().map_or_else(String::new, |query| {
            crate::logging::access::loggable_query(query, |name| {
                session_parameters().any(|session| session.eq_ignore_ascii_case(name))
            })
        });
        let headers = request.headers();
        let host = headers.get(HOST).cloned().or_else(|| {
            let authority = request.uri().authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        LoggedHead {
            query,
            host,
            user_agent: headers.get(http::header::USER_AGENT).cloned(),
            referer: headers.get(http::header::REFERER).cloned(),
        }
    }
}

/// The sticky session a request belongs to, as `forward` uses it.
struct Stickiness {
    /// The session and the backend that owns it, if the request names one this pool knows.
    target: Option<StickyTarget>,
    /// The backend for the first attempt: the owner, if it can serve the session.
    first: Option<usize>,
    /// `sticky.force`: the session never moves (no failover, no retry elsewhere).
    forced: bool,
}

/// Finds `request`'s sticky session in `pool` and prepares the request for it: tandem's own
/// insert-mode cookie is removed, and a taken-over session's id is rewritten to the one the
/// backends know. With `sticky.force`, a session whose owner cannot serve it is a 503.
fn stick(pool: &Pool, request: &mut Request<Incoming>) -> Result<Stickiness, ProxyError> {
    let sticky = pool.config.sticky.as_ref();
    let target = sticky.and_then(|sticky| {
        let ids = sticky::session_ids(request.headers(), request.uri().path(), sticky);
        pool.sticky_target(&ids, sticky)
    });
    let first = target
        .as_ref()
        .map(|t| t.owner)
        .filter(|&i| pool.backends[i].takes_sticky_work());
    // With sticky.force a session never moves: no failover, no retry elsewhere.
    let forced = target.is_some() && sticky.is_some_and(|sticky| sticky.force);
    if forced && first.is_none() {
        return Err(ProxyError::SessionBackendUnavailable {
            pool: pool.name.to_string(),
        });
    }
    if let Some(sticky) = sticky.filter(|sticky| sticky.mode == StickyMode::Insert) {
        // tandem's own affinity cookie is not the backend's business.
        for name in &sticky.cookies {
            sticky::remove_cookie(request.headers_mut(), name);
        }
    }
    if let Some(StickyTarget {
        id,
        cookie: Some(cookie),
        backend_id: Some(backend_id),
        ..
    }) = &target
    {
        // After a takeover the client holds `<base>.<new route>`; the backends know the
        // session by the id it had when it was replicated.
        if id != backend_id {
            sticky::rewrite_cookie(request.headers_mut(), cookie, id, backend_id);
        }
    }
    Ok(Stickiness {
        target,
        first,
        forced,
    })
}

/// What a request holds of its session in a cluster until its response is settled: the
/// session's lock (`lock_sessions`) and, in the `backup` topology, a visiting copy.
#[derive(Default)]
struct SessionHold {
    _lock: Option<SessionLock>,
    _visit: Option<Visit>,
}

/// Proxy mode, on the way in: removes every session header the client sent, tandem's session
/// cookie and its URL parameter (the backend gets the session in headers), and opens the
/// session they name, if it is live. An id the store does not know is never adopted. In a cluster the
/// session's lock is taken first (`lock_sessions`); in the `backup` topology a session this
/// node does not have is then fetched from its holders, and one it does not hold stays for the
/// request while the returned hold lives.
async fn open_session(
    store: &SessionStore,
    cluster: Option<&Arc<Cluster>>,
    request: &mut Request<Incoming>,
) -> (Option<Current>, SessionHold) {
    store.headers().strip(request.headers_mut());
    let config = store.config();
    let mut opened = (None, SessionHold::default());
    for (id, route) in session_cookie::candidates(request.headers(), request.uri().path(), config) {
        let mut hold = SessionHold::default();
        if let Some(cluster) = cluster {
            hold._lock = cluster.lock(store, id).await;
            hold._visit = cluster.visit(store, id).await;
        }
        if let Some(current) = store.open(id, route) {
            opened = (Some(current), hold);
            break;
        }
    }
    if request.headers().contains_key(COOKIE) {
        sticky::remove_cookie(request.headers_mut(), &config.cookie.name);
    }
    if let Some(name) = &config.url_parameter {
        remove_path_parameter(request, name);
    }
    opened
}

/// Takes parameter `;name=...` out of `request`'s path, if it has one (the URL form of the
/// session id, which the backend gets in headers instead).
fn remove_path_parameter(request: &mut Request<Incoming>, name: &str) {
    let uri = request.uri();
    if sticky::path_parameter(uri.path(), name).is_none() {
        return;
    }
    let kept = session_cookie::without_path_parameter(uri.path(), name);
    let path_and_query = match uri.query() {
        Some(query) => format!("{kept}?{query}"),
        None => kept,
    };
    // What remains of a valid path is valid; should it not be, the request goes as it came.
    let Ok(path_and_query) = path_and_query.parse() else {
        return;
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// Proxy mode, on the way out: what a backend's response does to the session.
struct SessionOutcome<'a> {
    store: &'a SessionStore,
    current: Option<&'a Current>,
    served_route: &'a str,
    /// The session's affinity moved to the serving backend (a takeover).
    rerouted: bool,
    tls: bool,
}

impl SessionOutcome<'_> {
    /// Takes the backend's session headers out of `response`, applies the update and sets or
    /// clears the client's cookie. A refused update is logged and counted, and answered with
    /// 502 unless `on_invalid_update = "pass"`.
    fn apply(
        &self,
        response: &mut Response<Incoming>,
        backend: &Backend,
    ) -> Result<(), ProxyError> {
        let config = self.store.config();
        let settled = self.store.settle(
            self.current,
            response.headers_mut(),
            self.served_route,
            self.rerouted,
        );
        let change = match settled {
            Ok(change) => change,
            Err(rejection) => {
                tracing::warn!(
                    backend = %backend.config.address,
                    session = %self.current.map_or("(none)".into(), |c| session::log_ref(&c.id)),
                    reason = %rejection,
                    "session update refused, nothing of it applied"
                );
                return match config.on_invalid_update {
                    InvalidUpdate::Reject => Err(ProxyError::SessionUpdate(rejection)),
                    InvalidUpdate::Pass => Ok(()),
                };
            }
        };
        let header = match change {
            CookieChange::Keep => return Ok(()),
            CookieChange::Set { id, route } => session_cookie::set(config, &id, &route, self.tls),
            CookieChange::Clear => session_cookie::clear(config, self.tls),
        };
        response.headers_mut().append(SET_COOKIE, header);
        Ok(())
    }
}

/// tandem's own answer to a request it refuses: `error`'s status and public body, with the
/// reason in the log.
fn refuse(error: ProxyError, mut completion: Completion) -> Response<ResponseBody> {
    let status = error.status();
    let logged_status = error.logged_status();
    tracing::warn!(
        client = %completion.client,
        method = %completion.method,
        path = %completion.path,
        pool = completion.pool.as_deref().unwrap_or("-"),
        backend = completion.backend.as_ref().map_or("-", |b| b.config.address.as_str()),
        status = logged_status.as_u16(),
        reason = %error,
        "request answered by tandem"
    );
    completion.status = logged_status;
    let closes = error.closes_connection();
    let mut response = Response::new(ResponseBody::local(error.public_body(), completion));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if closes {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// 308 to the same host and target over HTTPS on `port` (the method and body are kept by the
/// client); 400 for a request that names no host.
fn redirect_to_https(
    request: &Request<Incoming>,
    port: u16,
    mut completion: Completion,
) -> Response<ResponseBody> {
    let host = request
        .uri()
        .host()
        .map(str::to_string)
        .or_else(|| {
            let value = request.headers().get(HOST)?.to_str().ok()?;
            Some(normalize_host(value))
        })
        .filter(|host| !host.is_empty() && !host.contains(['/', '@', ' ']));
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", PathAndQuery::as_str);
    let location = host.and_then(|host| {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        let port = if port == 443 {
            String::new()
        } else {
            format!(":{port}")
        };
        HeaderValue::from_str(&format!("https://{host}{port}{target}")).ok()
    });
    let Some(location) = location else {
        completion.status = StatusCode::BAD_REQUEST;
        let mut response = Response::new(ResponseBody::local("400 Bad Request\n", completion));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    completion.status = StatusCode::PERMANENT_REDIRECT;
    let mut response = Response::new(ResponseBody::local(
        "308 Permanent Redirect: use HTTPS\n",
        completion,
    ));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response
        .headers_mut()
        .insert(http::header::LOCATION, location);
    response
}

/// Points `request` at `backend`: an absolute URI naming it (`https` for a TLS pool), the path
/// and query kept.
fn aim(request: &mut Request<RequestBody>, backend: &Backend, scheme: Scheme) {
    let path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(backend.authority.clone());
    parts.path_and_query = Some(path_and_query);
    *request.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path make a URI");
}

/// Refuses a response with both Content-Length and Transfer-Encoding: that is how response
/// splitting starts (RFC 9112 §6.3). hyper reads such a body as chunked but keeps the
/// Content-Length, which would then describe a body that is not there. The response's
/// connection is dropped with it.
fn check_framing(response: &Response<Incoming>) -> Result<(), ProxyError> {
    let headers = response.headers();
    if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
        return Err(ProxyError::Upstream(
            "the response has both Content-Length and Transfer-Encoding".into(),
        ));
    }
    Ok(())
}

/// Takes a backend's response for the client: hop-by-hop headers out, and for a 101 to an
/// upgrade request, the upgrade headers back in and the tunnel spawned.
fn relay(
    mut response: Response<Incoming>,
    in_flight: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    backend: &Backend,
) -> Result<(Response<Incoming>, InFlight), ProxyError> {
    let backend_upgrade = headers::strip_hop_by_hop(response.headers_mut());
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client_side), Some(protocol)) = (client_upgrade, backend_upgrade) else {
            return Err(ProxyError::Upstream(
                "101 Switching Protocols to a request that asked for none".into(),
            ));
        };
        let backend_side = hyper::upgrade::on(&mut response);
        headers::restore_upgrade(response.headers_mut(), protocol);
        upgrade::tunnel(client_side, backend_side, backend.config.address.clone());
    }
    Ok((response, in_flight))
}

/// The request path as the logs show it: path parameter values (`;jsessionid=...`) become
/// `-`, so that a session id never lands in a log file.
fn loggable_path(path: &str) -> String {
    if !path.contains(';') {
        return path.to_string();
    }
    let segments: Vec<String> = path
        .split('/')
        .map(|segment| {
            let mut parts = segment.split(';');
            let mut shown = parts.next().unwrap_or("").to_string();
            for parameter in parts {
                shown.push(';');
                shown.push_str(
                    parameter
                        .split_once('=')
                        .map_or(parameter, |(name, _)| name),
                );
                if parameter.contains('=') {
                    shown.push_str("=-");
                }
            }
            shown
        })
        .collect();
    segments.join("/")
}

/// How a request is sent again after a failed attempt.
enum Resend {
    /// Held whole: every attempt is built from it.
    Whole(Replay),
    /// Its body streams: it can be sent again only while no attempt has read any of it.
    Streamed(Streamed),
}

impl Resend {
    /// The request for the next attempt; `None` once a streamed body has been read.
    fn build(&self) -> Option<Request<RequestBody>> {
        match self {
            Resend::Whole(replay) => Some(replay.build()),
            Resend::Streamed(streamed) => streamed.build(),
        }
    }

    /// Whether another attempt can be made with all of the request.
    fn can_resend(&self) -> bool {
        match self {
            Resend::Whole(_) => true,
            Resend::Streamed(streamed) => streamed.unsent(),
        }
    }
}

/// A request whose body streams: its prepared head, and its body until an attempt reads it.
struct Streamed {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Arc<std::sync::Mutex<Option<Incoming>>>,
    received: prometheus::IntCounter,
    idle_timeout: std::time::Duration,
    session_fields: Option<Arc<session::contract::SessionHeaders>>,
}

impl Streamed {
    /// Holds `request`; `received` counts its body bytes as they are relayed, and the body is
    /// cut off after `idle_timeout` without a byte; in proxy mode, `session_fields` are taken
    /// out of its trailers.
    fn new(
        request: Request<Incoming>,
        received: prometheus::IntCounter,
        idle_timeout: std::time::Duration,
        session_fields: Option<Arc<session::contract::SessionHeaders>>,
    ) -> Streamed {
        let (parts, body) = request.into_parts();
        Streamed {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body: Arc::new(std::sync::Mutex::new(Some(body))),
            received,
            idle_timeout,
            session_fields,
        }
    }

    fn unsent(&self) -> bool {
        self.body
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some()
    }

    fn build(&self) -> Option<Request<RequestBody>> {
        self.unsent().then(|| {
            let mut request = Request::new(RequestBody::Client {
                unsent: Arc::clone(&self.body),
                taken: None,
                received: self.received.clone(),
                idle_timeout: self.idle_timeout,
                idle: None,
                finished: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                session_fields: self.session_fields.clone(),
            });
            *request.method_mut() = self.method.clone();
            *request.uri_mut() = self.uri.clone();
            *request.headers_mut() = self.headers.clone();
            *request.version_mut() = Version::HTTP_11;
            request
        })
    }
}

/// Attempts per request sent again on the same backend after a stale pooled connection
/// closed under them (each takes that connection out of the pool).
const MAX_STALE_RETRIES: u32 = 2;

/// Request bodies up to this size, with a Content-Length, are read before the first attempt so
/// that the request can be retried; larger ones stream.
const MAX_REPLAY_BODY: u64 = 16 * 1024;

/// A request tandem holds whole, so that it can be sent again: its method, target, prepared
/// headers and body.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Replay {
    /// Takes the request, reading its (small) body within `timeout`.
    async fn read(
        request: Request<Incoming>,
        timeout: std::time::Duration,
    ) -> Result<Replay, ProxyError> {
        let (parts, body) = request.into_parts();
        let body = match tokio::time::timeout(timeout, body.collect()).await {
            Err(_) => return Err(ProxyError::BodyTimeout(timeout)),
            Ok(Err(error)) => return Err(body::ClientBodyError::of(&error).into()),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        Ok(Replay {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
        })
    }

    fn build(&self) -> Request<RequestBody> {
        let data = (!self.body.is_empty()).then(|| self.body.clone());
        let mut request = Request::new(RequestBody::Buffered { data });
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        *request.version_mut() = Version::HTTP_11;
        request
    }
}

/// Keeps a sticky session's placement true after a response from backend `served`. In `learn`
/// mode, every session id the backend sets is learned as living there. In `route` mode, the
/// shape of the backends' session cookies is learned, and a backend that renamed the session
/// itself (JvmRouteBinderValve) is followed. In both, a session that landed on a backend other
/// than its owner is recorded as moved; in `route` mode the client's cookie is then rewritten
/// to name the backend that holds it. A backend that answers with another session in the
/// request's session cookie (it did not have the session: no replication) has the last word:
/// its cookie stands, and the session it replaced is forgotten.
fn settle_session(
    pool: &Pool,
    sticky: &StickyConfig,
    target: Option<&StickyTarget>,
    served: usize,
    request_path: &str,
    response: &mut Response<Incoming>,
    takeovers: &prometheus::IntCounter,
) {
    let served_route = &pool.backends[served].config.route;
    if sticky.mode == StickyMode::Insert {
        // The cookie carries the route: re-issue it whenever the request landed elsewhere.
        if target.map(|t| t.owner) != Some(served) {
            let value = sticky::signed_route(&sticky.secret, &pool.name, served_route);
            let mut cookie = cookie::Cookie::new(sticky.cookies[0].clone(), value);
            cookie.set_path("/");
            cookie.set_http_only(true);
            cookie.set_same_site(cookie::SameSite::Lax);
            if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
                response.headers_mut().append(SET_COOKIE, value);
            }
        }
        return;
    }
    let learn = sticky.mode == StickyMode::Learn;
    // What the backend set last in the cookie the request's session came in (in any session
    // cookie for the URL form): the value the client keeps. Empty for a deleted cookie.
    let mut backend_set = None;
    for value in response.headers().get_all(SET_COOKIE) {
        let Some(cookie) = value
            .to_str()
            .ok()
            .and_then(|text| cookie::Cookie::parse(text).ok())
        else {
            continue;
        };
        if !sticky.cookies.iter().any(|name| name == cookie.name()) {
            continue;
        }
        if target.is_some_and(|t| t.cookie.as_deref().is_none_or(|name| name == cookie.name())) {
            backend_set = Some(cookie.value().to_string());
        }
        if cookie.value().is_empty() {
            continue;
        }
        if learn {
            let placement = Placement {
                route: served_route.clone(),
                backend_id: cookie.value().to_string(),
            };
            pool.record_placement(cookie.value(), placement);
        } else {
            pool.cookie_templates.learn(&cookie);
        }
    }
    let Some(target) = target else { return };
    match backend_set {
        Some(new_id) if sticky::session_key(&new_id, sticky) != target.key => {
            // The backend did not have the session (no replication, or it expired there) and
            // answered with a new one, or ended it: tandem's cookie after the backend's would
            // override it, and the session would be lost on the next request.
            if target.backend_id.is_some() {
                pool.forget_placement(&target.key);
            }
            if served != target.owner {
                tracing::info!(
                    pool = %pool.name,
                    from = %pool.backends[target.owner].config.route,
                    to = %served_route,
                    "session route failed over to a backend that started another session"
                );
            }
            return;
        }
        Some(new_id) if !learn => {
            // The backend set the session cookie itself (JvmRouteBinderValve renames a session
            // it takes over): from now on the backends know the session by that id.
            let moved = served != target.owner || target.backend_id.is_some();
            if moved && sticky::route_of(&new_id, sticky.separator) == Some(served_route.as_str()) {
                if served != target.owner {
                    takeovers.inc();
                }
                pool.record_placement(
                    &target.key,
                    Placement {
                        route: served_route.clone(),
                        backend_id: new_id,
                    },
                );
            }
            return;
        }
        _ => {}
    }
    if served != target.owner {
        let backend_id = target
            .backend_id
            .clone()
            .unwrap_or_else(|| target.id.clone());
        pool.record_placement(
            &target.key,
            Placement {
                route: served_route.clone(),
                backend_id,
            },
        );
        takeovers.inc();
        tracing::info!(
            pool = %pool.name,
            from = %pool.backends[target.owner].config.route,
            to = %served_route,
            "session route taken over"
        );
    }
    // In learn mode ids carry no route: the client's cookie is right wherever the session is.
    let Some(cookie_name) = target.cookie.as_ref().filter(|_| !learn) else {
        return;
    };
    let client_id = format!("{}{}{}", target.key, sticky.separator, served_route);
    if target.id != client_id {
        let cookie = pool
            .cookie_templates
            .cookie(cookie_name, &client_id, request_path);
        if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::loggable_path;

    #[test]
    fn session_ids_in_path_parameters_never_reach_the_logs() {
        assert_eq!(loggable_path("/shop/cart"), "/shop/cart");
        assert_eq!(
            loggable_path("/shop/cart;jsessionid=8F3A.tc1"),
            "/shop/cart;jsessionid=-"
        );
        assert_eq!(
            loggable_path("/a;v=1;flag/b;jsessionid=X"),
            "/a;v=-;flag/b;jsessionid=-"
        );
    }
}
