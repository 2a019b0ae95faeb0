//! Frames on a peer connection: a 4-byte big-endian length, then that many bytes: a kind byte
//! and the payload. A frame that claims more than the limit closes the connection before
//! anything is allocated for it.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The first frame each side sends: who it is (see `handshake`).
    Hello = 1,
    /// The second: proof that it holds the cluster secret.
    Proof = 2,
    /// "Still here", sent every `heartbeat_interval`.
    Heartbeat = 3,
    /// A batch of session changes (JSON).
    Sessions = 4,
    /// The highest change sequence number merged (u64, big-endian), back to the sender.
    Ack = 5,
    /// The answer to a `Fetch` message (JSON: its tag and the session, if known), back to the
    /// sender.
    Fetched = 6,
    /// The grant of a `Lock` message (its tag, u64 big-endian), back to the sender.
    Locked = 7,
    /// Sessions wanted after a digest (JSON: ids, and whether this is the last such frame),
    /// back to the sender.
    Wanted = 8,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Hello),
            2 => Some(Kind::Proof),
            3 => Some(Kind::Heartbeat),
            4 => Some(Kind::Sessions),
            5 => Some(Kind::Ack),
            6 => Some(Kind::Fetched),
            7 => Some(Kind::Locked),
            8 => Some(Kind::Wanted),
            _ => None,
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Reads one frame of at most `limit` bytes (kind and payload). A longer claim, an unknown
/// kind or an early end is an error; nothing is allocated for a frame over the limit.
pub async fn read(stream: &mut (impl AsyncRead + Unpin), limit: u32) -> io::Result<Frame> {
    let length = stream.read_u32().await?;
    if length == 0 || length > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes (the limit is {limit})"),
        ));
    }
    let kind = stream.read_u8().await?;
    let kind = Kind::from_byte(kind).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of unknown kind {kind}"),
        )
    })?;
    let mut payload = vec![0; length as usize - 1];
    stream.read_exact(&mut payload).await?;
    Ok(Frame { kind, payload })
}

/// Writes one frame.
pub async fn write(
    stream: &mut (impl AsyncWrite + Unpin),
    kind: Kind,
    payload: &[u8],
) -> io::Result<()> {
    let length = u32::try_from(payload.len() + 1)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut bytes = Vec::with_capacity(5 + payload.len());
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.push(kind as u8);
    bytes.extend_from_slice(payload);
    stream.write_all(&bytes).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_lies_are_refused() {
        let mut wire = Vec::new();
        write(&mut wire, Kind::Heartbeat, b"x").await.unwrap();
        let frame = read(&mut wire.as_slice(), 1024).await.unwrap();
        assert_eq!(frame.kind, Kind::Heartbeat);
        assert_eq!(frame.payload, b"x");
        let huge = [0xff, 0xff, 0xff, 0xff, 3];
        assert!(read(&mut huge.as_slice(), 1024).await.is_err());
        let unknown = [0, 0, 0, 1, 99];
        assert!(read(&mut unknown.as_slice(), 1024).await.is_err());
        let truncated = [0, 0, 0, 10, 3, 1];
        assert!(read(&mut truncated.as_slice(), 1024).await.is_err());
    }
}
