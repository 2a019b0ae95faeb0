//! The PROXY protocol (HAProxy's, v1 text and v2 binary): an L4 balancer (AWS NLB, HAProxy in
//! TCP mode) opens each connection with a header naming the client it relays, since tandem
//! would otherwise see every connection come from the balancer.
//!
//! The header is parsed with the `ppp` crate, from a bounded buffer filled from the socket; the
//! bytes read past the header (the start of the HTTP request or TLS handshake) are handed on in
//! a [`Prefixed`] stream, so that hyper and rustls see the connection exactly as the client
//! sent it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ipnet::IpNet;
use ppp::PartialResult;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The v2 header's fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// The most address and TLV bytes a v2 header may announce. The protocol allows 65535; the
/// balancers' TLVs (AWS's VPC endpoint id, HAProxy's unique id, SSL details) fit in far less,
/// and a connection must not make tandem hold 64 KiB before it sent a request.
pub const V2_MAX_PAYLOAD: usize = 4096;
/// The longest v1 header, CRLF included (the protocol's own limit).
pub const V1_MAX: usize = 107;

/// Why a connection's PROXY header was refused; the connection is closed without a response.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The peer is not in `proxy_protocol_from`: anyone could claim any client address.
    #[error("the peer is not in listen.proxy_protocol_from")]
    UntrustedPeer,
    /// The connection opened with something else (plain HTTP, a TLS ClientHello).
    #[error("the connection did not open with a PROXY protocol header")]
    Missing,
    /// A header that breaks the protocol.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    /// A v1 header with no CRLF within 107 bytes, or a v2 header announcing more than
    /// [`V2_MAX_PAYLOAD`] bytes.
    #[error("PROXY protocol header too long: {0}")]
    TooLong(String),
    /// The header was not complete within `header_read_timeout`.
    #[error("no complete PROXY protocol header within the header read timeout")]
    Timeout,
    /// The peer closed, or the socket failed, before the header was complete.
    #[error("the connection ended before its PROXY protocol header did: {0}")]
    Closed(io::Error),
}

impl Rejection {
    /// The `reason` label of `tandem_proxy_protocol_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::UntrustedPeer => "untrusted_peer",
            Rejection::Missing => "missing",
            Rejection::Malformed(_) => "malformed",
            Rejection::TooLong(_) => "too_long",
            Rejection::Timeout => "timeout",
            Rejection::Closed(_) => "closed",
        }
    }
}

/// Reads the PROXY header that opens `stream` from `peer`, a balancer that must be in
/// `trusted`, within `timeout`. Returns the stream, positioned just after the header, and the
/// client: the header's source address, or `peer` itself for a v2 `LOCAL` (the balancer's own
/// health check) or v1 `UNKNOWN` header, or one whose addresses are not IP.
pub async fn accept<S: AsyncRead + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    trusted: &[IpNet],
    timeout: Duration,
) -> Result<(Prefixed<S>, SocketAddr), Rejection> {
    if !trusted.iter().any(|net| net.contains(&peer.ip())) {
        return Err(Rejection::UntrustedPeer);
    }
    let (source, rest) = tokio::time::timeout(timeout, read_header(&mut stream))
        .await
        .map_err(|_| Rejection::Timeout)??;
    Ok((Prefixed::new(rest, stream), source.unwrap_or(peer)))
}

/// Reads from `stream` until a whole header is buffered; returns its source address (if it
/// names one) and the bytes that came after it.
async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Option<SocketAddr>, Vec<u8>), Rejection> {
    let mut buffer = vec![0u8; V2_FIXED + V2_MAX_PAYLOAD];
    let mut filled = 0;
    loop {
        let read = stream
            .read(&mut buffer[filled..])
            .await
            .map_err(Rejection::Closed)?;
        if read == 0 {
            let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "closed by the peer");
            return Err(Rejection::Closed(eof));
        }
        filled += read;
        if let Some(Header { source, length }) = parse(&buffer[..filled])? {
            buffer.truncate(filled);
            buffer.drain(..length);
            return Ok((source, buffer));
        }
        // `parse` refuses any header that could not fit the buffer, so a buffer filled up
        // without a whole header cannot happen; guarded all the same, never to read 0 bytes.
        if filled == buffer.len() {
            return Err(Rejection::TooLong(format!("more than {filled} bytes")));
        }
    }
}

/// A complete header at the start of a buffer.
#[derive(Debug, PartialEq)]
struct Header {
    /// The client the header names; `None` when it names none (v2 `LOCAL`, v1 `UNKNOWN`,
    /// unspecified or Unix addresses).
    source: Option<SocketAddr>,
    /// The header's length in bytes: what follows it is the client's.
    length: usize,
}

