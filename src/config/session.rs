//! `[session]` and `[admin]`: who owns sessions, the proxy-mode store's cookie, backend contract
//! and limits, and the internal listener that serves the session API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawAdmin, RawSecure, RawSession, RawSessionCookie};
use super::{is_token, Checker};

/// Who owns sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// The backends do (Tomcat and its JSESSIONID): tandem only routes on the ids (`[pool.sticky]`).
    Backend,
    /// tandem does: it issues the cookie, keeps the attributes and hands them to stateless
    /// backends with each request.
    Proxy,
}

/// What happens to a backend response whose session update tandem refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidUpdate {
    /// 502 to the client: the backend believes it stored something that was not stored.
    Reject,
    /// The response goes to the client as it is; the update is dropped (logged and counted).
    Pass,
}

/// The session store and its contract with backends (used in `proxy` mode).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// Who owns sessions.
    pub mode: SessionMode,
    /// The cookie tandem issues.
    pub cookie: SessionCookieConfig,
    /// Between the session id and the route in the cookie value (`<id>.<route>`).
    pub separator: char,
    /// A path parameter (`/cart;<name>=<id>.<route>`) that also names the session, for clients
    /// without cookies; removed from the path sent to the backend. `None`: cookies only.
    pub url_parameter: Option<String>,
    /// Lowercase prefix of every session header (`x-tandem-session`): the request carries
    /// `<prefix>-id` and `<prefix>-data`, the response may carry `<prefix>-patch`,
    /// `<prefix>-command`, `<prefix>-idle-timeout` and `<prefix>-absolute-timeout`.
    pub header_prefix: String,
    /// A session unused for this long expires, unless its backend set another idle timeout.
    pub idle_timeout: Duration,
    /// A session expires this long after its creation whatever its use, unless its backend
    /// set another absolute timeout.
    pub absolute_timeout: Duration,
    /// The longest idle timeout a backend may set for one session.
    pub max_idle_timeout: Duration,
    /// The longest absolute timeout a backend may set for one session.
    pub max_absolute_timeout: Duration,
    /// Live sessions on this node at most; creating one more is refused.
    pub max_sessions: usize,
    /// Attributes (top-level keys) per session at most.
    pub max_attributes: usize,
    /// Encoded bytes of one attribute (its key and value) at most.
    pub max_attribute_bytes: usize,
    /// Encoded bytes of a whole session's attributes at most (the `<prefix>-data` header).
    pub max_session_bytes: usize,
    /// What a refused session update does to the response.
    pub on_invalid_update: InvalidUpdate,
    /// Where live sessions are written on shutdown and read back on start; `None`: nowhere.
    pub snapshot: Option<PathBuf>,
}

/// The attributes of the session cookie.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionCookieConfig {
    /// Cookie name.
    pub name: String,
    /// `Path` attribute.
    pub path: String,
    /// `Domain` attribute; `None`: the cookie goes back to the host that set it only.
    pub domain: Option<String>,
    /// `Secure`: `None` sets it when the request came over TLS ("auto").
    pub secure: Option<bool>,
    /// `HttpOnly`: scripts in the page cannot read the session id.
    pub http_only: bool,
    /// `SameSite`.
    pub same_site: cookie::SameSite,
}

/// The internal listener: session API (and, as they come, metrics and status).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Where it listens (127.0.0.1:9090 by default); keep it on loopback or a private network.
    pub address: SocketAddr,
    /// Bearer token for the session API; `None` leaves the API closed (every call 401).
    pub token: Option<String>,
    /// Whether it speaks TLS, with the `[[listen.certificate]]`s.
    pub tls: bool,
}

/// The admin listener's port when `[admin]` names no address (on loopback).
const DEFAULT_ADMIN_PORT: u16 = 9090;

/// Shortest admin token accepted: it guards every user's session.
const MIN_TOKEN_LENGTH: usize = 16;

