//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and the session API, for tools outside the
//! request path and for sessions too large for headers. Separate from the public listeners and
//! meant for loopback or a private network; the session API also needs the bearer token.
//!
//! `/status` is the HTML status page (see `status.rs`), and `/status.json` and `/status.csv` its
//! figures for tools; all three are open to clients on loopback like the read-only endpoints
//! below.
//!
//! Requests that change something (any method but GET and HEAD) are refused with 403 when their
//! `Origin` names another origin than the admin listener's or `Sec-Fetch-Site` says
//! `cross-site` or `same-site`: with the bearer token in a header a browser cannot forge them
//! anyway (tandem grants no CORS preflight), and this refuses them even should a token leak
//! into a page of another site.
//!
//! Pools API (JSON): `GET /api/pools` (every pool and backend with its state, health and
//! open requests) is open to clients on loopback and needs the token from elsewhere; `GET
//! /api/config` (the running config file, secrets hidden: it still says where the certificates
//! and keys are and how the cluster is reached), `PUT /api/pools/{pool}/backends/{route or
//! address}/state` with `{"state": "draining"}` (a state that lasts until the config file changes
//! that backend's state), `PUT /api/pools/{pool}/backends/{route or address}/weight` with
//! `{"weight": 3}` (likewise until the file changes that backend's weight) and `POST
//! /api/reload` always need the token.
//!
//! Session API (JSON; `Authorization: Bearer <admin.token>`, 401 without it):
//! - `GET /api/sessions?limit=N&after=ID`: a page of live sessions in id order, without their
//!   attributes, and `next` (the `after` of the next page, `null` on the last page).
//! - `GET /api/sessions/ID`: one session with its attributes (404 when not live).
//! - `PATCH /api/sessions/ID`: apply the body, an RFC 7396 merge patch (422 when refused).
//! - `DELETE /api/sessions/ID`: invalidate it (204; 404 when not live).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::config::BackendState;
use crate::runtime::Runtime;
use crate::session::{contract, id, SessionStore};
use crate::status::StatusPage;

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest request body the session API reads (a merge patch).
const MAX_BODY: usize = 1 << 20;
/// Sessions per listing page: the default and the most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// What the admin endpoints read.
pub struct Admin {
    /// The live config, metrics and session store.
    runtime: Arc<Runtime>,
    /// SHA-256 of the bearer token; `None` keeps the session API closed.
    token_digest: Option<[u8; 32]>,
    /// The status page and what it remembers between renders.
    status: StatusPage,
    /// Whether connections speak TLS (with the public listeners' certificates).
    tls: bool,
}

impl Admin {
    /// The admin endpoints over `runtime`, the API guarded by `token`, over TLS when `tls`.
    pub fn new(runtime: Arc<Runtime>, token: Option<&str>, tls: bool) -> Admin {
        Admin {
            tls,
            runtime,
            token_digest: token.map(|token| Sha256::digest(token.as_bytes()).into()),
            status: StatusPage::default(),
        }
    }

