//! Sends this node's session changes to its peers: a `ChangeListener` on the store that turns
//! each local change into a message (`Replicated`) and puts it on every connected peer's
//! bounded queue. A queue that overflows marks its peer behind: the connection starts over with
//! a full transfer instead of losing the change silently. Touches are coalesced and sent once a
//! second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::session::replica::Replicated;
use crate::session::{Change, ChangeListener, Origin, Rejection};

/// Messages waiting for one peer at most; past this the peer is behind and gets a full
/// transfer on a new connection.
const QUEUE_LIMIT: usize = 65_536;

/// One connected peer's queue.
struct PeerQueue {
    number: u64,
    sender: mpsc::Sender<Replicated>,
    behind: Arc<AtomicBool>,
}

/// The replication side of the store: see the module doc.
#[derive(Default)]
pub struct Replicator {
    queues: Mutex<Vec<PeerQueue>>,
    next_number: AtomicU64,
    /// Session id → latest use, sent and cleared once a second.
    touches: Mutex<HashMap<String, u64>>,
}

/// A peer connection's subscription: its queue, whether it fell behind, and its removal when
/// dropped.
pub struct Subscription {
    /// Changes for this peer, in order.
    pub changes: mpsc::Receiver<Replicated>,
    /// Set when the queue overflowed.
    pub behind: Arc<AtomicBool>,
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
    /// Starts queueing changes for a newly connected peer.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (sender, changes) = mpsc::channel(QUEUE_LIMIT);
        let behind = Arc::new(AtomicBool::new(false));
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(PeerQueue {
                number,
                sender,
                behind: Arc::clone(&behind),
            });
        Subscription {
            changes,
            behind,
            number,
            replicator: Arc::clone(self),
        }
    }

    fn send(&self, message: Replicated) {
        let queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for queue in queues.iter() {
            if queue.sender.try_send(message.clone()).is_err() {
                queue.behind.store(true, Ordering::Relaxed);
            }
        }
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
