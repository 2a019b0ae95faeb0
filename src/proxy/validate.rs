//! The one validation step every request passes before routing, whatever its protocol: the
//! parsed request (method, target, authority, header fields) against the limits and grammars
//! tandem promises. HTTP/1.1 and HTTP/2 reach the same checks here, so that a rule written once
//! holds for every way a field can arrive (a Host header, an absolute-form target, h2's
//! `:authority` or its `host` field).
//!
//! What hyper and h2 refuse themselves comes first (bad framing, malformed fields, a head over
//! [`head_buffer`] or a header list over [`header_list_size`]); those two are set from the same
//! limits with room to spare, so that a request within them is judged here and gets the same
//! answer over both protocols.

use std::net::Ipv6Addr;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Version};

use crate::config::ListenConfig;

/// What a request is held to: `[listen] max_headers`, `max_header_size` and `max_uri_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most header fields (431 above).
    pub max_fields: usize,
    /// Most bytes of header fields, each counted as its HTTP/1.1 line `name: value\r\n`
    /// (431 above).
    pub max_field_bytes: usize,
    /// Longest request target, path and query (414 above).
    pub max_uri_length: usize,
}

impl Limits {
    /// The limits `listen` configures.
    pub fn of(listen: &ListenConfig) -> Limits {
        Limits {
            max_fields: listen.max_headers,
            max_field_bytes: listen.max_header_size,
            max_uri_length: listen.max_uri_length,
        }
    }
}

/// Room in an HTTP/1.1 head beyond its fields and target: method, version and line ends.
const REQUEST_LINE_ROOM: usize = 1024;

/// HTTP/2's accounting overhead per field in a header list (RFC 9113 §6.5.2).
const H2_FIELD_OVERHEAD: usize = 32;

/// The largest HTTP/1.1 head hyper reads (its `max_buf_size`): the fields and the target at
/// their limits and a request line's room. A head within it is parsed and judged by [`check`],
/// so that a long target gets 414 rather than the 431 of a buffer overrun; beyond it hyper
/// answers 431 (or 414 past its own 64 KiB target cap) and closes.
pub fn head_buffer(limits: &Limits) -> usize {
    limits.max_field_bytes + limits.max_uri_length + REQUEST_LINE_ROOM
}

/// The largest HTTP/2 header list h2 accepts (SETTINGS_MAX_HEADER_LIST_SIZE), for the same
/// reason as [`head_buffer`]: [`head_buffer`] plus h2's 32 bytes per field, the pseudo-headers
/// included. Beyond it h2 answers 431 itself.
pub fn header_list_size(limits: &Limits) -> u32 {
    let fields = limits.max_fields.saturating_add(5);
    let size = head_buffer(limits).saturating_add(fields.saturating_mul(H2_FIELD_OVERHEAD));
    u32::try_from(size).unwrap_or(u32::MAX)
}

