//! Test fixtures: real backends on loopback port 0, real `tandem` processes, and clients.
//!
//! Every wait here is on a condition with a deadline; nothing sleeps and hopes.
#![allow(dead_code)] // each test crate uses a different part of the fixtures

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// An in-test HTTP backend that answers with its name and records what it received.
///
/// Paths: `/slow?ms=N` waits N ms first; `/upload` counts the request body and answers the
/// count; `/download?bytes=N` streams N bytes; `/headers` answers the request headers, one
/// `name: value` per line; `/ws` is a WebSocket echo; `/hop-by-hop` answers with hop-by-hop
/// headers (`Connection: x-internal`, `X-Internal`, `Keep-Alive`) beside `X-Public`;
/// `/health` answers 200 or 503 as `healthy` says. Anything else answers the name.
pub struct Backend {
    pub name: String,
    pub address: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    /// Requests being answered right now.
    pub open: Arc<AtomicUsize>,
    pub last_headers: Arc<Mutex<Option<HeaderMap>>>,
    /// What `/health` answers: 200 "OK" while true, 503 while false.
    pub healthy: Arc<AtomicBool>,
    /// `/health` requests answered 200 and 503 so far.
    pub health_passed: Arc<AtomicUsize>,
    pub health_failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Backend::serve(name, listener)
    }

    /// Serves on an already bound listener (to bring a backend back on a known port).
    pub fn serve(name: &str, listener: TcpListener) -> Backend {
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let last_headers = Arc::new(Mutex::new(None));
        let healthy = Arc::new(AtomicBool::new(true));
        let health_passed = Arc::new(AtomicUsize::new(0));
        let health_failed = Arc::new(AtomicUsize::new(0));
        let state = BackendState {
            name: name.to_string(),
            requests: Arc::clone(&requests),
            open: Arc::clone(&open),
            last_headers: Arc::clone(&last_headers),
            healthy: Arc::clone(&healthy),
            health_passed: Arc::clone(&health_passed),
            health_failed: Arc::clone(&health_failed),
        };
        // The accept task owns its connections: aborting it (`kill`) closes them all.
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let state = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer(request).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            name: name.to_string(),
            address,
            requests,
            open,
            last_headers,
            healthy,
            health_passed,
            health_failed,
            task,
        }
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Kills the backend as a crash would: the listener and every open connection close, and
    /// connecting is refused from then on. Returns once connecting is refused.
    pub async fn kill(&self) {
        self.task.abort();
        let until = Instant::now() + DEADLINE;
        while tokio::net::TcpStream::connect(self.address).await.is_ok() {
            assert!(
                Instant::now() < until,
                "{} still accepts after kill",
                self.name
            );
            tokio::task::yield_now().await;
        }
    }

    /// The `[[pool.backend]]` table for this backend.
    pub fn toml(&self) -> String {
        format!(
            "[[pool.backend]]\naddress = \"{}\"\nroute = \"{}\"\n",
            self.address, self.name
        )
    }
}

#[derive(Clone)]
struct BackendState {
    name: String,
    requests: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    last_headers: Arc<Mutex<Option<HeaderMap>>>,
    healthy: Arc<AtomicBool>,
    health_passed: Arc<AtomicUsize>,
    health_failed: Arc<AtomicUsize>,
}

