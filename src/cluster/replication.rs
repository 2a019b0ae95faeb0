//! Sends this node's session changes to its peers: a `ChangeListener` on the store that turns
//! each local change into a message (`Replicated`) and puts it on every connected peer's
//! bounded queue. A queue that overflows marks its peer behind: the connection starts over with
//! a full transfer instead of losing the change silently. Touches are coalesced and sent once a
//! second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::session::replica::Replicated;
use crate::session::{Change, ChangeListener, Origin, Rejection};

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
}

/// The replication side of the store: see the module doc.
#[derive(Default)]
pub struct Replicator {
    queues: Mutex<Vec<PeerQueue>>,
    next_number: AtomicU64,
    /// The sequence number of the last change queued: every change gets the next one.
    sequence: AtomicU64,
    /// Session id → latest use, sent and cleared once a second.
    touches: Mutex<HashMap<String, u64>>,
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
    number: u64,
    replicator: Arc<Replicator>,
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
    pub fn subscribe(self: &Arc<Self>, node_id: &str) -> Subscription {
        let (sender, changes) = mpsc::channel(QUEUE_LIMIT);
        let behind = Arc::new(AtomicBool::new(false));
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        let (acked, acked_receiver) = watch::channel(0);
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(PeerQueue {
                number,
                node_id: node_id.to_string(),
                sender,
                behind: Arc::clone(&behind),
                acked: acked_receiver,
            });
        Subscription {
            changes,
            behind,
            acked,
            number,
            replicator: Arc::clone(self),
        }
    }

    fn send(&self, message: Replicated) {
        let queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Numbered under the lock, so that every queue holds its changes in number order.
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        for queue in queues.iter() {
            if queue.sender.try_send((sequence, message.clone())).is_err() {
                queue.behind.store(true, Ordering::Relaxed);
            }
        }
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
        self.send(Replicated::Placement {
            pool: pool.to_string(),
            key: key.to_string(),
            route: placement.route.clone(),
            backend_id: placement.backend_id.clone(),
        });
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
            self.send(Replicated::Touch { id, at_ms });
        }
    }

    /// The acknowledgements of the connection to peer `node_id`, if one is open, and its
    /// "behind" flag.
    pub fn acknowledgements(
        &self,
        node_id: &str,
    ) -> Option<(watch::Receiver<u64>, Arc<AtomicBool>)> {
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .rev()
            .find(|queue| queue.node_id == node_id)
            .map(|queue| (queue.acked.clone(), Arc::clone(&queue.behind)))
    }
}

impl ChangeListener for Replicator {
    fn changed(&self, change: &Change<'_>, origin: Origin) {
        if origin == Origin::Remote {
            return;
        }
        match change {
            Change::Created { id, session } => self.send(Replicated::upsert(id, session, None)),
            Change::Patched {
                id, patch, session, ..
            } => {
                let keys: Vec<&str> = patch.keys().map(String::as_str).collect();
                self.send(Replicated::upsert(id, session, Some(&keys)));
            }
            Change::TimeoutsSet { id, session, .. } | Change::Rerouted { id, session, .. } => {
                self.send(Replicated::upsert(id, session, Some(&[])));
            }
            Change::Renewed { old, new, session } => {
                self.send(Replicated::Ended {
                    id: old.to_string(),
                });
                self.send(Replicated::upsert(new, session, None));
            }
            Change::Ended { id, .. } => self.send(Replicated::Ended { id: id.to_string() }),
            Change::Touched { id, at_ms } => {
                self.touches
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(id.to_string(), *at_ms);
            }
        }
    }

    fn rejected(&self, _rejection: &Rejection) {}
}
