//! The session headers between tandem and its backends, under one configurable prefix
//! (`x-tandem-session` by default). README's "Backend contract" documents them for backend
//! authors; this is the one place that reads or writes them.
//!
//! - To the backend: `<prefix>-id` (the session id) and `<prefix>-data` (the attributes, a JSON
//!   object in printable ASCII), only when the request has a live session.
//! - From the backend: `<prefix>-patch` (an RFC 7396 merge patch, a JSON object),
//!   `<prefix>-command` (`invalidate` or `renew`), `<prefix>-idle-timeout` and
//!   `<prefix>-absolute-timeout` (whole seconds).
//!
//! Any field starting with the prefix is removed from what clients send and from what backends
//! answer, heads and trailers alike (and from the `Trailer` list that announces trailers), so
//! that a client can neither speak for tandem nor see what backends tell it. 1xx interim
//! responses never reach the client at all (hyper's client does not relay them).

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, TRAILER};
use serde_json::{Map, Value};

use super::Rejection;
use crate::config::SessionConfig;

/// What a backend asked of the session in its response.
#[derive(Debug, Default, PartialEq)]
pub struct Update {
    /// Changes to the attributes (RFC 7396).
    pub patch: Option<Map<String, Value>>,
    /// Invalidate or renew.
    pub command: Option<Command>,
    /// A new idle timeout for this session.
    pub idle_timeout: Option<Duration>,
    /// A new absolute timeout for this session (counted from its creation).
    pub absolute_timeout: Option<Duration>,
}

impl Update {
    /// Whether the response asked for nothing.
    pub fn is_empty(&self) -> bool {
        *self == Update::default()
    }
}

/// A command about the whole session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// End the session now (logout); the client's cookie is cleared.
    Invalidate,
    /// Give the session a new id and keep its data (after login, against session fixation);
    /// the old id stops working.
    Renew,
}

/// The header names, built once from the configured prefix.
#[derive(Debug, Clone)]
pub struct SessionHeaders {
    prefix: String,
    id: HeaderName,
    data: HeaderName,
    patch: HeaderName,
    command: HeaderName,
    idle_timeout: HeaderName,
    absolute_timeout: HeaderName,
}

impl SessionHeaders {
    /// The headers under `prefix` (a lowercase header-name token, checked by the config).
    pub fn new(prefix: &str) -> SessionHeaders {
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}-{suffix}").as_bytes())
                .expect("the config checked the prefix is a token")
        };
        SessionHeaders {
            prefix: prefix.to_string(),
            id: name("id"),
            data: name("data"),
            patch: name("patch"),
            command: name("command"),
            idle_timeout: name("idle-timeout"),
            absolute_timeout: name("absolute-timeout"),
        }
    }

    /// Removes every field whose name starts with the prefix (names are lowercase in
    /// `HeaderMap`, whatever case they were sent in), and the session names from the `Trailer`
    /// list announcing fields to come after the body (a `Trailer` left naming nothing goes).
    /// Used on heads and on trailers alike, so that neither kind carries a session field across.
    pub fn strip(&self, fields: &mut HeaderMap) {
        let found: Vec<HeaderName> = fields
            .keys()
            .filter(|name| self.is_session_name(name.as_str().as_bytes()))
            .cloned()
            .collect();
        for name in found {
            fields.remove(name);
        }
        self.unannounce(fields);
    }

    /// Takes the session names out of `Trailer`: a peer told of them would wait for them, and
    /// an HTTP/1.1 sender relays only the trailers its `Trailer` names.
    fn unannounce(&self, fields: &mut HeaderMap) {
        let announced = fields.get_all(TRAILER);
        if !announced
            .iter()
            .any(|value| listed(value).any(|name| self.is_session_name(name)))
        {
            return;
        }
        let kept: Vec<HeaderValue> = announced
            .iter()
            .filter_map(|value| {
                let names: Vec<&[u8]> = listed(value)
                    .filter(|name| !self.is_session_name(name))
                    .collect();
                // What remains of a valid value is valid.
                HeaderValue::from_bytes(&names.join(&b", "[..]))
                    .ok()
                    .filter(|value| !value.is_empty())
            })
            .collect();
        fields.remove(TRAILER);
        for value in kept {
            fields.append(TRAILER, value);
        }
    }

    /// Whether field name `name` (any case) is a session field, spelled with `-` or `_`: CGI,
    /// WSGI, PHP and Rack read `X_Tandem_Session_Data` as the same variable as
    /// `x-tandem-session-data`, so a client must not get that spelling past tandem either.
    fn is_session_name(&self, name: &[u8]) -> bool {
        let prefix = self.prefix.as_bytes();
        name.len() >= prefix.len()
            && name.iter().zip(prefix).all(|(&sent, &ours)| {
                sent.to_ascii_lowercase() == ours || (sent == b'_' && ours == b'-')
            })
    }

    /// Hands a live session to the backend.
    pub fn attach(&self, headers: &mut HeaderMap, id: &str, data: HeaderValue) {
        headers.insert(
            self.id.clone(),
            HeaderValue::from_str(id).expect("session ids are URL-safe base64"),
        );
        headers.insert(self.data.clone(), data);
    }

    /// Takes the backend's session headers out of `headers` (a response head: an update is
    /// never read from trailers, which are only stripped) and reads them. All of them go
    /// whether or not they make sense; what does not is refused whole.
    pub fn take_update(
        &self,
        headers: &mut HeaderMap,
        limits: &SessionConfig,
    ) -> Result<Update, Rejection> {
        if !headers
            .keys()
            .any(|name| self.is_session_name(name.as_str().as_bytes()))
        {
            // A `Trailer` naming session fields may still be there.
            self.unannounce(headers);
            return Ok(Update::default());
        }
        let patch = headers.remove(&self.patch);
        let command = headers.remove(&self.command);
        let idle = headers.remove(&self.idle_timeout);
        let absolute = headers.remove(&self.absolute_timeout);
        let repeated = [
            &self.patch,
            &self.command,
            &self.idle_timeout,
            &self.absolute_timeout,
        ]
        .into_iter()
        .find(|name| headers.contains_key(*name))
        .map(|name| name.to_string());
        self.strip(headers);
        if let Some(name) = repeated {
            return Err(Rejection::Malformed(format!("{name} sent more than once")));
        }
        let patch = patch.map(|value| read_patch(&value, limits)).transpose()?;
        let command = match command.as_ref().map(HeaderValue::as_bytes) {
            None => None,
            Some(b"invalidate") => Some(Command::Invalidate),
            Some(b"renew") => Some(Command::Renew),
            Some(other) => {
                return Err(Rejection::UnknownCommand(
                    String::from_utf8_lossy(&other[..other.len().min(64)]).into_owned(),
                ))
            }
        };
        Ok(Update {
            patch,
            command,
            idle_timeout: idle
                .map(|value| read_timeout(&value, "idle", limits.max_idle_timeout))
                .transpose()?,
            absolute_timeout: absolute
                .map(|value| read_timeout(&value, "absolute", limits.max_absolute_timeout))
                .transpose()?,
        })
    }
}