/// Parses the header at the start of `bytes`: `Ok(None)` while it is incomplete.
fn parse(bytes: &[u8]) -> Result<Option<Header>, Rejection> {
    let starts_like = |signature: &[u8]| {
        let common = bytes.len().min(signature.len());
        bytes[..common] == signature[..common]
    };
    if starts_like(ppp::v2::PROTOCOL_PREFIX) {
        if bytes.len() >= V2_FIXED {
            let payload = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
            if payload > V2_MAX_PAYLOAD {
                return Err(Rejection::TooLong(format!(
                    "v2 header announces {payload} bytes of addresses and TLVs; at most {V2_MAX_PAYLOAD} are accepted"
                )));
            }
        }
        let header = ppp::v2::Header::try_from(bytes);
        if header.is_incomplete() {
            return Ok(None);
        }
        let header = header.map_err(|error| Rejection::Malformed(format!("v2: {error}")))?;
        let source = match (header.command, header.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (_, ppp::v2::Addresses::IPv4(ip)) => {
                Some(SocketAddr::from((ip.source_address, ip.source_port)))
            }
            (_, ppp::v2::Addresses::IPv6(ip)) => {
                Some(SocketAddr::from((ip.source_address, ip.source_port)))
            }
            (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
        };
        let length = header.header.len();
        return Ok(Some(Header { source, length }));
    }
    if starts_like(b"PROXY ") {
        // Only a whole line goes to the parser, and what it refuses is refused: it takes a line
        // cut after a separator (`... 80 `) for one with an empty field, not for a part.
        let line_end = bytes.iter().position(|&byte| byte == b'\r');
        if line_end.map_or(bytes.len() < V1_MAX, |cr| cr + 1 == bytes.len()) {
            return Ok(None);
        }
        let header = ppp::v1::Header::try_from(bytes).map_err(|error| match error {
            ppp::v1::BinaryParseError::Parse(ppp::v1::ParseError::HeaderTooLong) => {
                Rejection::TooLong(format!("v1 header has no CRLF within {V1_MAX} bytes"))
            }
            error => Rejection::Malformed(format!("v1: {error}")),
        })?;
        let source = match header.addresses {
            ppp::v1::Addresses::Tcp4(ip) => {
                Some(SocketAddr::from((ip.source_address, ip.source_port)))
            }
            ppp::v1::Addresses::Tcp6(ip) => {
                Some(SocketAddr::from((ip.source_address, ip.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        };
        let length = header.header.len();
        return Ok(Some(Header { source, length }));
    }
    Err(Rejection::Missing)
}

/// A stream whose first bytes were already read: it hands `prefix` out first, then reads from
/// `inner`; writes go straight to `inner`. On a listener without the PROXY protocol the prefix
/// is empty.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    /// How much of `prefix` has been handed out.
    taken: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` to be read before it.
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            taken: 0,
            inner,
        }
    }

    /// `inner` as it is.
    pub fn plain(inner: S) -> Prefixed<S> {
        Prefixed::new(Vec::new(), inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let left = &this.prefix[this.taken..];
        if left.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = left.len().min(buf.remaining());
        buf.put_slice(&left[..n]);
        this.taken += n;
        if this.taken == this.prefix.len() {
            this.prefix = Vec::new();
            this.taken = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = ppp::v2::PROTOCOL_PREFIX.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family);
        bytes.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn every_prefix_of_a_header_waits_and_the_whole_one_parses() {
        let v2_ipv4 = v2(1, 0x11, &[10, 1, 2, 3, 127, 0, 0, 1, 0x30, 0x39, 0, 80]);
        let v1 = b"PROXY TCP4 10.1.2.3 127.0.0.1 12345 80\r\n".to_vec();
        for header in [v1, v2_ipv4] {
            for end in 1..header.len() {
                assert!(
                    matches!(parse(&header[..end]), Ok(None)),
                    "{end} bytes of {header:?}"
                );
            }
            let mut with_request = header.clone();
            with_request.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let parsed = parse(&with_request).unwrap().unwrap();
            assert_eq!(parsed.length, header.len());
            assert_eq!(parsed.source, Some("10.1.2.3:12345".parse().unwrap()));
        }
    }

    #[test]
    fn refusals_are_sorted_by_reason() {
        let rows: [(&[u8], &str); 6] = [
            (b"GET / HTTP/1.1\r\n", "missing"),
            (b"PROXY TCP4 10.1.2.999 127.0.0.1 1 80\r\n", "malformed"),
            (b"PROXY TCP5 10.1.2.3 127.0.0.1 1 80\r\n", "malformed"),
            (&[b'x'; 1], "missing"),
            (
                &[
                    0x0d, 0x0a, 0x0d, 0x0a, 0, 0x0d, 0x0a, b'Q', b'U', b'I', b'T', 0x0a, 0x21,
                    0x11, 0xff, 0xff,
                ],
                "too_long",
            ),
            (
                &[
                    0x0d, 0x0a, 0x0d, 0x0a, 0, 0x0d, 0x0a, b'Q', b'U', b'I', b'T', 0x0a, 0x31,
                    0x11, 0, 12,
                ],
                "malformed",
            ),
        ];
        for (bytes, reason) in rows {
            let refused = parse(bytes).expect_err("refused");
            assert_eq!(refused.reason(), reason, "{bytes:?}: {refused}");
        }
        let long = format!("PROXY TCP4 {}", "1".repeat(120));
        assert_eq!(parse(long.as_bytes()).unwrap_err().reason(), "too_long");
    }
}
