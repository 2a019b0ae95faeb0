//! Configuration: the TOML file, read into raw serde structs, then validated into a typed [`Config`].
//!
//! Reading (`document.rs`) and validation collect every problem they find instead of stopping at
//! the first, and each [`ConfigError`] names the file, the line and the dotted key, so that
//! `tandem --check` (and a refused reload) can print a complete list. A `Config` that exists is
//! valid: the rest of tandem never re-checks it.

mod cluster;
mod document;
mod raw;
mod session;
mod suggest;
mod units;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use crate::logging::access::{Template, TemplateError};
use crate::logging::AccessFormat;

pub use cluster::{ClusterConfig, PeerTlsConfig};
pub use session::{AdminConfig, InvalidUpdate, SessionConfig, SessionCookieConfig, SessionMode};

use raw::{RawBackend, RawConfig, RawHealth, RawPassive, RawPool, RawRetry, RawSize, RawSticky};

/// A validated configuration, as every other module sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[listen]`: where clients connect and the limits they are held to.
    pub listen: ListenConfig,
    /// `[log]`: application and access logs.
    pub log: LogConfig,
    /// `[forwarded]`: whose X-Forwarded-* headers are believed.
    pub forwarded: ForwardedConfig,
    /// `[[pool]]`s in file order; route-table indexes refer to this order.
    pub pools: Vec<PoolConfig>,
    /// `[session]`: who owns sessions, and the proxy-mode store.
    pub session: SessionConfig,
    /// `[admin]`: the internal listener; `None` without the table.
    pub admin: Option<AdminConfig>,
    /// `[cluster]`: tandem peers; `None` without the table (a single node).
    pub cluster: Option<ClusterConfig>,
    /// The file this config came from (reloads read it again).
    pub path: PathBuf,
    /// The file's text, for the admin API's view of the running config.
    pub source: String,
}

/// The public listeners and the limits each client connection is held to.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    /// Addresses to listen on, each serving HTTP/1.1 and h2c (or redirecting to HTTPS).
    pub addresses: Vec<SocketAddr>,
    /// Addresses to listen on with TLS, each serving HTTP/1.1 and h2 (ALPN).
    pub tls_addresses: Vec<SocketAddr>,
    /// Certificates for the TLS listeners, chosen by SNI; the first is the default.
    pub certificates: Vec<CertificateConfig>,
    /// Whether the plain addresses answer every request with a redirect to HTTPS.
    pub redirect_to_https: bool,
    /// Connections beyond this wait in the kernel's accept queue until one closes.
    pub max_connections: usize,
    /// Time a client has to send a complete request head; then the connection is closed.
    pub header_read_timeout: Duration,
    /// A request body that brings no byte for this long is cut off (408, connection closed):
    /// slow POSTs do not hold a backend connection forever.
    pub body_idle_timeout: Duration,
    /// A client that takes none of the response for this long, while tandem has some ready
    /// for it, is disconnected (a reader that never reads).
    pub send_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head accepted (431 above it).
    pub max_header_size: usize,
    /// Most header fields accepted in one request (431 above it).
    pub max_headers: usize,
    /// Longest request target accepted (414 above it).
    pub max_uri_length: usize,
    /// How long a SIGTERM drain waits for in-flight requests before exiting anyway.
    pub shutdown_timeout: Duration,
    /// `proxy_protocol = true`: the networks of the L4 balancers allowed to send a PROXY
    /// protocol header (v1 or v2), which every connection on every public listener must then
    /// open with; its source address is the client's. `None`: off, the peer is the client.
    pub proxy_protocol_from: Option<Vec<IpNet>>,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Where logs go and how they look.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `tandem=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// Text or JSON: the application log's, and the access log's unless `access_format` is set.
    pub format: LogFormat,
    /// Where the access log goes.
    pub access_log: AccessLogTarget,
    /// How access-log lines look: `access_log_format`, or else `format`'s text or JSON.
    pub access_format: AccessFormat,
}

/// Line format of the application and access logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` lines, for people.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The values of `[log] access_log_format`.
pub(crate) const ACCESS_LOG_FORMATS: [&str; 5] =
    ["text", "json", "combined", "haproxy", "template"];

/// Destination of the access log (one line per request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log.
    Off,
    /// Standard output (the default: containers collect it).
    Stdout,
    /// Standard error, beside the application log.
    Stderr,
    /// A file, appended to.
    File(PathBuf),
}

/// Which clients may speak for the real client through X-Forwarded-* headers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ForwardedConfig {
    /// Peers in these networks (other proxies) get their X-Forwarded-For chain appended to; any
    /// other client's X-Forwarded-* headers are replaced.
    pub trusted: Vec<IpNet>,
}

/// One pool of interchangeable backends and the requests it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The name logs and errors use for this pool; unique.
    pub name: String,
    /// Lowercase host names without port; `*.example.com` matches any subdomain. Empty: any host.
    pub hosts: Vec<String>,
    /// Path prefixes, each starting with `/`. Empty: any path.
    pub paths: Vec<String>,
    /// How a backend is picked for a new request.
    pub balance: BalanceMethod,
    /// Time to open a TCP connection to a backend (504 after it).
    pub connect_timeout: Duration,
    /// Time from sending the request head to receiving the response head (504 after it).
    pub response_timeout: Duration,
    /// Pooled keep-alive connections to a backend are closed after this long unused.
    pub idle_timeout: Duration,
    /// Kept-alive backend connections per backend at most.
    pub max_idle_per_backend: usize,
    /// A backend that comes back (health checks, passive ejection) gets its full share of new
    /// requests only after this long, ramping up from nothing; `None`: at once.
    pub slow_start: Option<Duration>,
    /// Requests that may wait at once for a backend under its `max_connections` (HAProxy's
    /// `maxqueue`); one more is answered 503 at once. 0: no queue, a full backend is a 503.
    pub max_queue: usize,
    /// How long a request waits in the queue at most before its 503 (HAProxy's `timeout queue`).
    pub queue_timeout: Duration,
    /// Sticky routing on the session id's route suffix; `None` when `sticky.mode = "off"`.
    pub sticky: Option<StickyConfig>,
    /// Active health checks; `None` without a `[pool.health]` table (every backend counts as up).
    pub health: Option<HealthConfig>,
    /// When a failed request is tried again on another backend.
    pub retry: RetryConfig,
    /// When failures of real requests take a backend out of rotation for a while.
    pub passive: PassiveConfig,
    /// TLS to the backends; `None` without a `[pool.tls]` table (plain HTTP).
    pub tls: Option<BackendTlsConfig>,
    /// The pool's backends, in file order.
    pub backends: Vec<BackendConfig>,
}