/// Why a request was refused before routing. `error.rs` maps each to its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// More header fields than `max_headers` (431).
    #[error("{count} header fields, over the limit of {limit}")]
    TooManyFields {
        /// Fields in the request.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// More bytes of header fields than `max_header_size` (431).
    #[error("{bytes} bytes of header fields, over the limit of {limit}")]
    FieldsTooLarge {
        /// The fields' size as HTTP/1.1 lines.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The request target is longer than `max_uri_length` (414).
    #[error("request target of {length} bytes is over the {limit} byte limit")]
    UriTooLong {
        /// Length of the path and query in bytes.
        length: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Host or the request's authority is missing, repeated or not a `host[:port]` (400).
    #[error("{0}")]
    BadHost(&'static str),
    /// The target's form is not allowed for the method (400).
    #[error("{0}")]
    BadTarget(&'static str),
}

/// Checks `request` before anything else reads it. On success, the authority it is for (the
/// target's, which HTTP/2's `:authority` is, else the Host header), which routing uses and
/// which the backend gets as Host; `None` for a request without one (HTTP/1.0, or HTTP/2
/// without `:authority` and `host`).
pub fn check<B>(request: &Request<B>, limits: &Limits) -> Result<Option<HeaderValue>, Rejection> {
    let headers = request.headers();
    if headers.len() > limits.max_fields {
        return Err(Rejection::TooManyFields {
            count: headers.len(),
            limit: limits.max_fields,
        });
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > limits.max_field_bytes {
        return Err(Rejection::FieldsTooLarge {
            bytes,
            limit: limits.max_field_bytes,
        });
    }
    check_target(request, limits)?;
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::BadHost("more than one Host field"));
    }
    if let Some(host) = host {
        if !host.to_str().is_ok_and(is_host_and_port) {
            return Err(Rejection::BadHost("Host is not a host[:port]"));
        }
    }
    // The authority of an absolute-form target, and HTTP/2's `:authority`, overrides Host
    // (RFC 9112 §3.2.2, RFC 9113 §8.3.1).
    match request.uri().authority() {
        Some(authority) if !is_host_and_port(authority.as_str()) => Err(Rejection::BadHost(
            "the request's authority (:authority or an absolute-form target) is not a host[:port]",
        )),
        Some(authority) => Ok(Some(HeaderValue::from_str(authority.as_str()).map_err(
            |_| Rejection::BadHost("the request's authority is not a valid Host"),
        )?)),
        None if host.is_none() && request.version() == Version::HTTP_11 => {
            Err(Rejection::BadHost("an HTTP/1.1 request without Host"))
        }
        None => Ok(host.cloned()),
    }
}

/// The target's length and form (RFC 9112 §3.2): origin form (`/path?query`) for every method
/// but CONNECT, absolute form (`http://host/path`, as HTTP/2 requests are too) likewise, the
/// asterisk form for OPTIONS only, and no authority form: it is CONNECT's, and tandem opens no
/// tunnels.
fn check_target<B>(request: &Request<B>, limits: &Limits) -> Result<(), Rejection> {
    let uri = request.uri();
    let length = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if length > limits.max_uri_length {
        return Err(Rejection::UriTooLong {
            length,
            limit: limits.max_uri_length,
        });
    }
    if request.method() == Method::CONNECT || (uri.scheme().is_none() && uri.authority().is_some())
    {
        return Err(Rejection::BadTarget(
            "a CONNECT or authority-form request (tandem opens no tunnels)",
        ));
    }
    if let Some(scheme) = uri.scheme_str() {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(Rejection::BadTarget(
                "a target whose scheme is not http or https",
            ));
        }
    }
    // `http://host` without a path: the path is `/`.
    let Some(path_and_query) = uri.path_and_query() else {
        return Ok(());
    };
    match path_and_query.as_str() {
        "*" if request.method() == Method::OPTIONS => Ok(()),
        "*" => Err(Rejection::BadTarget(
            "the asterisk form on a method but OPTIONS",
        )),
        // The HTTP library takes a `#fragment` off the target; one that was nothing else
        // leaves an empty target, which reads as `/` but does not compare equal to it.
        "/" if *path_and_query != PathAndQuery::from_static("/") => Err(Rejection::BadTarget(
            "an empty request target (a fragment alone)",
        )),
        target if target.starts_with('/') => Ok(()),
        _ => Err(Rejection::BadTarget("a request target that is not a path")),
    }
}

/// Whether `text` is a `host[:port]` as RFC 9110 §7.2 and RFC 3986 §3.2 define it: a
/// registered name (unreserved, percent-encoded and sub-delims characters), an IPv4 address, or
/// an IPv6 address in brackets; no userinfo; a port of 1 to 65535 in at most five digits, no
/// sign.
pub fn is_host_and_port(text: &str) -> bool {
    let (host_is_valid, port) = match text.strip_prefix('[') {
        Some(bracketed) => {
            let Some((literal, after)) = bracketed.split_once(']') else {
                return false;
            };
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return false,
                },
            };
            (literal.parse::<Ipv6Addr>().is_ok(), port)
        }
        None => {
            let (host, port) = match text.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            };
            (is_reg_name(host), port)
        }
    };
    host_is_valid && port.is_none_or(is_port)
}

/// RFC 3986's reg-name, not empty (an IPv4 address is one too).
fn is_reg_name(host: &str) -> bool {
    let bytes = host.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'%' => {
                let hex = bytes.get(at + 1..at + 3);
                if !hex.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                at += 3;
            }
            byte if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&byte) => {
                at += 1;
            }
            _ => return false,
        }
    }
    !bytes.is_empty()
}

/// A TCP port: 1 to 65535, one to five ASCII digits.
fn is_port(port: &str) -> bool {
    (1..=5).contains(&port.len())
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|port| port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_that_was_only_a_fragment_is_told_from_a_slash() {
        let limits = Limits {
            max_fields: 100,
            max_field_bytes: 1 << 16,
            max_uri_length: 8192,
        };
        let request = |target: &str| {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = Some("a.test".parse().unwrap());
            parts.path_and_query = Some(target.parse::<PathAndQuery>().unwrap());
            Request::get(http::Uri::from_parts(parts).unwrap())
                .body(())
                .unwrap()
        };
        assert!(check(&request("/"), &limits).is_ok());
        assert!(
            check(&request("/a#frag"), &limits).is_ok(),
            "the library keeps /a"
        );
        assert_eq!(
            check(&request("#frag"), &limits),
            Err(Rejection::BadTarget(
                "an empty request target (a fragment alone)"
            ))
        );
    }

    #[test]
    fn hosts_and_ports() {
        for valid in [
            "a",
            "shop.test",
            "shop.test:8080",
            "shop.test:65535",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "a%41.test",
            "a-b_c~d.test",
        ] {
            assert!(is_host_and_port(valid), "{valid}");
        }
        for invalid in [
            "",
            ":80",
            "u@a",
            "a b",
            "a/b",
            "a.test:80x",
            "a.test:99999",
            "a.test:65536",
            "a.test:+80",
            "a.test:-1",
            "a.test:0",
            "a.test:",
            "a.test:000080",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[shop.test]",
            "[fe80::1%25eth0]",
            "a%4",
            "a%zz",
            "a:1:2",
        ] {
            assert!(!is_host_and_port(invalid), "{invalid}");
        }
    }
}
