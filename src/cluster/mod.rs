//! Tandem peers: membership, authenticated connections and liveness. Each node dials every
//! peer it knows (the static list, and what the DNS name resolves to) and sends on that
//! connection; it hears each peer on the connection that peer dialled. A peer is alive while
//! it is heard (a heartbeat every `heartbeat_interval`), dead after `drop_after` of silence,
//! and alive again when it talks again.
//!
//! - [`frame`]: length-prefixed frames with a hard size limit.
//! - [`handshake`]: protocol version, cluster name and a shared-secret HMAC proof, before any
//!   other frame is read.
//!
//! - [`replication`]: this node's session changes, queued for each peer that holds the session.
//! - [`topology`]: which peers hold which session (`all`, or an owner and backups).
//!
//! Each outbound connection starts with a digest of this node's sessions (id and a hash of its
//! state; in the `backup` topology only the sessions the peer holds); the peer answers which of
//! them it lacks or holds otherwise (`Wanted`), and those follow whole, with the ended ids, then
//! `SyncDone`, then live changes; each inbound one is merged into the store. A node is ready (`/readyz`) once
//! every peer it hears, and every peer it reached, has sent its full state (a peer it reached
//! has heard it, so that peer's `sync` responses wait for it). In the `backup` topology a node asks the
//! holders for a session it does not have (a `Fetch`, answered on the same connection), and
//! re-homes its sessions when the live members change.

pub mod frame;
pub mod handshake;
pub mod locks;
pub mod replication;
pub mod topology;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGaugeVec;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::config::ClusterConfig;
use crate::metrics::ReplicationMetrics;
use crate::session::replica::Replicated;
use crate::session::SessionStore;
use frame::Kind;
use handshake::{Identity, Refusal};
use replication::{Replicator, Visit};
use topology::Topology;

/// Largest frame accepted after the handshake.
const FRAME_LIMIT: u32 = 8 << 20;
/// Time a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait before dialling a peer again after a failure.
const REDIAL_AFTER: Duration = Duration::from_secs(1);
/// Wait before dialling again a peer that refused the handshake (no log flood).
const REDIAL_AFTER_REFUSAL: Duration = Duration::from_secs(5);
/// Bytes of session messages per frame at most (a frame holds at least one message).
const BATCH_BYTES: usize = 1 << 20;

/// The pools' sticky tables, shared among peers beside the sessions (route takeovers and
/// learned ids), so that every tandem routes a session alike.
pub trait StickyTables: Send + Sync {
    /// Every placement, as (pool, session key, placement).
    fn all(&self) -> Vec<(String, String, crate::placement::Placement)>;
    /// Records a placement a peer made.
    fn record(&self, pool: &str, key: &str, placement: crate::placement::Placement);
    /// Forgets a placement a peer forgot.
    fn forget(&self, pool: &str, key: &str);
}

/// A peer connection: plain TCP, or TLS over it.
pub trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> PeerIo for T {}

/// A peer connection of either kind.
type PeerStream = Box<dyn PeerIo>;

/// Mutual TLS between peers: how this node accepts and dials.
#[derive(Clone)]
struct PeerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

/// What this node knows of one peer.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// The address its connection to this node came from.
    pub address: SocketAddr,
    /// Whether it was heard within `drop_after`.
    pub alive: bool,
    /// When it was last heard.
    pub last_heard: Instant,
}

/// This node's view of the cluster.
pub struct Cluster {
    config: ClusterConfig,
    peers: Mutex<HashMap<String, PeerStatus>>,
    peer_up: IntGaugeVec,
    replicator: Arc<Replicator>,
    /// Messages, bytes, resyncs and sync timeouts.
    metrics: ReplicationMetrics,
    /// Mutual TLS, when `[cluster]` configures it.
    tls: Option<PeerTls>,
    /// Peers whose full state has arrived.
    synced: Mutex<HashSet<String>>,
    started: Instant,
    /// Who holds which session, over the live members.
    topology: Arc<Topology>,
    /// Woken when the live members change, to re-home sessions (`backup` topology).
    members_changed: tokio::sync::Notify,
    /// The locks of the sessions this node owns (`lock_sessions`).
    locks: Arc<locks::SessionLocks>,
    /// Woken when a peer this node has no connection to dials in: the dialling tasks waiting
    /// to try again do so at once, since that peer waits for this node's full state before
    /// it says it is ready (see [`Cluster::synced`]).
    redial_now: tokio::sync::Notify,
}

impl Cluster {
    /// A cluster member with no peer heard yet; `peer_up` is the per-peer gauge,
    /// `metrics` counts the replication's messages, bytes, resyncs and sync timeouts.
    pub fn new(
        config: ClusterConfig,
        peer_up: IntGaugeVec,
        metrics: ReplicationMetrics,
    ) -> Result<Cluster, String> {
        let tls = match &config.tls {
            None => None,
            Some(files) => {
                let (server, client) = crate::tls::peer_configs(files)?;
                Some(PeerTls {
                    acceptor: tokio_rustls::TlsAcceptor::from(server),
                    connector: tokio_rustls::TlsConnector::from(client),
                })
            }
        };
        let topology = Arc::new(Topology::new(&config.node_id, config.backups));
        Ok(Cluster {
            tls,
            metrics,
            config,
            peers: Mutex::new(HashMap::new()),
            peer_up,
            replicator: Arc::new(Replicator::new(Arc::clone(&topology))),
            topology,
            members_changed: tokio::sync::Notify::new(),
            locks: Arc::default(),
            redial_now: tokio::sync::Notify::new(),
            synced: Mutex::new(HashSet::new()),
            started: Instant::now(),
        })
    }

