//! Each failure answered with its status, a plain-text body, an access line and a logged reason;
//! and client limits answered or closed, never left hanging.

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

fn single_backend_pool(address: std::net::SocketAddr, extra: &str) -> String {
    config(&format!(
        "[[pool]]\nname = \"web\"\n{extra}\n[[pool.backend]]\naddress = \"{address}\"\n"
    ))
}

#[tokio::test]
async fn refused_connection_is_502() {
    let tandem = Tandem::start(&single_backend_pool(refusing_address(), ""));
    let answer = get(&client(), &tandem.url("/")).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.headers["content-type"], "text/plain; charset=utf-8");
    assert!(
        answer.body.starts_with("502 Bad Gateway"),
        "{}",
        answer.body
    );
    tandem.wait_log("cannot connect to the backend");
    tandem.wait_access("status=502");
}

#[tokio::test]
async fn backend_closing_without_answer_is_502() {
    let (address, _backend) = resetting_backend().await;
    let tandem = Tandem::start(&single_backend_pool(address, ""));
    let answer = get(&client(), &tandem.url("/")).await;
    assert_eq!(answer.status, 502);
    tandem.wait_log("the backend failed");
}

#[tokio::test]
async fn backend_that_never_answers_is_504_at_the_response_timeout() {
    let (address, _backend) = silent_backend().await;
    let tandem = Tandem::start(&single_backend_pool(
        address,
        "response_timeout = \"500ms\"",
    ));
    let started = Instant::now();
    let answer = get(&client(), &tandem.url("/")).await;
    assert_eq!(answer.status, 504);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "answered before the timeout"
    );
    assert!(
        answer.body.starts_with("504 Gateway Timeout"),
        "{}",
        answer.body
    );
    tandem.wait_log("did not answer in time");
}

#[tokio::test]
async fn pool_without_usable_backend_is_503() {
    let backend = Backend::start("b").await;
    let pools = format!(
        "[[pool]]\nname = \"web\"\n{}state = \"stopped\"\n",
        backend.toml()
    );
    let tandem = Tandem::start(&config(&pools));
    let answer = get(&client(), &tandem.url("/")).await;
    assert_eq!(answer.status, 503);
    assert_eq!(backend.count(), 0);
    tandem.wait_log("no backend of pool `web` takes new requests");
}

/// One backend behind a tandem with extra `[listen]` keys.
async fn tandem_with_listen(listen_keys: &str) -> (Backend, Tandem) {
    let backend = Backend::start("b").await;
    let pools = pool("web", "round_robin", "", &[&backend]);
    let tandem = Tandem::start(&config_with_listen(listen_keys, &pools));
    (backend, tandem)
}

