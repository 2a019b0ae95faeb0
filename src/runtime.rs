//! The live configuration: an immutable [`Snapshot`] of routes and pools, swapped whole on reload.
//!
//! A request takes the snapshot current when it starts and keeps it to the end, so a reload never
//! changes a request half way; the next request sees the new pools.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::cluster::Cluster;
use crate::config::{Config, ConfigErrors, ForwardedConfig};
use crate::health::HealthChecks;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::routes::RouteTable;
use crate::session::SessionStore;

/// Everything the request path reads, built from one config.
pub struct Snapshot {
    /// Host and path to pool index.
    pub routes: RouteTable,
    /// Indexed by the route table's pool indexes.
    pub pools: Vec<Arc<Pool>>,
    /// Whose X-Forwarded-* headers are believed.
    pub forwarded: ForwardedConfig,
    /// The config this snapshot was built from.
    pub config: Config,
}

impl Snapshot {
    fn build(
        config: Config,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        cluster: Option<&Cluster>,
    ) -> Snapshot {
        let pools = config
            .pools
            .iter()
            .map(|pool| {
                let old =
                    previous.and_then(|p| p.pools.iter().find(|old| old.config.name == pool.name));
                Arc::new(Pool::new(
                    pool.clone(),
                    old.map(|p| p.as_ref()),
                    metrics,
                    cluster.map(Cluster::replicator),
                ))
            })
            .collect::<Vec<_>>();
        metrics.learn_routes(&pools);
        Snapshot {
            routes: RouteTable::new(&config.pools),
            pools,
            forwarded: config.forwarded.clone(),
            config,
        }
    }
}

/// The current snapshot, shared by all connections, the health checks of its pools, and what
/// lives as long as the process (the session store, the metrics).
pub struct Runtime {
    current: ArcSwap<Snapshot>,
    /// Replaced with the snapshot on reload; dropping the old value stops the old checks.
    health: Mutex<Option<HealthChecks>>,
    /// The session store in `proxy` mode; kept across reloads.
    pub sessions: Option<Arc<SessionStore>>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// This node's view of its peers; `None` without `[cluster]`.
    pub cluster: Option<Arc<Cluster>>,
    /// Whether `/readyz` says ready: listeners bound and serving, not draining.
    pub ready: AtomicBool,
    /// The TLS settings new connections get (certificates reloaded with the config); `None`
    /// without TLS listeners.
    tls: ArcSwapOption<rustls::ServerConfig>,
}

impl Runtime {
    /// A runtime serving `config`, with its health checks running. Must be called inside a
    /// tokio runtime.
    pub fn new(
        config: Config,
        sessions: Option<Arc<SessionStore>>,
        metrics: Arc<Metrics>,
        tls: Option<Arc<rustls::ServerConfig>>,
        cluster: Option<Arc<Cluster>>,
    ) -> Runtime {
        let snapshot = Snapshot::build(config, None, &metrics, cluster.as_deref());
        let health = Mutex::new(Some(HealthChecks::start(&snapshot.pools, &metrics)));
        Runtime {
            current: ArcSwap::from_pointee(snapshot),
            health,
            sessions,
            metrics,
            cluster,
            ready: AtomicBool::new(false),
            tls: ArcSwapOption::new(tls),
        }
    }

    /// Whether `/readyz` says ready: serving, not draining, and (in a cluster) holding the
    /// peers' sessions.
    pub fn ready_for_traffic(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.cluster.as_ref().is_none_or(|c| c.synced())
    }

