//! Sends this node's session changes to its peers: a `ChangeListener` on the store that turns
//! each local change into a message (`Replicated`) and puts it on the bounded queue of every
//! connected peer that holds the session (all of them in the `all` topology). A queue that
//! overflows marks its peer behind: the connection starts over with a full transfer instead of
//! losing the change silently. Touches are coalesced and sent once a heartbeat.
//!
//! In the `backup` topology this node also has sessions it does not hold: created or fetched
//! here for a request, or re-homed away after a membership change. They are *visitors*,
//! released (removed without ending them) once no request uses them and their holders have
//! acknowledged everything sent to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use super::topology::Topology;
use crate::session::replica::Replicated;
use crate::session::{Change, ChangeListener, Origin, Rejection, SessionStore};

/// Messages waiting for one peer at most; past this the peer is behind and gets a full
/// transfer on a new connection.
const QUEUE_LIMIT: usize = 65_536;

/// One connected peer's queue.
struct PeerQueue {
    number: u64,
    /// The peer's node id.
    node_id: String,
    sender: mpsc::Sender<(u64, Replicated)>,
    behind: Arc<AtomicBool>,
    /// The highest sequence number the peer acknowledged.
    acked: watch::Receiver<u64>,
    /// The sequence number of the last change put on this queue (or covered by the full
    /// state the connection started with).
    last_queued: u64,
}

/// Sessions this node has without holding them (see the module doc).
#[derive(Default)]
struct Visitors {
    /// Requests using each visitor now.
    in_use: HashMap<Arc<str>, usize>,
    /// Visitors to release, with the sequence number their holders must have acknowledged.
    leaving: HashMap<Arc<str>, u64>,
}

/// The replication side of the store: see the module doc.
pub struct Replicator {
    topology: Arc<Topology>,
    queues: Mutex<Vec<PeerQueue>>,
    next_number: AtomicU64,
    /// The sequence number of the last change queued: every change gets the next one.
    sequence: AtomicU64,
    /// Session id → latest use, sent and cleared once a heartbeat.
    touches: Mutex<HashMap<String, u64>>,
    /// Fetches waiting for a peer's answer, by tag.
    fetches: Mutex<HashMap<u64, oneshot::Sender<Option<Replicated>>>>,
    /// Session-lock requests waiting for their grant, by tag.
    lock_waits: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_tag: AtomicU64,
    /// Visitors created here, to be moved into `visitors` (apart, because the store reports
    /// creations while it holds a session lock, and releasing takes that lock under
    /// `visitors`).
    departing: Mutex<Vec<(Arc<str>, u64)>>,
    visitors: Mutex<Visitors>,
}

/// A peer connection's subscription: its queue, whether it fell behind, and its removal when
/// dropped.
pub struct Subscription {
    /// Changes for this peer, in order, with their sequence numbers.
    pub changes: mpsc::Receiver<(u64, Replicated)>,
    /// Set when the queue overflowed, or the peer did not acknowledge in time.
    pub behind: Arc<AtomicBool>,
    /// Where the connection records the peer's acknowledgements.
    pub acked: watch::Sender<u64>,
    /// Every change numbered up to this one is in the store already, so the full state the
    /// connection starts with covers it.
    pub covered: u64,
    number: u64,
    replicator: Arc<Replicator>,
}

/// A request's use of a visitor session: it is not released while this lives.
pub struct Visit {
    id: Arc<str>,
    replicator: Arc<Replicator>,
}

impl Drop for Visit {
    fn drop(&mut self) {
        let sequence = self.replicator.sequence();
        let mut visitors = self.replicator.lock_visitors();
        let users = visitors.in_use.entry(Arc::clone(&self.id)).or_insert(1);
        *users -= 1;
        if *users == 0 {
            visitors.in_use.remove(&self.id);
            visitors.leaving.insert(Arc::clone(&self.id), sequence);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.replicator
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|queue| queue.number != self.number);
    }
}