/// Sends raw bytes and reads until the server closes the connection (or the deadline).
async fn raw_exchange(tandem: &Tandem, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(tandem.address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "connection left open; got so far: {}",
        String::from_utf8_lossy(&answer)
    );
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn overlong_target_is_414_and_oversized_head_is_431() {
    let (backend, tandem) =
        tandem_with_listen("max_uri_length = 1024\nmax_header_size = \"16KiB\"\nmax_headers = 50")
            .await;

    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "x".repeat(2000));
    let answer = raw_exchange(&tandem, long_target.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");

    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nCookie: {}\r\n\r\n",
        "c".repeat(20_000)
    );
    let answer = raw_exchange(&tandem, huge_header.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let many_headers: String = (0..60).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw_exchange(
        &tandem,
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn http11_request_without_host_is_400() {
    let backend = Backend::start("b").await;
    let tandem = Tandem::start(&config(&pool("web", "round_robin", "", &[&backend])));
    let answer = raw_exchange(&tandem, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn slow_header_sender_is_cut_off_at_the_header_timeout() {
    let (backend, tandem) = tandem_with_listen("header_read_timeout = \"500ms\"").await;
    let started = Instant::now();
    let answer = raw_exchange(&tandem, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").await;
    let elapsed = started.elapsed();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert_took(
        elapsed,
        Duration::from_millis(450)..Duration::from_secs(5),
        "closed",
    );
    assert_eq!(
        backend.count(),
        0,
        "a request without a complete head reached the backend"
    );
}

#[tokio::test]
async fn a_small_body_that_stalls_is_answered_408() {
    let (backend, tandem) = tandem_with_listen("header_read_timeout = \"500ms\"").await;
    let started = Instant::now();
    let answer = raw_exchange(
        &tandem,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_took(
        started.elapsed(),
        Duration::from_millis(450)..Duration::from_secs(5),
        "answered",
    );
    assert_eq!(backend.count(), 0, "a partial body reached the backend");
}

#[tokio::test]
async fn silent_connection_is_closed_at_the_header_timeout() {
    let (backend, tandem) = tandem_with_listen("header_read_timeout = \"500ms\"").await;
    let started = Instant::now();
    let answer = raw_exchange(&tandem, b"").await;
    let elapsed = started.elapsed();
    assert!(answer.is_empty(), "{answer}");
    assert_took(
        elapsed,
        Duration::from_millis(450)..Duration::from_secs(5),
        "closed",
    );
    assert_eq!(
        backend.count(),
        0,
        "a request without a complete head reached the backend"
    );
}

/// Sends requests one after another on one connection for `busy_for`; every one must succeed.
async fn keep_one_connection_busy(tandem: &Tandem, http2: bool, busy_for: Duration) -> usize {
    let stream = TcpStream::connect(tandem.address).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let until = Instant::now() + busy_for;
    let mut sent = 0;
    if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        while Instant::now() < until {
            let request = http::Request::get(tandem.url("/slow?ms=20"))
                .body(empty())
                .unwrap();
            let response = sender
                .send_request(request)
                .await
                .expect("request on the busy h2 connection");
            assert_eq!(response.status(), 200);
            sent += 1;
        }
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        while Instant::now() < until {
            let request = http::Request::get("/slow?ms=20")
                .header("host", "a")
                .body(empty())
                .unwrap();
            let response = sender
                .send_request(request)
                .await
                .expect("request on the busy connection");
            assert_eq!(response.status(), 200);
            http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap();
            sent += 1;
        }
    }
    sent
}

#[tokio::test]
async fn a_busy_connection_outlives_the_header_timeout() {
    let (_backend, tandem) =
        tandem_with_listen("header_read_timeout = \"300ms\"\nidle_timeout = \"60s\"").await;
    for http2 in [false, true] {
        let sent = keep_one_connection_busy(&tandem, http2, Duration::from_millis(1500)).await;
        assert!(sent > 10, "only {sent} requests went through");
    }
}

#[tokio::test]
async fn idle_h2c_connection_is_closed_after_the_idle_timeout() {
    let (_backend, tandem) = tandem_with_listen("idle_timeout = \"400ms\"").await;
    let stream = TcpStream::connect(tandem.address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(tandem.url("/")).body(empty()).unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    let idle_since = Instant::now();
    let closed = tokio::time::timeout(DEADLINE, connection).await;
    assert!(closed.is_ok(), "idle connection never closed");
    let elapsed = idle_since.elapsed();
    assert_took(
        elapsed,
        Duration::from_millis(350)..Duration::from_secs(2),
        "closed",
    );
}

#[tokio::test]
async fn idle_client_that_ignores_goaway_is_cut_off() {
    let (_backend, tandem) = tandem_with_listen("idle_timeout = \"400ms\"").await;
    // An h2 preface and nothing else: this client never acknowledges tandem's GOAWAY and PING.
    let mut stream = TcpStream::connect(tandem.address).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "idle connection never closed");
    let elapsed = started.elapsed();
    assert_took(
        elapsed,
        Duration::from_millis(700)..Duration::from_secs(3),
        "closed",
    );
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes() {
    let (_backend, tandem) = tandem_with_listen("max_connections = 2").await;
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(tandem.address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buffer = [0u8; 512];
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    // The third connection is accepted by the kernel but not served while two are open.
    let mut third = TcpStream::connect(tandem.address).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buffer = [0u8; 512];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "a third connection was served over max_connections = 2"
    );
    drop(held.pop());
    let n = tokio::time::timeout(DEADLINE, third.read(&mut buffer))
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert!(
        buffer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buffer[..n])
    );
}
