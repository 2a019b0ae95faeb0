//! The config file exactly as written: serde structs with `deny_unknown_fields`.
//!
//! These structs are the file's only schema: `document.rs` reads the file into them and reports
//! every key they refuse. Every value that validation may reject is kept `Spanned`, so that its
//! error can name the line it stands on. Nothing here is checked beyond TOML types; the `Checker`
//! turns this into a `Config`.

use serde::Deserialize;
use toml::Spanned;

/// Names of the keys whose values are secrets: `admin.token`, `cluster.secret` and
/// `[pool.sticky] secret`. The admin API's view of the running config hides the value of every
/// key so named, wherever it stands: a new secret key gets one of these names, or is added here.
pub const SECRET_KEYS: &[&str] = &["token", "secret"];

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub forwarded: RawForwarded,
    #[serde(default)]
    pub pool: Vec<RawPool>,
    pub session: Option<RawSession>,
    pub admin: Option<RawAdmin>,
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`: tandem peers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: Spanned<String>,
    pub node_id: Spanned<String>,
    pub listen: Spanned<String>,
    pub peers: Option<Vec<Spanned<String>>>,
    pub dns: Option<Spanned<String>>,
    pub dns_interval: Option<Spanned<String>>,
    /// A secret (see [`SECRET_KEYS`]).
    pub secret: Option<Spanned<String>>,
    pub heartbeat_interval: Option<Spanned<String>>,
    pub drop_after: Option<Spanned<String>>,
    pub replication: Option<Spanned<String>>,
    pub sync_timeout: Option<Spanned<String>>,
    pub topology: Option<Spanned<String>>,
    pub lock_sessions: Option<Spanned<bool>>,
    pub backups: Option<Spanned<i64>>,
    pub tls_ca: Option<Spanned<String>>,
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
}

/// `[session]`: who owns sessions, and the proxy-mode store's cookie, contract and limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    pub mode: Option<Spanned<String>>,
    pub url_parameter: Option<Spanned<String>>,
    pub separator: Option<Spanned<String>>,
    pub header_prefix: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub absolute_timeout: Option<Spanned<String>>,
    pub max_idle_timeout: Option<Spanned<String>>,
    pub max_absolute_timeout: Option<Spanned<String>>,
    pub max_sessions: Option<Spanned<i64>>,
    pub max_attributes: Option<Spanned<i64>>,
    pub max_attribute_bytes: Option<Spanned<RawSize>>,
    pub max_session_bytes: Option<Spanned<RawSize>>,
    pub on_invalid_update: Option<Spanned<String>>,
    pub snapshot: Option<Spanned<String>>,
    pub cookie: Option<RawSessionCookie>,
}

/// `[session.cookie]`: the cookie tandem issues in proxy mode.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessionCookie {
    pub name: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub domain: Option<Spanned<String>>,
    pub secure: Option<Spanned<RawSecure>>,
    pub http_only: Option<bool>,
    pub same_site: Option<Spanned<String>>,
}

/// `secure = true | false | "auto"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSecure {
    Flag(bool),
    Text(String),
}

/// `[admin]`: the internal listener (metrics, session API).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: Option<Spanned<String>>,
    /// A secret (see [`SECRET_KEYS`]).
    pub token: Option<Spanned<String>>,
    pub tls: Option<Spanned<bool>>,
}

/// `[listen]`: the public listeners and the limits every client connection is held to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub addresses: Option<Spanned<Vec<Spanned<String>>>>,
    pub tls_addresses: Option<Vec<Spanned<String>>>,
    pub redirect_to_https: Option<bool>,
    pub certificate: Option<Vec<RawCertificate>>,
    pub max_connections: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub body_idle_timeout: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_header_size: Option<Spanned<RawSize>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_uri_length: Option<Spanned<RawSize>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub proxy_protocol: Option<Spanned<bool>>,
    pub proxy_protocol_from: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[[listen.certificate]]`: a PEM certificate chain and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[log]`: application log level and the access log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub access_log: Option<Spanned<String>>,
    pub access_log_format: Option<Spanned<String>>,
    pub access_log_template: Option<Spanned<String>>,
}

/// `[forwarded]`: how X-Forwarded-* headers from clients are treated.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwarded {
    pub trusted: Option<Vec<Spanned<String>>>,
}

/// One `[[pool]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: Spanned<String>,
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    pub balance: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_idle_per_backend: Option<Spanned<i64>>,
    pub slow_start: Option<Spanned<String>>,
    pub max_queue: Option<Spanned<i64>>,
    pub queue_timeout: Option<Spanned<String>>,
    pub sticky: Option<RawSticky>,
    pub health: Option<RawHealth>,
    pub retry: Option<RawRetry>,
    pub passive: Option<RawPassive>,
    pub tls: Option<RawPoolTls>,
    #[serde(default)]
    pub backend: Vec<RawBackend>,
}

/// `[pool.tls]`: TLS to the pool's backends; present means on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoolTls {
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub insecure_skip_verify: Option<Spanned<bool>>,
}

/// `[pool.retry]`: trying a failed request again on another backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<Spanned<i64>>,
    pub budget: Option<Spanned<f64>>,
    pub methods: Option<Vec<Spanned<String>>>,
}

/// `[pool.passive]`: ejecting a backend that fails real requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub max_fails: Option<Spanned<i64>>,
    pub fail_window: Option<Spanned<String>>,
    pub recover_after: Option<Spanned<String>>,
    pub fail_on_status: Option<Vec<Spanned<i64>>>,
}

/// `[pool.health]`: active health checks; present means on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Spanned<String>,
    pub method: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub expect_status: Option<Vec<Spanned<i64>>>,
    pub expect_body: Option<Spanned<String>>,
    pub start: Option<Spanned<String>>,
}

/// `[pool.sticky]`: where a session id is read from and how its route is found.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub mode: Option<Spanned<String>>,
    pub cookies: Option<Vec<Spanned<String>>>,
    pub url_parameter: Option<Spanned<String>>,
    pub separator: Option<Spanned<String>>,
    pub table_ttl: Option<Spanned<String>>,
    pub table_max: Option<Spanned<i64>>,
    pub force: Option<bool>,
    /// A secret (see [`SECRET_KEYS`]).
    pub secret: Option<Spanned<String>>,
}

/// One `[[pool.backend]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub address: Spanned<String>,
    pub route: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
    pub state: Option<Spanned<String>>,
    pub backup: Option<bool>,
    pub domain: Option<Spanned<String>>,
    pub redirect: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
}

/// A size: a plain number of bytes, or text with a unit ("64KiB").
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}
