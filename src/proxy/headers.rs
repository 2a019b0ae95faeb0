//! Header hygiene between client and backend: hop-by-hop headers (RFC 9110 §7.6.1), the
//! X-Forwarded-* family, and an HTTP/2 client's split Cookie fields.

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::Version;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");
const PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection, never the message: removed in both directions.
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers and those the Connection header names. Returns the Upgrade value
/// when the message asked to switch protocols (`Connection: upgrade` with an `Upgrade` header),
/// so that the caller can put the pair back for a tunnelled upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let mut wants_upgrade = false;
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            wants_upgrade |= name == UPGRADE;
            if name != UPGRADE {
                headers.remove(&name);
            }
        }
    }
    let upgrade = headers.get(UPGRADE).cloned().filter(|_| wants_upgrade);
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    upgrade
}

/// Puts back the headers of a protocol switch that `strip_hop_by_hop` took out.
pub fn restore_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
}

/// Sets X-Forwarded-For/-Proto/-Host for a request from `client`. A `trusted` client (another
/// proxy) has its X-Forwarded-For chain extended and its -Proto/-Host kept; anyone else's are
/// replaced, so that a client cannot forge its address.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<HeaderValue>,
    trusted: bool,
) {
    let client_text = client.to_string();
    let chain = if trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let mut chain = Vec::new();
        for value in headers.get_all(&X_FORWARDED_FOR) {
            chain.extend_from_slice(value.as_bytes());
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(client_text.as_bytes());
        HeaderValue::from_bytes(&chain).ok()
    } else {
        None
    };
    let chain = chain.unwrap_or_else(|| {
        HeaderValue::from_str(&client_text).expect("an IP address is a valid value")
    });
    headers.insert(X_FORWARDED_FOR, chain);
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST, host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
}

/// The id of a request from a client: a `trusted` client's (another proxy's) non-empty
/// X-Request-Id, so that one id follows the request through every proxy; anyone else's is
/// replaced by a fresh one, so that a client cannot pass itself off as another request.
pub fn request_id(headers: &HeaderMap, trusted: bool) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|id| trusted && !id.is_empty())
        .cloned()
        .unwrap_or_else(crate::logging::access::new_request_id)
}

/// Sends `id` to the backend as the request's only X-Request-Id.
pub fn set_request_id(headers: &mut HeaderMap, id: &HeaderValue) {
    headers.insert(X_REQUEST_ID, id.clone());
}

/// Joins the Cookie fields of a request that came over HTTP/2 into one, `; ` between them, as
/// RFC 9113 §8.2.3 requires when forwarding to HTTP/1.1 (an HTTP/2 client may send each cookie
/// in its own field, for HPACK). An HTTP/1.1 client's fields go on as it sent them: it should
/// have sent one (RFC 6265 §5.4), and the backend gets what it would have got directly.
pub fn join_split_cookies(from: Version, headers: &mut HeaderMap) {
    if from != Version::HTTP_2 {
        return;
    }
    let http::header::Entry::Occupied(mut fields) = headers.entry(COOKIE) else {
        return;
    };
    if fields.iter().nth(1).is_none() {
        return;
    }
    let parts: Vec<&[u8]> = fields.iter().map(HeaderValue::as_bytes).collect();
    // Valid values joined by `; ` make a valid value.
    if let Ok(joined) = HeaderValue::from_bytes(&parts.join(&b"; "[..])) {
        fields.insert(joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_go_and_upgrade_is_reported() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONNECTION,
            HeaderValue::from_static("Upgrade, X-Secret, keep-alive"),
        );
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        let upgrade = strip_hop_by_hop(&mut headers);
        assert_eq!(upgrade, Some(HeaderValue::from_static("websocket")));
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn upgrade_without_connection_token_is_not_a_switch() {
        let mut headers = HeaderMap::new();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(strip_hop_by_hop(&mut headers), None);
        assert!(headers.is_empty());
    }

    #[test]
    fn forwarded_for_is_replaced_unless_trusted() {
        let client = IpAddr::from([192, 0, 2, 7]);
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        set_forwarded(&mut headers, client, "http", None, false);
        assert_eq!(headers[X_FORWARDED_FOR], "192.0.2.7");
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.1"));
        set_forwarded(&mut headers, client, "http", None, true);
        assert_eq!(headers[X_FORWARDED_FOR], "203.0.113.1, 192.0.2.7");
    }

    #[test]
    fn only_an_h2_requests_cookie_fields_are_joined() {
        let split = || {
            let mut headers = HeaderMap::new();
            for cookie in ["a=1", "b=2", "c=3"] {
                headers.append(COOKIE, HeaderValue::from_static(cookie));
            }
            headers
        };
        let mut from_h2 = split();
        join_split_cookies(Version::HTTP_2, &mut from_h2);
        let joined: Vec<_> = from_h2.get_all(COOKIE).iter().collect();
        assert_eq!(joined, ["a=1; b=2; c=3"]);
        let mut from_h1 = split();
        join_split_cookies(Version::HTTP_11, &mut from_h1);
        assert_eq!(from_h1, split());
    }
}
