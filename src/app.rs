//! A whole tandem process minus its signals: the public and admin listeners, the session store
//! with its expiry sweeper and snapshot, the metrics and the runtime config. `main` runs one;
//! tests that need to move the session clock start one in-process on real sockets.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::cluster::Cluster;
use crate::config::{Config, ListenConfig, SessionMode};
use crate::metrics::Metrics;
use crate::runtime::{Runtime, SharedTables};
use crate::server::{self, ListenerKind, Sharing};
use crate::session::clock::Clock;
use crate::session::snapshot::Loaded;
use crate::session::{ChangeListener, SessionStore};

/// How often expired sessions are swept out of memory (requests never see an expired session
/// either way: opening one checks its deadline).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A bound, ready tandem.
pub struct App {
    runtime: Arc<Runtime>,
    listeners: Vec<(TcpListener, ListenerKind)>,
    admin: Option<(TcpListener, Arc<Admin>)>,
    cluster_listener: Option<TcpListener>,
    limits: ListenConfig,
}

impl App {
    /// Binds every listener of `config`, builds the session store (reading its snapshot) and
    /// starts the health checks. Session timeouts run on `clock`.
    pub async fn bind(config: Config, clock: Arc<dyn Clock>) -> io::Result<App> {
        let listen = &config.listen;
        let tls = if listen.certificates.is_empty() {
            None
        } else {
            let built = crate::tls::server_config(&listen.certificates)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            Some(built)
        };
        let metrics = Arc::new(Metrics::new());
        // The peer listener is exclusive: two processes of one node id on the peer port would
        // split the peers' replication between them. It and everything else that can fail is
        // done before the shared listeners are bound, so that a new process that fails to start
        // has not taken a share of the public connections only to reset them as it exits
        // (README, "Seamless restart").
        let cluster = match &config.cluster {
            Some(cluster_config) => {
                let listener =
                    server::bind(&[cluster_config.listen], Sharing::Exclusive)?.remove(0);
                let peer_up = metrics.peer_up.clone();
                let replication = metrics.replication.clone();
                let cluster = Cluster::new(cluster_config.clone(), peer_up, replication)
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
                let cluster = Arc::new(cluster);
                Some((cluster, listener))
            }
            None => None,
        };
        let admin_listener = match &config.admin {
            Some(admin) => Some(server::bind(&[admin.address], Sharing::ReusePort)?.remove(0)),
            None => None,
        };
        let plain = server::bind(&listen.addresses, Sharing::ReusePort)?;
        let tls_listeners = server::bind(&listen.tls_addresses, Sharing::ReusePort)?;
        // Redirects name the port the first TLS listener is bound to.
        let https_port = tls_listeners
            .first()
            .and_then(|listener| listener.local_addr().ok())
            .map(|address| address.port());
        let plain_kind = match https_port {
            Some(port) if listen.redirect_to_https => ListenerKind::RedirectToHttps(port),
            _ => ListenerKind::Plain,
        };
        let listeners = plain
            .into_iter()
            .map(|listener| (listener, plain_kind))
            .chain(tls_listeners.into_iter().map(|l| (l, ListenerKind::Tls)))
            .collect();
        let sessions = (config.session.mode == SessionMode::Proxy).then(|| {
            let mut listeners: Vec<Arc<dyn ChangeListener>> = vec![metrics.sessions.clone()];
            if let Some((cluster, _)) = &cluster {
                listeners.push(cluster.replicator());
            }
            let node_id = config.cluster.as_ref().map(|c| c.node_id.as_str());
            let store = Arc::new(SessionStore::new(
                &config.session,
                clock,
                listeners,
                node_id,
            ));
            if let Some(path) = &config.session.snapshot {
                match store.load_snapshot(path) {
                    Loaded::Nothing => {
                        tracing::info!(file = %path.display(), "no session snapshot; starting empty")
                    }
                    Loaded::Sessions { read, refused } => {
                        tracing::info!(file = %path.display(), sessions = read, "sessions read back from the snapshot");
                        if refused > 0 {
                            tracing::warn!(file = %path.display(), sessions = refused, allowance = ?crate::session::clock::SKEW_ALLOWANCE, "sessions of the snapshot refused: created ahead of this node's clock (the file was written under a clock that ran ahead)");
                        }
                    }
                    Loaded::Corrupt { reason, moved_to } => tracing::error!(
                        file = %path.display(),
                        %reason,
                        moved_to = %moved_to.as_deref().map_or("(could not be moved)".into(), |p| p.display().to_string()),
                        "session snapshot unreadable; starting with no sessions"
                    ),
                }
            }
            store
        });
        let token = config.admin.as_ref().and_then(|a| a.token.clone());
        let admin_tls = config.admin.as_ref().is_some_and(|a| a.tls);
        let limits = config.listen.clone();
        let runtime = Arc::new(Runtime::new(
            config,
            sessions,
            metrics,
            tls,
            cluster.as_ref().map(|(cluster, _)| Arc::clone(cluster)),
        ));
        let admin = admin_listener.map(|listener| {
            let admin = Admin::new(Arc::clone(&runtime), token.as_deref(), admin_tls);
            (listener, Arc::new(admin))
        });
        Ok(App {
            runtime,
            listeners,
            admin,
            cluster_listener: cluster.map(|(_, listener)| listener),
            limits,
        })
    }