/// How tandem talks TLS to a pool's backends.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendTlsConfig {
    /// PEM file of the CA certificates that backend certificates must chain to; `None`: the
    /// operating system's trust store.
    pub ca: Option<PathBuf>,
    /// The name backend certificates are checked against (and sent as SNI); `None`: each
    /// backend's host (an IP address is checked against the certificate's IP SANs).
    pub server_name: Option<String>,
    /// Accept any backend certificate. For tests only: logged loudly on every start and reload.
    pub insecure_skip_verify: bool,
}

/// When a failed attempt is tried again on another backend. Only requests tandem holds whole
/// are retried: without a body, or with one of up to 16 KiB read beforehand.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Tries per request at most, the first included (1: never retry).
    pub attempts: u32,
    /// Retries may add at most this share of the pool's requests (plus a reserve of 10), so that
    /// a sick pool is not hammered.
    pub budget: f64,
    /// Methods also retried after the request was sent (reset or timeout before the response
    /// head); any method is retried when the connection could not be made.
    pub methods: Vec<http::Method>,
}

/// Passive failure detection, as nginx's `max_fails`/`fail_timeout`.
#[derive(Debug, Clone, PartialEq)]
pub struct PassiveConfig {
    /// Failures in a row within `fail_window` that eject a backend; 0 turns ejection off.
    pub max_fails: u32,
    /// Failures further apart than this start the count again.
    pub fail_window: Duration,
    /// How long an ejected backend gets no new requests before it is tried again.
    pub recover_after: Duration,
    /// Response statuses that count as failures (the response still goes to the client).
    pub fail_on_status: Vec<u16>,
}

/// How a pool's backends are probed, and when a backend counts as down or up again.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Request method of a probe (GET by default; HEAD for backends that support it).
    pub method: http::Method,
    /// Path (and query) probed on each backend.
    pub path: String,
    /// Host header of a probe; the backend's address when unset.
    pub host: Option<String>,
    /// Time between two probes of one backend (each wait varies by up to ±10%).
    pub interval: std::time::Duration,
    /// A probe without a complete answer within this time fails.
    pub timeout: std::time::Duration,
    /// Consecutive successful probes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failed probes that take an up backend down.
    pub fall: u32,
    /// Statuses that count as success; empty means any 2xx or 3xx.
    pub expect_status: Vec<u16>,
    /// Text the response body must contain (read up to 64 KiB), if set.
    pub expect_body: Option<String>,
    /// Whether a backend new to tandem starts up (the default) or down until its first `rise`.
    pub start_up: bool,
}

/// How a session id names its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyMode {
    /// The id ends in its backend's route (Tomcat's `<id>.<jvmRoute>`).
    Route,
    /// The id carries no route (PHPSESSID and the like): tandem learns id → backend from the
    /// backends' Set-Cookie, as HAProxy's stick-store-response and nginx's sticky learn do.
    Learn,
    /// For backends that set no session cookie: tandem sets its own affinity cookie
    /// (`<route>.<HMAC>`, signed with `secret`, so a client can neither forge nor steer it).
    Insert,
}

/// Where a request's session id is read from, and how its route is cut from it (`route` mode:
/// the id ends in `<separator><route>`, as Tomcat's `<id>.<jvmRoute>`).
#[derive(Debug, Clone, PartialEq)]
pub struct StickyConfig {
    /// How a session id names its backend.
    pub mode: StickyMode,
    /// Cookie names holding a session id, most trusted first.
    pub cookies: Vec<String>,
    /// The path parameter holding a session id (`;jsessionid=...`), matched case-sensitively.
    pub url_parameter: Option<String>,
    /// The route is the text after the last occurrence of this character.
    pub separator: char,
    /// A route takeover unused for this long is forgotten (set it to the session idle timeout).
    pub table_ttl: Duration,
    /// Most route takeovers remembered; the oldest go first.
    pub table_max: usize,
    /// Answer 503 rather than move a session whose backend cannot serve it (for backends that
    /// cannot take sessions over).
    pub force: bool,
    /// The key that signs `insert` mode's affinity cookie; empty in the other modes.
    pub secret: String,
}

/// How a pool picks a backend for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceMethod {
    /// Each backend in turn.
    RoundRobin,
    /// Smooth weighted round robin, as nginx does it.
    Weighted,
    /// Fewest open requests.
    LeastConn,
    /// Consistent hashing on the client address.
    IpHash,
    /// The less busy of two random backends.
    RandomTwo,
}

impl BalanceMethod {
    const NAMES: [(&'static str, BalanceMethod); 5] = [
        ("round_robin", BalanceMethod::RoundRobin),
        ("weighted", BalanceMethod::Weighted),
        ("least_conn", BalanceMethod::LeastConn),
        ("ip_hash", BalanceMethod::IpHash),
        ("random_two", BalanceMethod::RandomTwo),
    ];

    /// The method's name in the config file.
    pub fn name(self) -> &'static str {
        BalanceMethod::NAMES
            .iter()
            .find(|(_, method)| *method == self)
            .map_or("?", |(name, _)| name)
    }
}

impl BackendState {
    /// Every state with its name in the config file (and the admin API).
    pub const NAMES: [(&'static str, BackendState); 3] = [
        ("active", BackendState::Active),
        ("draining", BackendState::Draining),
        ("stopped", BackendState::Stopped),
    ];

    /// The state's name.
    pub fn name(self) -> &'static str {
        BackendState::NAMES
            .iter()
            .find(|(_, state)| *state == self)
            .map_or("?", |(name, _)| name)
    }

    /// The state called `name`, if there is one.
    pub fn parse(name: &str) -> Option<BackendState> {
        BackendState::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, state)| *state)
    }
}