impl Replicator {
    /// Starts queueing changes for the newly connected peer `node_id`.
    /// Sends to the peers of `topology` the changes of the store this listens to.
    pub fn new(topology: Arc<Topology>) -> Replicator {
        Replicator {
            topology,
            queues: Mutex::default(),
            next_number: AtomicU64::default(),
            sequence: AtomicU64::default(),
            touches: Mutex::default(),
            fetches: Mutex::default(),
            lock_waits: Mutex::default(),
            next_tag: AtomicU64::default(),
            departing: Mutex::default(),
            visitors: Mutex::default(),
        }
    }

    /// Starts queueing changes for the newly connected peer `node_id`.
    pub fn subscribe(self: &Arc<Self>, node_id: &str) -> Subscription {
        let (sender, changes) = mpsc::channel(QUEUE_LIMIT);
        let behind = Arc::new(AtomicBool::new(false));
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        let (acked, acked_receiver) = watch::channel(0);
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let covered = self.sequence();
        queues.push(PeerQueue {
            number,
            node_id: node_id.to_string(),
            sender,
            behind: Arc::clone(&behind),
            acked: acked_receiver,
            last_queued: covered,
        });
        Subscription {
            changes,
            behind,
            acked,
            covered,
            number,
            replicator: Arc::clone(self),
        }
    }

    /// Queues `message` for the peers named in `targets` (every peer with `None`).
    fn send_to(&self, message: Replicated, targets: Option<&[String]>) {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Numbered under the lock, so that every queue holds its changes in number order.
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        for queue in queues.iter_mut() {
            if targets.is_some_and(|targets| !targets.contains(&queue.node_id)) {
                continue;
            }
            queue.last_queued = sequence;
            if queue.sender.try_send((sequence, message.clone())).is_err() {
                queue.behind.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Queues a message about session `id` for the peers that hold it.
    fn send_to_holders(&self, id: &str, message: Replicated) {
        self.send_to(message, self.topology.holders(id).as_deref());
    }

    /// The sequence number of the last change queued.
    pub fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::Relaxed)
    }

    /// Changes waiting to be sent, per connected peer (by node id): how far behind it is.
    pub fn backlog(&self) -> Vec<(String, usize)> {
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|queue| {
                let waiting = queue.sender.max_capacity() - queue.sender.capacity();
                (queue.node_id.clone(), waiting)
            })
            .collect()
    }

    /// Sends a sticky placement recorded on this node (a takeover, a learned id).
    pub fn placement(&self, pool: &str, key: &str, placement: &crate::placement::Placement) {
        let everyone = None;
        self.send_to(
            Replicated::Placement {
                pool: pool.to_string(),
                key: key.to_string(),
                route: placement.route.clone(),
                backend_id: placement.backend_id.clone(),
            },
            everyone,
        );
    }

    /// Sends that a sticky placement of this node is forgotten: a `Placement` with an empty
    /// route, which no backend has (so a peer of an earlier release, which records it, routes
    /// the session as if it had none).
    pub fn placement_forgotten(&self, pool: &str, key: &str) {
        let forgotten = crate::placement::Placement {
            route: String::new(),
            backend_id: String::new(),
        };
        self.placement(pool, key, &forgotten);
    }

