//! The access log's lines: what one request's line holds ([`AccessEntry`]) and the formats it
//! is written in ([`AccessFormat`]): tandem's `key=value` text and JSON, nginx's `combined`,
//! HAProxy's `httplog`, and an operator's template.
//!
//! Every field from the client (the target, headers) is capped at [`FIELD_CAP`] bytes and, in
//! the text formats, escaped as nginx does (`"`, `\`, control and non-ASCII bytes as `\xHH`),
//! so that a line stays one bounded line whatever the client sent.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, StatusCode, Version};

/// Longest a logged field from the client gets, in bytes: keeps lines bounded.
pub const FIELD_CAP: usize = 4096;

/// How access-log lines look (`[log] access_log_format`).
#[derive(Debug, Clone, PartialEq)]
pub enum AccessFormat {
    /// `key=value` pairs after a timestamp: the line tandem always wrote.
    Text,
    /// One JSON object per line, `{"timestamp": ..., "fields": {...}}`, as tandem always wrote.
    Json,
    /// nginx's `combined`, with tandem's fields appended as `key=value`.
    Combined,
    /// HAProxy's `httplog` fields, in their order, for HAProxy's log parsers.
    Haproxy,
    /// An operator's line (`access_log_template`).
    Template(Template),
}

/// A line made of literal text and `{field}`s, parsed once from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Field(Field),
}

/// A field a template can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Time,
    Client,
    ClientIp,
    Method,
    Uri,
    Path,
    Query,
    Version,
    Status,
    Bytes,
    Host,
    UserAgent,
    Referer,
    RequestId,
    Pool,
    Backend,
    Attempts,
    UpstreamMs,
    TotalMs,
}

/// Every template field by the name it is written with.
const FIELDS: [(&str, Field); 19] = [
    ("time", Field::Time),
    ("client", Field::Client),
    ("client_ip", Field::ClientIp),
    ("method", Field::Method),
    ("uri", Field::Uri),
    ("path", Field::Path),
    ("query", Field::Query),
    ("version", Field::Version),
    ("status", Field::Status),
    ("bytes", Field::Bytes),
    ("host", Field::Host),
    ("user_agent", Field::UserAgent),
    ("referer", Field::Referer),
    ("request_id", Field::RequestId),
    ("pool", Field::Pool),
    ("backend", Field::Backend),
    ("attempts", Field::Attempts),
    ("upstream_ms", Field::UpstreamMs),
    ("total_ms", Field::TotalMs),
];

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` names no field.
    #[error("unknown field `{0}`")]
    UnknownField(String),
    /// A `{` without its `}`, or a lone `}`.
    #[error("unbalanced `{{` or `}}` (write `{{{{` or `}}}}` for the character itself)")]
    Unbalanced,
}

impl Template {
    /// The names a template can use, for error messages.
    pub fn field_names() -> impl Iterator<Item = &'static str> {
        FIELDS.iter().map(|(name, _)| *name)
    }

    /// Parses `text`: `{name}` is a field, `{{` and `}}` the braces themselves, anything else
    /// literal.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let tail = &rest[at..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                literal.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err(TemplateError::Unbalanced);
            }
            let end = tail.find('}').ok_or(TemplateError::Unbalanced)?;
            let name = &tail[1..end];
            let field = FIELDS
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, field)| *field)
                .ok_or_else(|| TemplateError::UnknownField(name.to_string()))?;
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Field(field));
            rest = &tail[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Template(pieces))
    }
}

/// What one request's access-log line says, borrowed from the request's `Completion`.
pub struct AccessEntry<'a> {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The request method.
    pub method: &'a Method,
    /// The path, session ids redacted.
    pub path: &'a str,
    /// The query, without its `?`, session parameters redacted; empty when there is none.
    pub query: &'a str,
    /// The client's HTTP version.
    pub version: Version,
    /// The status logged.
    pub status: StatusCode,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// The Host header (or the target's authority).
    pub host: Option<&'a HeaderValue>,
    /// The User-Agent header.
    pub user_agent: Option<&'a HeaderValue>,
    /// The Referer header.
    pub referer: Option<&'a HeaderValue>,
    /// The request id sent to the backend as X-Request-Id.
    pub request_id: &'a HeaderValue,
    /// The pool's name, or `-`.
    pub pool: &'a str,
    /// The backend's address, or `-`.
    pub backend: &'a str,
    /// Backends tried.
    pub attempts: u32,
    /// From the first attempt sent to the backend's response head, if one came.
    pub upstream: Option<Duration>,
    /// From the request head read to the response body done.
    pub total: Duration,
}

impl AccessEntry<'_> {
    /// The target as sent: the path and, if any, `?` and the query.
    fn uri(&self) -> Uri<'_> {
        Uri(self.path, self.query)
    }
}

struct Uri<'a>(&'a str, &'a str);

impl fmt::Display for Uri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Escaped(self.0.as_bytes()).fmt(f)?;
        if !self.1.is_empty() {
            f.write_str("?")?;
            Escaped(self.1.as_bytes()).fmt(f)?;
        }
        Ok(())
    }
}

/// Bytes capped at [`FIELD_CAP`], printable ASCII as is, `"`, `\` and anything else as `\xHH`.
struct Escaped<'a>(&'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = &self.0[..self.0.len().min(FIELD_CAP)];
        let mut start = 0;
        for (at, &byte) in bytes.iter().enumerate() {
            if !(0x20..0x7f).contains(&byte) || byte == b'"' || byte == b'\\' {
                // Runs of plain bytes are ASCII, hence UTF-8.
                f.write_str(std::str::from_utf8(&bytes[start..at]).unwrap_or_default())?;
                write!(f, "\\x{byte:02X}")?;
                start = at + 1;
            }
        }
        f.write_str(std::str::from_utf8(&bytes[start..]).unwrap_or_default())
    }
}