fn query_number(request: &Request<Incoming>, key: &str) -> u64 {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

impl BackendState {
    async fn answer(&self, mut request: Request<Incoming>) -> Response<TestBody> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.open.fetch_add(1, Ordering::SeqCst);
        *self.last_headers.lock().unwrap() = Some(request.headers().clone());
        let response = match request.uri().path() {
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(query_number(&request, "ms"))).await;
                text(&self.name)
            }
            "/upload" => {
                let mut body = request.into_body();
                let mut total = 0u64;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
                        Err(_) => break,
                    }
                }
                text(&total.to_string())
            }
            "/download" => Response::new(streamed_body(query_number(&request, "bytes"))),
            "/headers" => {
                let lines: String = request
                    .headers()
                    .iter()
                    .map(|(k, v)| format!("{}: {}\n", k, v.to_str().unwrap_or("?")))
                    .collect();
                text(&lines)
            }
            "/ws" => websocket_echo(&mut request),
            "/health" if self.healthy.load(Ordering::SeqCst) => {
                self.health_passed.fetch_add(1, Ordering::SeqCst);
                text("OK")
            }
            "/health" => {
                self.health_failed.fetch_add(1, Ordering::SeqCst);
                let mut response = text("sick");
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response
            }
            // A Tomcat-like application under /app: login creates session `S1.<name>` with
            // the cookie Tomcat would set; whoami tells which backend answered and which session
            // id it received; rename re-issues the session under this backend's route, as
            // JvmRouteBinderValve does.
            "/app/login" => {
                let mut response = text(&self.name);
                let cookie = format!("JSESSIONID=S1.{}; Path=/app; HttpOnly", self.name);
                response
                    .headers_mut()
                    .insert("set-cookie", cookie.parse().unwrap());
                response
            }
            // A PHP-like application: its session id names no backend.
            "/learn/login" => {
                let mut response = text(&self.name);
                let cookie = format!("PHPSESSID=P-{}; Path=/", self.name);
                response
                    .headers_mut()
                    .insert("set-cookie", cookie.parse().unwrap());
                response
            }
            "/app/whoami" => text(&format!(
                "{} {}",
                self.name,
                session_cookie(&request).unwrap_or("-")
            )),
            "/app/rename" => {
                let received = session_cookie(&request).unwrap_or("S0.x");
                let base = received.rsplit_once('.').map_or(received, |(base, _)| base);
                let mut response = text(&self.name);
                let cookie = format!("JSESSIONID={base}.{}; Path=/app; HttpOnly", self.name);
                response
                    .headers_mut()
                    .insert("set-cookie", cookie.parse().unwrap());
                response
            }
            // The proxy-mode session contract: answers what session tandem handed over, and
            // sends back as response headers whatever the client asked for in
            // `x-respond-<name>` headers (raw bytes: valid, malformed, non-ASCII).
            "/session" => session_echo(&self.name, &request),
            "/session/increment" => session_increment(&request),
            "/hop-by-hop" => {
                let mut response = text("hop");
                let headers = response.headers_mut();
                headers.insert("connection", "x-internal".parse().unwrap());
                headers.insert("x-internal", "backend secret".parse().unwrap());
                headers.insert("keep-alive", "timeout=5".parse().unwrap());
                headers.insert("x-public", "kept".parse().unwrap());
                response
            }
            _ => text(&self.name),
        };
        self.open.fetch_sub(1, Ordering::SeqCst);
        let mut response = response;
        response
            .headers_mut()
            .insert("x-backend", self.name.parse().unwrap());
        response
    }
}

/// What `/session/increment` answers: a patch setting the session's `count` to one more than
/// it had (a read-modify-write, as a real application's counter or cart does), and the new
/// count as the body.
fn session_increment(request: &Request<Incoming>) -> Response<TestBody> {
    let count = request
        .headers()
        .get("x-tandem-session-data")
        .and_then(|value| serde_json::from_slice::<serde_json::Value>(value.as_bytes()).ok())
        .and_then(|data| data["count"].as_u64())
        .unwrap_or(0);
    let mut response = text(&(count + 1).to_string());
    let patch = format!(r#"{{"count":{}}}"#, count + 1);
    response
        .headers_mut()
        .insert("x-tandem-session-patch", patch.parse().unwrap());
    response
}

/// What `/session` answers: `{"backend", "id", "data", "received"}` (`received`: the names of
/// the `x-tandem*` headers that arrived), with each `x-respond-<name>` request header sent
/// back as `<name>`, and the status from `?status=N` (200 by default).
fn session_echo(name: &str, request: &Request<Incoming>) -> Response<TestBody> {
    let headers = request.headers();
    let data = headers.get("x-tandem-session-data").map(|value| {
        let text = value.to_str().expect("session data is ASCII");
        serde_json::from_str::<serde_json::Value>(text).expect("session data is JSON")
    });
    let received: Vec<&str> = headers
        .keys()
        .map(|name| name.as_str())
        .filter(|name| name.replace('_', "-").starts_with("x-tandem"))
        .collect();
    let body = serde_json::json!({
        "backend": name,
        "id": headers.get("x-tandem-session-id").map(|v| v.to_str().unwrap()),
        "data": data,
        "received": received,
    });
    let mut response = text(&body.to_string());
    for (header, value) in headers {
        if let Some(respond) = header.as_str().strip_prefix("x-respond-") {
            let name = http::HeaderName::from_bytes(respond.as_bytes()).unwrap();
            response.headers_mut().append(name, value.clone());
        }
    }
    let status = query_number(request, "status");
    if status != 0 {
        *response.status_mut() = StatusCode::from_u16(status as u16).unwrap();
    }
    response
}

/// The JSESSIONID a request carries, if any.
fn session_cookie(request: &Request<Incoming>) -> Option<&str> {
    request
        .headers()
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("JSESSIONID="))
}

