//! Sticky routing in `route` mode: a session id ends in the route of the backend that owns the
//! session (Tomcat's `<id>.<jvmRoute>`, such as `8F3A41C1.tc1`), carried in a cookie or in the
//! `;jsessionid=` path parameter. This module only reads ids and cuts routes; which backend a
//! route names is the pool's business. It also holds tandem's one reading of the Cookie header,
//! on its bytes, which every mode's cookie reading, removal and rewrite goes through.

use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderValue, COOKIE};
use sha2::Sha256;

use crate::config::{StickyConfig, StickyMode};

/// Most session ids looked at per request: a request carrying thousands of session cookies
/// (a flood, or a confused client) costs no more than one carrying a few.
const MAX_SESSION_IDS: usize = 8;

/// A session id found in a request, and where: the cookie it came in, or the URL (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId<'r> {
    /// The id as sent.
    pub value: &'r str,
    /// The cookie name it was sent in; `None` for the URL path parameter.
    pub cookie: Option<&'r str>,
}

/// The session ids a request carries, most trusted first: each configured cookie name in order
/// (every occurrence, in the order sent), then the URL path parameter. Cookies are read on the
/// header's bytes, so a byte outside visible ASCII in another cookie loses no session.
pub fn session_ids<'r>(
    headers: &'r HeaderMap,
    path: &'r str,
    sticky: &'r StickyConfig,
) -> Vec<SessionId<'r>> {
    let mut ids = Vec::new();
    for name in &sticky.cookies {
        let room = MAX_SESSION_IDS.saturating_sub(ids.len());
        ids.extend(
            cookie_values(headers, name)
                .take(room)
                .map(|value| SessionId {
                    value,
                    cookie: Some(name.as_str()),
                }),
        );
    }
    if let Some(parameter) = &sticky.url_parameter {
        ids.extend(path_parameter(path, parameter).map(|value| SessionId {
            value,
            cookie: None,
        }));
    }
    ids
}

/// The values of cookie `name` in every Cookie field of `headers`, in the order sent; a value
/// that is empty or not all visible ASCII names no session and is skipped. Both the sticky
/// ids and proxy mode's session cookie are read with it.
pub fn cookie_values<'h, 'n>(
    headers: &'h HeaderMap,
    name: &'n str,
) -> impl Iterator<Item = &'h str> + use<'h, 'n> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(cookie_pieces)
        .map(cookie_name_and_value)
        .filter(move |(found, _)| *found == name.as_bytes())
        .filter(|(_, value)| !value.is_empty() && value.iter().all(u8::is_ascii_graphic))
        // Visible ASCII is UTF-8.
        .filter_map(|(_, value)| std::str::from_utf8(value).ok())
}

/// The `;`-separated pieces of one Cookie field, on its bytes: the one reading of the Cookie
/// grammar in tandem. A byte outside visible ASCII (0xFF from a careless script, in any
/// cookie) neither hides a cookie from tandem nor lets tandem's own through to a backend.
pub fn cookie_pieces(field: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    field.as_bytes().split(|&byte| byte == b';')
}

/// A piece's name and value as cookie parsers read them: around its first `=`, spaces and
/// tabs trimmed (a piece without `=` is all name).
pub fn cookie_name_and_value(piece: &[u8]) -> (&[u8], &[u8]) {
    match piece.iter().position(|&byte| byte == b'=') {
        Some(at) => (piece[..at].trim_ascii(), piece[at + 1..].trim_ascii()),
        None => (piece.trim_ascii(), b""),
    }
}

/// Replaces the value `from` of cookie `name` with `to` in every Cookie header, on the
/// header's bytes: every other byte, in that cookie and the others, goes on as it was sent.
pub fn rewrite_cookie(headers: &mut HeaderMap, name: &str, from: &str, to: &str) {
    let http::header::Entry::Occupied(mut fields) = headers.entry(COOKIE) else {
        return;
    };
    for field in fields.iter_mut() {
        let mut rewritten = Vec::with_capacity(field.len() + to.len());
        let mut changed = false;
        for (index, piece) in cookie_pieces(field).enumerate() {
            if index > 0 {
                rewritten.push(b';');
            }
            match cookie_name_and_value(piece) {
                (found, value) if found == name.as_bytes() && value == from.as_bytes() => {
                    // `value` lies inside `piece`: keep the bytes around it.
                    let start = value.as_ptr() as usize - piece.as_ptr() as usize;
                    rewritten.extend_from_slice(&piece[..start]);
                    rewritten.extend_from_slice(to.as_bytes());
                    rewritten.extend_from_slice(&piece[start + value.len()..]);
                    changed = true;
                }
                _ => rewritten.extend_from_slice(piece),
            }
        }
        // `to` is an id the backends set in a cookie, so the result is a valid value.
        if let Some(value) = changed
            .then(|| HeaderValue::from_bytes(&rewritten).ok())
            .flatten()
        {
            *field = value;
        }
    }
}