/// A header's value escaped, or `-` without one.
struct Header<'a>(Option<&'a HeaderValue>);

impl fmt::Display for Header<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => Escaped(value.as_bytes()).fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A duration in milliseconds with microsecond digits (`1.234`), or `-`.
struct Millis(Option<Duration>);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(time) => {
                let micros = time.as_micros();
                write!(f, "{}.{:03}", micros / 1000, micros % 1000)
            }
            None => f.write_str("-"),
        }
    }
}

/// Whole milliseconds, as HAProxy's timers; -1 (HAProxy's "never reached") without a value.
fn whole_millis(time: Option<Duration>) -> i128 {
    time.map_or(-1, |time| time.as_millis() as i128)
}

/// `2026-12-02T15:51:56.123456Z`, split into the parts the other date formats reorder.
struct Stamp(String);

impl Stamp {
    fn of(time: SystemTime) -> Stamp {
        Stamp(humantime::format_rfc3339_micros(time).to_string())
    }

    /// `02/Dec/2026:15:51:56`, the date of nginx's and HAProxy's logs, in UTC.
    fn day_month_year_time(&self) -> String {
        let text = &self.0;
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = text[5..7].parse::<usize>().map_or(1, |m| m.clamp(1, 12));
        format!(
            "{}/{}/{}:{}",
            &text[8..10],
            MONTHS[month - 1],
            &text[0..4],
            &text[11..19]
        )
    }

    /// The milliseconds (`123`).
    fn millis(&self) -> &str {
        &self.0[20..23]
    }
}

/// Appends `bytes` to `out` as a JSON string (invalid UTF-8 replaced), capped.
fn json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let capped = String::from_utf8_lossy(&bytes[..bytes.len().min(FIELD_CAP)]);
    serde_json::to_writer(&mut *out, &*capped).expect("writing to a Vec cannot fail");
}