/// One backend server of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// `host:port`; a host name is resolved when connecting.
    pub address: String,
    /// The name a session id's suffix uses for this backend (Tomcat's jvmRoute); unique in its pool.
    pub route: String,
    /// Share of traffic under `weighted` and `ip_hash` (1 to 1000).
    pub weight: u32,
    /// Whether it takes new work.
    pub state: BackendState,
    /// A backup backend gets requests only when no primary backend of its pool can take them
    /// (pen's emergency server, HAProxy's `backup`).
    pub backup: bool,
    /// A group of backends that share sessions (mod_jk's `domain`): a session failing over
    /// prefers a backend of its own domain.
    pub domain: Option<String>,
    /// The route a session of this backend fails over to first (mod_jk's `redirect`).
    pub redirect: Option<String>,
    /// Requests in flight to this backend at most (HAProxy's server `maxconn`, mod_jk's
    /// `connection_pool_size`); more wait in the pool's queue. `None`: no cap.
    pub max_connections: Option<usize>,
}

/// Whether a backend takes new work (mod_jk's activation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Takes new requests.
    Active,
    /// Takes no new requests; requests in flight finish.
    Draining,
    /// Takes no requests at all.
    Stopped,
}

/// One problem in a config file, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The config file the error is in.
    pub file: PathBuf,
    /// 1-based line of the offending value, when the file locates it.
    pub line: Option<usize>,
    /// Dotted path of the offending key, such as `pool[0].backend[1].weight`.
    pub key: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                line,
                self.key,
                self.message
            ),
            None => write!(f, "{}: {}: {}", self.file.display(), self.key, self.message),
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: "(file)".into(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as the contents of `path` (the path only labels errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let mut check = Checker {
            file: path,
            text,
            errors: Vec::new(),
        };
        // Shape errors (unknown keys, wrong types) and value errors are listed together.
        let config = check.read().map(|raw| check.config(raw));
        match config {
            Some(mut config) if check.errors.is_empty() => {
                config.path = path.to_path_buf();
                config.source = text.to_string();
                Ok(config)
            }
            _ => {
                check.errors.sort_by_key(|error| error.line);
                Err(ConfigErrors(check.errors))
            }
        }
    }

    /// The config file's text with the value of every secret key replaced by `"(hidden)"`,
    /// however the file spells it; everything else as written.
    pub fn source_without_secrets(&self) -> String {
        document::hide_secrets(&self.source)
    }
}

/// The key a TOML syntax or type error points at, as well as the span lets us tell.
fn key_of_toml_error(text: &str, span: Option<Range<usize>>) -> String {
    let Some(span) = span else {
        return "(file)".into();
    };
    let line_start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) => key.trim().to_string(),
        None => line.trim().to_string(),
    }
}