    /// Sends the touches gathered since the last call.
    pub fn flush_touches(&self) {
        let touches = std::mem::take(
            &mut *self
                .touches
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for (id, at_ms) in touches {
            let targets = self.topology.holders(&id);
            self.send_to(Replicated::Touch { id, at_ms }, targets.as_deref());
        }
    }

    /// The acknowledgements of the connection to peer `node_id`, if one is open, and its
    /// "behind" flag.
    pub fn acknowledgements(
        &self,
        node_id: &str,
    ) -> Option<(watch::Receiver<u64>, Arc<AtomicBool>)> {
        self.with_queue(node_id, |queue| {
            (queue.acked.clone(), Arc::clone(&queue.behind))
        })
    }

    /// What peer `node_id` must acknowledge for every change numbered up to `sequence` that
    /// was queued for it to be merged: the last change queued for it, if lower. `None` when no
    /// connection to it is open.
    pub fn owed_by(&self, node_id: &str, sequence: u64) -> Option<u64> {
        self.with_queue(node_id, |queue| queue.last_queued.min(sequence))
    }

    /// `read` of the queue of the newest connection to peer `node_id`, if one is open.
    fn with_queue<R>(&self, node_id: &str, read: impl FnOnce(&PeerQueue) -> R) -> Option<R> {
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .rev()
            .find(|queue| queue.node_id == node_id)
            .map(read)
    }

    /// Whether peer `node_id` merged every change numbered up to `sequence` queued for it.
    fn caught_up(&self, node_id: &str, sequence: u64) -> bool {
        let owed = self.owed_by(node_id, sequence);
        owed.zip(self.acknowledgements(node_id))
            .is_some_and(|(owed, (acked, _))| *acked.borrow() >= owed)
    }

    /// Asks peer `node_id` for session `id`: the fetch's tag, and where its answer comes
    /// (through [`Replicator::fetched`]). `None` when no connection to that peer is open.
    pub fn fetch(
        &self,
        node_id: &str,
        id: &str,
    ) -> Option<(u64, oneshot::Receiver<Option<Replicated>>)> {
        self.owed_by(node_id, 0)?;
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.fetches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(tag, answer);
        let message = Replicated::Fetch {
            id: id.to_string(),
            tag,
        };
        self.send_to(message, Some(&[node_id.to_string()]));
        Some((tag, answered))
    }

    /// A peer's answer to fetch `tag`: the session, or `None` if it does not have it.
    pub fn fetched(&self, tag: u64, session: Option<Replicated>) {
        if let Some(waiting) = self.abandon_fetch(tag) {
            let _ = waiting.send(session);
        }
    }

    /// Forgets fetch `tag` (its answer came, or did not come in time).
    pub fn abandon_fetch(&self, tag: u64) -> Option<oneshot::Sender<Option<Replicated>>> {
        self.fetches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&tag)
    }

    /// Asks peer `owner` for session `id`'s lock: the request's tag, where the grant comes
    /// (through [`Replicator::locked`]), and the connection it was asked on. `None` when no
    /// connection to that peer is open.
    pub fn request_lock(&self, owner: &str, id: &str) -> Option<(u64, oneshot::Receiver<()>, u64)> {
        let connection = self.connection(owner)?;
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (grant, granted) = oneshot::channel();
        self.lock_waits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(tag, grant);
        let message = Replicated::Lock {
            id: id.to_string(),
            tag,
        };
        self.send_to(message, Some(&[owner.to_string()]));
        Some((tag, granted, connection))
    }

    /// The number of the newest connection to peer `node_id`, if one is open (a new number:
    /// the connection started over, and what was asked on the old one is lost).
    pub fn connection(&self, node_id: &str) -> Option<u64> {
        self.with_queue(node_id, |queue| queue.number)
    }