impl Checker<'_> {
    pub(super) fn session(&mut self, raw: Option<RawSession>) -> SessionConfig {
        let raw = raw.unwrap_or(RawSession {
            mode: None,
            url_parameter: None,
            separator: None,
            header_prefix: None,
            idle_timeout: None,
            absolute_timeout: None,
            max_idle_timeout: None,
            max_absolute_timeout: None,
            max_sessions: None,
            max_attributes: None,
            max_attribute_bytes: None,
            max_session_bytes: None,
            on_invalid_update: None,
            snapshot: None,
            cookie: None,
        });
        let mode = match raw.mode.as_ref().map(|m| m.get_ref().as_str()) {
            None | Some("backend") => SessionMode::Backend,
            Some("proxy") => SessionMode::Proxy,
            Some(other) => {
                let message = format!("unknown session mode `{other}`; expected backend or proxy");
                self.error(
                    raw.mode.as_ref().map(Spanned::span),
                    "session.mode",
                    message,
                );
                SessionMode::Backend
            }
        };
        let separator = match raw.separator {
            None => '.',
            Some(text) => {
                let mut chars = text.get_ref().chars();
                match (chars.next(), chars.next()) {
                    // Session ids are URL-safe base64: any other punctuation cannot occur in them.
                    (Some(c), None) if c.is_ascii_punctuation() && !"-_;,\"\\".contains(c) => c,
                    _ => {
                        let message = format!(
                            "`{}` is not a separator: use one punctuation character such as `.` or `!`",
                            text.get_ref()
                        );
                        self.error(Some(text.span()), "session.separator", message);
                        '.'
                    }
                }
            }
        };
        let header_prefix = match raw.header_prefix {
            None => "x-tandem-session".to_string(),
            Some(prefix) if is_token(prefix.get_ref()) && prefix.get_ref().len() >= 3 => {
                prefix.get_ref().to_ascii_lowercase()
            }
            Some(prefix) => {
                let message = format!(
                    "`{}` is not a header name prefix such as x-tandem-session",
                    prefix.get_ref()
                );
                self.error(Some(prefix.span()), "session.header_prefix", message);
                "x-tandem-session".to_string()
            }
        };
        let idle_span = raw.idle_timeout.as_ref().map(Spanned::span);
        let absolute_span = raw.absolute_timeout.as_ref().map(Spanned::span);
        let idle_timeout = self.duration(
            raw.idle_timeout,
            "session.idle_timeout",
            Duration::from_secs(30 * 60),
        );
        let absolute_timeout = self.duration(
            raw.absolute_timeout,
            "session.absolute_timeout",
            Duration::from_secs(8 * 3600),
        );
        let max_idle_timeout = self
            .duration(
                raw.max_idle_timeout,
                "session.max_idle_timeout",
                Duration::from_secs(24 * 3600),
            )
            .max(idle_timeout);
        let max_absolute_timeout = self
            .duration(
                raw.max_absolute_timeout,
                "session.max_absolute_timeout",
                Duration::from_secs(7 * 24 * 3600),
            )
            .max(absolute_timeout);
        if idle_timeout > absolute_timeout {
            let message = "is longer than session.absolute_timeout, which would end it first";
            self.error(idle_span.or(absolute_span), "session.idle_timeout", message);
        }
        let max_session_bytes = self.size(
            raw.max_session_bytes,
            "session.max_session_bytes",
            64..(1 << 20) + 1,
            8 << 10,
        );
        let attribute_span = raw.max_attribute_bytes.as_ref().map(Spanned::span);
        let max_attribute_bytes = self.size(
            raw.max_attribute_bytes,
            "session.max_attribute_bytes",
            16..(1 << 20) + 1,
            4 << 10,
        );
        if max_attribute_bytes > max_session_bytes {
            self.error(
                attribute_span,
                "session.max_attribute_bytes",
                format!(
                    "{max_attribute_bytes} is over session.max_session_bytes ({max_session_bytes})"
                ),
            );
        }
        let on_invalid_update = match raw.on_invalid_update.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("reject") => InvalidUpdate::Reject,
            Some("pass") => InvalidUpdate::Pass,
            Some(other) => {
                let message = format!("unknown value `{other}`; expected reject or pass");
                let span = raw.on_invalid_update.as_ref().map(Spanned::span);
                self.error(span, "session.on_invalid_update", message);
                InvalidUpdate::Reject
            }
        };
        let snapshot = match raw.snapshot {
            Some(path) if path.get_ref().trim().is_empty() => {
                self.error(
                    Some(path.span()),
                    "session.snapshot",
                    "expected a file path",
                );
                None
            }
            Some(path) => Some(PathBuf::from(path.into_inner())),
            None => None,
        };
        let url_parameter = raw.url_parameter.and_then(|name| {
            if super::is_token(name.get_ref()) {
                Some(name.into_inner())
            } else {
                let message = format!("`{}` is not a parameter name", name.get_ref());
                self.error(Some(name.span()), "session.url_parameter", message);
                None
            }
        });
        SessionConfig {
            mode,
            url_parameter,
            cookie: self.session_cookie(raw.cookie),
            separator,
            header_prefix,
            idle_timeout,
            absolute_timeout,
            max_idle_timeout,
            max_absolute_timeout,
            max_sessions: self.count(
                raw.max_sessions,
                "session.max_sessions",
                1..100_000_001,
                1_000_000,
            ) as usize,
            max_attributes: self.count(raw.max_attributes, "session.max_attributes", 1..10_001, 64)
                as usize,
            max_attribute_bytes,
            max_session_bytes,
            on_invalid_update,
            snapshot,
        }
    }

    fn session_cookie(&mut self, raw: Option<RawSessionCookie>) -> SessionCookieConfig {
        let raw = raw.unwrap_or(RawSessionCookie {
            name: None,
            path: None,
            domain: None,
            secure: None,
            http_only: None,
            same_site: None,
        });
        let name = match raw.name {
            None => "TANDEMSESSION".to_string(),
            Some(name) if is_token(name.get_ref()) => name.into_inner(),
            Some(name) => {
                let message = format!("`{}` is not a cookie name", name.get_ref());
                self.error(Some(name.span()), "session.cookie.name", message);
                "TANDEMSESSION".to_string()
            }
        };
        let path = match raw.path {
            None => "/".to_string(),
            Some(path)
                if path.get_ref().starts_with('/') && is_cookie_attribute(path.get_ref()) =>
            {
                path.into_inner()
            }
            Some(path) => {
                let message = format!(
                    "`{}` is not a cookie path starting with `/`",
                    path.get_ref()
                );
                self.error(Some(path.span()), "session.cookie.path", message);
                "/".to_string()
            }
        };
        let domain = match raw.domain {
            None => None,
            Some(domain)
                if !domain.get_ref().is_empty() && is_cookie_attribute(domain.get_ref()) =>
            {
                Some(domain.into_inner())
            }
            Some(domain) => {
                let message = format!("`{}` is not a cookie domain", domain.get_ref());
                self.error(Some(domain.span()), "session.cookie.domain", message);
                None
            }
        };
        let secure = match raw.secure {
            None => None,
            Some(secure) => match secure.get_ref() {
                RawSecure::Flag(flag) => Some(*flag),
                RawSecure::Text(text) if text == "auto" => None,
                RawSecure::Text(text) => {
                    let message = format!("`{text}` is not true, false or \"auto\"");
                    self.error(Some(secure.span()), "session.cookie.secure", message);
                    None
                }
            },
        };
        let same_site = match raw
            .same_site
            .as_ref()
            .map(|v| v.get_ref().to_ascii_lowercase())
        {
            None => cookie::SameSite::Lax,
            Some(value) if value == "lax" => cookie::SameSite::Lax,
            Some(value) if value == "strict" => cookie::SameSite::Strict,
            Some(value) if value == "none" => cookie::SameSite::None,
            Some(value) => {
                let message = format!("`{value}` is not lax, strict or none");
                let span = raw.same_site.as_ref().map(Spanned::span);
                self.error(span, "session.cookie.same_site", message);
                cookie::SameSite::Lax
            }
        };
        SessionCookieConfig {
            name,
            path,
            domain,
            secure,
            http_only: raw.http_only.unwrap_or(true),
            same_site,
        }
    }

    pub(super) fn admin(&mut self, raw: Option<RawAdmin>) -> Option<AdminConfig> {
        let raw = raw?;
        let address = match &raw.address {
            None => SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)),
            Some(address) => match address.get_ref().parse::<SocketAddr>() {
                Ok(address) => address,
                Err(_) => {
                    let message = format!(
                        "`{}` is not an IP:port address such as 127.0.0.1:9090",
                        address.get_ref()
                    );
                    self.error(Some(address.span()), "admin.address", message);
                    return None;
                }
            },
        };
        let token = match raw.token {
            None => None,
            Some(token)
                if token.get_ref().len() >= MIN_TOKEN_LENGTH
                    && is_cookie_attribute(token.get_ref()) =>
            {
                Some(token.into_inner())
            }
            Some(token) => {
                let message = format!(
                    "must be at least {MIN_TOKEN_LENGTH} visible ASCII characters: it guards every session"
                );
                self.error(Some(token.span()), "admin.token", message);
                None
            }
        };
        Some(AdminConfig {
            address,
            token,
            tls: raw.tls.is_some_and(|tls| *tls.get_ref()),
        })
    }
}

/// Visible ASCII without `;` and `,`: safe inside a cookie attribute or a header value.
fn is_cookie_attribute(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
}