/// The field names a `Trailer` value lists, on its bytes.
fn listed(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    let names = value.as_bytes().split(|&byte| byte == b',');
    names
        .map(<[u8]>::trim_ascii)
        .filter(|name| !name.is_empty())
}

/// A merge patch from a header: a JSON object, in ASCII with `\u` escapes or in raw UTF-8.
fn read_patch(
    value: &HeaderValue,
    limits: &SessionConfig,
) -> Result<Map<String, Value>, Rejection> {
    // A patch can be at most the whole session plus a `null` for each attribute it removes.
    let most = limits.max_session_bytes + limits.max_attributes * (limits.max_attribute_bytes + 8);
    if value.len() > most {
        return Err(Rejection::SessionTooLarge {
            size: value.len(),
            limit: limits.max_session_bytes,
        });
    }
    parse_patch(value.as_bytes())
}

/// A merge patch from bytes (a header, or the session API's request body).
pub fn parse_patch(bytes: &[u8]) -> Result<Map<String, Value>, Rejection> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(patch)) => Ok(patch),
        Ok(other) => Err(Rejection::Malformed(format!(
            "the patch is a JSON {}, not an object",
            json_kind(&other)
        ))),
        Err(error) => Err(Rejection::Malformed(format!(
            "the patch is not JSON: {error}"
        ))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A timeout in whole seconds, from 1 to `most`.
fn read_timeout(value: &HeaderValue, which: &str, most: Duration) -> Result<Duration, Rejection> {
    let seconds = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|&seconds| seconds > 0)
        .ok_or_else(|| {
            Rejection::BadTimeout(format!(
                "the {which} timeout is not a whole number of seconds"
            ))
        })?;
    let timeout = Duration::from_secs(seconds);
    if timeout > most {
        return Err(Rejection::BadTimeout(format!(
            "the {which} timeout of {seconds}s is over the configured maximum of {}s",
            most.as_secs()
        )));
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_fields_go_from_the_trailer_list_in_any_case_and_spelling() {
        let headers = SessionHeaders::new("x-tandem-session");
        let cases: [(&[&str], &[&str]); 4] = [
            (&["x-checksum, X-Tandem-Session-Patch"], &["x-checksum"]),
            (
                &["x_tandem_session_id", "etag , grpc-status"],
                &["etag, grpc-status"],
            ),
            (&["X-TANDEM-SESSION-DATA, x-tandem-session"], &[]),
            (&["x-tandem-sessions-are-mine, etag"], &["etag"]),
        ];
        for (sent, kept) in cases {
            let mut fields = HeaderMap::new();
            for value in sent {
                fields.append(TRAILER, HeaderValue::from_static(value));
            }
            headers.strip(&mut fields);
            let left: Vec<&str> = fields
                .get_all(TRAILER)
                .iter()
                .map(|value| value.to_str().unwrap())
                .collect();
            assert_eq!(left, kept, "{sent:?}");
        }
    }
}