    /// A peer granted the session lock of request `tag`.
    pub fn locked(&self, tag: u64) {
        let waiting = self
            .lock_waits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&tag);
        if let Some(waiting) = waiting {
            let _ = waiting.send(());
        }
    }

    /// Gives back to peer `owner` the session lock of request `tag` (granted or still asked
    /// for: a grant that comes later is then given back at once by the owner).
    pub fn unlock(&self, owner: &str, tag: u64) {
        self.lock_waits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&tag);
        self.send_to(Replicated::Unlock { tag }, Some(&[owner.to_string()]));
    }

    fn lock_visitors(&self) -> std::sync::MutexGuard<'_, Visitors> {
        self.visitors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A request is about to use session `id`, which this node does not hold: it stays until
    /// the returned [`Visit`] is dropped (then it leaves once its holders have it).
    pub fn visit(self: &Arc<Self>, id: &str) -> Visit {
        let id: Arc<str> = Arc::from(id);
        let mut visitors = self.lock_visitors();
        *visitors.in_use.entry(Arc::clone(&id)).or_insert(0) += 1;
        visitors.leaving.remove(&id);
        Visit {
            id,
            replicator: Arc::clone(self),
        }
    }

    /// Marks session `id` as leaving this node once its holders acknowledged change `sequence`.
    pub fn depart(&self, id: Arc<str>, sequence: u64) {
        self.departing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((id, sequence));
    }

    /// Removes from `store` the visitors no request uses whose holders acknowledged them;
    /// those this node holds again (membership changed) stay. Returns how many left.
    pub fn release_visitors(&self, store: &SessionStore) -> usize {
        let departing = std::mem::take(
            &mut *self
                .departing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let mut visitors = self.lock_visitors();
        for (id, sequence) in departing {
            if !visitors.in_use.contains_key(&id) {
                let entry = visitors.leaving.entry(id).or_insert(0);
                *entry = (*entry).max(sequence);
            }
        }
        let mut released = 0;
        let leaving: Vec<(Arc<str>, u64)> = visitors
            .leaving
            .iter()
            .map(|(id, sequence)| (Arc::clone(id), *sequence))
            .collect();
        for (id, sequence) in leaving {
            // A visit to an id this node never got (unknown, or not found at the holders)
            // leaves nothing to release: forgotten at once, so forged ids cannot pile up here.
            if !store.contains(&id) {
                visitors.leaving.remove(&id);
                continue;
            }
            match self.topology.holders(&id) {
                Some(holders) if !holders.iter().any(|h| h == self.topology.node_id()) => {
                    if holders
                        .iter()
                        .all(|holder| self.caught_up(holder, sequence))
                    {
                        // Under the visitors lock: no request can start using it meanwhile.
                        store.release(&id);
                        visitors.leaving.remove(&id);
                        released += 1;
                    }
                }
                _ => {
                    visitors.leaving.remove(&id);
                }
            }
        }
        released
    }

    /// After the live members changed from `before` to the current ones: queues each of
    /// `store`'s sessions for its holders that did not hold it before, and marks the sessions
    /// this node no longer holds as leaving once their holders have them.
    pub fn rehome(&self, store: &SessionStore, before: &[String]) {
        if !self.topology.is_partitioned() {
            return;
        }
        let members = self.topology.members();
        let me = self.topology.node_id();
        let mut moved = Vec::new();
        for id in store.ids() {
            let now = self
                .topology
                .holders_among(&members, &id)
                .unwrap_or_default();
            let then = self.topology.holders_among(before, &id).unwrap_or_default();
            let held = now.iter().any(|holder| holder == me);
            let targets: Vec<String> = now
                .into_iter()
                .filter(|holder| holder != me && (!held || !then.contains(holder)))
                .collect();
            if !targets.is_empty() {
                if let Some(message) = store.upsert_message(&id) {
                    self.send_to(message, Some(&targets));
                }
            }
            if !held {
                moved.push(id);
            }
        }
        let sequence = self.sequence();
        for id in moved {
            self.depart(id, sequence);
        }
    }
}

impl ChangeListener for Replicator {
    fn changed(&self, change: &Change<'_>, origin: Origin) {
        if origin == Origin::Remote {
            return;
        }
        let everyone = None;
        match change {
            Change::Created { id, session } => {
                self.send_to_holders(id, Replicated::upsert(id, session, None));
                if !self.topology.holds(id) {
                    self.depart(Arc::from(*id), self.sequence());
                }
            }
            Change::Patched {
                id, patch, session, ..
            } => {
                let keys: Vec<&str> = patch.keys().map(String::as_str).collect();
                self.send_to_holders(id, Replicated::upsert(id, session, Some(&keys)));
            }
            Change::TimeoutsSet { id, session, .. } | Change::Rerouted { id, session, .. } => {
                self.send_to_holders(id, Replicated::upsert(id, session, Some(&[])));
            }
            Change::Renewed { old, new, session } => {
                let ended = Replicated::Ended {
                    id: old.to_string(),
                };
                self.send_to(ended, everyone);
                self.send_to_holders(new, Replicated::upsert(new, session, None));
                if !self.topology.holds(new) {
                    self.depart(Arc::from(*new), self.sequence());
                }
            }
            Change::Ended { id, .. } => {
                self.send_to(Replicated::Ended { id: id.to_string() }, everyone)
            }
            Change::Touched { id, at_ms } => {
                self.touches
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(id.to_string(), *at_ms);
            }
            Change::Released { .. } => {}
        }
    }

    fn rejected(&self, _rejection: &Rejection) {}
}