    /// The sequence number of the last session change queued for peers (see
    /// [`Cluster::wait_for_peers`]).
    pub fn sequence(&self) -> u64 {
        self.replicator.sequence()
    }

    /// Session changes waiting to be sent to peer `node_id` (`None`: no connection to it).
    pub fn backlog(&self, node_id: &str) -> Option<usize> {
        self.replicator
            .backlog()
            .into_iter()
            .filter(|(id, _)| id == node_id)
            .map(|(_, waiting)| waiting)
            .max()
    }

    /// The store listener that sends this node's session changes to its peers.
    pub fn replicator(&self) -> Arc<Replicator> {
        Arc::clone(&self.replicator)
    }

    /// Whether this node has the cluster's state: every peer it hears has sent its full state,
    /// and so has every peer it reached (which must therefore have dialled it back: only then
    /// do that peer's `sync` responses wait for this node), and it has heard every configured
    /// peer or waited `drop_after` for them.
    pub fn synced(&self) -> bool {
        // Read before the locks below: the replicator takes its own.
        let reached: Vec<String> = self
            .replicator
            .backlog()
            .into_iter()
            .map(|(node_id, _)| node_id)
            .collect();
        let peers = self
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let synced = self
            .synced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let waited = self.started.elapsed() >= self.config.drop_after
            || peers.len() >= self.config.peers.len();
        waited
            && peers
                .iter()
                .filter(|(_, status)| status.alive)
                .all(|(node_id, _)| synced.contains(node_id))
            && reached.iter().all(|node_id| synced.contains(node_id))
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Every peer heard so far, by node id, sorted.
    pub fn peers(&self) -> Vec<(String, PeerStatus)> {
        let mut peers: Vec<_> = self
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(id, status)| (id.clone(), status.clone()))
            .collect();
        peers.sort_by(|a, b| a.0.cmp(&b.0));
        peers
    }

