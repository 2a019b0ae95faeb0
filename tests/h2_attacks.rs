//! HTTP/2 cases from ../shared/attack-cases.md (P01–P04): frames and header blocks no
//! well-behaved client sends, written by hand over h2c (prior knowledge) on the public
//! listener. P01's rapid reset is in `tests/attacks.rs`; its server-induced resets
//! (MadeYouReset) are here.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::raw_h2::hpack;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// HTTP/2's PROTOCOL_ERROR code.
const PROTOCOL_ERROR: u32 = 1;

/// One frame as read.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// How tandem answered a stream.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code (the whole connection).
    GoAway(u32),
    /// A response; the status when its encoding is a static-table index (200, 400, 404, 500…),
    /// else 0.
    Answered(u16),
    /// The connection closed without a word.
    Closed,
}

/// An h2c connection driven frame by frame.
struct RawH2 {
    stream: TcpStream,
}

impl RawH2 {
    async fn connect(tandem: &Tandem) -> RawH2 {
        let stream = TcpStream::connect(tandem.address).await.unwrap();
        let mut h2 = RawH2 { stream };
        h2.stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        h2.send(SETTINGS, 0, 0, &[]).await.unwrap();
        h2
    }

    async fn send(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await
    }

    async fn read_frame(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.stream.read_exact(&mut head).await.ok()?;
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; length];
        self.stream.read_exact(&mut payload).await.ok()?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream,
            payload,
        })
    }

    /// Reads until stream `stream` is answered, reset, or the connection ends; acknowledges
    /// the server's SETTINGS and PINGs meanwhile. The response body's DATA is appended to
    /// `body`.
    async fn outcome(&mut self, stream: u32, body: &mut Vec<u8>) -> Outcome {
        let until = Instant::now() + DEADLINE;
        let mut answered = None;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(frame) = tokio::time::timeout(left, self.read_frame()).await else {
                panic!("no answer on stream {stream} in time");
            };
            let Some(frame) = frame else {
                return answered.unwrap_or(Outcome::Closed);
            };
            match frame.kind {
                SETTINGS if frame.payload.is_empty() => {}
                SETTINGS => {
                    let _ = self.send(SETTINGS, 1, 0, &[]).await;
                }
                PING => {
                    let _ = self.send(PING, 1, 0, &frame.payload).await;
                }
                GOAWAY => {
                    let code = u32::from_be_bytes(frame.payload[4..8].try_into().unwrap());
                    return answered.unwrap_or(Outcome::GoAway(code));
                }
                RST_STREAM if frame.stream == stream => {
                    let code = u32::from_be_bytes(frame.payload[..4].try_into().unwrap());
                    return answered.unwrap_or(Outcome::Reset(code));
                }
                HEADERS if frame.stream == stream => {
                    let status = match frame.payload.first() {
                        Some(0x88) => 200,
                        Some(0x8c) => 400,
                        Some(0x8d) => 404,
                        Some(0x8e) => 500,
                        _ => 0,
                    };
                    answered = Some(Outcome::Answered(status));
                    if frame.flags & END_STREAM != 0 {
                        return Outcome::Answered(status);
                    }
                }
                DATA if frame.stream == stream => {
                    body.extend_from_slice(&frame.payload);
                    if frame.flags & END_STREAM != 0 {
                        if let Some(answered) = answered {
                            return answered;
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// The request pseudo-headers of a GET of `path`, then `extra`.
fn get_block(path: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", b"shop.test"),
    ];
    headers.extend_from_slice(extra);
    hpack(&headers)
}

async fn one_backend() -> (Backend, Tandem) {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&config(&pool("web", "round_robin", "", &[&backend])));
    (backend, tandem)
}

/// Sends one request as a single HEADERS frame (with END_STREAM unless `body` follows, as one
/// DATA frame with END_STREAM) on a fresh connection; returns the outcome and any body.
async fn exchange(tandem: &Tandem, block: &[u8], body: Option<&[u8]>) -> (Outcome, String) {
    let mut h2 = RawH2::connect(tandem).await;
    let flags = END_HEADERS | if body.is_none() { END_STREAM } else { 0 };
    h2.send(HEADERS, flags, 1, block).await.unwrap();
    if let Some(body) = body {
        let _ = h2.send(DATA, END_STREAM, 1, body).await;
    }
    let mut received = Vec::new();
    let outcome = h2.outcome(1, &mut received).await;
    (outcome, String::from_utf8_lossy(&received).into_owned())
}

/// Whether `outcome` refuses the request: a reset, a GOAWAY, or a 400.
fn refused(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Reset(PROTOCOL_ERROR)
            | Outcome::GoAway(_)
            | Outcome::Answered(400)
            | Outcome::Closed
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p02_an_endless_continuation_is_cut_off_and_tandem_keeps_serving() {
    let (backend, tandem) = one_backend().await;
    let mut h2 = RawH2::connect(&tandem).await;
    h2.send(HEADERS, 0, 1, &get_block("/", &[])).await.unwrap();
    // CONTINUATION frames of 16 KiB of headers each, without END_HEADERS, up to 64 MiB: far
    // past the header list limit, which must end the connection long before.
    let filler = hpack(&[(b"x-filler", &[b'a'; 16_000])]);
    let mut sent = 0usize;
    for _ in 0..4096 {
        // A write that cannot go on (tandem stopped reading) ends the attack too; whether
        // tandem then closed the connection is what `outcome` checks.
        let write = h2.send(CONTINUATION, 0, 1, &filler);
        if !matches!(tokio::time::timeout(DEADLINE, write).await, Ok(Ok(()))) {
            break;
        }
        sent += filler.len();
    }
    let outcome = h2.outcome(1, &mut Vec::new()).await;
    assert!(
        matches!(
            outcome,
            Outcome::GoAway(_) | Outcome::Closed | Outcome::Reset(_) | Outcome::Answered(431)
        ),
        "{outcome:?}"
    );
    assert!(
        sent < 60 << 20,
        "tandem read {sent} bytes of one header block"
    );
    assert_eq!(backend.count(), 0, "a request reached the backend");
    assert_eq!(get(&client(), &tandem.url("/")).await.status, 200);
    assert!(
        tandem.peak_rss() < 300 << 20,
        "memory: {}",
        tandem.peak_rss()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p02_an_empty_data_flood_costs_bounded_memory_and_tandem_keeps_serving() {
    let (backend, tandem) = one_backend().await;
    let mut h2 = RawH2::connect(&tandem).await;
    let block = hpack(&[
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/upload"),
        (b":authority", b"shop.test"),
    ]);
    h2.send(HEADERS, END_HEADERS, 1, &block).await.unwrap();
    // 200,000 empty DATA frames (1.8 MB on the wire), then the end of the body.
    let mut flood = Vec::new();
    for _ in 0..1000 {
        flood.extend_from_slice(&[0, 0, 0, DATA, 0, 0, 0, 0, 1]);
    }
    let mut cut = false;
    for _ in 0..200 {
        let write = h2.stream.write_all(&flood);
        if !matches!(tokio::time::timeout(DEADLINE, write).await, Ok(Ok(()))) {
            cut = true;
            break;
        }
    }
    if !cut {
        let _ = h2.send(DATA, END_STREAM, 1, b"done").await;
    }
    let mut body = Vec::new();
    let outcome = h2.outcome(1, &mut body).await;
    // Either tandem ends the connection, or the request goes through with its 4 bytes.
    match outcome {
        Outcome::Answered(200) => assert_eq!(String::from_utf8_lossy(&body), "4"),
        other => assert!(
            matches!(
                other,
                Outcome::GoAway(_) | Outcome::Closed | Outcome::Reset(_)
            ),
            "{other:?}"
        ),
    }
    assert_eq!(get(&client(), &tandem.url("/")).await.status, 200);
    assert!(backend.count() <= 2);
    assert!(
        tandem.peak_rss() < 300 << 20,
        "memory: {}",
        tandem.peak_rss()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p03_connection_specific_headers_in_h2_are_refused_never_forwarded() {
    let (backend, tandem) = one_backend().await;
    let cases: [(&[u8], &[u8]); 4] = [
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"keep-alive"),
        (b"upgrade", b"websocket"),
        (b"te", b"gzip"),
    ];
    for (name, value) in cases {
        let (outcome, _) = exchange(&tandem, &get_block("/", &[(name, value)]), None).await;
        assert!(
            refused(&outcome),
            "{}: {outcome:?}",
            String::from_utf8_lossy(name)
        );
    }
    assert_eq!(backend.count(), 0, "a request reached the backend");
    // `te: trailers` is the one allowed value.
    let (outcome, _) = exchange(&tandem, &get_block("/", &[(b"te", b"trailers")]), None).await;
    assert_eq!(outcome, Outcome::Answered(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p03_a_body_that_contradicts_its_content_length_never_reaches_the_backend_whole() {
    let (backend, tandem) = one_backend().await;
    let block = |length: &'static [u8]| {
        hpack(&[
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/upload"),
            (b":authority", b"shop.test"),
            (b"content-length", length),
        ])
    };
    for (length, body) in [(b"5" as &[u8], b"0123456789" as &[u8]), (b"5", b"012")] {
        let (outcome, answer) = exchange(&tandem, &block(length), Some(body)).await;
        assert!(
            refused(&outcome),
            "content-length {} with {} bytes: {outcome:?} {answer}",
            String::from_utf8_lossy(length),
            body.len()
        );
    }
    assert_eq!(backend.count(), 0, "a request reached the backend");
    // The listener still serves h2 requests.
    let (outcome, answer) = exchange(&tandem, &get_block("/", &[]), None).await;
    assert_eq!((outcome, answer.as_str()), (Outcome::Answered(200), "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p04_malformed_h2_fields_are_refused_and_host_comes_from_the_authority() {
    let (backend, tandem) = one_backend().await;
    let cases: [(&str, Vec<u8>); 6] = [
        (
            "CR LF in a value",
            get_block("/", &[(b"x-a", b"a\r\nx-admin: 1")]),
        ),
        ("NUL in a value", get_block("/", &[(b"x-a", b"a\0b")])),
        ("uppercase name", get_block("/", &[(b"X-Admin", b"1")])),
        ("space in a name", get_block("/", &[(b"x admin", b"1")])),
        ("colon in a name", get_block("/", &[(b"x:admin", b"1")])),
        ("path without a slash", get_block("admin", &[])),
    ];
    for (what, block) in cases {
        let (outcome, answer) = exchange(&tandem, &block, None).await;
        assert!(refused(&outcome), "{what}: {outcome:?} {answer}");
    }
    assert_eq!(backend.count(), 0, "a request reached the backend");
    // A Host that disagrees with :authority: the backend sees the authority's.
    let block = get_block("/headers", &[(b"host", b"evil.test")]);
    let (outcome, answer) = exchange(&tandem, &block, None).await;
    assert_eq!(outcome, Outcome::Answered(200));
    let hosts: Vec<&str> = answer
        .lines()
        .filter(|line| line.starts_with("host: "))
        .collect();
    assert_eq!(hosts, ["host: shop.test"], "{answer}");
}

/// A backend that answers every request head (GET, no body) with a small 200 and counts its
/// connections: how many it accepted, how many have closed, and how many of those carried no
/// byte at all.
struct CountingBackend {
    address: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    empty: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingBackend {
    async fn start() -> CountingBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let empty = Arc::new(AtomicUsize::new(0));
        let counters = (
            Arc::clone(&accepted),
            Arc::clone(&closed),
            Arc::clone(&empty),
        );
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                counters.0.fetch_add(1, Ordering::SeqCst);
                let (closed, empty) = (Arc::clone(&counters.1), Arc::clone(&counters.2));
                connections.spawn(async move {
                    let mut received = 0usize;
                    let mut pending = Vec::new();
                    let mut buffer = [0u8; 4096];
                    loop {
                        let n = match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        received += n;
                        pending.extend_from_slice(&buffer[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na";
                            if stream.write_all(answer).await.is_err() {
                                break;
                            }
                        }
                    }
                    if received == 0 {
                        empty.fetch_add(1, Ordering::SeqCst);
                    }
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        CountingBackend {
            address,
            accepted,
            closed,
            empty,
            task,
        }
    }
}

/// A frame to send on each stream: kind, flags, payload.
type RawFrame = (u8, u8, Vec<u8>);

/// MadeYouReset (CVE-2025-8671): a client sends a request, then makes the server reset the
/// stream itself with a frame that is a stream error, on 200 streams at once. `frames` gives
/// a stream's frames; `pool_keys` go into the pool's table. No stream
/// may cost a backend connection that carries nothing.
async fn made_you_reset(pool_keys: &str, frames: &[RawFrame]) {
    let backend = CountingBackend::start().await;
    let tandem = Tandem::start(&config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"web\"\n{pool_keys}\n[[pool.backend]]\naddress = \"{}\"\n",
        backend.address
    )));
    let mut h2 = RawH2::connect(&tandem).await;
    const STREAMS: u32 = 200;
    let mut attack = Vec::new();
    for n in 0..STREAMS {
        let stream = 2 * n + 1;
        for &(kind, flags, ref payload) in frames {
            attack.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            attack.push(kind);
            attack.push(flags);
            attack.extend_from_slice(&stream.to_be_bytes());
            attack.extend_from_slice(payload);
        }
    }
    // All of it at once, as an attacker would; tandem may end the connection part way.
    let _ = tokio::time::timeout(DEADLINE, h2.stream.write_all(&attack)).await;
    // Every stream is reset or answered, or the connection ends.
    let mut settled = std::collections::HashSet::new();
    let until = Instant::now() + DEADLINE;
    while settled.len() < STREAMS as usize {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(Some(frame)) = tokio::time::timeout(left, h2.read_frame()).await else {
            break;
        };
        match frame.kind {
            RST_STREAM => {
                settled.insert(frame.stream);
            }
            HEADERS | DATA if frame.flags & END_STREAM != 0 => {
                settled.insert(frame.stream);
            }
            GOAWAY => break,
            SETTINGS if frame.flags & 1 == 0 => {
                let _ = h2.send(SETTINGS, 1, 0, &[]).await;
            }
            _ => {}
        }
    }
    drop(h2);
    // A control request, then the backend's connections settle: every one tandem does not
    // hold open (its gauge) has closed.
    assert_eq!(get(&client(), &tandem.url("/")).await.status, 200);
    let series = format!("backend=\"{}\",pool=\"web\"", backend.address);
    let until = Instant::now() + DEADLINE;
    loop {
        let metrics = get(&client(), &tandem.admin_url("/metrics")).await.body;
        let held = metrics
            .lines()
            .filter(|line| line.starts_with("tandem_backend_connections{"))
            .find(|line| line.contains(series.as_str()))
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as usize;
        let open = backend.accepted.load(Ordering::SeqCst) - backend.closed.load(Ordering::SeqCst);
        if open == held {
            break;
        }
        assert!(
            Instant::now() < until,
            "backend connections open: {open}, tandem holds {held}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = backend.accepted.load(Ordering::SeqCst);
    let empty = backend.empty.load(Ordering::SeqCst);
    assert_eq!(
        empty, 0,
        "{empty} of {accepted} backend connections carried nothing"
    );
    assert!(
        accepted <= 4,
        "{accepted} backend connections for {STREAMS} streams"
    );
}

/// A WINDOW_UPDATE that takes the stream's send window past 2^31-1: FLOW_CONTROL_ERROR.
fn overflowing_window_update() -> RawFrame {
    (WINDOW_UPDATE, 0, 0x7fff_ffffu32.to_be_bytes().to_vec())
}

/// The request pseudo-headers of a POST to `/upload`, then `extra`.
fn post_block(extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/upload"),
        (b":authority", b"shop.test"),
    ];
    headers.extend_from_slice(extra);
    hpack(&headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p01_made_you_reset_after_a_whole_get_dials_no_backend_for_nothing() {
    made_you_reset(
        "",
        &[
            (HEADERS, END_HEADERS | END_STREAM, get_block("/", &[])),
            overflowing_window_update(),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p01_made_you_reset_during_a_streamed_body_dials_no_backend_for_nothing() {
    made_you_reset(
        "",
        &[
            (HEADERS, END_HEADERS, post_block(&[])),
            overflowing_window_update(),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p01_made_you_reset_with_a_body_over_its_content_length_dials_no_backend_for_nothing() {
    // Without retries the body is not read beforehand: it streams.
    made_you_reset(
        "[pool.retry]\nattempts = 1",
        &[
            (
                HEADERS,
                END_HEADERS,
                post_block(&[(b"content-length", b"1")]),
            ),
            (DATA, END_STREAM, b"longer".to_vec()),
        ],
    )
    .await;
}

/// HTTP/2's CANCEL error code.
const CANCEL: u32 = 8;

/// 499 is for the access log only. An h2 client that resets its stream mid-body, or closes
/// the connection before the response head, is logged 499; nothing is sent on its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_goes_away_is_logged_499() {
    let (backend, tandem) = one_backend().await;
    let mut h2 = RawH2::connect(&tandem).await;
    h2.send(HEADERS, END_HEADERS, 1, &post_block(&[]))
        .await
        .unwrap();
    h2.send(DATA, 0, 1, b"the first part").await.unwrap();
    let until = Instant::now() + DEADLINE;
    while backend.open.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < until,
            "the upload never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h2.send(RST_STREAM, 0, 1, &CANCEL.to_be_bytes())
        .await
        .unwrap();
    let line = tandem.wait_access("path=/upload ");
    assert!(line.contains("status=499"), "{line}");
    // The connection still serves, and stream 1 got no answer.
    h2.send(HEADERS, END_HEADERS | END_STREAM, 3, &get_block("/", &[]))
        .await
        .unwrap();
    let until = Instant::now() + DEADLINE;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, h2.read_frame())
            .await
            .expect("stream 3 answered in time")
            .expect("the connection stays open");
        assert!(
            !(frame.stream == 1 && matches!(frame.kind, HEADERS | DATA)),
            "stream 1 was answered after its reset"
        );
        if frame.stream == 3 && frame.flags & END_STREAM != 0 {
            break;
        }
    }
    // A whole request, then the connection closes before the response head.
    let mut h2 = RawH2::connect(&tandem).await;
    h2.send(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_block("/slow?ms=3000", &[]),
    )
    .await
    .unwrap();
    // The upload, the GET and this one.
    while backend.count() < 3 {
        assert!(
            Instant::now() < until,
            "the request never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(h2);
    let line = tandem.wait_access("path=/slow ");
    assert!(line.contains("status=499"), "{line}");
}