pub fn text(body: &str) -> Response<TestBody> {
    Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// A body of `total` bytes produced in 64 KiB chunks, never held whole in memory.
pub fn streamed_body(total: u64) -> TestBody {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let chunks = total.div_ceil(chunk.len() as u64);
    let stream = futures_util::stream::iter(0..chunks).map(move |i| {
        let left = total - i * chunk.len() as u64;
        let piece = chunk.slice(..(left.min(chunk.len() as u64) as usize));
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(piece))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

fn websocket_echo(request: &mut Request<Incoming>) -> Response<TestBody> {
    let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
        return text("not a websocket request");
    };
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() || socket.send(message).await.is_err() {
                break;
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = text("");
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("connection", "upgrade".parse().unwrap());
    headers.insert("upgrade", "websocket".parse().unwrap());
    headers.insert("sec-websocket-accept", accept.parse().unwrap());
    response
}

/// An address where nothing listens (connections are refused).
pub fn refusing_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A backend that accepts connections and closes them at once without answering.
pub async fn resetting_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (address, _accepted, task) = counting_resetting_backend().await;
    (address, task)
}

/// A resetting backend that also counts the connections it accepted.
pub async fn counting_resetting_backend(
) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (address, accepted, task)
}

/// A backend that accepts connections and reads forever without ever answering.
pub async fn silent_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (address, task)
}

/// A config with one listener on a free port and the given pool tables appended.
pub fn config(pools: &str) -> String {
    config_with_listen("", pools)
}

/// Like `config`, with extra `[listen]` keys (one `key = value` per line).
pub fn config_with_listen(listen_keys: &str, pools: &str) -> String {
    format!(
        "[listen]\naddresses = [\"127.0.0.1:0\"]\nshutdown_timeout = \"10s\"\n{listen_keys}\n\n[log]\nlevel = \"info\"\n\n{pools}"
    )
}

/// Three backends named a, b and c.
pub async fn three_backends() -> [Backend; 3] {
    [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ]
}

/// Fails the test unless `elapsed` lies in `range`.
pub fn assert_took(elapsed: Duration, range: std::ops::Range<Duration>, what: &str) {
    assert!(
        range.contains(&elapsed),
        "{what} after {elapsed:?}, expected {range:?}"
    );
}

/// A pool table with `balance` over `backends`.
pub fn pool(name: &str, balance: &str, extra: &str, backends: &[&Backend]) -> String {
    let mut text = format!("[[pool]]\nname = \"{name}\"\nbalance = \"{balance}\"\n{extra}\n");
    for backend in backends {
        text.push_str(&backend.toml());
    }
    text
}