/// Shortest duration accepted: timers below a millisecond are a typo, not a setting.
const MIN_DURATION: Duration = Duration::from_millis(1);
/// Longest duration accepted, so that adding one to the clock can never overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Validation state: the source (for line numbers) and the errors found so far.
struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = span.map(|span| self.line_of(span.start));
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    /// A path from the file: relative ones are taken from the config file's directory.
    fn relative_to_file(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        match self.file.parent() {
            Some(directory) if path.is_relative() => directory.join(path),
            _ => path.to_path_buf(),
        }
    }

    fn duration(
        &mut self,
        value: Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match units::parse_duration(value.get_ref()) {
            Ok(d) if d < MIN_DURATION || d > MAX_DURATION => {
                let message = format!("{d:?} is out of range (1ms to 365 days)");
                self.error(Some(value.span()), key, message);
                default
            }
            Ok(d) => d,
            Err(message) => {
                self.error(Some(value.span()), key, message);
                default
            }
        }
    }

    fn size(
        &mut self,
        value: Option<Spanned<RawSize>>,
        key: &str,
        range: Range<u64>,
        default: u64,
    ) -> usize {
        let Some(value) = value else {
            return default as usize;
        };
        let parsed = match value.get_ref() {
            RawSize::Bytes(n) => u64::try_from(*n).map_err(|_| format!("{n} is not a size")),
            RawSize::Text(text) => units::parse_size(text),
        };
        match parsed {
            Ok(n) if range.contains(&n) => n as usize,
            Ok(n) => {
                let message = format!(
                    "{n} bytes is out of range ({} to {} bytes)",
                    range.start,
                    range.end - 1
                );
                self.error(Some(value.span()), key, message);
                default as usize
            }
            Err(message) => {
                self.error(Some(value.span()), key, message);
                default as usize
            }
        }
    }

    fn count(
        &mut self,
        value: Option<Spanned<i64>>,
        key: &str,
        range: Range<i64>,
        default: i64,
    ) -> i64 {
        let Some(value) = value else { return default };
        let n = *value.get_ref();
        if range.contains(&n) {
            n
        } else {
            let message = format!("{n} is out of range ({} to {})", range.start, range.end - 1);
            self.error(Some(value.span()), key, message);
            default
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let listen = self.listen(raw.listen);
        let log = self.log(raw.log);
        let forwarded = self.forwarded(raw.forwarded);
        if raw.pool.is_empty() {
            self.error(
                None,
                "pool",
                "at least one [[pool]] with a backend is required",
            );
        }
        let mut names = HashSet::new();
        let mut matchers = HashSet::new();
        let mut pools = Vec::new();
        for (i, raw_pool) in raw.pool.into_iter().enumerate() {
            let name_span = raw_pool.name.span();
            let pool = self.pool(i, raw_pool);
            if !names.insert(pool.name.clone()) {
                let message = format!("pool name `{}` is used twice", pool.name);
                self.error(Some(name_span.clone()), format!("pool[{i}].name"), message);
            }
            for matcher in pool.matchers() {
                if !matchers.insert(matcher.clone()) {
                    let (host, path) = matcher;
                    let message = format!(
                        "host `{host}` with path `{path}` is already served by an earlier pool"
                    );
                    self.error(Some(name_span.clone()), format!("pool[{i}]"), message);
                }
            }
            pools.push(pool);
        }
        let session = self.session(raw.session);
        let admin = self.admin(raw.admin);
        let cluster = self.cluster(raw.cluster);
        if let Some(admin) = &admin {
            if admin.tls && listen.certificates.is_empty() {
                let message = "the admin listener's TLS uses the [[listen.certificate]]s: add one";
                self.error(None, "admin.tls", message);
            }
            if admin.address.port() != 0 && listen.addresses.contains(&admin.address) {
                let message = format!("{} is also a public listener", admin.address);
                self.error(None, "admin.address", message);
            }
        }
        Config {
            listen,
            log,
            forwarded,
            pools,
            session,
            admin,
            cluster,
            path: PathBuf::new(),
            source: String::new(),
        }
    }

    fn listen(&mut self, raw: raw::RawListen) -> ListenConfig {
        let addresses_span = raw.addresses.as_ref().map(Spanned::span);
        let mut addresses = Vec::new();
        let plain = raw
            .addresses
            .map(Spanned::into_inner)
            .unwrap_or_default()
            .into_iter()
            .map(|a| ("addresses", a));
        let tls = raw.tls_addresses.unwrap_or_default();
        let tls = tls.into_iter().map(|a| ("tls_addresses", a));
        let mut tls_addresses = Vec::new();
        let mut index = HashMap::new();
        for (list, address) in plain.chain(tls) {
            let i = index.entry(list).or_insert(0usize);
            let key = format!("listen.{list}[{i}]");
            *i += 1;
            match address.get_ref().parse::<SocketAddr>() {
                Ok(addr)
                    if addr.port() != 0
                        && (addresses.contains(&addr) || tls_addresses.contains(&addr)) =>
                {
                    self.error(Some(address.span()), key, format!("{addr} is listed twice"))
                }
                Ok(addr) if list == "addresses" => addresses.push(addr),
                Ok(addr) => tls_addresses.push(addr),
                Err(_) => self.error(
                    Some(address.span()),
                    key,
                    format!(
                        "`{}` is not an IP:port address such as 127.0.0.1:8080",
                        address.get_ref()
                    ),
                ),
            }
        }
        if addresses.is_empty() && tls_addresses.is_empty() && self.errors.is_empty() {
            self.error(
                addresses_span,
                "listen.addresses",
                "at least one address (or tls_address) is required",
            );
        }
        let mut certificates = Vec::new();
        for (i, certificate) in raw.certificate.unwrap_or_default().into_iter().enumerate() {
            let files = CertificateConfig {
                cert: self.relative_to_file(certificate.cert.get_ref()),
                key: self.relative_to_file(certificate.key.get_ref()),
            };
            match crate::tls::load(&files.cert, &files.key) {
                Ok(_) => certificates.push(files),
                Err(message) => {
                    let key = format!("listen.certificate[{i}]");
                    self.error(Some(certificate.cert.span()), key, message)
                }
            }
        }
        if !tls_addresses.is_empty() && certificates.is_empty() && self.errors.is_empty() {
            let message = "TLS listeners need at least one [[listen.certificate]]";
            self.error(None, "listen.certificate", message);
        }
        let redirect_to_https = raw.redirect_to_https.unwrap_or(false);
        if redirect_to_https && tls_addresses.is_empty() {
            let message = "redirects to HTTPS need a TLS listener (listen.tls_addresses)";
            self.error(None, "listen.redirect_to_https", message);
        }
        ListenConfig {
            addresses,
            tls_addresses,
            certificates,
            redirect_to_https,
            max_connections: self.count(
                raw.max_connections,
                "listen.max_connections",
                1..1_000_001,
                10_000,
            ) as usize,
            header_read_timeout: self.duration(
                raw.header_read_timeout,
                "listen.header_read_timeout",
                Duration::from_secs(10),
            ),
            body_idle_timeout: self.duration(
                raw.body_idle_timeout,
                "listen.body_idle_timeout",
                Duration::from_secs(30),
            ),
            send_timeout: self.duration(
                raw.send_timeout,
                "listen.send_timeout",
                Duration::from_secs(60),
            ),
            idle_timeout: self.duration(
                raw.idle_timeout,
                "listen.idle_timeout",
                Duration::from_secs(60),
            ),
            max_header_size: self.size(
                raw.max_header_size,
                "listen.max_header_size",
                8192..16 << 20,
                64 << 10,
            ),
            max_headers: self.count(raw.max_headers, "listen.max_headers", 1..10_001, 100) as usize,
            max_uri_length: self.size(
                raw.max_uri_length,
                "listen.max_uri_length",
                16..16 << 20,
                8192,
            ),
            shutdown_timeout: self.duration(
                raw.shutdown_timeout,
                "listen.shutdown_timeout",
                Duration::from_secs(30),
            ),
            proxy_protocol_from: self.proxy_protocol(raw.proxy_protocol, raw.proxy_protocol_from),
        }
    }

    /// `proxy_protocol` and `proxy_protocol_from`: one is meaningless without the other, so
    /// each alone is an error, as is an empty list (no balancer could connect).
    fn proxy_protocol(
        &mut self,
        on: Option<Spanned<bool>>,
        from: Option<Spanned<Vec<Spanned<String>>>>,
    ) -> Option<Vec<IpNet>> {
        let enabled = on.as_ref().is_some_and(|on| *on.get_ref());
        match from {
            None if enabled => {
                let message = "proxy_protocol = true needs proxy_protocol_from: the networks of \
                               the balancers that send the header, such as [\"10.0.0.0/8\"]";
                self.error(on.map(|on| on.span()), "listen.proxy_protocol", message);
                None
            }
            None => None,
            Some(list) if !enabled => {
                let message = "proxy_protocol_from has no effect without proxy_protocol = true";
                self.error(Some(list.span()), "listen.proxy_protocol_from", message);
                None
            }
            Some(list) if list.get_ref().is_empty() => {
                let message = "the list is empty: no balancer could connect";
                self.error(Some(list.span()), "listen.proxy_protocol_from", message);
                None
            }
            Some(list) => Some(self.networks(list.into_inner(), "listen.proxy_protocol_from")),
        }
    }

    fn log(&mut self, raw: raw::RawLog) -> LogConfig {
        let level = match raw.level {
            Some(level) if tracing_subscriber::EnvFilter::try_new(level.get_ref()).is_err() => {
                self.error(
                    Some(level.span()),
                    "log.level",
                    format!(
                        "`{}` is not a level such as info, debug or tandem=debug",
                        level.get_ref()
                    ),
                );
                "info".to_string()
            }
            Some(level) => level.into_inner(),
            None => "info".to_string(),
        };
        let format = match raw.format {
            None => LogFormat::Text,
            Some(format) => match format.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    let message = format!("unknown format `{other}`; expected text or json");
                    self.error(Some(format.span()), "log.format", message);
                    LogFormat::Text
                }
            },
        };
        let access_log = match raw
            .access_log
            .as_ref()
            .map(|target| target.get_ref().as_str())
        {
            None | Some("stdout") => AccessLogTarget::Stdout,
            Some("stderr") => AccessLogTarget::Stderr,
            Some("off") => AccessLogTarget::Off,
            Some("") => {
                let span = raw.access_log.as_ref().map(Spanned::span);
                self.error(
                    span,
                    "log.access_log",
                    "expected stdout, stderr, off or a file path",
                );
                AccessLogTarget::Stdout
            }
            Some(path) => AccessLogTarget::File(PathBuf::from(path)),
        };
        let access_format = self.access_format(
            raw.access_log_format.as_ref(),
            raw.access_log_template.as_ref(),
            format,
        );
        LogConfig {
            level,
            format,
            access_log,
            access_format,
        }
    }

    /// `access_log_format` (and its `access_log_template`); without it, `format`'s text or JSON.
    fn access_format(
        &mut self,
        written_format: Option<&Spanned<String>>,
        template: Option<&Spanned<String>>,
        format: LogFormat,
    ) -> AccessFormat {
        let chosen = match written_format {
            None => None,
            Some(written) => match written.get_ref().as_str() {
                "text" => Some(AccessFormat::Text),
                "json" => Some(AccessFormat::Json),
                "combined" => Some(AccessFormat::Combined),
                "haproxy" => Some(AccessFormat::Haproxy),
                "template" => {
                    let Some(template) = template else {
                        self.error(
                            Some(written.span()),
                            "log.access_log_format",
                            "`template` needs `access_log_template`, the line with its {fields}",
                        );
                        return AccessFormat::Text;
                    };
                    return match Template::parse(template.get_ref()) {
                        Ok(parsed) => AccessFormat::Template(parsed),
                        Err(error) => {
                            let names: Vec<&str> = Template::field_names().collect();
                            let hint = match &error {
                                TemplateError::UnknownField(name) => {
                                    suggest::hint("log.access_log_template", name, &names)
                                }
                                TemplateError::Unbalanced => String::new(),
                            };
                            let message =
                                format!("{error}{hint}; the fields are {}", names.join(", "));
                            self.error(Some(template.span()), "log.access_log_template", message);
                            AccessFormat::Text
                        }
                    };
                }
                other => {
                    let hint = suggest::hint("log.access_log_format", other, &ACCESS_LOG_FORMATS);
                    let message = format!(
                        "unknown access log format `{other}`; expected text, json, combined, \
                         haproxy or template{hint}"
                    );
                    self.error(Some(written.span()), "log.access_log_format", message);
                    None
                }
            },
        };
        if let (Some(template), false) = (
            template,
            matches!(written_format, Some(f) if f.get_ref() == "template"),
        ) {
            self.error(
                Some(template.span()),
                "log.access_log_template",
                "is used only with access_log_format = \"template\"",
            );
        }
        chosen.unwrap_or(match format {
            LogFormat::Text => AccessFormat::Text,
            LogFormat::Json => AccessFormat::Json,
        })
    }

    fn forwarded(&mut self, raw: raw::RawForwarded) -> ForwardedConfig {
        let trusted = self.networks(raw.trusted.unwrap_or_default(), "forwarded.trusted");
        ForwardedConfig { trusted }
    }

    /// A list of networks (`10.0.0.0/8`) or single addresses; each bad entry is an error at
    /// `key[i]`.
    fn networks(&mut self, list: Vec<Spanned<String>>, key: &str) -> Vec<IpNet> {
        let mut networks = Vec::new();
        for (i, net) in list.into_iter().enumerate() {
            let text = net.get_ref().trim();
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => networks.push(net),
                Err(_) => self.error(
                    Some(net.span()),
                    format!("{key}[{i}]"),
                    format!("`{text}` is not an address or network such as 10.0.0.0/8"),
                ),
            }
        }
        networks
    }

    fn pool(&mut self, index: usize, raw: RawPool) -> PoolConfig {
        let prefix = format!("pool[{index}]");
        let name = raw.name.get_ref().trim().to_string();
        if name.is_empty() {
            self.error(
                Some(raw.name.span()),
                format!("{prefix}.name"),
                "must not be empty",
            );
        }
        let hosts = raw
            .hosts
            .into_iter()
            .enumerate()
            .filter_map(|(i, host)| {
                let normalized = host.get_ref().trim().to_ascii_lowercase();
                let bare = normalized.strip_prefix("*.").unwrap_or(&normalized);
                let valid = !bare.is_empty()
                    && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if valid {
                    Some(normalized)
                } else {
                    let message = format!(
                        "`{}` is not a host name (letters, digits, `-`, `.`, optionally starting with `*.`; no port)",
                        host.get_ref()
                    );
                    self.error(Some(host.span()), format!("{prefix}.hosts[{i}]"), message);
                    None
                }
            })
            .collect();
        let paths = raw
            .paths
            .into_iter()
            .enumerate()
            .filter_map(|(i, path)| {
                if path.get_ref().starts_with('/') {
                    Some(path.into_inner())
                } else {
                    self.error(
                        Some(path.span()),
                        format!("{prefix}.paths[{i}]"),
                        "must start with `/`",
                    );
                    None
                }
            })
            .collect();
        let balance = match raw.balance {
            None => BalanceMethod::RoundRobin,
            Some(balance) => match BalanceMethod::NAMES
                .iter()
                .find(|(n, _)| n == balance.get_ref())
            {
                Some((_, method)) => *method,
                None => {
                    let names: Vec<&str> = BalanceMethod::NAMES.iter().map(|(n, _)| *n).collect();
                    let message = format!(
                        "unknown balance method `{}`; expected one of {}{}",
                        balance.get_ref(),
                        names.join(", "),
                        suggest::hint("pool.balance", balance.get_ref(), &names)
                    );
                    self.error(Some(balance.span()), format!("{prefix}.balance"), message);
                    BalanceMethod::RoundRobin
                }
            },
        };
        if raw.backend.is_empty() {
            self.error(
                Some(raw.name.span()),
                format!("{prefix}.backend"),
                "a pool needs at least one [[pool.backend]]",
            );
        }
        let mut backends: Vec<BackendConfig> = Vec::new();
        let mut redirect_spans = Vec::new();
        for (i, raw_backend) in raw.backend.into_iter().enumerate() {
            let key = format!("{prefix}.backend[{i}]");
            let address_span = raw_backend.address.span();
            let route_span = raw_backend
                .route
                .as_ref()
                .map_or_else(|| address_span.clone(), Spanned::span);
            redirect_spans.push(raw_backend.redirect.as_ref().map(Spanned::span));
            let backend = self.backend(&key, raw_backend);
            if backends.iter().any(|b| b.address == backend.address) {
                let message = format!(
                    "address `{}` is listed twice in pool `{name}`",
                    backend.address
                );
                self.error(Some(address_span), format!("{key}.address"), message);
            } else if backends.iter().any(|b| b.route == backend.route) {
                let message = format!("route `{}` is used twice in pool `{name}`", backend.route);
                self.error(Some(route_span), format!("{key}.route"), message);
            }
            backends.push(backend);
        }
        for (i, backend) in backends.iter().enumerate() {
            let Some(redirect) = &backend.redirect else {
                continue;
            };
            if redirect == &backend.route || !backends.iter().any(|b| &b.route == redirect) {
                let message = format!(
                    "redirect `{redirect}` does not name another backend's route in pool `{name}`"
                );
                self.error(
                    redirect_spans[i].clone(),
                    format!("{prefix}.backend[{i}].redirect"),
                    message,
                );
            }
        }
        PoolConfig {
            name,
            hosts,
            paths,
            balance,
            connect_timeout: self.duration(
                raw.connect_timeout,
                &format!("{prefix}.connect_timeout"),
                Duration::from_secs(3),
            ),
            response_timeout: self.duration(
                raw.response_timeout,
                &format!("{prefix}.response_timeout"),
                Duration::from_secs(60),
            ),
            idle_timeout: self.duration(
                raw.idle_timeout,
                &format!("{prefix}.idle_timeout"),
                Duration::from_secs(60),
            ),
            max_idle_per_backend: self.count(
                raw.max_idle_per_backend,
                &format!("{prefix}.max_idle_per_backend"),
                0..100_001,
                64,
            ) as usize,
            slow_start: raw.slow_start.map(|value| {
                self.duration(Some(value), &format!("{prefix}.slow_start"), Duration::ZERO)
            }),
            max_queue: self.count(
                raw.max_queue,
                &format!("{prefix}.max_queue"),
                0..100_001,
                100,
            ) as usize,
            queue_timeout: self.duration(
                raw.queue_timeout,
                &format!("{prefix}.queue_timeout"),
                Duration::from_secs(5),
            ),
            sticky: self.sticky(&prefix, raw.sticky),
            health: raw.health.map(|health| self.health(&prefix, health)),
            retry: self.retry(&prefix, raw.retry),
            passive: self.passive(&prefix, raw.passive),
            tls: raw.tls.map(|tls| {
                self.pool_tls(&prefix, (raw.name.get_ref().trim(), raw.name.span()), tls)
            }),
            backends,
        }
    }

    /// Checks `[pool.tls]`: the CA file is read (without one, the operating system's trust store
    /// must hold certificates; the error is at the pool's name), the server name is a DNS name.
    fn pool_tls(
        &mut self,
        prefix: &str,
        (pool, pool_span): (&str, Range<usize>),
        raw: raw::RawPoolTls,
    ) -> BackendTlsConfig {
        let ca_set = raw.ca.is_some();
        let ca = raw.ca.and_then(|ca| {
            let path = self.relative_to_file(ca.get_ref());
            match crate::tls::load_roots(&path) {
                Ok(_) => Some(path),
                Err(message) => {
                    self.error(Some(ca.span()), format!("{prefix}.tls.ca"), message);
                    None
                }
            }
        });
        let server_name = raw.server_name.and_then(|name| {
            match rustls_pki_types::ServerName::try_from(name.get_ref().as_str()) {
                Ok(_) => Some(name.into_inner()),
                Err(_) => {
                    let message = format!("`{}` is not a DNS name or IP address", name.get_ref());
                    self.error(
                        Some(name.span()),
                        format!("{prefix}.tls.server_name"),
                        message,
                    );
                    None
                }
            }
        });
        let insecure = raw
            .insecure_skip_verify
            .as_ref()
            .is_some_and(|v| *v.get_ref());
        if insecure && ca.is_some() {
            let span = raw.insecure_skip_verify.as_ref().map(Spanned::span);
            let message = "a CA and no verification at all contradict each other: drop one";
            self.error(span, format!("{prefix}.tls.insecure_skip_verify"), message);
        }
        if !ca_set && !insecure {
            if let Err(message) = crate::tls::native_roots() {
                let message = format!("pool `{pool}` has [pool.tls] without `ca`, and {message}");
                self.error(Some(pool_span), format!("{prefix}.tls.ca"), message);
            }
        }
        BackendTlsConfig {
            ca,
            server_name,
            insecure_skip_verify: insecure,
        }
    }

    /// Checks `[pool.retry]`; without it: 3 attempts, a 20% budget, the idempotent methods.
    fn retry(&mut self, prefix: &str, raw: Option<RawRetry>) -> RetryConfig {
        let raw = raw.unwrap_or(RawRetry {
            attempts: None,
            budget: None,
            methods: None,
        });
        let attempts =
            self.count(raw.attempts, &format!("{prefix}.retry.attempts"), 1..11, 3) as u32;
        let budget = match raw.budget {
            None => 0.2,
            Some(budget) if (0.0..=1.0).contains(budget.get_ref()) => *budget.get_ref(),
            Some(budget) => {
                let message = format!(
                    "{} is not a share: use a number from 0.0 to 1.0",
                    budget.get_ref()
                );
                self.error(
                    Some(budget.span()),
                    format!("{prefix}.retry.budget"),
                    message,
                );
                0.2
            }
        };
        let methods = match raw.methods {
            None => vec![
                http::Method::GET,
                http::Method::HEAD,
                http::Method::OPTIONS,
                http::Method::PUT,
                http::Method::DELETE,
            ],
            Some(methods) => methods
                .into_iter()
                .enumerate()
                .filter_map(|(i, method)| {
                    match http::Method::from_bytes(method.get_ref().as_bytes()) {
                        Ok(parsed) if is_token(method.get_ref()) => Some(parsed),
                        _ => {
                            let message = format!("`{}` is not a method", method.get_ref());
                            self.error(
                                Some(method.span()),
                                format!("{prefix}.retry.methods[{i}]"),
                                message,
                            );
                            None
                        }
                    }
                })
                .collect(),
        };
        RetryConfig {
            attempts,
            budget,
            methods,
        }
    }

    /// Checks `[pool.passive]`; without it: 3 failures within 10s eject for 30s.
    fn passive(&mut self, prefix: &str, raw: Option<RawPassive>) -> PassiveConfig {
        let raw = raw.unwrap_or(RawPassive {
            max_fails: None,
            fail_window: None,
            recover_after: None,
            fail_on_status: None,
        });
        let key = |name: &str| format!("{prefix}.passive.{name}");
        let max_fails = self.count(raw.max_fails, &key("max_fails"), 0..1001, 3) as u32;
        let fail_window = self.duration(
            raw.fail_window,
            &key("fail_window"),
            Duration::from_secs(10),
        );
        let recover_after = self.duration(
            raw.recover_after,
            &key("recover_after"),
            Duration::from_secs(30),
        );
        let fail_on_status = self.statuses(raw.fail_on_status, &key("fail_on_status"));
        PassiveConfig {
            max_fails,
            fail_window,
            recover_after,
            fail_on_status,
        }
    }

    /// Checks a list of HTTP status codes.
    fn statuses(&mut self, raw: Option<Vec<Spanned<i64>>>, key: &str) -> Vec<u16> {
        let mut statuses = Vec::new();
        for (i, status) in raw.into_iter().flatten().enumerate() {
            match u16::try_from(*status.get_ref()) {
                Ok(code) if (100..600).contains(&code) => statuses.push(code),
                _ => {
                    let message = format!("{} is not an HTTP status", status.get_ref());
                    self.error(Some(status.span()), format!("{key}[{i}]"), message);
                }
            }
        }
        statuses
    }

    /// Checks `[pool.health]`.
    fn health(&mut self, prefix: &str, raw: RawHealth) -> HealthConfig {
        let key = |name: &str| format!("{prefix}.health.{name}");
        let path = raw.path.get_ref().clone();
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            self.error(
                Some(raw.path.span()),
                key("path"),
                format!("`{path}` is not a path starting with `/`"),
            );
        }
        let method = match &raw.method {
            None => http::Method::GET,
            Some(method) => match method.get_ref().as_str() {
                "GET" => http::Method::GET,
                "HEAD" => http::Method::HEAD,
                "OPTIONS" => http::Method::OPTIONS,
                other => {
                    let message =
                        format!("`{other}` is not a probe method; use GET, HEAD or OPTIONS");
                    self.error(Some(method.span()), key("method"), message);
                    http::Method::GET
                }
            },
        };
        let host = raw.host.and_then(|host| {
            if http::HeaderValue::from_str(host.get_ref()).is_ok() && !host.get_ref().is_empty() {
                Some(host.into_inner())
            } else {
                self.error(
                    Some(host.span()),
                    key("host"),
                    "not a valid Host header value",
                );
                None
            }
        });
        let interval = self.duration(raw.interval, &key("interval"), Duration::from_secs(2));
        let timeout = self.duration(raw.timeout, &key("timeout"), Duration::from_secs(1));
        let rise = self.count(raw.rise, &key("rise"), 1..101, 2) as u32;
        let fall = self.count(raw.fall, &key("fall"), 1..101, 3) as u32;
        let expect_status = self.statuses(raw.expect_status, &key("expect_status"));
        let expect_body = raw
            .expect_body
            .map(Spanned::into_inner)
            .filter(|text| !text.is_empty());
        let start_up = match raw.start.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("up") => true,
            Some("down") => false,
            Some(other) => {
                let span = raw.start.as_ref().map(Spanned::span);
                self.error(
                    span,
                    key("start"),
                    format!("unknown start `{other}`; expected up or down"),
                );
                true
            }
        };
        HealthConfig {
            method,
            path,
            host,
            interval,
            timeout,
            rise,
            fall,
            expect_status,
            expect_body,
            start_up,
        }
    }

    /// Checks `[pool.sticky]`; without the table, stickiness is on with Tomcat's defaults.
    fn sticky(&mut self, prefix: &str, raw: Option<RawSticky>) -> Option<StickyConfig> {
        let raw = raw.unwrap_or(RawSticky {
            mode: None,
            cookies: None,
            url_parameter: None,
            separator: None,
            table_ttl: None,
            table_max: None,
            force: None,
            secret: None,
        });
        let mode = match raw.mode.as_ref().map(|m| m.get_ref().as_str()) {
            None | Some("route") => StickyMode::Route,
            Some("learn") => StickyMode::Learn,
            Some("insert") => StickyMode::Insert,
            Some("off") => return None,
            Some(other) => {
                let span = raw.mode.as_ref().map(Spanned::span);
                let hint = suggest::hint(
                    "pool.sticky.mode",
                    other,
                    &["route", "learn", "insert", "off"],
                );
                let message = format!(
                    "unknown sticky mode `{other}`; expected route, learn, insert or off{hint}"
                );
                self.error(span, format!("{prefix}.sticky.mode"), message);
                StickyMode::Route
            }
        };
        let mut cookies = Vec::new();
        for (i, name) in raw.cookies.into_iter().flatten().enumerate() {
            if is_token(name.get_ref()) {
                cookies.push(name.into_inner());
            } else {
                let message = format!("`{}` is not a cookie name", name.get_ref());
                self.error(
                    Some(name.span()),
                    format!("{prefix}.sticky.cookies[{i}]"),
                    message,
                );
            }
        }
        if cookies.is_empty() {
            let default = if mode == StickyMode::Insert {
                "TANDEMROUTE"
            } else {
                "JSESSIONID"
            };
            cookies.push(default.to_string());
        }
        let secret = match (&raw.secret, mode) {
            (Some(secret), StickyMode::Insert) if secret.get_ref().len() >= 16 => {
                secret.get_ref().clone()
            }
            (Some(secret), StickyMode::Insert) => {
                let message = "must be at least 16 characters: it signs the affinity cookie";
                self.error(
                    Some(secret.span()),
                    format!("{prefix}.sticky.secret"),
                    message,
                );
                String::new()
            }
            (None, StickyMode::Insert) => {
                let message =
                    "insert mode needs a secret (at least 16 characters) to sign its cookie";
                self.error(None, format!("{prefix}.sticky.secret"), message);
                String::new()
            }
            (Some(secret), _) => {
                self.error(
                    Some(secret.span()),
                    format!("{prefix}.sticky.secret"),
                    "only used in insert mode",
                );
                String::new()
            }
            (None, _) => String::new(),
        };
        let url_parameter = match raw.url_parameter {
            None => Some("jsessionid".to_string()),
            Some(name) if name.get_ref().is_empty() => None,
            Some(name) if is_token(name.get_ref()) => Some(name.into_inner()),
            Some(name) => {
                let message = format!("`{}` is not a parameter name", name.get_ref());
                self.error(
                    Some(name.span()),
                    format!("{prefix}.sticky.url_parameter"),
                    message,
                );
                None
            }
        };
        let separator = match raw.separator {
            None => '.',
            Some(text) => {
                let mut chars = text.get_ref().chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if c.is_ascii_punctuation() && c != '-' && c != '_' => c,
                    _ => {
                        let message = format!(
                            "`{}` is not a separator: use one punctuation character other than `-` and `_` (routes may contain those)",
                            text.get_ref()
                        );
                        self.error(
                            Some(text.span()),
                            format!("{prefix}.sticky.separator"),
                            message,
                        );
                        '.'
                    }
                }
            }
        };
        let table_ttl = self.duration(
            raw.table_ttl,
            &format!("{prefix}.sticky.table_ttl"),
            Duration::from_secs(30 * 60),
        );
        let table_max = self.count(
            raw.table_max,
            &format!("{prefix}.sticky.table_max"),
            1..10_000_001,
            100_000,
        ) as usize;
        Some(StickyConfig {
            secret,
            mode,
            cookies,
            url_parameter,
            separator,
            table_ttl,
            table_max,
            force: raw.force.unwrap_or(false),
        })
    }

    /// Checks one backend on its own; `pool` compares it with its siblings.
    fn backend(&mut self, prefix: &str, raw: RawBackend) -> BackendConfig {
        let address = raw.address.get_ref().trim().to_string();
        // It must also parse as a URI authority, since every upstream request names it so.
        let valid_address = match address.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty()
                    && !host.contains(['/', '@'])
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
                    && address.parse::<http::uri::Authority>().is_ok()
            }
            None => false,
        };
        if !valid_address {
            let message = format!("`{address}` is not a host:port address such as 127.0.0.1:9001");
            self.error(
                Some(raw.address.span()),
                format!("{prefix}.address"),
                message,
            );
        }
        let route = match &raw.route {
            Some(route) => {
                let text = route.get_ref();
                let valid = !text.is_empty()
                    && text.len() <= 64
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid {
                    let message =
                        format!("`{text}` is not a route: use 1 to 64 letters, digits, `-` or `_`");
                    self.error(Some(route.span()), format!("{prefix}.route"), message);
                }
                text.clone()
            }
            None => address.replace(['.', ':', '[', ']'], "-"),
        };
        let weight = match &raw.weight {
            None => 1,
            Some(weight) => {
                let n = *weight.get_ref();
                if (1..=1000).contains(&n) {
                    n as u32
                } else {
                    let message = format!("{n} is not a weight: use a whole number from 1 to 1000");
                    self.error(Some(weight.span()), format!("{prefix}.weight"), message);
                    1
                }
            }
        };
        let state = match &raw.state {
            None => BackendState::Active,
            Some(name) => BackendState::parse(name.get_ref()).unwrap_or_else(|| {
                let names = BackendState::NAMES.map(|(known, _)| known);
                let message = format!(
                    "unknown state `{}`; expected active, draining or stopped{}",
                    name.get_ref(),
                    suggest::hint("pool.backend.state", name.get_ref(), &names)
                );
                self.error(Some(name.span()), format!("{prefix}.state"), message);
                BackendState::Active
            }),
        };
        let mut checked_name = |value: Option<Spanned<String>>, key: &str| {
            let value = value?;
            let text = value.get_ref();
            let valid = !text.is_empty()
                && text.len() <= 64
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if valid {
                Some(value.into_inner())
            } else {
                let message =
                    format!("`{text}` is not a name: use 1 to 64 letters, digits, `-` or `_`");
                self.error(Some(value.span()), format!("{prefix}.{key}"), message);
                None
            }
        };
        let domain = checked_name(raw.domain, "domain");
        let redirect = checked_name(raw.redirect, "redirect");
        let max_connections = raw.max_connections.map(|value| {
            self.count(
                Some(value),
                &format!("{prefix}.max_connections"),
                1..100_001,
                1,
            ) as usize
        });
        BackendConfig {
            address,
            route,
            weight,
            state,
            backup: raw.backup.unwrap_or(false),
            domain,
            redirect,
            max_connections,
        }
    }
}

/// Whether `text` is an HTTP token (RFC 9110 §5.6.2), as cookie and parameter names must be.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl PoolConfig {
    /// Every (host, path prefix) pair this pool serves, `*` and `/` standing for "any".
    fn matchers(&self) -> Vec<(String, String)> {
        let hosts = if self.hosts.is_empty() {
            vec!["*".to_string()]
        } else {
            self.hosts.clone()
        };
        let paths = if self.paths.is_empty() {
            vec!["/".to_string()]
        } else {
            self.paths.clone()
        };
        hosts
            .iter()
            .flat_map(|h| paths.iter().map(move |p| (h.clone(), p.clone())))
            .collect()
    }
}
