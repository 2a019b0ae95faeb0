//! The request validation step (`src/proxy/validate.rs`), one table for both protocols: each
//! row is a request and the status tandem answers it with, sent in every way its fields can
//! arrive: over HTTP/1.1 with a Host header and with an absolute-form target, over h2c with
//! `:authority` and with a `host` field. A row not answered by the backend must not reach it, and
//! over HTTP/1.1 a 400, 414 or 431 closes the connection. A new rule adds rows here, not a test.
//!
//! Over h2c, a 400 row may also be refused by the HTTP/2 layer itself with a stream reset
//! (PROTOCOL_ERROR): RFC 9113 §8.1.1 makes a malformed request a stream error, and some of these
//! (a space in `:authority`, a `:path` without a slash) never reach tandem's code.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::raw_h2::{h2_exchange, hpack, H2Outcome, PROTOCOL_ERROR};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request and what tandem answers it with, over both protocols.
struct Row {
    what: &'static str,
    method: &'static str,
    /// The request target (HTTP/1.1) or `:path` (h2; left out for CONNECT).
    target: String,
    /// Sent as Host and as the absolute form's authority (HTTP/1.1), as `:authority` and as a
    /// `host` field (h2). `None`: no authority, only what `fields` say.
    authority: Option<String>,
    fields: Vec<(String, String)>,
    status: u16,
    /// Over h2, a stream reset is this row's answer too (see `h2_resets`).
    h2_reset: bool,
}

fn row(what: &'static str, authority: &str, status: u16) -> Row {
    Row {
        what,
        method: "GET",
        target: "/".into(),
        authority: Some(authority.into()),
        fields: Vec::new(),
        status,
        h2_reset: status == 400,
    }
}

impl Row {
    fn method(mut self, method: &'static str) -> Row {
        self.method = method;
        self
    }

    fn target(mut self, target: impl Into<String>) -> Row {
        self.target = target.into();
        self
    }

    fn no_authority(mut self) -> Row {
        self.authority = None;
        self
    }

    /// The `http` crate caps a target at 65,534 bytes: h2 resets the stream of a longer
    /// `:path` (PROTOCOL_ERROR) before tandem sees it.
    fn h2_resets(mut self) -> Row {
        self.h2_reset = true;
        self
    }

    fn fields(mut self, fields: impl IntoIterator<Item = (String, String)>) -> Row {
        self.fields.extend(fields);
        self
    }
}

/// `count` fields `x-field-N: v`.
fn many_fields(count: usize) -> impl Iterator<Item = (String, String)> {
    (0..count).map(|i| (format!("x-field-{i}"), "v".to_string()))
}

