//! `[cluster]`: the tandem peers this node talks to, and how it knows they are alive.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawCluster;
use super::{is_token, Checker};

/// This node's place in a cluster of tandem peers.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The cluster's name; peers with another name are refused.
    pub name: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// Where peers connect to this node.
    pub listen: SocketAddr,
    /// Peers as `host:port`, dialled and redialled.
    pub peers: Vec<String>,
    /// A `host:port` whose every address is a peer (a headless service), resolved every
    /// `dns_interval`.
    pub dns: Option<String>,
    /// Time between two resolutions of `dns`.
    pub dns_interval: Duration,
    /// The shared secret every peer proves it holds (HMAC-SHA256 challenge).
    pub secret: String,
    /// Time between two heartbeats to each peer.
    pub heartbeat_interval: Duration,
    /// A peer silent for this long counts as dead, until it talks again.
    pub drop_after: Duration,
    /// `sync` replication: a response that changed a session waits until the connected peers
    /// acknowledged the change (`false`: `async`, it does not wait).
    pub sync: bool,
    /// The longest a response waits for acknowledgements in sync mode.
    pub sync_timeout: Duration,
    /// `None`: the `all` topology (every peer holds every session); `Some(n)`: `backup`, each
    /// session on an owner and `n` backups.
    pub backups: Option<usize>,
    /// Requests of one session run one at a time across the cluster (the session's owner
    /// holds its lock), so that concurrent read-modify-writes through two peers both count.
    pub lock_sessions: bool,
    /// Mutual TLS between peers; `None`: plain TCP (the secret still authenticates, but the
    /// traffic is not encrypted).
    pub tls: Option<PeerTlsConfig>,
}

/// Mutual TLS between peers: every peer presents a certificate of the cluster's CA.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerTlsConfig {
    /// PEM CA certificates peers' certificates must chain to.
    pub ca: std::path::PathBuf,
    /// This node's PEM certificate chain (valid for the name or IP peers dial it by).
    pub cert: std::path::PathBuf,
    /// Its PEM private key.
    pub key: std::path::PathBuf,
}

/// Shortest cluster secret accepted.
const MIN_SECRET_LENGTH: usize = 32;

impl Checker<'_> {
    pub(super) fn cluster(&mut self, raw: Option<RawCluster>) -> Option<ClusterConfig> {
        let raw = raw?;
        let name_of = |value: Spanned<String>, key: &str, checker: &mut Self| {
            let text = value.get_ref();
            if is_token(text) && text.len() <= 64 {
                text.clone()
            } else {
                let message = format!("`{text}` is not a name: 1-64 letters, digits, `-` or `_`");
                checker.error(Some(value.span()), key, message);
                String::new()
            }
        };
        let name = name_of(raw.name, "cluster.name", self);
        let node_id = name_of(raw.node_id, "cluster.node_id", self);
        let listen = match raw.listen.get_ref().parse::<SocketAddr>() {
            Ok(address) => address,
            Err(_) => {
                let message = format!(
                    "`{}` is not an IP:port address such as 0.0.0.0:7946",
                    raw.listen.get_ref()
                );
                self.error(Some(raw.listen.span()), "cluster.listen", message);
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        let mut peers = Vec::new();
        for (i, peer) in raw.peers.unwrap_or_default().into_iter().enumerate() {
            if is_host_port(peer.get_ref()) {
                peers.push(peer.into_inner());
            } else {
                let message = format!("`{}` is not host:port", peer.get_ref());
                self.error(Some(peer.span()), format!("cluster.peers[{i}]"), message);
            }
        }
        let dns = raw.dns.and_then(|dns| {
            if is_host_port(dns.get_ref()) {
                Some(dns.into_inner())
            } else {
                let message = format!("`{}` is not host:port", dns.get_ref());
                self.error(Some(dns.span()), "cluster.dns", message);
                None
            }
        });
        let secret = match raw.secret {
            Some(secret) if secret.get_ref().len() >= MIN_SECRET_LENGTH => secret.into_inner(),
            Some(secret) => {
                let message = format!("must be at least {MIN_SECRET_LENGTH} characters");
                self.error(Some(secret.span()), "cluster.secret", message);
                String::new()
            }
            None => {
                let message = "peers authenticate with a shared secret of at least 32 characters";
                self.error(None, "cluster.secret", message);
                String::new()
            }
        };
        let heartbeat_interval = self.duration(
            raw.heartbeat_interval,
            "cluster.heartbeat_interval",
            Duration::from_secs(1),
        );
        let drop_span = raw.drop_after.as_ref().map(Spanned::span);
        let drop_after =
            self.duration(raw.drop_after, "cluster.drop_after", Duration::from_secs(5));
        if drop_after < heartbeat_interval * 2 {
            let message = "must be at least two heartbeat intervals, or live peers would flap";
            self.error(drop_span, "cluster.drop_after", message);
        }
        let sync = match raw.replication.as_ref().map(|r| r.get_ref().as_str()) {
            None | Some("async") => false,
            Some("sync") => true,
            Some(other) => {
                let span = raw.replication.as_ref().map(Spanned::span);
                let message = format!("unknown replication `{other}`; expected async or sync");
                self.error(span, "cluster.replication", message);
                false
            }
        };
        let sync_timeout = self.duration(
            raw.sync_timeout,
            "cluster.sync_timeout",
            Duration::from_secs(1),
        );
        let backups = self.count(raw.backups, "cluster.backups", 1..17, 1) as usize;
        let backups = match raw.topology.as_ref().map(|t| t.get_ref().as_str()) {
            None | Some("all") => None,
            Some("backup") => Some(backups),
            Some(other) => {
                let span = raw.topology.as_ref().map(Spanned::span);
                let message = format!("unknown topology `{other}`; expected all or backup");
                self.error(span, "cluster.topology", message);
                None
            }
        };
        let lock_sessions = raw
            .lock_sessions
            .as_ref()
            .is_some_and(|lock| *lock.get_ref());
        if lock_sessions && !sync {
            let span = raw.lock_sessions.as_ref().map(Spanned::span);
            let message = "needs replication = \"sync\": only then has every peer a request's change when the next request of its session gets the lock";
            self.error(span, "cluster.lock_sessions", message);
        }
        let tls = match (raw.tls_ca, raw.tls_cert, raw.tls_key) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => {
                let files = PeerTlsConfig {
                    ca: self.relative_to_file(ca.get_ref()),
                    cert: self.relative_to_file(cert.get_ref()),
                    key: self.relative_to_file(key.get_ref()),
                };
                let mut valid = true;
                if let Err(message) = crate::tls::load_roots(&files.ca) {
                    self.error(Some(ca.span()), "cluster.tls_ca", message);
                    valid = false;
                }
                if let Err(message) = crate::tls::load(&files.cert, &files.key) {
                    self.error(Some(cert.span()), "cluster.tls_cert", message);
                    valid = false;
                }
                valid.then_some(files)
            }
            (ca, cert, key) => {
                let span = ca.or(cert).or(key).map(|value| value.span());
                let message = "mutual TLS needs all three of tls_ca, tls_cert and tls_key";
                self.error(span, "cluster.tls_ca", message);
                None
            }
        };
        Some(ClusterConfig {
            tls,
            sync,
            backups,
            lock_sessions,
            sync_timeout,
            name,
            node_id,
            listen,
            peers,
            dns,
            dns_interval: self.duration(
                raw.dns_interval,
                "cluster.dns_interval",
                Duration::from_secs(10),
            ),
            secret,
            heartbeat_interval,
            drop_after,
        })
    }
}

/// `host:port` with a port number and a non-empty host.
fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    })
}
