//! The session cookie a client holds in `proxy` mode: `<id><separator><route>`, issued with the
//! configured attributes, read back from the Cookie header.

use cookie::Cookie;
use http::header::{HeaderMap, HeaderValue};

use super::id;
use crate::config::SessionConfig;

/// Most session cookies looked at per request: a request carrying thousands of them costs no
/// more than one carrying a few.
const MAX_CANDIDATES: usize = 4;

/// The well-formed `(id, route)` pairs naming the request's session, at most a few: the one in
/// `path`'s `url_parameter`, if configured, then the session cookies in `headers` in the order
/// sent (a client may hold several, from several paths).
pub fn candidates<'h>(
    headers: &'h HeaderMap,
    path: &'h str,
    config: &SessionConfig,
) -> Vec<(&'h str, &'h str)> {
    let mut found = Vec::new();
    // The URL form first: a client that sends it has no cookie, or means this session.
    let in_url = config
        .url_parameter
        .as_deref()
        .and_then(|name| crate::sticky::path_parameter(path, name))
        .and_then(|value| id::parse(value, config.separator));
    found.extend(in_url);
    let in_cookies = crate::sticky::cookie_values(headers, &config.cookie.name)
        .filter_map(|value| id::parse(value, config.separator));
    found.extend(in_cookies.take(MAX_CANDIDATES - found.len()));
    found
}

/// `path` without its `;name=value` parameters named `name` (what the backend gets when the
/// session travels in headers instead).
pub fn without_path_parameter(path: &str, name: &str) -> String {
    let mut kept = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find(';') {
        kept.push_str(&rest[..at]);
        let parameter = &rest[at + 1..];
        let end = parameter.find([';', '/']).unwrap_or(parameter.len());
        let named = parameter[..end]
            .strip_prefix(name)
            .is_some_and(|value| value.starts_with('='));
        if !named {
            kept.push(';');
            kept.push_str(&parameter[..end]);
        }
        rest = &parameter[end..];
    }
    kept.push_str(rest);
    kept
}

/// `Set-Cookie` for session `id` on `route`; `tls` says whether the request came over TLS (for
/// `secure = "auto"`).
pub fn set(config: &SessionConfig, id: &str, route: &str, tls: bool) -> HeaderValue {
    let value = if route.is_empty() {
        id.to_string()
    } else {
        format!("{id}{}{route}", config.separator)
    };
    header(shaped(config, value, tls))
}

/// `Set-Cookie` that makes the client forget its session cookie.
pub fn clear(config: &SessionConfig, tls: bool) -> HeaderValue {
    let mut cookie = shaped(config, String::new(), tls);
    cookie.make_removal();
    header(cookie)
}

fn shaped(config: &SessionConfig, value: String, tls: bool) -> Cookie<'static> {
    let settings = &config.cookie;
    let mut cookie = Cookie::new(settings.name.clone(), value);
    cookie.set_path(settings.path.clone());
    if let Some(domain) = &settings.domain {
        cookie.set_domain(domain.clone());
    }
    cookie.set_secure(settings.secure.unwrap_or(tls));
    cookie.set_http_only(settings.http_only);
    cookie.set_same_site(settings.same_site);
    cookie
}

fn header(cookie: Cookie<'_>) -> HeaderValue {
    HeaderValue::from_str(&cookie.to_string())
        .expect("the config checked every cookie attribute is visible ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_path_parameter_is_removed() {
        let cases = [
            ("/cart;sid=ABC.r1", "/cart"),
            ("/a;v=1;sid=X.r;w=2/b", "/a;v=1;w=2/b"),
            ("/a;sidx=1/b;sid=Y", "/a;sidx=1/b"),
            ("/plain", "/plain"),
            ("/a;sid", "/a;sid"),
        ];
        for (path, kept) in cases {
            assert_eq!(without_path_parameter(path, "sid"), kept, "{path}");
        }
    }
}