    /// Accepts admin connections on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = Arc::clone(&self);
            tokio::spawn(async move {
                if !admin.tls {
                    admin.serve_connection(stream, peer).await;
                    return;
                }
                let Some(config) = admin.runtime.tls_config() else {
                    return;
                };
                let accepting = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, accepting).await {
                    Ok(Ok(tls)) => admin.serve_connection(tls, peer).await,
                    Ok(Err(error)) => {
                        tracing::info!(client = %peer, %error, "admin TLS handshake failed")
                    }
                    Err(_) => tracing::info!(client = %peer, "admin TLS handshake timed out"),
                }
            });
        }
    }

    async fn serve_connection<S>(self: Arc<Self>, stream: S, peer: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(move |request| {
            let admin = Arc::clone(&self);
            async move { Ok::<_, Infallible>(admin.handle(request, peer).await) }
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        let _ = builder
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }

    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        let changes_state = !matches!(*request.method(), Method::GET | Method::HEAD);
        let response = match (request.method(), path.as_str()) {
            _ if changes_state && cross_site(&request) => {
                tracing::warn!(%peer, %path, "admin request refused: it comes from another site");
                error(
                    StatusCode::FORBIDDEN,
                    "refused: a request from another site (Origin or Sec-Fetch-Site)",
                )
            }
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
            (&Method::GET, "/readyz") if self.ready() => text(StatusCode::OK, "ready\n".into()),
            (&Method::GET, "/readyz") => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: starting, waiting for the cluster's sessions, or draining\n".into(),
            ),
            (&Method::GET, "/metrics") => {
                let pools = &self.runtime.snapshot().pools;
                let cluster = self.runtime.cluster.as_deref();
                let rendered = self.runtime.metrics.render(pools, cluster);
                let mut response = text(StatusCode::OK, rendered);
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            (_, path) if path == "/api/sessions" || path.starts_with("/api/sessions/") => {
                self.session_api(request).await
            }
            (&Method::GET, "/status") if self.may_read(&request, peer) => {
                let mut response = text(StatusCode::OK, self.status.render(&self.runtime));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                response
            }
            (&Method::GET, "/status.json") if self.may_read(&request, peer) => {
                json(StatusCode::OK, &crate::status::render_json(&self.runtime))
            }
            (&Method::GET, "/status.csv") if self.may_read(&request, peer) => {
                let mut response = text(StatusCode::OK, crate::status::render_csv(&self.runtime));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                );
                response
            }
            (&Method::GET, "/api/pools") if self.may_read(&request, peer) => self.pools(),
            (&Method::GET, "/api/config") if self.authorized(&request) => text(
                StatusCode::OK,
                self.runtime.snapshot().config.source_without_secrets(),
            ),
            (&Method::POST, "/api/reload") if self.authorized(&request) => self.reload(),
            (&Method::PUT, path) if path.starts_with("/api/pools/") => {
                if self.authorized(&request) {
                    self.set_backend(request).await
                } else {
                    unauthorized(self.token_digest.is_some())
                }
            }
            (
                _,
                "/status" | "/status.json" | "/status.csv" | "/api/pools" | "/api/config"
                | "/api/reload",
            ) => unauthorized(self.token_digest.is_some()),
            _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        };
        tracing::debug!(%peer, %path, status = response.status().as_u16(), "admin request");
        response
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let Some(expected) = &self.token_digest else {
            return false;
        };
        let offered = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        // Digests compared, not tokens: the comparison's time says nothing about the token.
        offered.is_some_and(|token| Sha256::digest(token.trim().as_bytes()).as_slice() == expected)
    }

    /// Serving, not draining, and (in a cluster) holding the peers' sessions.
    fn ready(&self) -> bool {
        self.runtime.ready_for_traffic()
    }

    /// Read-only endpoints: open to clients on loopback, else behind the token.
    fn may_read(&self, request: &Request<Incoming>, peer: SocketAddr) -> bool {
        peer.ip().is_loopback() || self.authorized(request)
    }

    /// Every pool and backend as the request path sees them now.
    fn pools(&self) -> Response<Full<Bytes>> {
        let snapshot = self.runtime.snapshot();
        let pools: Vec<serde_json::Value> = snapshot
            .pools
            .iter()
            .map(|pool| {
                let backends: Vec<serde_json::Value> = pool
                    .backends
                    .iter()
                    .map(|backend| {
                        serde_json::json!({
                            "address": backend.config.address,
                            "route": backend.config.route,
                            "state": backend.state().name(),
                            "configured_state": backend.config.state.name(),
                            "up": backend.live.is_up(),
                            "ejected": backend.is_ejected(),
                            "in_flight": backend.live.in_flight(),
                            "weight": backend.weight(),
                            "configured_weight": backend.config.weight,
                            "backup": backend.config.backup,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": &*pool.name,
                    "balance": pool.config.balance.name(),
                    "backends": backends,
                })
            })
            .collect();
        json(StatusCode::OK, &serde_json::json!({ "pools": pools }))
    }

    /// Reads the config file again, as SIGHUP does.
    fn reload(&self) -> Response<Full<Bytes>> {
        match self.runtime.reload_file() {
            Ok(warnings) => {
                tracing::info!("config reloaded through the admin API");
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "result": "reloaded", "warnings": warnings }),
                )
            }
            Err(errors) => {
                let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                tracing::error!(
                    ?errors,
                    "reload through the admin API refused; the running config stays"
                );
                json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({ "result": "refused", "errors": errors }),
                )
            }
        }
    }

    /// `PUT /api/pools/{pool}/backends/{route or address}/state` with `{"state": "draining"}`
    /// or `.../weight` with `{"weight": 3}`: the backend's state or weight until the config
    /// file changes it.
    async fn set_backend(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let ["api", "pools", pool_name, "backends", backend_name, setting @ ("state" | "weight")] =
            parts[..]
        else {
            return error(
                StatusCode::NOT_FOUND,
                "expected /api/pools/{pool}/backends/{route or address}/state or /weight",
            );
        };
        let snapshot = self.runtime.snapshot();
        let Some(pool) = snapshot.pools.iter().find(|p| &*p.name == pool_name) else {
            return error(StatusCode::NOT_FOUND, "no such pool");
        };
        let Some(backend) = pool
            .backends
            .iter()
            .find(|b| b.config.route == backend_name || b.config.address == backend_name)
        else {
            return error(StatusCode::NOT_FOUND, "no such backend in this pool");
        };
        let body = match Limited::new(request.into_body(), 4096).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 4 KiB"),
        };
        let value = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let field = |name: &str| value.as_ref().and_then(|value| value.get(name).cloned());
        let answer = if setting == "state" {
            let Some(state) =
                field("state").and_then(|state| state.as_str().and_then(BackendState::parse))
            else {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    r#"expected {"state": "active" | "draining" | "stopped"}"#,
                );
            };
            backend.live.set_state_override(Some(state));
            serde_json::json!({ "state": state.name() })
        } else {
            let weight = field("weight")
                .and_then(|weight| weight.as_u64())
                .filter(|weight| (1..=1000).contains(weight));
            let Some(weight) = weight else {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    r#"expected {"weight": a whole number from 1 to 1000}"#,
                );
            };
            backend.live.set_weight_override(Some(weight as u32));
            serde_json::json!({ "weight": weight })
        };
        tracing::info!(
            pool = %pool.name,
            backend = %backend.config.address,
            %answer,
            "backend {setting} set through the admin API"
        );
        let mut answer = answer;
        answer["pool"] = serde_json::json!(&*pool.name);
        answer["backend"] = serde_json::json!(backend.config.address);
        json(StatusCode::OK, &answer)
    }

    async fn session_api(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if !self.authorized(&request) {
            return unauthorized(self.token_digest.is_some());
        }
        let Some(store) = &self.runtime.sessions else {
            return error(
                StatusCode::NOT_FOUND,
                "no session store: [session] mode is not proxy",
            );
        };
        let path = request.uri().path().to_string();
        let Some(rest) = path.strip_prefix("/api/sessions") else {
            return error(StatusCode::NOT_FOUND, "no such admin endpoint");
        };
        if rest.is_empty() || rest == "/" {
            if request.method() != Method::GET {
                return error(StatusCode::METHOD_NOT_ALLOWED, "listing is GET only");
            }
            return list(store, request.uri().query().unwrap_or(""));
        }
        let value = &rest[1..];
        let Some((session_id, _route)) = id::parse(value, store.config().separator) else {
            return error(StatusCode::NOT_FOUND, "not a session id tandem issues");
        };
        let session_id = session_id.to_string();
        match *request.method() {
            Method::GET => match store.get(&session_id) {
                Some(view) => json(StatusCode::OK, &view),
                None => error(StatusCode::NOT_FOUND, "no such live session"),
            },
            Method::DELETE => {
                if store.invalidate(&session_id) {
                    tracing::info!(session = %crate::session::log_ref(&session_id), "session invalidated through the session API");
                    let mut response = Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = StatusCode::NO_CONTENT;
                    response
                } else {
                    error(StatusCode::NOT_FOUND, "no such live session")
                }
            }
            Method::PATCH => {
                let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(_) => {
                        return error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "the patch is over 1 MiB or broke off",
                        )
                    }
                };
                let patch = match contract::parse_patch(&body) {
                    Ok(patch) => patch,
                    Err(rejection) => {
                        return error(StatusCode::UNPROCESSABLE_ENTITY, &rejection.to_string())
                    }
                };
                match store.patch(&session_id, &patch) {
                    Ok(Some(view)) => json(StatusCode::OK, &view),
                    Ok(None) => error(StatusCode::NOT_FOUND, "no such live session"),
                    Err(rejection) => {
                        error(StatusCode::UNPROCESSABLE_ENTITY, &rejection.to_string())
                    }
                }
            }
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "a session takes GET, PATCH or DELETE",
            ),
        }
    }
}