    /// The TLS settings for a connection that starts now.
    pub fn tls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.load_full()
    }

    /// The snapshot for a request that starts now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Reads the running config's file again and switches to it (SIGHUP, the admin API). A
    /// file with errors is refused and the running config stays. Returns the warnings of
    /// [`Runtime::reload`], or the file's errors.
    pub fn reload_file(&self) -> Result<Vec<String>, ConfigErrors> {
        let path = self.snapshot().config.path.clone();
        crate::notify::reloading();
        match Config::load(&path) {
            Ok(config) => {
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                let warnings = self.reload(config);
                crate::notify::reloaded("serving; config reloaded");
                Ok(warnings)
            }
            Err(errors) => {
                self.metrics.reloads.with_label_values(&["refused"]).inc();
                crate::notify::reloaded("serving; reload refused, the running config stays");
                Err(errors)
            }
        }
    }

    /// Switches to `config` for new requests. Listener, log, session and admin settings are bound
    /// at start; a change to them is returned as a warning and takes effect on restart.
    pub fn reload(&self, config: Config) -> Vec<String> {
        let previous = self.current.load_full();
        let mut warnings = Vec::new();
        let (old, new) = (&previous.config.listen, &config.listen);
        if old.addresses != new.addresses
            || old.tls_addresses != new.tls_addresses
            || old.redirect_to_https != new.redirect_to_https
            || old.max_connections != new.max_connections
            || old.header_read_timeout != new.header_read_timeout
            || old.idle_timeout != new.idle_timeout
            || old.max_header_size != new.max_header_size
            || old.max_headers != new.max_headers
            || old.shutdown_timeout != new.shutdown_timeout
        {
            warnings.push(
                "[listen] changed: addresses and connection limits apply after a restart"
                    .to_string(),
            );
        }
        if previous.config.log != config.log {
            warnings.push("[log] changed: log settings apply after a restart".to_string());
        }
        if previous.config.session != config.session {
            warnings.push("[session] changed: session settings apply after a restart".to_string());
        }
        if previous.config.admin != config.admin {
            warnings.push("[admin] changed: admin settings apply after a restart".to_string());
        }
        if previous.config.cluster != config.cluster {
            warnings.push("[cluster] changed: cluster settings apply after a restart".to_string());
        }
        if !config.listen.certificates.is_empty() {
            // Certificates are read again on every reload (renewed files, same paths).
            match crate::tls::server_config(&config.listen.certificates) {
                Ok(tls) => self.tls.store(Some(tls)),
                Err(error) => warnings.push(format!(
                    "certificates not reloaded, the running ones stay: {error}"
                )),
            }
        }
        let snapshot = Arc::new(Snapshot::build(
            config,
            Some(&previous),
            &self.metrics,
            self.cluster.as_deref(),
        ));
        let checks = HealthChecks::start(&snapshot.pools, &self.metrics);
        self.current.store(snapshot);
        let mut health = self
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The old snapshot's checks stop here; the backends' up/down state lives on in the pools.
        drop(health.replace(checks));
        warnings
    }
}

/// The pools' sticky tables as the cluster shares them: read for a peer's full state, written
/// with placements peers recorded. Holds the runtime weakly (the runtime holds the cluster).
pub struct SharedTables(pub std::sync::Weak<Runtime>);

impl crate::cluster::StickyTables for SharedTables {
    fn all(&self) -> Vec<(String, String, crate::placement::Placement)> {
        let Some(runtime) = self.0.upgrade() else {
            return Vec::new();
        };
        let snapshot = runtime.snapshot();
        snapshot
            .pools
            .iter()
            .flat_map(|pool| {
                pool.sticky_table
                    .snapshot()
                    .into_iter()
                    .map(|(key, placement)| (pool.name.to_string(), key, placement))
            })
            .collect()
    }

    fn record(&self, pool: &str, key: &str, placement: crate::placement::Placement) {
        // Into the table only: it came from a peer, it is not sent on.
        self.with_table(pool, |table| table.record(key, placement));
    }

    fn forget(&self, pool: &str, key: &str) {
        self.with_table(pool, |table| table.remove(key));
    }
}

impl SharedTables {
    /// Runs `change` on the sticky table of pool `pool`, if the runtime still has that pool.
    fn with_table(&self, pool: &str, change: impl FnOnce(&crate::placement::StickyTable)) {
        let Some(runtime) = self.0.upgrade() else {
            return;
        };
        let snapshot = runtime.snapshot();
        if let Some(pool) = snapshot.pools.iter().find(|p| &*p.name == pool) {
            change(&pool.sticky_table);
        }
    }
}
