//! Which nodes hold which session. In the `all` topology every node holds every session. In
//! `backup`, each session has an owner and `backups` backups: the live members (this node and
//! the peers it hears) that score highest for the session id under rendezvous hashing. When a
//! member comes or goes, only the sessions whose top scores change move, and every node that
//! sees the same members picks the same holders.

use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

/// The cluster's topology, and this node's current view of its live members.
pub struct Topology {
    node_id: String,
    /// `None`: `all`; `Some(n)`: `backup` with `n` backups per session.
    backups: Option<usize>,
    /// Live members, this node included, sorted.
    members: RwLock<Arc<Vec<String>>>,
}

impl Topology {
    /// The topology of node `node_id`: `backups` is `None` for `all`, the number of backups per
    /// session for `backup`. Alone until peers are heard.
    pub fn new(node_id: &str, backups: Option<usize>) -> Topology {
        Topology {
            node_id: node_id.to_string(),
            backups,
            members: RwLock::new(Arc::new(vec![node_id.to_string()])),
        }
    }

    /// Whether sessions are spread over owners and backups (`backup`) rather than held by all.
    pub fn is_partitioned(&self) -> bool {
        self.backups.is_some()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The live members this node sees now, itself included, sorted.
    pub fn members(&self) -> Arc<Vec<String>> {
        Arc::clone(&self.members.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records that the live peers are `peers`; returns whether the members changed.
    pub fn set_live_peers(&self, peers: impl IntoIterator<Item = String>) -> bool {
        let mut members: Vec<String> = peers.into_iter().collect();
        members.push(self.node_id.clone());
        members.sort();
        members.dedup();
        let mut current = self.members.write().unwrap_or_else(|e| e.into_inner());
        if **current == members {
            return false;
        }
        *current = Arc::new(members);
        true
    }

    /// The nodes that hold session `id` among `members`, owner first; `None` in the `all`
    /// topology, where every member does.
    pub fn holders_among(&self, members: &[String], id: &str) -> Option<Vec<String>> {
        let backups = self.backups?;
        let mut scored: Vec<(u64, &String)> = members
            .iter()
            .map(|member| (score(member, id), member))
            .collect();
        scored.sort_unstable_by(|a, b| b.cmp(a));
        Some(
            scored
                .into_iter()
                .take(1 + backups)
                .map(|(_, member)| member.clone())
                .collect(),
        )
    }

    /// The member that owns session `id` now (in either topology): the one that scores highest
    /// for it. It holds the session's lock (`lock_sessions`).
    pub fn owner(&self, id: &str) -> String {
        let members = self.members();
        members
            .iter()
            .max_by_key(|member| score(member, id))
            .cloned()
            .unwrap_or_else(|| self.node_id.clone())
    }

    /// The nodes that hold session `id` now (see [`Topology::holders_among`]).
    pub fn holders(&self, id: &str) -> Option<Vec<String>> {
        // Checked first: the `all` topology takes no lock on every session change.
        self.backups?;
        self.holders_among(&self.members(), id)
    }

    /// Whether this node is one of session `id`'s holders now.
    pub fn holds(&self, id: &str) -> bool {
        self.holders(id)
            .is_none_or(|holders| holders.contains(&self.node_id))
    }
}

/// Node `member`'s rendezvous score for session `id`: the same on every node and every build
/// (SHA-256, not `std`'s hasher, whose algorithm may change between Rust releases).
fn score(member: &str, id: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(member.as_bytes())
        .chain_update([0])
        .chain_update(id.as_bytes())
        .finalize();
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(node: &str, peers: &[&str]) -> Topology {
        let topology = Topology::new(node, Some(1));
        topology.set_live_peers(peers.iter().map(|p| p.to_string()));
        topology
    }

    #[test]
    fn every_node_seeing_the_same_members_picks_the_same_holders() {
        let a = backup("a", &["b", "c", "d"]);
        let c = backup("c", &["a", "b", "d"]);
        for i in 0..200 {
            let id = format!("session-{i}");
            let holders = a.holders(&id).unwrap();
            assert_eq!(holders.len(), 2);
            assert_eq!(Some(holders), c.holders(&id));
        }
    }

    #[test]
    fn a_member_leaving_moves_only_the_sessions_it_held() {
        let four = backup("a", &["b", "c", "d"]);
        let three = backup("a", &["b", "c"]);
        let mut moved = 0;
        for i in 0..1000 {
            let id = format!("session-{i}");
            let before = four.holders(&id).unwrap();
            let after = three.holders(&id).unwrap();
            if !before.contains(&"d".to_string()) {
                assert_eq!(before, after, "{id} moved though d did not hold it");
            } else {
                moved += 1;
                assert!(after.iter().all(|node| node != "d"));
            }
        }
        // d held about half of the sessions (owner or backup of 2 among 4).
        assert!((350..650).contains(&moved), "{moved} of 1000 moved");
    }

    #[test]
    fn sessions_spread_evenly_and_the_all_topology_has_no_holders() {
        let topology = backup("a", &["b", "c", "d"]);
        let held = (0..4000)
            .filter(|i| topology.holds(&format!("session-{i}")))
            .count();
        assert!((1700..2300).contains(&held), "a holds {held} of 4000");
        assert!(!topology.set_live_peers(["d", "c", "b"].map(String::from)));
        assert_eq!(Topology::new("a", None).holders("x"), None);
        assert!(Topology::new("a", None).holds("x"));
    }
}