/// The table, for tandem's default limits: 100 fields, 64 KiB of header fields, 8 KiB targets.
fn rows() -> Vec<Row> {
    let kib = 1024;
    vec![
        // Answered by the backend.
        row("a plain GET", "shop.test", 200),
        row("a host with a port", "shop.test:8080", 200),
        row("the highest port", "shop.test:65535", 200),
        row("an IPv4 address and port", "127.0.0.1:80", 200),
        row("an IPv6 literal and port", "[::1]:8080", 200),
        row("an IPv6 literal", "[::1]", 200),
        row("an upper-case host", "Shop.TEST", 200),
        row("reg-name characters", "a-b_c~d.test", 200),
        row("100 fields in all", "shop.test", 200).fields(many_fields(99)),
        row("a target of 8 KiB", "shop.test", 200).target(format!("/{}", "x".repeat(8 * kib - 1))),
        // D01 and the header limits, over both protocols.
        row("101 fields", "shop.test", 431).fields(many_fields(101)),
        row("1,500 fields in 15 KiB", "shop.test", 431).fields(many_fields(1500)),
        row("one 64 KiB Cookie", "shop.test", 431)
            .fields([("cookie".into(), "c".repeat(64 * kib))]),
        row("70 KiB of fields in ten", "shop.test", 431)
            .fields((0..10).map(|i| (format!("x-big-{i}"), "b".repeat(7 * kib)))),
        row("a 9 KiB target", "shop.test", 414).target(format!("/{}", "x".repeat(9 * kib))),
        row("a 60 KiB target", "shop.test", 414).target(format!("/{}", "x".repeat(60 * kib))),
        row("a 70 KiB target", "shop.test", 414)
            .target(format!("/{}", "x".repeat(70 * kib)))
            .h2_resets(),
        // F07 and P04: Host and :authority.
        row("userinfo", "u@shop.test", 400),
        row("userinfo (P04)", "u@p04.test", 400),
        row("a port with letters", "a.test:80x", 400),
        row("a port over 65535", "a.test:99999", 400),
        row("a signed port", "a.test:+80", 400),
        row("port 0", "a.test:0", 400),
        row("an empty port", "a.test:", 400),
        row("a space", "a b", 400),
        row("a slash", "a/b", 400),
        row("an IPv6 address without brackets", "::1", 400),
        row("an unclosed IPv6 literal", "[::1", 400),
        row("a name in brackets", "[shop.test]", 400),
        row("two Host fields", "", 400).no_authority().fields([
            ("host".into(), "a.test".into()),
            ("host".into(), "b.test".into()),
        ]),
        // F07: target forms.
        row("the asterisk form on GET", "shop.test", 400).target("*"),
        row("the authority form on GET", "shop.test", 400).target("admin"),
        row("CONNECT", "shop.test:443", 400)
            .method("CONNECT")
            .target("shop.test:443"),
        row("a target that is only a query", "shop.test", 400).target("?x=1"),
        row("a target that is only a fragment", "shop.test", 400).target("#frag"),
        // No pool serves the asterisk (it names no path).
        row("the asterisk form on OPTIONS", "shop.test", 404)
            .method("OPTIONS")
            .target("*"),
    ]
}

/// A backend with no limits of its own (an HTTP library's header cap would answer 431 for
/// tandem): it records every request head it gets and answers each with `200 a`.
struct RecordingBackend {
    address: std::net::SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RecordingBackend {
    async fn start() -> RecordingBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&heads);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    let mut received = Vec::new();
                    loop {
                        while let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = received.drain(..at + 4).collect();
                            recorded
                                .lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&head).into_owned());
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => received.extend_from_slice(&buffer[..n]),
                        }
                    }
                });
            }
        });
        RecordingBackend { address, heads }
    }

    fn count(&self) -> usize {
        self.heads.lock().unwrap().len()
    }

    fn toml(&self) -> String {
        format!("[[pool.backend]]\naddress = \"{}\"\n", self.address)
    }
}

/// The ways one row is sent.
#[derive(Debug, Clone, Copy)]
enum Spelling {
    H1Host,
    H1AbsoluteForm,
    H2Authority,
    H2HostField,
}

impl Spelling {
    fn applies(self, row: &Row) -> bool {
        match self {
            Spelling::H1Host | Spelling::H2Authority => true,
            // An authority with `/`, `?` or `#` would end early in a URI: another input.
            Spelling::H1AbsoluteForm => {
                row.target.starts_with('/')
                    && row
                        .authority
                        .as_ref()
                        .is_some_and(|authority| !authority.contains(['/', '?', '#']))
            }
            Spelling::H2HostField => row.authority.is_some(),
        }
    }
}

/// A finished HTTP/1.1 exchange.
struct H1Answer {
    status: u16,
    body: String,
    /// Whether tandem closed the connection after the response.
    closed: bool,
}

/// Sends `request` on a fresh connection and reads one response (by its Content-Length), then,
/// with `closing`, whether the connection closes.
async fn h1_exchange(tandem: &Tandem, request: &[u8], closing: bool) -> H1Answer {
    let mut stream = TcpStream::connect(tandem.address).await.unwrap();
    // tandem may answer and close before it has read everything.
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let (head_end, length) = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..at]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (at + 4, length);
        }
        let n = read_some(&mut stream, &mut chunk).await;
        if n == 0 {
            return H1Answer {
                status: 0,
                body: String::from_utf8_lossy(&received).into_owned(),
                closed: true,
            };
        }
        received.extend_from_slice(&chunk[..n]);
    };
    while received.len() < head_end + length {
        let n = read_some(&mut stream, &mut chunk).await;
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
    }
    let status = String::from_utf8_lossy(received.get(9..12).unwrap_or_default())
        .parse()
        .unwrap_or(0);
    let body = String::from_utf8_lossy(&received[head_end.min(received.len())..]).into_owned();
    let closed = closing
        && matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
    H1Answer {
        status,
        body,
        closed,
    }
}