    fn identity(&self) -> Identity<'_> {
        Identity {
            cluster: &self.config.name,
            node_id: &self.config.node_id,
            secret: &self.config.secret,
        }
    }

    /// Peer `node_id` talked: alive (again), if it was not.
    fn heard(&self, node_id: &str, address: SocketAddr) {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let status = peers.entry(node_id.to_string()).or_insert(PeerStatus {
            address,
            alive: false,
            last_heard: now,
        });
        status.last_heard = now;
        status.address = address;
        if !status.alive {
            status.alive = true;
            self.peer_up.with_label_values(&[node_id]).set(1);
            tracing::info!(peer = %node_id, %address, "peer is alive");
            self.members_may_have_changed(&peers);
        }
    }

    /// Gives the topology the live peers among `peers`; wakes the re-homing if that changed
    /// the members.
    fn members_may_have_changed(&self, peers: &HashMap<String, PeerStatus>) {
        let live = peers
            .iter()
            .filter(|(_, status)| status.alive)
            .map(|(node_id, _)| node_id.clone());
        if self.topology.set_live_peers(live) {
            self.members_changed.notify_one();
        }
    }

    /// Marks peers silent for `drop_after` as dead.
    fn check_liveness(&self) {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (node_id, status) in peers.iter_mut() {
            if status.alive && status.last_heard.elapsed() > self.config.drop_after {
                status.alive = false;
                self.peer_up.with_label_values(&[node_id]).set(0);
                tracing::warn!(
                    peer = %node_id,
                    address = %status.address,
                    silent_for = ?self.config.drop_after,
                    "peer is dead: not heard from"
                );
            }
        }
        self.members_may_have_changed(&peers);
    }

    /// Runs the cluster: accepts peers on `listener`, dials the configured ones, resolves the
    /// DNS name, and checks liveness; until the task is dropped.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        store: Option<Arc<SessionStore>>,
        tables: Arc<dyn StickyTables>,
    ) {
        let shared = Shared { store, tables };
        let mut tasks = JoinSet::new();
        if let (true, Some(store)) = (self.topology.is_partitioned(), &shared.store) {
            tasks.spawn(Arc::clone(&self).rehome(Arc::clone(store)));
        }
        tasks.spawn(Arc::clone(&self).accept(listener, shared.clone()));
        let mut dialled = HashSet::new();
        for peer in &self.config.peers {
            dialled.insert(peer.clone());
            tasks.spawn(Arc::clone(&self).dial(peer.clone(), shared.clone()));
        }
        let mut liveness = tokio::time::interval(self.config.heartbeat_interval);
        let mut dns = tokio::time::interval(self.config.dns_interval);
        loop {
            tokio::select! {
                _ = liveness.tick() => {
                    self.check_liveness();
                    self.replicator.flush_touches();
                    let expired = self.locks.expire(LOCK_LEASE);
                    if expired > 0 {
                        tracing::warn!(locks = expired, lease = ?LOCK_LEASE, "session locks held past their lease taken back");
                    }
                }
                _ = dns.tick(), if self.config.dns.is_some() => {
                    let name = self.config.dns.as_deref().unwrap_or_default();
                    match tokio::net::lookup_host(name).await {
                        Ok(addresses) => {
                            for address in addresses {
                                if dialled.insert(address.to_string()) {
                                    tasks.spawn(Arc::clone(&self).dial(address.to_string(), shared.clone()));
                                }
                            }
                        }
                        Err(error) => tracing::warn!(dns = name, %error, "cannot resolve the cluster's DNS name"),
                    }
                }
            }
        }
    }

    /// `backup` topology: after every change of the live members, sends each session to its
    /// new holders and lets go of those this node no longer holds; between changes, releases
    /// the visitors whose holders have them.
    async fn rehome(self: Arc<Self>, store: Arc<SessionStore>) {
        let mut members = self.topology.members();
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        loop {
            tokio::select! {
                _ = self.members_changed.notified() => {
                    let before = std::mem::replace(&mut members, self.topology.members());
                    tracing::info!(members = ?members, "cluster members changed; re-homing sessions");
                    // A pass over every session: off the runtime's worker threads.
                    let (replicator, store) = (Arc::clone(&self.replicator), Arc::clone(&store));
                    let rehomed = tokio::task::spawn_blocking(move || replicator.rehome(&store, &before));
                    if let Err(error) = rehomed.await {
                        tracing::error!(%error, "re-homing sessions failed");
                    }
                }
                _ = tick.tick() => {
                    self.replicator.release_visitors(&store);
                }
            }
        }
    }

    async fn accept(self: Arc<Self>, listener: TcpListener, shared: Shared) {
        loop {
            let (stream, address) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let cluster = Arc::clone(&self);
            let shared = shared.clone();
            tokio::spawn(async move {
                let stream: PeerStream = match &cluster.tls {
                    None => Box::new(stream),
                    Some(tls) => {
                        let accepting = tls.acceptor.accept(stream);
                        match tokio::time::timeout(CONNECT_TIMEOUT, accepting).await {
                            Ok(Ok(stream)) => Box::new(stream),
                            Ok(Err(error)) => {
                                tracing::warn!(%address, %error, "peer connection refused: TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                cluster.hear(stream, address, shared).await;
            });
        }
    }

    /// One inbound peer connection: the handshake, then every frame it sends, session changes
    /// merged into `store`.
    async fn hear(self: Arc<Self>, mut stream: PeerStream, address: SocketAddr, shared: Shared) {
        let node_id = match handshake::run(&mut stream, &self.identity()).await {
            Ok(node_id) => node_id,
            Err(Refusal::Itself) => return,
            Err(refusal) => {
                tracing::warn!(%address, reason = %refusal, "peer connection refused");
                return;
            }
        };
        self.heard(&node_id, address);
        if self.replicator.connection(&node_id).is_none() {
            self.redial_now.notify_waiters();
        }
        // Answers (acknowledgements, fetched sessions, lock grants) go out through one writer,
        // since lock grants come from tasks of their own.
        let (mut reader, mut writer) = tokio::io::split(stream);
        // Bounded: a peer that does not read its answers stops being read from (backpressure),
        // rather than making this node queue answers without end.
        let (answers, mut outgoing) = tokio::sync::mpsc::channel::<(Kind, Vec<u8>)>(ANSWER_QUEUE);
        let writing = tokio::spawn(async move {
            while let Some((kind, payload)) = outgoing.recv().await {
                if frame::write(&mut writer, kind, &payload).await.is_err() {
                    return;
                }
            }
        });
        let reason = Arc::clone(&self)
            .hear_frames(&mut reader, &answers, &node_id, address, &shared)
            .await;
        tracing::info!(peer = %node_id, %reason, "peer connection closed");
        // Its requests' session locks go with it.
        self.locks.release_peer(&node_id);
        drop(answers);
        let _ = writing.await;
    }

    /// Reads and handles what a peer sends on the connection it dialled, answering through
    /// `answers`, until it breaks; returns why.
    async fn hear_frames(
        self: Arc<Self>,
        reader: &mut tokio::io::ReadHalf<PeerStream>,
        answers: &Answers,
        node_id: &str,
        address: SocketAddr,
        shared: &Shared,
    ) -> String {
        // The peer's digest, as it arrives (see `replicate`).
        let mut digest = Vec::new();
        loop {
            let frame = match frame::read(reader, FRAME_LIMIT).await {
                Ok(frame) => frame,
                Err(error) => return error.to_string(),
            };
            self.heard(node_id, address);
            match frame.kind {
                Kind::Heartbeat => {}
                Kind::Sessions => {
                    self.metrics
                        .bytes
                        .with_label_values(&["received"])
                        .inc_by(frame.payload.len() as u64 + 5);
                    let batch: Batch = match serde_json::from_slice(&frame.payload) {
                        Ok(batch) => batch,
                        Err(error) => {
                            tracing::warn!(peer = %node_id, %error, "unreadable session batch from peer; closing its connection");
                            return "an unreadable session batch".into();
                        }
                    };
                    for message in batch.messages {
                        self.metrics
                            .messages
                            .with_label_values(&["received", message.kind()])
                            .inc();
                        let handled = Arc::clone(&self)
                            .handle(message, node_id, answers, shared, &mut digest)
                            .await;
                        if let Err(reason) = handled {
                            tracing::warn!(peer = %node_id, %reason, "closing the peer's connection");
                            return reason;
                        }
                    }
                    // Merged: the sender's waiting responses (sync mode) may go.
                    if batch.sequence > 0 {
                        let _ = answers
                            .send((Kind::Ack, batch.sequence.to_be_bytes().to_vec()))
                            .await;
                    }
                }
                kind => {
                    tracing::warn!(peer = %node_id, ?kind, "unexpected frame from peer; closing its connection");
                    return format!("an unexpected {kind:?} frame");
                }
            }
        }
    }

    /// One message from peer `node_id`: merged into the store or the sticky tables, or
    /// answered through `answers`; an error says why the connection must close.
    async fn handle(
        self: Arc<Self>,
        message: Replicated,
        node_id: &str,
        answers: &Answers,
        shared: &Shared,
        digest: &mut Vec<(String, u64)>,
    ) -> Result<(), String> {
        match message {
            Replicated::Digest { entries } => {
                // No more entries than twice the sessions this node may hold.
                let limit = shared
                    .store
                    .as_ref()
                    .map_or(0, |store| 2 * store.config().max_sessions);
                if digest.len() + entries.len() > limit {
                    return Err(format!("a digest of more than {limit} sessions"));
                }
                digest.extend(entries);
            }
            Replicated::DigestDone => {
                let peers_digest = std::mem::take(digest);
                for frame in wanted_frames(shared.store.as_deref(), &peers_digest) {
                    let _ = answers.send((Kind::Wanted, frame)).await;
                }
            }
            Replicated::Fetch { id, tag } => {
                let session = shared
                    .store
                    .as_ref()
                    .and_then(|store| store.upsert_message(&id));
                let encoded = serde_json::to_vec(&Fetched { tag, session }).unwrap_or_default();
                let _ = answers.send((Kind::Fetched, encoded)).await;
            }
            Replicated::Lock { id, tag } => {
                if !self.locks.expect(node_id, tag) {
                    tracing::warn!(peer = %node_id, "too many session-lock requests waiting; one refused");
                    return Ok(());
                }
                // Granted when the session's current holder lets go: in a task of its own.
                let (answers, peer) = (answers.clone(), node_id.to_string());
                tokio::spawn(async move {
                    let lock = self.locks.acquire(&id).await;
                    if self.locks.grant(&peer, tag, lock) {
                        let _ = answers
                            .send((Kind::Locked, tag.to_be_bytes().to_vec()))
                            .await;
                    }
                });
            }
            Replicated::Unlock { tag } => self.locks.release(node_id, tag),
            Replicated::SyncDone => {
                self.synced
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(node_id.to_string());
                tracing::info!(peer = %node_id, "full session state received from peer");
            }
            Replicated::Placement {
                pool,
                key,
                route,
                backend_id,
            } => {
                // An empty route: the peer forgot it (`Replicator::placement_forgotten`).
                if route.is_empty() {
                    shared.tables.forget(&pool, &key);
                } else {
                    let placement = crate::placement::Placement { route, backend_id };
                    shared.tables.record(&pool, &key, placement);
                }
            }
            message => {
                if let Some(store) = &shared.store {
                    store.merge_remote(message);
                }
            }
        }
        Ok(())
    }

    /// Keeps a connection to the peer at `target`: the full state of `store` first, then
    /// session changes as they come and a heartbeat every interval.
    async fn dial(self: Arc<Self>, target: String, shared: Shared) {
        loop {
            let connected =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.as_str())).await;
            let stream = match connected {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(peer = %target, %error, "cannot reach peer");
                    self.pause_before_redial().await;
                    continue;
                }
                Err(_) => {
                    tracing::debug!(peer = %target, "connecting to peer timed out");
                    self.pause_before_redial().await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let mut stream: PeerStream = match &self.tls {
                None => Box::new(stream),
                Some(tls) => {
                    let host = target
                        .rsplit_once(':')
                        .map_or(target.as_str(), |(host, _)| host);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let Ok(name) = rustls_pki_types::ServerName::try_from(host.to_string()) else {
                        tracing::warn!(peer = %target, "not a name or address TLS can verify");
                        return;
                    };
                    match tokio::time::timeout(CONNECT_TIMEOUT, tls.connector.connect(name, stream))
                        .await
                    {
                        Ok(Ok(stream)) => Box::new(stream),
                        Ok(Err(error)) => {
                            tracing::warn!(peer = %target, %error, "peer refused: TLS handshake failed");
                            tokio::time::sleep(REDIAL_AFTER_REFUSAL).await;
                            continue;
                        }
                        Err(_) => {
                            self.pause_before_redial().await;
                            continue;
                        }
                    }
                }
            };
            let node_id = match handshake::run(&mut stream, &self.identity()).await {
                Ok(node_id) => node_id,
                // Our own address (in the list or the DNS answer): never dial it again.
                Err(Refusal::Itself) => return,
                // A connection that broke (the peer starting or stopping): try again soon.
                Err(Refusal::Broken(reason)) => {
                    tracing::debug!(peer = %target, %reason, "peer handshake broke off");
                    self.pause_before_redial().await;
                    continue;
                }
                Err(refusal) => {
                    tracing::warn!(peer = %target, reason = %refusal, "peer refused");
                    tokio::time::sleep(REDIAL_AFTER_REFUSAL).await;
                    continue;
                }
            };
            if let Err(error) = self.replicate(stream, &node_id, &shared).await {
                tracing::debug!(peer = %target, %error, "peer connection lost; redialling");
            }
            // Not woken early: two peers whose connections break right after the handshake
            // would otherwise wake each other's dialling without pause.
            tokio::time::sleep(REDIAL_AFTER).await;
        }
    }

    /// Waits `REDIAL_AFTER` before a dialling task that could not connect tries again, or
    /// less if a peer this node has no connection to dials in meanwhile (it may be the one
    /// this task dials).
    async fn pause_before_redial(&self) {
        tokio::select! {
            _ = tokio::time::sleep(REDIAL_AFTER) => {}
            _ = self.redial_now.notified() => {}
        }
    }

    /// Exchanges digests and sends the sessions the peer wants, then live changes and
    /// heartbeats, and records the peer's acknowledgements, until the connection fails or the
    /// peer falls behind (then the caller starts over with a new connection).
    async fn replicate(
        &self,
        stream: PeerStream,
        node_id: &str,
        shared: &Shared,
    ) -> std::io::Result<()> {
        // Subscribed before the full state is read, so that nothing written meanwhile is
        // missed (what is sent twice merges to the same result). Every change numbered up to
        // `covered` is already in the store, so the full state's acknowledgement covers it.
        let mut subscription = self.replicator.subscribe(node_id);
        let covered = subscription.covered;
        let (mut reader, mut writer) = tokio::io::split(stream);
        // The digest of what this node has (in the `backup` topology, of the sessions the peer
        // holds); the peer answers which of them it wants, and only those go whole.
        let mut digest = shared
            .store
            .as_deref()
            .map(SessionStore::digest)
            .unwrap_or_default();
        digest.retain(|(id, _)| {
            self.topology
                .holders(id)
                .is_none_or(|holders| holders.iter().any(|holder| holder == node_id))
        });
        let mut messages: Vec<Replicated> = digest
            .chunks(DIGEST_CHUNK)
            .map(|entries| Replicated::Digest {
                entries: entries.to_vec(),
            })
            .collect();
        messages.push(Replicated::DigestDone);
        send_batches(&mut writer, messages, 0, &self.metrics).await?;
        // Heartbeats go on while the peer works out what it wants, or it would count this
        // node dead meanwhile.
        let wanted = {
            let reading = read_wanted(&mut reader, digest.len());
            tokio::pin!(reading);
            let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
            loop {
                tokio::select! {
                    wanted = &mut reading => break wanted?,
                    _ = heartbeat.tick() => frame::write(&mut writer, Kind::Heartbeat, &[]).await?,
                }
            }
        };
        let mut state: Vec<Replicated> = match shared.store.as_deref() {
            Some(store) => wanted
                .iter()
                .filter_map(|id| store.upsert_message(id))
                .chain(store.ended_messages())
                .collect(),
            None => Vec::new(),
        };
        state.extend(
            shared
                .tables
                .all()
                .into_iter()
                .map(|(pool, key, placement)| Replicated::Placement {
                    pool,
                    key,
                    route: placement.route,
                    backend_id: placement.backend_id,
                }),
        );
        // The changes queued since subscribing go before `SyncDone`: the peer says it is ready
        // once `SyncDone` is merged, and `sync` responses of those changes may be answered by
        // then (they waited for a connection that was being set up, and may have timed out).
        let mut sequence = covered;
        while let Ok((queued, change)) = subscription.changes.try_recv() {
            sequence = sequence.max(queued);
            state.push(change);
        }
        state.push(Replicated::SyncDone);
        send_batches(&mut writer, state, sequence, &self.metrics).await?;
        let lag = Arc::new(Lag::new(self.metrics.lag.with_label_values(&[node_id])));
        let acknowledgements = tokio::spawn(read_answers(
            reader,
            subscription.acked.clone(),
            Arc::clone(&self.replicator),
            Arc::clone(&lag),
        ));
        let result = self.send_changes(&mut writer, subscription, &lag).await;
        acknowledgements.abort();
        result
    }

    async fn send_changes(
        &self,
        writer: &mut tokio::io::WriteHalf<PeerStream>,
        mut subscription: replication::Subscription,
        lag: &Lag,
    ) -> std::io::Result<()> {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    if subscription.behind.load(std::sync::atomic::Ordering::Relaxed) {
                        self.metrics.resyncs.inc();
                        tracing::warn!("a peer fell behind (queue overflow or no acknowledgement in time); starting over with a digest exchange");
                        return Ok(());
                    }
                    frame::write(writer, Kind::Heartbeat, &[]).await?;
                }
                change = subscription.changes.recv() => {
                    let Some((mut sequence, change)) = change else { return Ok(()) };
                    let mut batch = vec![change];
                    while batch.len() < 1024 {
                        match subscription.changes.try_recv() {
                            Ok((next, change)) => {
                                sequence = sequence.max(next);
                                batch.push(change);
                            }
                            Err(_) => break,
                        }
                    }
                    send_batches(writer, batch, sequence, &self.metrics).await?;
                    lag.sent(sequence);
                }
            }
        }
    }

    /// Whether peer `node_id` acknowledged change `sequence` by `deadline`: once a connection
    /// to it is open (a live peer being redialled gets one soon), on its acknowledgements. A
    /// peer that does not is marked behind, so that its connection starts over.
    async fn acknowledged(
        &self,
        node_id: &str,
        sequence: u64,
        deadline: tokio::time::Instant,
    ) -> bool {
        loop {
            let owed = self.replicator.owed_by(node_id, sequence);
            if let (Some(owed), Some((mut acked, behind))) =
                (owed, self.replicator.acknowledgements(node_id))
            {
                match tokio::time::timeout_at(deadline, acked.wait_for(|acked| *acked >= owed))
                    .await
                {
                    Ok(Ok(_)) => return true,
                    // The connection closed meanwhile: look for its successor.
                    Ok(Err(_)) => {}
                    Err(_) => {
                        behind.store(true, std::sync::atomic::Ordering::Relaxed);
                        return false;
                    }
                }
            }
            if tokio::time::Instant::now() + CONNECTION_POLL > deadline {
                return false;
            }
            tokio::time::sleep(CONNECTION_POLL).await;
        }
    }

    /// In `sync` mode, waits until every live peer acknowledged the changes made since
    /// `before` (a `Replicator::sequence` reading) that were sent to it (in the `backup`
    /// topology, the session's holders), for at most `sync_timeout`; a peer that did not is
    /// logged and counted, and the caller goes on.
    pub async fn wait_for_peers(&self, before: u64) {
        if !self.config.sync {
            return;
        }
        let sequence = self.replicator.sequence();
        if sequence <= before {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.config.sync_timeout;
        let alive: Vec<String> = self
            .peers()
            .into_iter()
            .filter(|(_, status)| status.alive)
            .map(|(node_id, _)| node_id)
            .collect();
        let mut late = 0;
        for node_id in alive {
            if !self.acknowledged(&node_id, sequence, deadline).await {
                late += 1;
            }
        }
        if late > 0 {
            self.metrics.sync_timeouts.inc_by(late as u64);
            tracing::warn!(
                peers = late,
                timeout = ?self.config.sync_timeout,
                "peers did not acknowledge a session change in time; the response goes on"
            );
        }
    }
}

/// The longest a request may hold a session lock (`lock_sessions`) granted to it by this
/// node, in case its peer vanished without closing the connection.
const LOCK_LEASE: Duration = Duration::from_secs(120);
/// The longest a request waits for a session lock; past it, it goes on without (logged).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// How often a sync-mode response looks again for a connection to a live peer that has none
/// open yet.
const CONNECTION_POLL: Duration = Duration::from_millis(5);

impl Cluster {
    /// `backup` topology: makes session `id` available to a request on this node. A session
    /// this node does not hold is fetched from the live peers (its holders first) and merged
    /// into any copy left from an earlier visit, which peers' changes do not reach; it is a
    /// visitor, kept while the returned [`Visit`] lives. A session this node holds is fetched
    /// only if it is missing (it may be on its way after a membership change). `None` when
    /// this node holds the session (always in the `all` topology).
    pub async fn visit(&self, store: &SessionStore, id: &str) -> Option<Visit> {
        if !self.topology.is_partitioned() || !crate::session::id::is_well_formed(id) {
            return None;
        }
        let visit = (!self.topology.holds(id)).then(|| self.replicator.visit(id));
        let stale = visit.is_some() || !store.is_known(id);
        if stale && !store.has_ended(id) {
            self.fetch(store, id).await;
        }
        visit
    }

    /// `lock_sessions`: waits for session `id`'s lock, from its owner (this node or a peer),
    /// and holds it while the returned [`SessionLock`] lives. `None` without `lock_sessions`,
    /// or when the owner cannot be reached or does not grant it within `LOCK_WAIT` (logged:
    /// the request goes on unlocked rather than failing).
    pub async fn lock(self: &Arc<Self>, store: &SessionStore, id: &str) -> Option<SessionLock> {
        // Ids that name no session here (in the `all` topology, where every node has them all)
        // cost no round trip.
        let known = store.is_known(id) || self.topology.is_partitioned();
        if !self.config.lock_sessions || !known || !crate::session::id::is_well_formed(id) {
            return None;
        }
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        // The owner may die, or its connection start over, while this request waits: each
        // slice of the wait looks again, and asks the (new) owner again if so.
        loop {
            let owner = self.topology.owner(id);
            let slice =
                (tokio::time::Instant::now() + self.config.heartbeat_interval).min(deadline);
            if owner == self.node_id() {
                if let Ok(lock) = tokio::time::timeout_at(slice, self.locks.acquire(id)).await {
                    return Some(SessionLock::Local(lock));
                }
            } else if let Some((tag, granted, connection)) =
                self.replicator.request_lock(&owner, id)
            {
                let remote = SessionLock::Remote {
                    owner: owner.clone(),
                    tag,
                    replicator: Arc::clone(&self.replicator),
                };
                tokio::pin!(granted);
                loop {
                    let slice = (tokio::time::Instant::now() + self.config.heartbeat_interval)
                        .min(deadline);
                    match tokio::time::timeout_at(slice, &mut granted).await {
                        Ok(Ok(())) => return Some(remote),
                        // The connection went with the request.
                        Ok(Err(_)) => break,
                        Err(_) => {}
                    }
                    let same_owner = self.topology.owner(id) == owner;
                    let same_connection = self.replicator.connection(&owner) == Some(connection);
                    if !same_owner || !same_connection || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
            } else {
                // No connection to the owner yet (it is being redialled): wait a little.
                tokio::time::sleep_until(slice).await;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(session = %crate::session::log_ref(id), wait = ?LOCK_WAIT, "session lock not granted in time; the request goes on without it");
                return None;
            }
        }
    }

    /// Asks the live peers for session `id` one by one, its holders first, each for at most
    /// `sync_timeout`, and merges the first answer that has it.
    async fn fetch(&self, store: &SessionStore, id: &str) {
        let holders = self.topology.holders(id).unwrap_or_default();
        let members = self.topology.members();
        let others = members.iter().filter(|member| !holders.contains(member));
        for peer in holders.iter().chain(others) {
            if peer == self.node_id() {
                continue;
            }
            let Some((tag, answer)) = self.replicator.fetch(peer, id) else {
                continue;
            };
            match tokio::time::timeout(self.config.sync_timeout, answer).await {
                Ok(Ok(Some(session))) => {
                    store.merge_remote(session);
                    return;
                }
                Ok(_) => {}
                Err(_) => {
                    self.replicator.abandon_fetch(tag);
                    tracing::warn!(peer = %peer, "a peer did not answer a session fetch in time");
                }
            }
        }
    }
}

/// Batches sent on one connection and not acknowledged yet, for the lag histogram.
struct Lag {
    histogram: prometheus::Histogram,
    /// (sequence number of the batch's last change, when it was sent), oldest first.
    pending: Mutex<std::collections::VecDeque<(u64, Instant)>>,
}

/// Unacknowledged batches remembered at most (the oldest are forgotten past it).
const LAG_PENDING_LIMIT: usize = 4096;

impl Lag {
    fn new(histogram: prometheus::Histogram) -> Lag {
        Lag {
            histogram,
            pending: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(u64, Instant)>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A batch ending with change `sequence` went out.
    fn sent(&self, sequence: u64) {
        let mut pending = self.lock();
        if pending.len() == LAG_PENDING_LIMIT {
            pending.pop_front();
        }
        pending.push_back((sequence, Instant::now()));
    }

    /// The peer merged every change up to `sequence`.
    fn acknowledged(&self, sequence: u64) {
        let mut pending = self.lock();
        while pending.front().is_some_and(|(sent, _)| *sent <= sequence) {
            if let Some((_, at)) = pending.pop_front() {
                self.histogram.observe(at.elapsed().as_secs_f64());
            }
        }
    }
}

/// A request's hold on its session's lock (`lock_sessions`); dropping it lets the next in.
pub enum SessionLock {
    /// This node owns the session.
    Local(locks::LocalLock),
    /// Peer `owner` granted request `tag` the lock; given back on drop.
    Remote {
        /// The session's owner.
        owner: String,
        /// The grant's tag.
        tag: u64,
        /// Where the `Unlock` is queued.
        replicator: Arc<Replicator>,
    },
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let SessionLock::Remote {
            owner,
            tag,
            replicator,
        } = self
        {
            replicator.unlock(owner, *tag);
        }
    }
}

/// Digest entries per message (about 50 bytes each).
const DIGEST_CHUNK: usize = 10_000;
/// Ids per `Wanted` frame (about 35 bytes each, well within the frame limit).
const WANTED_CHUNK: usize = 100_000;
/// The longest a peer may take to answer a digest.
const DIGEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A `Wanted` frame: sessions the peer wants after a digest.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wanted {
    ids: Vec<String>,
    /// Whether this is the last `Wanted` frame for the digest.
    done: bool,
}

/// Reads the peer's `Wanted` frames after a digest of `offered` sessions: every id it asked
/// for (no more than were offered).
async fn read_wanted(
    reader: &mut tokio::io::ReadHalf<PeerStream>,
    offered: usize,
) -> std::io::Result<Vec<String>> {
    let mut wanted = Vec::new();
    let deadline = tokio::time::Instant::now() + DIGEST_TIMEOUT;
    loop {
        let frame = tokio::time::timeout_at(deadline, frame::read(reader, FRAME_LIMIT))
            .await
            .map_err(|_| std::io::Error::other("the peer did not answer the digest in time"))??;
        if frame.kind != Kind::Wanted {
            return Err(std::io::Error::other(
                "a peer answered a digest with something else",
            ));
        }
        let part: Wanted = serde_json::from_slice(&frame.payload).map_err(std::io::Error::other)?;
        if wanted.len() + part.ids.len() > offered {
            return Err(std::io::Error::other(
                "a peer wanted more sessions than it was offered",
            ));
        }
        wanted.extend(part.ids);
        if part.done {
            return Ok(wanted);
        }
    }
}

/// The `Wanted` frames answering a peer's `digest`: the sessions `store` lacks or holds
/// otherwise.
fn wanted_frames(store: Option<&SessionStore>, digest: &[(String, u64)]) -> Vec<Vec<u8>> {
    let wanted = store.map(|store| store.wanted(digest)).unwrap_or_default();
    let mut chunks: Vec<&[String]> = wanted.chunks(WANTED_CHUNK).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(index, ids)| {
            let part = Wanted {
                ids: ids.to_vec(),
                done: index == last,
            };
            serde_json::to_vec(&part).unwrap_or_default()
        })
        .collect()
}

/// Where a connection's answers to its peer (acknowledgements, fetched sessions, lock grants,
/// wanted sessions) wait for its writer.
type Answers = tokio::sync::mpsc::Sender<(Kind, Vec<u8>)>;
/// Answers waiting for one connection's writer at most.
const ANSWER_QUEUE: usize = 1024;

/// A `Fetched` frame: the answer to a `Fetch` message.
#[derive(serde::Serialize, serde::Deserialize)]
struct Fetched {
    tag: u64,
    session: Option<Replicated>,
}

/// Reads what the peer sends back on a connection this node dialled: acknowledgements (the
/// highest sequence number it merged), and answers to fetches; until the connection ends or
/// the peer sends something else.
async fn read_answers(
    mut reader: tokio::io::ReadHalf<PeerStream>,
    acked: tokio::sync::watch::Sender<u64>,
    replicator: Arc<Replicator>,
    lag: Arc<Lag>,
) -> std::io::Result<()> {
    loop {
        let frame = frame::read(&mut reader, FRAME_LIMIT).await?;
        if frame.kind == Kind::Fetched {
            let answer: Fetched =
                serde_json::from_slice(&frame.payload).map_err(std::io::Error::other)?;
            replicator.fetched(answer.tag, answer.session);
            continue;
        }
        if frame.kind == Kind::Locked {
            let tag = <[u8; 8]>::try_from(frame.payload.as_slice())
                .map(u64::from_be_bytes)
                .map_err(std::io::Error::other)?;
            replicator.locked(tag);
            continue;
        }
        let sequence = <[u8; 8]>::try_from(frame.payload.as_slice())
            .ok()
            .filter(|_| frame.kind == Kind::Ack)
            .map(u64::from_be_bytes)
            .ok_or_else(|| std::io::Error::other("a peer sent something else than an answer"))?;
        lag.acknowledged(sequence);
        acked.send_if_modified(|highest| {
            let newer = sequence > *highest;
            *highest = (*highest).max(sequence);
            newer
        });
    }
}

/// What the peer connections read from and write into: the session store (proxy mode) and
/// the pools' sticky tables.
#[derive(Clone)]
struct Shared {
    store: Option<Arc<SessionStore>>,
    tables: Arc<dyn StickyTables>,
}

/// A `Sessions` frame: messages, and the sequence number of the last change among them (0 for
/// the digest, which is not acknowledged).
#[derive(serde::Serialize, serde::Deserialize)]
struct Batch {
    sequence: u64,
    messages: Vec<Replicated>,
}

/// Writes `messages` as `Sessions` frames of about `BATCH_BYTES` each; the last carries
/// `sequence`, the earlier ones 0.
async fn send_batches(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    messages: Vec<Replicated>,
    sequence: u64,
    metrics: &ReplicationMetrics,
) -> std::io::Result<()> {
    let mut pending: Vec<Replicated> = Vec::new();
    let mut pending_bytes = 0;
    let count = messages.len();
    for (index, message) in messages.into_iter().enumerate() {
        let size = serde_json::to_vec(&message).map_or(0, |encoded| encoded.len());
        metrics
            .messages
            .with_label_values(&["sent", message.kind()])
            .inc();
        if !pending.is_empty() && pending_bytes + size > BATCH_BYTES {
            let batch = Batch {
                sequence: 0,
                messages: std::mem::take(&mut pending),
            };
            write_batch(stream, &batch, metrics).await?;
            pending_bytes = 0;
        }
        pending.push(message);
        pending_bytes += size;
        if index + 1 == count {
            let batch = Batch {
                sequence,
                messages: std::mem::take(&mut pending),
            };
            write_batch(stream, &batch, metrics).await?;
        }
    }
    Ok(())
}

async fn write_batch(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    batch: &Batch,
    metrics: &ReplicationMetrics,
) -> std::io::Result<()> {
    let encoded = serde_json::to_vec(batch).map_err(std::io::Error::other)?;
    metrics
        .bytes
        .with_label_values(&["sent"])
        .inc_by(encoded.len() as u64 + 5);
    frame::write(stream, Kind::Sessions, &encoded).await
}
