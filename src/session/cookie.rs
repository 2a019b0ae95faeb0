//! The session cookie a client holds in `proxy` mode: `<id><separator><route>`, issued with the
//! configured attributes, read back from the Cookie header.

use cookie::Cookie;
use http::header::{HeaderMap, HeaderValue, COOKIE};

use super::id;
use crate::config::SessionConfig;

/// Most session cookies looked at per request: a request carrying thousands of them costs no
/// more than one carrying a few.
const MAX_CANDIDATES: usize = 4;

/// The well-formed `(id, route)` pairs of the session cookies in `headers`, in the order sent
/// (a client may hold several, from several paths), at most a few.
pub fn candidates<'h>(headers: &'h HeaderMap, config: &SessionConfig) -> Vec<(&'h str, &'h str)> {
    let mut found = Vec::new();
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for cookie in Cookie::split_parse(text).flatten() {
            if cookie.name_raw() != Some(config.cookie.name.as_str()) {
                continue;
            }
            if let Some(pair) = cookie
                .value_raw()
                .and_then(|value| id::parse(value, config.separator))
            {
                found.push(pair);
                if found.len() == MAX_CANDIDATES {
                    return found;
                }
            }
        }
    }
    found
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