/// A page of the listing: `limit` (1 to 1000) and `after` from the query string.
fn list(store: &SessionStore, query: &str) -> Response<Full<Bytes>> {
    let mut limit = DEFAULT_PAGE;
    let mut after = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", value)) => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                _ => return error(StatusCode::BAD_REQUEST, "limit must be 1 to 1000"),
            },
            Some(("after", value)) => after = Some(value.to_string()),
            _ => return error(StatusCode::BAD_REQUEST, "the listing takes limit and after"),
        }
    }
    let sessions = store.list(after.as_deref(), limit);
    let next = (sessions.len() == limit)
        .then(|| sessions.last().map(|view| view.id.clone()))
        .flatten();
    json(
        StatusCode::OK,
        &serde_json::json!({ "sessions": sessions, "next": next }),
    )
}

/// Whether a browser says `request` comes from a page of another site: its `Sec-Fetch-Site` is
/// `cross-site` or `same-site`, or its `Origin` names another host and port than its `Host`.
/// Tools such as curl send neither header.
fn cross_site(request: &Request<Incoming>) -> bool {
    let headers = request.headers();
    let fetch_site = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
    if matches!(fetch_site, Some(b"cross-site" | b"same-site")) {
        return true;
    }
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return false;
    };
    let host = headers
        .get(http::header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| request.uri().authority().map(|a| a.as_str().as_bytes()));
    let origin_authority = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, authority)| authority.as_bytes());
    origin_authority.is_none() || origin_authority != host
}

/// 401 with the reason: a wrong or missing token, or no token configured at all.
fn unauthorized(token_configured: bool) -> Response<Full<Bytes>> {
    let message = if token_configured {
        "a valid bearer token is required"
    } else {
        "closed: set [admin] token to use this endpoint"
    };
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("API values serialize");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