/// The value of `;name=value` in a path; it ends at the next `;`, `/` or the end of the path.
pub fn path_parameter<'p>(path: &'p str, name: &str) -> Option<&'p str> {
    let mut rest = path;
    while let Some(at) = rest.find(';') {
        rest = &rest[at + 1..];
        if let Some(value) = rest.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            let end = value.find([';', '/']).unwrap_or(value.len());
            return Some(&value[..end]).filter(|v| !v.is_empty());
        }
    }
    None
}

/// What identifies a session whichever backend it moves to: in `route` mode the id without its
/// route, in the other modes the whole id.
pub fn session_key<'a>(id: &'a str, sticky: &StickyConfig) -> &'a str {
    match sticky.mode {
        StickyMode::Route => base_of(id, sticky.separator),
        StickyMode::Learn | StickyMode::Insert => id,
    }
}

/// The affinity cookie value of `insert` mode for `route` in `pool`: `<route>.<tag>`, the tag
/// being the first 16 bytes of HMAC-SHA256(secret, pool NUL route), in hex.
pub fn signed_route(secret: &str, pool: &str, route: &str) -> String {
    let tag = route_mac(secret, pool, route).finalize().into_bytes();
    let hex: String = tag[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{route}.{hex}")
}

/// The route an `insert` mode cookie value names, if its tag is right for `pool` (compared in
/// constant time); `None` for anything forged, tampered with, or malformed.
pub fn verified_route<'v>(secret: &str, pool: &str, value: &'v str) -> Option<&'v str> {
    let (route, hex) = value.rsplit_once('.')?;
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let tag: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect::<Option<_>>()?;
    route_mac(secret, pool, route)
        .verify_truncated_left(&tag)
        .ok()
        .map(|()| route)
}

fn route_mac(secret: &str, pool: &str, route: &str) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(pool.as_bytes());
    mac.update(&[0]);
    mac.update(route.as_bytes());
    mac
}

/// Removes cookie `name` from every Cookie header (tandem's own affinity or session cookie is
/// not the backend's business), however the header's other bytes look and with the name read
/// as cookie parsers read it; a header left empty is removed.
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let named = |piece: &&[u8]| cookie_name_and_value(piece).0 == name.as_bytes();
    let fields = headers.get_all(COOKIE);
    if !fields
        .iter()
        .any(|field| cookie_pieces(field).any(|piece| named(&piece)))
    {
        return;
    }
    // On bytes: the other cookies go on as they came, whatever bytes they hold.
    let kept: Vec<HeaderValue> = fields
        .iter()
        .filter_map(|field| {
            let others: Vec<&[u8]> = cookie_pieces(field).filter(|piece| !named(piece)).collect();
            // What remains of a valid value is valid.
            HeaderValue::from_bytes(others.join(&b';').trim_ascii())
                .ok()
                .filter(|value| !value.is_empty())
        })
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        headers.append(COOKIE, value);
    }
}

/// The id without its route (the whole id when it has none).
pub fn base_of(id: &str, separator: char) -> &str {
    id.rsplit_once(separator).map_or(id, |(base, _)| base)
}