/// Output lines of a child process, collected by a reader thread.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Lines {
    fn collect(self: &Arc<Self>, stream: impl std::io::Read + Send + 'static) {
        let lines = Arc::clone(self);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                lines.lines.lock().unwrap().push(line);
                lines.changed.notify_all();
            }
        });
    }

    fn wait_for(&self, pattern: &str, deadline: Duration) -> Option<String> {
        self.wait_for_all(&[pattern], deadline)
    }

    /// Waits for a line containing every one of `parts`.
    fn wait_for_all(&self, parts: &[&str], deadline: Duration) -> Option<String> {
        let until = Instant::now() + deadline;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| parts.iter().all(|p| l.contains(p))) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if now >= until {
                return None;
            }
            lines = self.changed.wait_timeout(lines, until - now).unwrap().0;
        }
    }

    fn count(&self, pattern: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(pattern))
            .count()
    }

    fn all(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// The address in tandem's "listening" log line, text (`address=A`) or JSON (`"address":"A"`).
fn listening_address(line: &str) -> Option<SocketAddr> {
    let text_form = line.find("address=").map(|i| i + "address=".len());
    let json_form = line
        .find("\"address\":\"")
        .map(|i| i + "\"address\":\"".len());
    let rest = &line[text_form.or(json_form)?..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A running `tandem` process on its own config file.
pub struct Tandem {
    child: Child,
    pub address: SocketAddr,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
    stderr: Arc<Lines>,
    stdout: Arc<Lines>,
}

impl Tandem {
    /// Starts tandem on `config` and waits until it listens.
    pub fn start(config: &str) -> Tandem {
        Tandem::start_with_env::<&str>(config, &[])
    }

    /// `start` with `env` added to tandem's environment (a preloaded fake clock,
    /// `NOTIFY_SOCKET`, `SSL_CERT_FILE`).
    pub fn start_with_env<V: AsRef<std::ffi::OsStr>>(config: &str, env: &[(&str, V)]) -> Tandem {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("tandem.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("-c")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(key, value)| (key, value.as_ref())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tandem");
        let stderr = Arc::new(Lines::default());
        stderr.collect(child.stderr.take().unwrap());
        let stdout = Arc::new(Lines::default());
        stdout.collect(child.stdout.take().unwrap());
        let Some(line) = stderr.wait_for("listening", DEADLINE) else {
            let _ = child.kill();
            panic!("tandem did not start listening:\n{}", stderr.all());
        };
        let Some(address) = listening_address(&line) else {
            // No `Tandem` owns the child yet, so nothing else would stop it.
            let _ = child.kill();
            panic!("no address in {line}");
        };
        Tandem {
            child,
            address,
            config_path,
            _dir: dir,
            stderr,
            stdout,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    /// The TLS listener's address, from its log line.
    pub fn tls_address(&self) -> SocketAddr {
        let line = self.wait_log("listening with TLS");
        listening_address(&line).expect("TLS address logged")
    }

    /// The admin listener's address, from its log line.
    pub fn admin_address(&self) -> SocketAddr {
        let line = self.wait_log("admin listener ready");
        let start = line.find("admin_address=").expect("admin address logged") + 14;
        let rest = &line[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest[..end].parse().expect("admin address")
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_address(), path)
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("signal tandem");
    }

    /// Replaces the config file (for a reload).
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config_path, config).unwrap();
    }

    /// Rewrites the config, sends SIGHUP, and waits until tandem logs that it reloaded.
    pub fn reload(&self, config: &str) {
        let done = self.log_count("config reloaded");
        self.rewrite_config(config);
        self.signal(nix::sys::signal::Signal::SIGHUP);
        self.wait_log_count("config reloaded", done + 1);
    }

    /// Waits for a line of the application log (stderr) containing `pattern`.
    pub fn wait_log(&self, pattern: &str) -> String {
        self.stderr.wait_for(pattern, DEADLINE).unwrap_or_else(|| {
            panic!(
                "tandem never logged `{pattern}`; its log:\n{}",
                self.stderr.all()
            )
        })
    }

    /// Waits for a line of the application log containing every one of `parts`.
    ///
    /// Like every `wait_*` here it blocks the calling thread: a test whose in-test backends must
    /// keep answering meanwhile (health checks) needs `flavor = "multi_thread"`.
    pub fn wait_log_all(&self, parts: &[&str]) -> String {
        self.stderr
            .wait_for_all(parts, DEADLINE)
            .unwrap_or_else(|| {
                panic!(
                    "tandem never logged {parts:?}; its log:\n{}",
                    self.stderr.all()
                )
            })
    }

    /// Waits until the application log has `count` lines containing `pattern`.
    pub fn wait_log_count(&self, pattern: &str, count: usize) {
        let until = Instant::now() + DEADLINE;
        let mut lines = self.stderr.lines.lock().unwrap();
        while lines.iter().filter(|l| l.contains(pattern)).count() < count {
            let now = Instant::now();
            assert!(
                now < until,
                "tandem logged `{pattern}` fewer than {count} times:\n{}",
                lines.join("\n")
            );
            lines = self
                .stderr
                .changed
                .wait_timeout(lines, until - now)
                .unwrap()
                .0;
        }
    }

    pub fn log_count(&self, pattern: &str) -> usize {
        self.stderr.count(pattern)
    }

    /// Waits for an access-log line (stdout) containing `pattern`.
    pub fn wait_access(&self, pattern: &str) -> String {
        self.stdout.wait_for(pattern, DEADLINE).unwrap_or_else(|| {
            panic!(
                "no access line with `{pattern}`; access log:\n{}",
                self.stdout.all()
            )
        })
    }

    /// Every access-log line so far.
    pub fn access_log(&self) -> String {
        self.stdout.all()
    }

    /// Waits until the admin listener's `/readyz` answers 200 (in a cluster: the peers' state
    /// has arrived).
    pub async fn wait_ready(&self) {
        let until = Instant::now() + DEADLINE;
        let url = self.admin_url("/readyz");
        while get(&client(), &url).await.status != 200 {
            assert!(Instant::now() < until, "{} never ready", self.url(""));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything tandem logged so far (stderr).
    pub fn log(&self) -> String {
        self.stderr.all()
    }

    /// Waits for the process to exit, failing the test after the deadline.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "tandem did not exit; its log:\n{}",
                self.stderr.all()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory of the tandem process (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmHWM in /proc status");
        kib * 1024
    }
}

impl Drop for Tandem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 keep-alive client.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An h2c client (HTTP/2 with prior knowledge).
pub fn h2c_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// A request body holding `text`.
pub fn full(text: &str) -> TestBody {
    Full::new(Bytes::from(text.to_string()))
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A finished exchange: status, headers and the whole body as text.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends `request` and reads the whole answer, within the deadline.
pub async fn send(client: &Client<HttpConnector, TestBody>, request: Request<TestBody>) -> Answer {
    let exchange = async {
        let response = client
            .request(request)
            .await
            .expect("request through tandem");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("response body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("answer within the deadline")
}

/// GET `url` with extra headers.
pub async fn get_with(
    client: &Client<HttpConnector, TestBody>,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(client, builder.body(empty()).unwrap()).await
}

pub async fn get(client: &Client<HttpConnector, TestBody>, url: &str) -> Answer {
    get_with(client, url, &[]).await
}

/// Counts answers by body.
pub fn tally<'a>(bodies: impl IntoIterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for body in bodies {
        *counts.entry(body.to_string()).or_insert(0) += 1;
    }
    counts
}

/// A TCP relay that forwards to `target` with every chunk held back by `delay` (a slow
/// network between peers); `cut()` drops every connection and refuses new ones (a partition)
/// until `heal()`.
pub struct FaultRelay {
    pub address: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultRelay {
    pub async fn start(target: SocketAddr, delay: Duration) -> FaultRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicUsize::new(0));
        let (task_cut, task_generation) = (Arc::clone(&cut), Arc::clone(&generation));
        let task = tokio::spawn(async move {
            let mut relays = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if task_cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let born = task_generation.load(Ordering::SeqCst);
                let generation = Arc::clone(&task_generation);
                relays.spawn(async move {
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let alive = || generation.load(Ordering::SeqCst) == born;
                    tokio::select! {
                        _ = pump(client_read, server_write, delay) => {}
                        _ = pump(server_read, client_write, delay) => {}
                        _ = async { while alive() { tokio::time::sleep(Duration::from_millis(10)).await } } => {}
                    }
                });
            }
        });
        FaultRelay {
            address,
            cut,
            generation,
            task,
        }
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Accepts connections again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        tokio::time::sleep(delay).await;
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// A test CA and the certificates it issued, as files in a temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tandem test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a certificate for `names` into `<stem>.pem` and `<stem>.key`; returns its DER.
    pub fn issue(&self, stem: &str, names: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        std::fs::write(self.path(&format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{stem}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    pub fn certificate_tables(&self, stems: &[&str]) -> String {
        stems
            .iter()
            .map(|stem| {
                format!(
                    "[[listen.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
                    self.path(&format!("{stem}.pem")).display(),
                    self.path(&format!("{stem}.key")).display()
                )
            })
            .collect()
    }

    /// A rustls client trusting this CA, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A loopback port free right now (bound, then released for a child process to take). Taken
/// below the kernel's ephemeral range (32768 and up), so that no outgoing connection of the
/// tests running meanwhile can take it before the child binds it; each call of a process tries
/// the next one, from a start that differs per process.
pub fn free_port() -> u16 {
    static NEXT: std::sync::OnceLock<AtomicUsize> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicUsize::new(std::process::id() as usize * 7919));
    for _ in 0..12_000 {
        let port = 20_000 + (next.fetch_add(1, Ordering::Relaxed) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999");
}

/// The admin API's view (`GET /api/pools`) of the backend at `address`, in any pool.
pub async fn backend_status(tandem: &Tandem, address: SocketAddr) -> serde_json::Value {
    let answer = get(&client(), &tandem.admin_url("/api/pools")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let pools: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|pool| pool["backends"].as_array().unwrap())
        .find(|b| b["address"] == address.to_string())
        .cloned()
        .expect("the backend is in /api/pools")
}

/// Waits until the admin API shows `key` = `value` for the backend at `address`, sending a
/// request through tandem on each round when `nudge` (passive checks learn from traffic).
pub async fn wait_backend_status(
    tandem: &Tandem,
    address: SocketAddr,
    key: &str,
    value: bool,
    nudge: bool,
) {
    let until = Instant::now() + DEADLINE;
    while backend_status(tandem, address).await[key] != value {
        assert!(
            Instant::now() < until,
            "{address} never had {key} = {value}"
        );
        if nudge {
            get(&client(), &tandem.url("/")).await;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Raw h2c frames for requests no HTTP/2 library sends (`tests/validation.rs`).
pub mod raw_h2;