fn json_header(out: &mut Vec<u8>, value: Option<&HeaderValue>) {
    match value {
        Some(value) => json_string(out, value.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

impl AccessFormat {
    /// Appends `entry`'s line, newline included, to `out`, stamped `now`.
    pub fn write(&self, entry: &AccessEntry<'_>, now: SystemTime, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = match self {
            AccessFormat::Text => write_text(entry, now, out),
            AccessFormat::Json => write_json(entry, now, out),
            AccessFormat::Combined => write_combined(entry, now, out),
            AccessFormat::Haproxy => write_haproxy(entry, now, out),
            AccessFormat::Template(template) => write_template(template, entry, now, out),
        };
        out.push(b'\n');
    }
}

fn write_text(e: &AccessEntry<'_>, now: SystemTime, out: &mut Vec<u8>) -> std::io::Result<()> {
    write!(
        out,
        "{} client={} method={} path={} query={} version={:?} status={} bytes={} \
         duration_us={} upstream_us={} host=\"{}\" user_agent=\"{}\" referer=\"{}\" \
         request_id=\"{}\" pool=\"{}\" backend=\"{}\" attempts={}",
        Stamp::of(now).0,
        e.client,
        e.method,
        Escaped(e.path.as_bytes()),
        Escaped(e.query.as_bytes()),
        e.version,
        e.status.as_u16(),
        e.bytes,
        e.total.as_micros(),
        e.upstream
            .map_or_else(|| "-".to_string(), |t| t.as_micros().to_string()),
        Header(e.host),
        Header(e.user_agent),
        Header(e.referer),
        Escaped(e.request_id.as_bytes()),
        e.pool,
        e.backend,
        e.attempts,
    )
}

fn write_json(e: &AccessEntry<'_>, now: SystemTime, out: &mut Vec<u8>) -> std::io::Result<()> {
    write!(
        out,
        "{{\"timestamp\":\"{}\",\"fields\":{{",
        Stamp::of(now).0
    )?;
    write!(out, "\"client\":\"{}\",\"method\":", e.client)?;
    json_string(out, e.method.as_str().as_bytes());
    out.extend_from_slice(b",\"path\":");
    json_string(out, e.path.as_bytes());
    out.extend_from_slice(b",\"query\":");
    json_string(out, e.query.as_bytes());
    write!(
        out,
        ",\"version\":\"{:?}\",\"status\":{},\"bytes\":{},\"duration_us\":{},\"upstream_us\":{}",
        e.version,
        e.status.as_u16(),
        e.bytes,
        e.total.as_micros(),
        e.upstream
            .map_or_else(|| "null".to_string(), |t| t.as_micros().to_string()),
    )?;
    out.extend_from_slice(b",\"host\":");
    json_header(out, e.host);
    out.extend_from_slice(b",\"user_agent\":");
    json_header(out, e.user_agent);
    out.extend_from_slice(b",\"referer\":");
    json_header(out, e.referer);
    out.extend_from_slice(b",\"request_id\":");
    json_string(out, e.request_id.as_bytes());
    out.extend_from_slice(b",\"pool\":");
    json_string(out, e.pool.as_bytes());
    out.extend_from_slice(b",\"backend\":");
    json_string(out, e.backend.as_bytes());
    write!(out, ",\"attempts\":{}}}}}", e.attempts)
}

/// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
/// "$http_referer" "$http_user_agent"`, then tandem's fields.
fn write_combined(e: &AccessEntry<'_>, now: SystemTime, out: &mut Vec<u8>) -> std::io::Result<()> {
    write!(
        out,
        "{} - - [{} +0000] \"{} {} {:?}\" {} {} \"{}\" \"{}\" host=\"{}\" request_id=\"{}\" \
         pool={} backend={} attempts={} upstream_ms={} total_ms={}",
        e.client.ip(),
        Stamp::of(now).day_month_year_time(),
        e.method,
        e.uri(),
        e.version,
        e.status.as_u16(),
        e.bytes,
        Header(e.referer),
        Header(e.user_agent),
        Header(e.host),
        Escaped(e.request_id.as_bytes()),
        e.pool,
        e.backend,
        e.attempts,
        Millis(e.upstream),
        Millis(Some(e.total)),
    )
}

/// HAProxy's httplog: `client_ip:port [accept_date] frontend backend/server Tq/Tw/Tc/Tr/Tt
/// status bytes_read captured_req_cookie captured_resp_cookie termination_state
/// actconn/feconn/beconn/srv_conn/retries srv_queue/backend_queue {captured request headers}
/// "method uri version"`. tandem has no frontends, queues or cookie captures: the frontend is
/// `tandem`, the queues 0 and the cookies `-`; Tq (tandem's clock starts when the head is
/// read) and Tw are 0, Tc is folded into Tr (0 once a backend answered, else -1); the
/// connection counts are `-`; the captured headers are Host, User-Agent, Referer and the
/// request id; the termination state is `----`, or `CD--` when the client went away.
fn write_haproxy(e: &AccessEntry<'_>, now: SystemTime, out: &mut Vec<u8>) -> std::io::Result<()> {
    let accepted = Stamp::of(now.checked_sub(e.total).unwrap_or(now));
    let answered = e.upstream.is_some();
    let termination = if e.status == crate::error::CLIENT_CLOSED_REQUEST {
        "CD--"
    } else {
        "----"
    };
    write!(
        out,
        "{} [{}.{}] tandem {}/{} 0/0/{}/{}/{} {} {} - - {} -/-/-/-/{} 0/0 {{{}|{}|{}|{}}} \
         \"{} {} {:?}\"",
        e.client,
        accepted.day_month_year_time(),
        accepted.millis(),
        e.pool,
        e.backend,
        if answered { 0 } else { -1 },
        whole_millis(e.upstream),
        e.total.as_millis(),
        e.status.as_u16(),
        e.bytes,
        termination,
        e.attempts.saturating_sub(1),
        HaproxyCapture(e.host),
        HaproxyCapture(e.user_agent),
        HaproxyCapture(e.referer),
        HaproxyCapture(Some(e.request_id)),
        e.method,
        e.uri(),
        e.version,
    )
}

/// A captured header as HAProxy writes it: escaped, empty when absent, and `|`, `{` and `}`
/// (which delimit captures) as `\xHH` too.
struct HaproxyCapture<'a>(Option<&'a HeaderValue>);

impl fmt::Display for HaproxyCapture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(value) = self.0 else { return Ok(()) };
        for piece in
            value.as_bytes()[..value.len().min(FIELD_CAP)].split_inclusive(|b| b"|{}".contains(b))
        {
            match piece.split_last() {
                Some((last, head)) if b"|{}".contains(last) => {
                    Escaped(head).fmt(f)?;
                    write!(f, "\\x{last:02X}")?;
                }
                _ => Escaped(piece).fmt(f)?,
            }
        }
        Ok(())
    }
}

