//! The peer handshake: each side sends a `Hello` (protocol version, cluster name, node id, a
//! fresh nonce), then a `Proof`: an HMAC-SHA256 under the shared cluster secret over the other
//! side's nonce and its own identity. A peer of another protocol version or cluster, or one
//! that cannot prove it holds the secret, is refused before any other frame is read.

use std::io;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{self, Kind};

/// The peer protocol this tandem speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest `Hello` or `Proof` accepted.
const HANDSHAKE_FRAME_LIMIT: u32 = 1024;
/// Time the other side has to send its `Hello` and `Proof`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Serialize, Deserialize)]
struct Hello {
    protocol: u32,
    cluster: String,
    node_id: String,
    nonce: String,
}

/// Who this node is in a handshake.
pub struct Identity<'a> {
    /// The cluster name.
    pub cluster: &'a str,
    /// This node's id.
    pub node_id: &'a str,
    /// The shared secret.
    pub secret: &'a str,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The connection broke, timed out, or sent something that is not a handshake.
    #[error("handshake failed: {0}")]
    Broken(String),
    /// The other side speaks another protocol version.
    #[error(
        "peer `{node_id}` speaks peer protocol {protocol}; this node speaks {PROTOCOL_VERSION}"
    )]
    Protocol {
        /// Its node id.
        node_id: String,
        /// Its version.
        protocol: u32,
    },
    /// The other side belongs to another cluster.
    #[error("peer `{node_id}` belongs to cluster `{cluster}`, not this one")]
    Cluster {
        /// Its node id.
        node_id: String,
        /// Its cluster name.
        cluster: String,
    },
    /// The other side could not prove it holds the cluster secret.
    #[error("peer claiming to be `{node_id}` failed authentication (wrong cluster secret)")]
    Authentication {
        /// The node id it claimed.
        node_id: String,
    },
    /// This node connected to itself (its own address in the peer list or DNS).
    #[error("connected to itself")]
    Itself,
}

/// Runs the handshake on `stream`; returns the authenticated peer's node id.
pub async fn run(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    me: &Identity<'_>,
) -> Result<String, Refusal> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange(stream, me))
        .await
        .unwrap_or_else(|_| Err(Refusal::Broken("timed out".into())))
}

async fn exchange(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    me: &Identity<'_>,
) -> Result<String, Refusal> {
    let broken = |e: io::Error| Refusal::Broken(e.to_string());
    let nonce: [u8; 32] = rand::random();
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        cluster: me.cluster.to_string(),
        node_id: me.node_id.to_string(),
        nonce: hex(&nonce),
    };
    let encoded = serde_json::to_vec(&hello).expect("a Hello serializes");
    frame::write(stream, Kind::Hello, &encoded)
        .await
        .map_err(broken)?;
    let theirs = frame::read(stream, HANDSHAKE_FRAME_LIMIT)
        .await
        .map_err(broken)?;
    if theirs.kind != Kind::Hello {
        return Err(Refusal::Broken("the first frame is not a Hello".into()));
    }
    let theirs: Hello = serde_json::from_slice(&theirs.payload)
        .map_err(|e| Refusal::Broken(format!("an unreadable Hello: {e}")))?;
    if theirs.protocol != PROTOCOL_VERSION {
        return Err(Refusal::Protocol {
            node_id: printable(&theirs.node_id),
            protocol: theirs.protocol,
        });
    }
    if theirs.cluster != me.cluster {
        return Err(Refusal::Cluster {
            node_id: printable(&theirs.node_id),
            cluster: printable(&theirs.cluster),
        });
    }
    if theirs.node_id == me.node_id {
        return Err(Refusal::Itself);
    }
    let mine = proof(me, &theirs.nonce, me.node_id).finalize().into_bytes();
    frame::write(stream, Kind::Proof, &mine)
        .await
        .map_err(broken)?;
    let their_proof = frame::read(stream, HANDSHAKE_FRAME_LIMIT)
        .await
        .map_err(broken)?;
    // `verify_slice` compares in constant time.
    let verified = their_proof.kind == Kind::Proof
        && proof(me, &hello.nonce, &theirs.node_id)
            .verify_slice(&their_proof.payload)
            .is_ok();
    if !verified {
        return Err(Refusal::Authentication {
            node_id: printable(&theirs.node_id),
        });
    }
    Ok(theirs.node_id)
}

/// The proof a node with id `node_id` gives for `nonce`, not yet finalized.
fn proof(me: &Identity<'_>, nonce: &str, node_id: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(me.secret.as_bytes())
        .expect("HMAC takes keys of any length");
    for part in ["tandem-peer-v1", me.cluster, nonce, node_id] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A peer-supplied name as it may appear in a log line: printable ASCII, 64 characters at most.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        a: Identity<'static>,
        b: Identity<'static>,
    ) -> (Result<String, Refusal>, Result<String, Refusal>) {
        let (mut left, mut right) = tokio::io::duplex(4096);
        tokio::join!(run(&mut left, &a), run(&mut right, &b))
    }

    const SECRET: &str = "a-cluster-secret-of-thirty-two-chars";

    fn node(
        cluster: &'static str,
        node_id: &'static str,
        secret: &'static str,
    ) -> Identity<'static> {
        Identity {
            cluster,
            node_id,
            secret,
        }
    }

    #[tokio::test]
    async fn peers_with_the_secret_learn_each_others_ids() {
        let (a, b) = pair(node("c", "a", SECRET), node("c", "b", SECRET)).await;
        assert_eq!(a.unwrap(), "b");
        assert_eq!(b.unwrap(), "a");
    }

    #[tokio::test]
    async fn a_wrong_secret_or_cluster_is_refused() {
        let other_secret = "another-secret-of-thirty-two-chars!";
        let (a, _) = pair(node("c", "a", SECRET), node("c", "b", other_secret)).await;
        assert!(matches!(a, Err(Refusal::Authentication { .. })), "{a:?}");
        let (a, _) = pair(node("c", "a", SECRET), node("d", "b", SECRET)).await;
        assert!(matches!(a, Err(Refusal::Cluster { .. })), "{a:?}");
        let (a, _) = pair(node("c", "a", SECRET), node("c", "a", SECRET)).await;
        assert!(matches!(a, Err(Refusal::Itself)), "{a:?}");
    }
}