    /// The runtime, for reloads.
    pub fn runtime(&self) -> Arc<Runtime> {
        Arc::clone(&self.runtime)
    }

    /// Where the public listeners listen, and what each speaks.
    pub fn public_addresses(&self) -> Vec<(SocketAddr, ListenerKind)> {
        self.listeners
            .iter()
            .filter_map(|(listener, kind)| Some((listener.local_addr().ok()?, *kind)))
            .collect()
    }

    /// Where the peer listener listens, if this node is in a cluster.
    pub fn cluster_address(&self) -> Option<SocketAddr> {
        self.cluster_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Where the admin listener listens, if there is one.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, drains, and writes the session snapshot. Returns
    /// whether every connection finished within the shutdown timeout.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> bool {
        let admin = self
            .admin
            .map(|(listener, admin)| AbortOnDrop(tokio::spawn(admin.serve(listener))));
        let cluster = match (&self.runtime.cluster, self.cluster_listener) {
            (Some(cluster), Some(listener)) => {
                let store = self.runtime.sessions.clone();
                let tables = Arc::new(SharedTables(Arc::downgrade(&self.runtime)));
                Some(AbortOnDrop(tokio::spawn(
                    Arc::clone(cluster).run(listener, store, tables),
                )))
            }
            _ => None,
        };
        let sessions = self.runtime.sessions.clone();
        let sweeper = sessions
            .clone()
            .map(|store| AbortOnDrop(tokio::spawn(sweep(store))));
        let runtime = Arc::clone(&self.runtime);
        runtime.ready.store(true, Ordering::Relaxed);
        let _announce = AbortOnDrop(tokio::spawn(crate::notify::announce_ready(Arc::clone(
            &runtime,
        ))));
        let shutdown = async move {
            shutdown.await;
            // Load balancers in front stop sending new clients while the drain runs.
            runtime.ready.store(false, Ordering::Relaxed);
            crate::notify::stopping();
        };
        let drained = server::serve(self.listeners, self.runtime, &self.limits, shutdown).await;
        drop(sweeper);
        if let Some(store) = &sessions {
            if let Some(path) = &store.config().snapshot {
                match store.write_snapshot(path) {
                    Ok(count) => {
                        tracing::info!(file = %path.display(), sessions = count, "session snapshot written")
                    }
                    Err(error) => {
                        tracing::error!(file = %path.display(), %error, "cannot write the session snapshot: the sessions are lost")
                    }
                }
            }
        }
        drop(admin);
        drop(cluster);
        drained
    }
}

/// Sweeps expired sessions out of memory, a slice at a time.
async fn sweep(store: Arc<SessionStore>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        interval.tick().await;
        while store.sweep() > 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// A spawned task that stops when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