fn write_template(
    template: &Template,
    e: &AccessEntry<'_>,
    now: SystemTime,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    for piece in &template.0 {
        let field = match piece {
            Piece::Literal(text) => {
                out.extend_from_slice(text.as_bytes());
                continue;
            }
            Piece::Field(field) => field,
        };
        match field {
            Field::Time => write!(out, "{}", Stamp::of(now).0),
            Field::Client => write!(out, "{}", e.client),
            Field::ClientIp => write!(out, "{}", e.client.ip()),
            Field::Method => write!(out, "{}", e.method),
            Field::Uri => write!(out, "{}", e.uri()),
            Field::Path => write!(out, "{}", Escaped(e.path.as_bytes())),
            Field::Query => write!(out, "{}", Escaped(e.query.as_bytes())),
            Field::Version => write!(out, "{:?}", e.version),
            Field::Status => write!(out, "{}", e.status.as_u16()),
            Field::Bytes => write!(out, "{}", e.bytes),
            Field::Host => write!(out, "{}", Header(e.host)),
            Field::UserAgent => write!(out, "{}", Header(e.user_agent)),
            Field::Referer => write!(out, "{}", Header(e.referer)),
            Field::RequestId => write!(out, "{}", Escaped(e.request_id.as_bytes())),
            Field::Pool => write!(out, "{}", e.pool),
            Field::Backend => write!(out, "{}", e.backend),
            Field::Attempts => write!(out, "{}", e.attempts),
            Field::UpstreamMs => write!(out, "{}", Millis(e.upstream)),
            Field::TotalMs => write!(out, "{}", Millis(Some(e.total))),
        }?;
    }
    Ok(())
}

/// `query` as logged: the value of a parameter `is_session_parameter` names becomes `-`, so
/// that a session id in the query never lands in a log; the rest as sent.
pub fn loggable_query(query: &str, is_session_parameter: impl Fn(&str) -> bool) -> String {
    let mut shown = String::with_capacity(query.len().min(FIELD_CAP));
    for (index, parameter) in query.split('&').enumerate() {
        if index > 0 {
            shown.push('&');
        }
        match parameter.split_once('=') {
            Some((name, _)) if is_session_parameter(name) => {
                shown.push_str(name);
                shown.push_str("=-");
            }
            _ => shown.push_str(parameter),
        }
        if shown.len() >= FIELD_CAP {
            break;
        }
    }
    shown
}

/// A fresh request id: 16 bytes of the thread's CSPRNG (`rand::rng`, ChaCha reseeded from the
/// OS) as 32 hex digits. Unguessable, and unique with overwhelming odds (a collision among
/// 2^32 ids has odds of about 2^-65); no shared counter to contend on.
pub fn new_request_id() -> HeaderValue {
    let random: [u8; 16] = rand::random();
    let mut hex = [0u8; 32];
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in hex.chunks_exact_mut(2).zip(random) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_fields_literals_and_braces() {
        let template = Template::parse("{{{client}}} x{status}").unwrap();
        assert_eq!(
            template.0,
            vec![
                Piece::Literal("{".into()),
                Piece::Field(Field::Client),
                Piece::Literal("} x".into()),
                Piece::Field(Field::Status),
            ]
        );
        assert_eq!(
            Template::parse("{client} {colour}"),
            Err(TemplateError::UnknownField("colour".into()))
        );
        assert_eq!(Template::parse("{client"), Err(TemplateError::Unbalanced));
        assert_eq!(Template::parse("a}b"), Err(TemplateError::Unbalanced));
    }

    #[test]
    fn session_parameters_in_the_query_are_redacted() {
        let is_session = |name: &str| name.eq_ignore_ascii_case("jsessionid");
        assert_eq!(
            loggable_query("q=1&JSESSIONID=abc&x", is_session),
            "q=1&JSESSIONID=-&x"
        );
    }

    #[test]
    fn escaping_keeps_a_line_one_line() {
        let shown = Escaped(b"a \"b\"\n\\\xff").to_string();
        assert_eq!(shown, "a \\x22b\\x22\\x0A\\x5C\\xFF");
        assert_eq!(
            Escaped(&[b'a'; FIELD_CAP + 10]).to_string().len(),
            FIELD_CAP
        );
    }
}
