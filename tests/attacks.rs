//! Cases from ../shared/attack-cases.md (issue 7), each named by its ID: hostile framing and
//! headers on the public listener, cookie floods, session id quality, metric cardinality.
//! Written with raw sockets, since well-behaved clients cannot send these.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `bytes` on a fresh connection; returns everything tandem answered before it closed
/// (or before the deadline, for a connection kept open).
async fn raw(tandem: &Tandem, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(tandem.address)
        .await
        .unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status codes of every response in `answer` (a body may run into the next status line).
fn statuses(answer: &str) -> Vec<&str> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| answer.get(at + 9..at + 12))
        .collect()
}

async fn one_backend() -> (Backend, Tandem) {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&config(&pool("web", "round_robin", "", &[&backend])));
    (backend, tandem)
}

/// A request with both Content-Length and Transfer-Encoding is read by its Transfer-Encoding
/// alone, forwarded chunked without the Content-Length, answered, and its connection closed
/// after the answer (RFC 9112 §6.1): whatever follows on that connection is never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f01_cl_te_is_forwarded_chunked_without_content_length_and_the_connection_closed() {
    let (backend, tandem) = one_backend().await;
    let inner = "GET /admin HTTP/1.1\r\nHost: a\r\n\r\n";
    let cases = [
        // CL.TE: a front proxy reading the Content-Length sends `0\r\n\r\n` and then the GET.
        (
            "Content-Length: 6\r\nTransfer-Encoding: chunked".to_string(),
            "0\r\n\r\n".to_string(),
            0,
        ),
        // The same with the headers the other way round.
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 6".to_string(),
            "0\r\n\r\n".to_string(),
            0,
        ),
        // TE.CL: a front proxy reading the Content-Length would take `GET /admin` for a request.
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 4".to_string(),
            format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len()),
            inner.len(),
        ),
    ];
    for (number, (framing, body, length)) in cases.into_iter().enumerate() {
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\n{framing}\r\n\r\n{body}GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        );
        let (answer, closed) = raw_until_closed(&tandem, request.as_bytes(), false).await;
        assert_eq!(
            statuses(&answer),
            ["200"],
            "{framing:?}: one answer -> {answer}"
        );
        assert!(
            answer.ends_with(&format!("\r\n\r\n{length}")),
            "{framing:?}: the backend read a body of {length} bytes -> {answer}"
        );
        assert!(
            closed,
            "{framing:?}: the connection stays open after the answer"
        );
        assert_eq!(
            backend.count(),
            number + 1,
            "{framing:?}: one backend request"
        );
        let headers = backend.last_headers.lock().unwrap().clone().unwrap();
        assert_eq!(headers["transfer-encoding"], "chunked", "{framing:?}");
        assert!(
            !headers.contains_key("content-length"),
            "{framing:?}: {headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f02_bad_content_lengths_are_400() {
    let (backend, tandem) = one_backend().await;
    for length in [
        "0\r\nContent-Length: 5",
        "5, 6",
        "+5",
        "-1",
        "0x5",
        "1_0",
        "",
        "5 5",
        "18446744073709551616",
    ] {
        let request =
            format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\nhello");
        let answer = raw(&tandem, request.as_bytes()).await;
        assert_eq!(
            statuses(&answer),
            ["400"],
            "Content-Length: {length:?} -> {answer}"
        );
    }
    assert_eq!(backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f05_f06_malformed_header_lines_are_400() {
    let (backend, tandem) = one_backend().await;
    for line in [
        "Content-Length : 5",
        "X-A: a\r\n b",
        "Transfer-Encoding:\r\n chunked",
        "no colon here",
        "V: a\rSmuggled: x",
        "V: a\0b",
    ] {
        let request = format!("GET / HTTP/1.1\r\nHost: a\r\n{line}\r\n\r\n");
        let answer = raw(&tandem, request.as_bytes()).await;
        assert_eq!(statuses(&answer), ["400"], "{line:?} -> {answer}");
    }
    assert_eq!(backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f07_bad_request_lines_and_hosts_are_400() {
    let (backend, tandem) = one_backend().await;
    for head in [
        "GET  / HTTP/1.1\r\nHost: a",
        "GET / HTTP/1.32\r\nHost: a",
        "GET admin HTTP/1.1\r\nHost: a",
        "GET / HTTP/1.1",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b",
        "GET / HTTP/1.1\r\nHost: a b",
        "GET / HTTP/1.1\r\nHost: u@a",
        "GET / HTTP/1.1\r\nHost: a/b",
    ] {
        let answer = raw(&tandem, format!("{head}\r\n\r\n").as_bytes()).await;
        assert_eq!(statuses(&answer), ["400"], "{head:?} -> {answer}");
    }
    assert_eq!(backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_a_thousand_cookies_are_answered_at_once() {
    let (_backend, tandem) = one_backend().await;
    let cookies: Vec<String> = (0..1000)
        .map(|i| format!("JSESSIONID=x{i}.nowhere"))
        .collect();
    let answer = get_with(
        &client(),
        &tandem.url("/"),
        &[("cookie", &cookies.join("; "))],
    )
    .await;
    assert_eq!(answer.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a03_random_paths_and_ids_do_not_grow_the_metrics() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n{}",
        pool("web", "round_robin", "", &[&backend])
    )));
    let http = client();
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    get(&http, &tandem.url("/warm-up")).await;
    let before = series(&get(&http, &tandem.admin_url("/metrics")).await.body);
    for i in 0..300 {
        let path = format!("/r{i}/{}", i * 7919);
        let cookie = format!("JSESSIONID=id{i}.route{i}");
        get_with(&http, &tandem.url(&path), &[("cookie", &cookie)]).await;
    }
    let after = get(&http, &tandem.admin_url("/metrics")).await.body;
    assert_eq!(
        series(&after),
        before,
        "label sets come from the config only"
    );
    assert!(!after.contains("/r1"), "no paths in labels");
}

/// A raw backend that answers every request with `response`, then closes.
async fn raw_backend(response: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = stream.write_all(response).await;
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u03_malformed_backend_responses_are_502() {
    for response in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nhello",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ] {
        let backend = raw_backend(response).await;
        let tandem = Tandem::start(&config(&format!(
            "[[pool]]\nname = \"web\"\n[pool.retry]\nattempts = 1\n[[pool.backend]]\naddress = \"{backend}\"\n"
        )));
        let answer = get(&client(), &tandem.url("/")).await;
        assert_eq!(
            answer.status,
            502,
            "{:?} -> {}",
            String::from_utf8_lossy(response),
            answer.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d05_expect_100_continue_to_a_pool_that_cannot_serve_gets_no_100() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&config(&format!(
        "[[pool]]\nname = \"web\"\n{}state = \"stopped\"\n",
        backend.toml()
    )));
    let request = b"POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10000000000\r\n\r\n";
    let answer = raw(&tandem, request).await;
    assert_eq!(
        statuses(&answer),
        ["503"],
        "no 100 Continue first: {answer}"
    );
    assert_eq!(backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a01_admin_paths_on_the_public_listener_reach_the_pool_not_the_admin_handler() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"an-admin-token-long-enough\"\n\n{}",
        pool("web", "round_robin", "", &[&backend])
    )));
    let http = client();
    for path in [
        "/metrics",
        "/status",
        "/api/pools",
        "/api/sessions",
        "//metrics",
        "/%61pi/pools",
        "/x/../api/pools",
    ] {
        let answer = get_with(&http, &tandem.url(path), &[("host", "localhost")]).await;
        assert_eq!(answer.body, "a", "{path} went to the backend");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f03_unknown_transfer_codings_are_refused() {
    let (backend, tandem) = one_backend().await;
    for coding in [
        "xchunked",
        "chunked, gzip",
        "gzip",
        "identity",
        "\x0bchunked",
    ] {
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {coding}\r\nContent-Length: 5\r\n\r\nhello"
        );
        let answer = raw(&tandem, request.as_bytes()).await;
        let status = statuses(&answer);
        assert!(
            status == ["400"] || status == ["501"],
            "{coding:?} -> {answer}"
        );
    }
    assert_eq!(backend.count(), 0, "no unknown coding reached the backend");
}

/// Sends `bytes` on a fresh connection, then closes its sending half when `half_close`;
/// returns everything tandem answered and whether tandem closed the connection (within the
/// deadline).
async fn raw_until_closed(tandem: &Tandem, bytes: &[u8], half_close: bool) -> (String, bool) {
    let mut stream = tokio::net::TcpStream::connect(tandem.address)
        .await
        .unwrap();
    stream.write_all(bytes).await.unwrap();
    if half_close {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Err(_) => break false,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
        }
    };
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

/// A backend that reads every request body to its end and records how each ended: its
/// length, or `None` when it broke off (tandem aborted the upstream request and closed the
/// connection). `heads` counts the requests whose head arrived.
struct RecordingBackend {
    address: std::net::SocketAddr,
    heads: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Option<usize>>>>,
}

impl RecordingBackend {
    async fn start() -> RecordingBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let heads = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (counted, recorded) = (Arc::clone(&heads), Arc::clone(&bodies));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (counted, recorded) = (Arc::clone(&counted), Arc::clone(&recorded));
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (counted, recorded) = (Arc::clone(&counted), Arc::clone(&recorded));
                        async move {
                            counted.fetch_add(1, Ordering::SeqCst);
                            let length = http_body_util::BodyExt::collect(request.into_body())
                                .await
                                .ok()
                                .map(|body| body.to_bytes().len());
                            recorded.lock().unwrap().push(length);
                            Ok::<_, std::convert::Infallible>(text("ok"))
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        RecordingBackend {
            address,
            heads,
            bodies,
        }
    }

    /// How every body ended, once each request that arrived has ended.
    async fn settled_bodies(&self) -> Vec<Option<usize>> {
        let until = std::time::Instant::now() + DEADLINE;
        loop {
            let bodies = self.bodies.lock().unwrap().clone();
            if bodies.len() == self.heads.load(Ordering::SeqCst) {
                return bodies;
            }
            assert!(
                std::time::Instant::now() < until,
                "bodies still open: {bodies:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A chunked POST to `/upload` with `chunks` as its body.
fn chunked_upload(chunks: &str) -> String {
    format!("POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f04_malformed_chunk_lines_are_400_closed_and_the_backend_never_gets_the_body_whole() {
    let backend = RecordingBackend::start().await;
    let tandem = Tandem::start(&config(&format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{}\"\n",
        backend.address
    )));
    let long_extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(20_000));
    let rows = [
        " 5\r\nhello\r\n0\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        "+5\r\nhello\r\n0\r\n\r\n",
        "\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5\rhello\r\n0\r\n\r\n",
        "5\r\nhello\n0\r\n\r\n",
        "5;ext\nhello\r\n0\r\n\r\n",
        "11111111111111111\r\nhello\r\n0\r\n\r\n",
        &long_extension,
    ];
    for chunks in rows {
        let (answer, closed) =
            raw_until_closed(&tandem, chunked_upload(chunks).as_bytes(), false).await;
        let shown: String = chunks.chars().take(40).collect();
        assert_eq!(statuses(&answer), ["400"], "{shown:?} -> {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{shown:?} -> {answer}"
        );
        assert!(closed, "{shown:?}: tandem left the connection open");
    }
    // A well-formed body arrives whole; none of the malformed ones did.
    let answer = raw(
        &tandem,
        chunked_upload("5\r\nhello\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), ["200"], "{answer}");
    let bodies = backend.settled_bodies().await;
    assert_eq!(
        bodies.iter().flatten().collect::<Vec<_>>(),
        [&5],
        "only the well-formed body reached the backend whole: {bodies:?}"
    );
    let access = tandem.access_log();
    assert_eq!(
        access
            .lines()
            .filter(|line| line.contains("status=400"))
            .count(),
        rows.len(),
        "{access}"
    );
}

/// RFC 9112 §7.1: `chunk-size = 1*HEXDIG`, with no whitespace before the line's CRLF. A proxy in
/// front of tandem that reads these differently (one that stops at 16 digits) frames the body
/// differently: the start of smuggling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "hyper 1.12 (the newest) accepts whitespace after a chunk size and any number of leading zeros, with no option to refuse them"]
async fn f04_whitespace_after_a_chunk_size_and_overlong_sizes_are_400() {
    let backend = RecordingBackend::start().await;
    let tandem = Tandem::start(&config(&format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{}\"\n",
        backend.address
    )));
    for chunks in [
        "5 \r\nhello\r\n0\r\n\r\n",
        "5\t\r\nhello\r\n0\r\n\r\n",
        "0000000000000000005\r\nhello\r\n0\r\n\r\n",
    ] {
        let (answer, closed) =
            raw_until_closed(&tandem, chunked_upload(chunks).as_bytes(), false).await;
        assert_eq!(statuses(&answer), ["400"], "{chunks:?} -> {answer}");
        assert!(closed, "{chunks:?}: tandem left the connection open");
    }
    let bodies = backend.settled_bodies().await;
    assert!(bodies.iter().all(Option::is_none), "{bodies:?}");
}

/// 499 is nginx's log-only code for a client that went away: it goes in the access log, never
/// on the wire. A client that still reads gets a real status; one that is gone, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_is_logged_499_and_never_sent_it() {
    let (backend, tandem) = one_backend().await;
    // A streamed body broken off: the client closes its sending half mid-body.
    let mut streamed =
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    streamed.extend_from_slice(&[b'x'; 500_000]);
    // A small body (read whole before it is sent, for retries) broken off.
    let small = b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly half";
    // A whole request, then the client closes before the response head.
    let waiting = b"GET /slow?ms=3000 HTTP/1.1\r\nHost: a\r\n\r\n";
    for (bytes, path) in [
        (&streamed[..], "/upload"),
        (&small[..], "/small"),
        (&waiting[..], "/slow"),
    ] {
        let (answer, closed) = raw_until_closed(&tandem, bytes, true).await;
        assert!(closed, "{path}: the connection stays open");
        assert!(!answer.contains("499"), "{path} -> {answer}");
        assert!(
            statuses(&answer).iter().all(|status| *status == "400"),
            "{path}: a real status or nothing -> {answer}"
        );
        let line = tandem.wait_access(&format!("path={path} "));
        assert!(line.contains("status=499"), "{line}");
    }
    assert_eq!(get(&client(), &tandem.url("/")).await.status, 200);
    drop(backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f08_an_absolute_form_target_is_forwarded_with_its_own_host() {
    let (backend, tandem) = one_backend().await;
    let answer = raw(
        &tandem,
        b"GET http://other.internal/headers HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&answer), ["200"], "{answer}");
    let headers = backend.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(headers["host"], "other.internal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f09_a_get_with_a_body_and_a_pipelined_get_stay_two_requests() {
    let (backend, tandem) = one_backend().await;
    let answer = raw(
        &tandem,
        b"GET /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&answer), ["200", "200"], "{answer}");
    assert!(
        answer.contains("\r\n\r\n5"),
        "the body went with the first: {answer}"
    );
    assert_eq!(backend.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d03_a_slow_post_is_cut_off_at_the_body_idle_timeout() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&config_with_listen(
        "body_idle_timeout = \"300ms\"",
        &pool("web", "round_robin", "", &[&backend]),
    ));
    let mut stream = tokio::net::TcpStream::connect(tandem.address)
        .await
        .unwrap();
    let head = "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'x'; 20_000]).await.unwrap();
    // Then nothing: the upload stalls.
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "closed in time");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(statuses(&answer), ["408"], "{answer}");
    assert_took(
        started.elapsed(),
        Duration::from_millis(200)..Duration::from_secs(5),
        "cut off",
    );
    let until = std::time::Instant::now() + DEADLINE;
    while backend.open.load(std::sync::atomic::Ordering::SeqCst) != 0 {
        assert!(
            std::time::Instant::now() < until,
            "the backend request was not released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tandem.wait_log("the request body did not arrive within");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u06_sigterm_with_100_requests_in_flight_finishes_them_all() {
    let backend = Backend::start("a").await;
    let mut tandem = Tandem::start(&config(&pool("web", "round_robin", "", &[&backend])));
    let url = tandem.url("/slow?ms=1500");
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let request = http::Request::get(&url).body(empty()).unwrap();
                match client().request(request).await {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                }
            })
        })
        .collect();
    let until = std::time::Instant::now() + DEADLINE;
    while backend.open.load(std::sync::atomic::Ordering::SeqCst) < 100 {
        assert!(
            std::time::Instant::now() < until,
            "the 100 requests never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tandem.signal(nix::sys::signal::Signal::SIGTERM);
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    assert!(
        statuses.iter().all(|&s| s == 200),
        "every request in flight finished: {statuses:?}"
    );
    assert!(tandem.wait_exit().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d03_a_client_that_never_reads_is_cut_off_at_the_send_timeout() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&config_with_listen(
        "send_timeout = \"500ms\"",
        &pool("web", "round_robin", "", &[&backend]),
    ));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(tandem.address).await.unwrap();
    let request = "GET /download?bytes=50000000 HTTP/1.1\r\nHost: a\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read nothing until tandem has had its send timeout several times over.
    tandem.wait_log("took none of the response within the send timeout");
    let mut received = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection was closed");
    assert!(
        received < 50_000_000,
        "cut off before the end: {received} bytes"
    );
    // The next client is served as usual.
    assert_eq!(get(&client(), &tandem.url("/")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d02_d04_ten_thousand_idle_connections_are_closed_on_time_and_others_are_served() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const IDLE: usize = 10_000;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // This process and tandem each hold one end of every idle connection.
    assert!(
        hard >= IDLE as u64 + 1000,
        "this test needs {} open files per process (hard limit {hard}): scripts/test.sh raises it; by hand, `ulimit -Hn 65536` as root",
        IDLE + 1000
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(
        &config(&format!(
            "[admin]\naddress = \"127.0.0.1:0\"\n\n{}",
            pool("web", "round_robin", "", &[&backend])
        ))
        .replace(
            "shutdown_timeout = \"10s\"",
            "shutdown_timeout = \"10s\"\nmax_connections = 20000\nheader_read_timeout = \"2s\"",
        ),
    );
    let admin = tandem.admin_url("/healthz");
    // 10,000 connections that send nothing (D04), some with half a request head (D02).
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut stream = tokio::net::TcpStream::connect(tandem.address)
            .await
            .unwrap();
        if i % 10 == 0 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow")
                .await
                .unwrap();
        }
        idle.push(stream);
    }
    // Meanwhile others are served, and so is the admin listener.
    let http = client();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        assert_eq!(get(&http, &tandem.url("/")).await.status, 200);
        assert_took(
            started.elapsed(),
            Duration::ZERO..Duration::from_secs(1),
            "a control request",
        );
    }
    assert_eq!(get(&http, &admin).await.status, 200);
    // Every idle connection is closed by tandem once the header read timeout passes.
    let deadline = std::time::Instant::now() + DEADLINE;
    for mut stream in idle {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut buffer = [0u8; 512];
        let closed = tokio::time::timeout(left, async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "an idle connection was still open after the deadline"
        );
    }
    assert!(
        tandem.peak_rss() < 400 << 20,
        "memory stayed bounded: {}",
        tandem.peak_rss()
    );
    assert_eq!(get(&http, &tandem.url("/")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u03_a_backend_that_dies_mid_body_never_looks_like_a_complete_response() {
    for (response, framing) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"[..],
            "content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten b\r\n",
            "chunked",
        ),
    ] {
        let backend = raw_backend(response).await;
        let tandem = Tandem::start(&config(&format!(
            "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{backend}\"\n"
        )));
        let answer = raw(&tandem, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(statuses(&answer), ["200"], "{framing}: {answer}");
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        match framing {
            // Fewer bytes than announced, then the connection closed by tandem.
            "content-length" => assert!(body.len() < 100, "{body:?}"),
            // No last chunk: the client can tell the body was cut.
            _ => assert!(!body.ends_with("0\r\n\r\n"), "{body:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p01_rapid_reset_cancels_upstream_requests_and_tandem_keeps_serving() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n{}",
        pool("web", "round_robin", "", &[&backend])
    )));
    let in_flight = format!(
        "tandem_backend_requests_in_flight{{backend=\"{}\",pool=\"web\",route=\"a\"}}",
        backend.address
    );
    let tcp = tokio::net::TcpStream::connect(tandem.address)
        .await
        .unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    // HEADERS then RST_STREAM, as fast as the client goes, for up to 10,000 streams (the server
    // may end the connection with GOAWAY first, which is allowed).
    let mut sent = 0;
    for _ in 0..10_000 {
        let Ok(mut ready) = h2.clone().ready().await else {
            break;
        };
        let request = http::Request::get(tandem.url("/slow?ms=5000"))
            .body(())
            .unwrap();
        let Ok((response, _)) = ready.send_request(request, true) else {
            break;
        };
        drop(response);
        sent += 1;
    }
    // How many streams get in before the server's GOAWAY depends on how fast it accepts them
    // (hyper allows a few dozen pending resets); what matters is what follows.
    assert!(sent > 0, "the attack got going");
    // Every cancelled request is cancelled upstream too.
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let metrics = get(&client(), &tandem.admin_url("/metrics")).await.body;
        let open = metrics.lines().find_map(|line| {
            line.strip_prefix(in_flight.as_str())?
                .trim()
                .parse::<f64>()
                .ok()
        });
        if open == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "still in flight: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&client(), &tandem.url("/")).await.status, 200);
    assert!(
        tandem.peak_rss() < 300 << 20,
        "memory bounded: {}",
        tandem.peak_rss()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_answers_before_reading_the_body_does_not_get_its_connection_reused() {
    // The backend answers a POST at once without reading its body, then only drains; a GET at
    // the start of a connection is answered `second`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer: &[u8] = if head.starts_with(b"POST") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond"
                };
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                // Whatever comes next on this connection is never answered.
                while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
            });
        }
    });
    let tandem = Tandem::start(&config(&format!(
        "[[pool]]\nname = \"web\"\nresponse_timeout = \"5s\"\n[[pool.backend]]\naddress = \"{address}\"\n"
    )));
    let http = client();
    // More than the socket buffers hold, so that the backend's answer comes while tandem is
    // still sending the body.
    let upload = http::Request::post(tandem.url("/upload"))
        .header("content-length", 20_000_000)
        .body(streamed_body(20_000_000))
        .unwrap();
    let first = send(&http, upload).await;
    assert_eq!((first.status.as_u16(), first.body.as_str()), (200, "early"));
    let second = get(&http, &tandem.url("/next")).await;
    assert_eq!(
        (second.status.as_u16(), second.body.as_str()),
        (200, "second"),
        "the next request went on a fresh connection"
    );
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a02_no_session_id_or_attribute_shows_in_status_admin_metrics_or_logs() {
    let backend = Backend::start("a").await;
    let token = "admin-token-for-the-a02-test";
    let tandem = Tandem::start(&config(&format!(
        "[session]\nmode = \"proxy\"\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{token}\"\n\n{}",
        pool("web", "round_robin", "", &[&backend])
    )));
    let login = http::Request::get(tandem.url("/session"))
        .header(
            "x-respond-x-tandem-session-patch",
            r#"{"card":"SECRET-4111"}"#,
        )
        .body(empty())
        .unwrap();
    let answer = send(&client(), login).await;
    let cookie = answer.headers["set-cookie"].to_str().unwrap();
    let pair = cookie.split(';').next().unwrap().to_string();
    let id = pair.split(['=', '.']).nth(1).unwrap().to_string();
    // A refused update is logged, with the session named.
    let refused = http::Request::get(tandem.url("/session"))
        .header("cookie", &pair)
        .header("x-respond-x-tandem-session-patch", "not json")
        .body(empty())
        .unwrap();
    assert_eq!(send(&client(), refused).await.status, 502);
    tandem.wait_log("session update refused");

    let authorization = format!("Bearer {token}");
    let mut seen = vec![tandem.log(), tandem.access_log()];
    for path in [
        "/status",
        "/api/pools",
        "/metrics",
        "/api/config",
        "/readyz",
    ] {
        let url = tandem.admin_url(path);
        let answer = get_with(&client(), &url, &[("authorization", &authorization)]).await;
        assert_eq!(answer.status, 200, "{path}");
        seen.push(answer.body);
    }
    for text in seen {
        assert!(!text.contains(&id), "the raw session id shows: {text}");
        assert!(!text.contains("SECRET-4111"), "an attribute shows: {text}");
    }
    // Only the token-guarded session API shows them.
    let url = tandem.admin_url(&format!("/api/sessions/{id}"));
    assert_eq!(get(&client(), &url).await.status, 401);
    let answer = get_with(&client(), &url, &[("authorization", &authorization)]).await;
    assert!(answer.body.contains("SECRET-4111"), "{}", answer.body);
}