/// One read within the deadline; 0 at the end of the stream or on an error.
async fn read_some(stream: &mut TcpStream, chunk: &mut [u8]) -> usize {
    match tokio::time::timeout(DEADLINE, stream.read(chunk)).await {
        Ok(Ok(n)) => n,
        Ok(Err(_)) => 0,
        Err(_) => panic!("no answer in time"),
    }
}

fn h1_request(row: &Row, spelling: Spelling) -> Vec<u8> {
    let target = match (spelling, &row.authority) {
        (Spelling::H1AbsoluteForm, Some(authority)) => format!("http://{authority}{}", row.target),
        _ => row.target.clone(),
    };
    let mut head = format!("{} {target} HTTP/1.1\r\n", row.method);
    if let Some(authority) = &row.authority {
        head.push_str(&format!("Host: {authority}\r\n"));
    }
    for (name, value) in &row.fields {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn h2_block(row: &Row, spelling: Spelling) -> Vec<u8> {
    let mut fields: Vec<(&[u8], &[u8])> = vec![(b":method", row.method.as_bytes())];
    if row.method != "CONNECT" {
        fields.push((b":scheme", b"http"));
        fields.push((b":path", row.target.as_bytes()));
    }
    match (&row.authority, spelling) {
        (Some(authority), Spelling::H2Authority) => {
            fields.push((b":authority", authority.as_bytes()))
        }
        (Some(authority), _) => fields.push((b"host", authority.as_bytes())),
        (None, _) => {}
    }
    for (name, value) in &row.fields {
        fields.push((name.as_bytes(), value.as_bytes()));
    }
    hpack(&fields)
}

/// What one row got in one spelling: `Ok` when as expected, else what was wrong.
async fn check(
    tandem: &Tandem,
    backend: &RecordingBackend,
    row: &Row,
    spelling: Spelling,
) -> Result<(), String> {
    let before = backend.count();
    let got = match spelling {
        Spelling::H1Host | Spelling::H1AbsoluteForm => {
            let closing = matches!(row.status, 400 | 414 | 431);
            let answer = h1_exchange(tandem, &h1_request(row, spelling), closing).await;
            if answer.status != row.status {
                Err(format!("answered {} {:?}", answer.status, answer.body))
            } else if closing && !answer.closed {
                Err("the connection stayed open".to_string())
            } else {
                Ok(())
            }
        }
        Spelling::H2Authority | Spelling::H2HostField => {
            match h2_exchange(tandem, &h2_block(row, spelling)).await {
                H2Outcome::Answered(status, _) if status == row.status => Ok(()),
                H2Outcome::Reset(PROTOCOL_ERROR) if row.h2_reset => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    };
    let reached = backend.count() - before;
    let expected = usize::from(row.status == 200);
    got.and_then(|()| {
        if reached == expected {
            Ok(())
        } else {
            Err(format!("{reached} requests reached the backend"))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_gets_its_status_over_http1_and_h2() {
    let backend = RecordingBackend::start().await;
    let tandem = Tandem::start(&config(&format!(
        "[[pool]]\nname = \"web\"\n{}",
        backend.toml()
    )));
    let mut failures = Vec::new();
    for row in rows() {
        for spelling in [
            Spelling::H1Host,
            Spelling::H1AbsoluteForm,
            Spelling::H2Authority,
            Spelling::H2HostField,
        ] {
            if !spelling.applies(&row) {
                continue;
            }
            if let Err(wrong) = check(&tandem, &backend, &row, spelling).await {
                failures.push(format!(
                    "{} ({spelling:?}): expected {}, {wrong}",
                    row.what, row.status
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