/// The route of a session id: the text after the last separator, if there is any.
pub fn route_of(id: &str, separator: char) -> Option<&str> {
    id.rsplit_once(separator)
        .map(|(_, route)| route)
        .filter(|route| !route.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use HeaderValue;

    fn tomcat() -> StickyConfig {
        StickyConfig {
            mode: StickyMode::Route,
            cookies: vec!["JSESSIONID".into()],
            url_parameter: Some("jsessionid".into()),
            separator: '.',
            table_ttl: std::time::Duration::from_secs(60),
            table_max: 10,
            force: false,
            secret: String::new(),
        }
    }

    #[test]
    fn insert_cookies_verify_only_for_their_route_and_pool() {
        let secret = "0123456789abcdef";
        let value = signed_route(secret, "web", "b1");
        assert_eq!(verified_route(secret, "web", &value), Some("b1"));
        assert_eq!(verified_route(secret, "api", &value), None, "another pool");
        assert_eq!(verified_route("another secret!!", "web", &value), None);
        let tag = value.rsplit_once('.').unwrap().1;
        assert_eq!(
            verified_route(secret, "web", &format!("b2.{tag}")),
            None,
            "route swapped"
        );
        for junk in [
            "",
            "b1",
            "b1.",
            "b1.zz",
            "b1.ééééééééééééééé",
            &format!("{value}0"),
        ] {
            assert_eq!(verified_route(secret, "web", junk), None, "{junk}");
        }
    }

    #[test]
    fn pieces_are_named_on_bytes_as_cookie_parsers_name_them() {
        let field = HeaderValue::from_bytes(b"a=\xff1;  S = v.r ;bare; b=x=y").unwrap();
        let named: Vec<(&[u8], &[u8])> = cookie_pieces(&field).map(cookie_name_and_value).collect();
        let expected: [(&[u8], &[u8]); 4] = [
            (b"a", b"\xff1"),
            (b"S", b"v.r"),
            (b"bare", b""),
            (b"b", b"x=y"),
        ];
        assert_eq!(named, expected);
    }

    #[test]
    fn removing_a_cookie_keeps_the_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("a=1; TANDEMROUTE=x.y; b=2"),
        );
        headers.append(COOKIE, HeaderValue::from_static("TANDEMROUTE=z"));
        remove_cookie(&mut headers, "TANDEMROUTE");
        let values: Vec<&str> = headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(values, vec!["a=1; b=2"]);
    }

    #[test]
    fn ids_come_from_cookies_in_order_then_the_url() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("theme=dark; JSESSIONID=A1.tc1"),
        );
        headers.append(COOKIE, HeaderValue::from_static("JSESSIONID=B2.tc2"));
        let sticky = tomcat();
        let ids = session_ids(&headers, "/app/cart;jsessionid=C3.tc3", &sticky);
        let values: Vec<&str> = ids.iter().map(|id| id.value).collect();
        assert_eq!(values, vec!["A1.tc1", "B2.tc2", "C3.tc3"]);
        assert_eq!(ids[0].cookie, Some("JSESSIONID"));
        assert_eq!(ids[2].cookie, None);
    }

    #[test]
    fn malformed_cookie_headers_yield_what_can_be_read() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static(";JSESSIONID=a.n1; =x; JSESSIONID=; junk"),
        );
        let sticky = tomcat();
        let ids = session_ids(&headers, "/", &sticky);
        assert_eq!(
            ids.iter().map(|id| id.value).collect::<Vec<_>>(),
            vec!["a.n1"]
        );
    }

    #[test]
    fn a_flood_of_session_cookies_is_cut_to_a_few() {
        let flood: String = (0..2000).map(|i| format!("JSESSIONID=S{i}.x; ")).collect();
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_str(&flood).unwrap());
        headers.append(COOKIE, HeaderValue::from_static("JSESSIONID=late.tc1"));
        let sticky = tomcat();
        let ids = session_ids(&headers, "/", &sticky);
        assert_eq!(ids.len(), MAX_SESSION_IDS);
        assert_eq!(ids[0].value, "S0.x");
    }

    #[test]
    fn url_parameter_ends_at_the_next_segment_or_parameter() {
        assert_eq!(
            path_parameter("/a;jsessionid=X.tc1/b", "jsessionid"),
            Some("X.tc1")
        );
        assert_eq!(
            path_parameter("/a;v=1;jsessionid=X.tc1;w=2", "jsessionid"),
            Some("X.tc1")
        );
        assert_eq!(path_parameter("/a;JSESSIONID=X.tc1", "jsessionid"), None);
        assert_eq!(path_parameter("/a;jsessionid=", "jsessionid"), None);
        assert_eq!(path_parameter("/jsessionid=X.tc1", "jsessionid"), None);
    }

    #[test]
    fn rewriting_touches_only_the_named_cookie_with_that_value() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("theme=X.tc2; JSESSIONID=X.tc2;lang=en"),
        );
        rewrite_cookie(&mut headers, "JSESSIONID", "X.tc2", "X.tc1");
        assert_eq!(headers[COOKIE], "theme=X.tc2; JSESSIONID=X.tc1;lang=en");
    }

    #[test]
    fn ids_and_rewrites_go_by_bytes_beside_non_ascii_cookies() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_bytes(b"a=\xff; JSESSIONID = X.tc2 ;b=\xfe2").unwrap(),
        );
        headers.append(
            COOKIE,
            HeaderValue::from_bytes(b"JSESSIONID=\xffY.tc1; JSESSIONID=Z.tc3").unwrap(),
        );
        let sticky = tomcat();
        let ids = session_ids(&headers, "/", &sticky);
        assert_eq!(
            ids.iter().map(|id| id.value).collect::<Vec<_>>(),
            vec!["X.tc2", "Z.tc3"],
            "a non-ASCII value names no session; the others are read"
        );
        rewrite_cookie(&mut headers, "JSESSIONID", "X.tc2", "X.tc1");
        let fields: Vec<&[u8]> = headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(
            fields,
            [
                &b"a=\xff; JSESSIONID = X.tc1 ;b=\xfe2"[..],
                &b"JSESSIONID=\xffY.tc1; JSESSIONID=Z.tc3"[..],
            ]
        );
    }

    #[test]
    fn route_is_after_the_last_separator() {
        assert_eq!(route_of("8F3A.C1.tc1", '.'), Some("tc1"));
        assert_eq!(route_of("8F3A", '.'), None);
        assert_eq!(route_of("8F3A.", '.'), None);
        assert_eq!(route_of("8F3A:b-2", ':'), Some("b-2"));
        assert_eq!(base_of("8F3A.C1.tc1", '.'), "8F3A.C1");
        assert_eq!(base_of("8F3A", '.'), "8F3A");
    }
}
