//! `[listen] proxy_protocol`: behind an L4 balancer, each connection opens with a PROXY protocol
//! header (v1 or v2) naming the client, which the backend (X-Forwarded-For) and the access log
//! then see; any connection without a good header from a trusted balancer is closed unserved.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// The v2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: `command` 0 (LOCAL) or 1 (PROXY), `family` (0x11 TCP over IPv4, 0x21 over IPv6,
/// 0x00 unspecified), then the address block and TLVs as `payload`.
fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.push(0x20 | command);
    header.push(family);
    header.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    header.extend_from_slice(payload);
    header
}

/// The v2 address block for TCP from `source` to `destination` (both IPv4 or both IPv6).
fn v2_addresses(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let ip = |address: SocketAddr| match address {
        SocketAddr::V4(v4) => v4.ip().octets().to_vec(),
        SocketAddr::V6(v6) => v6.ip().octets().to_vec(),
    };
    let mut block = ip(source);
    block.extend(ip(destination));
    block.extend(source.port().to_be_bytes());
    block.extend(destination.port().to_be_bytes());
    block
}

/// A v2 PROXY header for TCP from `source`, with a NOOP TLV after the addresses as balancers
/// add TLVs.
fn v2_proxy(source: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let (family, destination) = match source {
        SocketAddr::V4(_) => (0x11, "127.0.0.1:80".parse().unwrap()),
        SocketAddr::V6(_) => (0x21, "[::1]:80".parse().unwrap()),
    };
    let mut payload = v2_addresses(source, destination);
    payload.extend_from_slice(&[0x04, 0x00, 0x02, 0xAA, 0xBB]);
    v2(1, family, &payload)
}

/// The config: a plain and a TLS listener with the PROXY protocol on from `from`, a 1 s header
/// read timeout, the admin listener, and one pool over `backend`.
fn proxy_config(pki: &Pki, from: &str, backend: &Backend) -> String {
    format!(
        "[listen]\naddresses = [\"127.0.0.1:0\"]\ntls_addresses = [\"127.0.0.1:0\"]\nshutdown_timeout = \"10s\"\nheader_read_timeout = \"1s\"\nproxy_protocol = true\nproxy_protocol_from = {from}\n{}\n[log]\nlevel = \"info\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{}",
        pki.certificate_tables(&["proxy"]),
        pool("web", "round_robin", "", &[backend])
    )
}

/// A connection to `address` that has sent `header` (in pieces of at most `piece` bytes, each
/// written on its own: TCP_NODELAY, and a pause so that tandem reads them apart).
async fn connect_with(address: SocketAddr, header: &[u8], piece: usize) -> TcpStream {
    let mut tcp = TcpStream::connect(address).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    for (i, part) in header.chunks(piece).enumerate() {
        if i > 0 {
            // Not a wait for a condition: it makes the header arrive in parts, the condition
            // under test (every split is also parsed in the unit tests of `proxy_protocol`).
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        tcp.write_all(part).await.unwrap();
    }
    tcp
}

fn headers_request(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri)
        .header("host", "shop.example")
        .body(Empty::new())
        .unwrap()
}

/// Sends `GET /headers` twice on one HTTP/1.1 connection over `io`; the backend's two answers.
async fn http1_twice<S>(io: S) -> Vec<String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut bodies = Vec::new();
    for _ in 0..2 {
        // The connection is ready again once the previous response's body is read through.
        sender
            .ready()
            .await
            .expect("the kept-alive connection is still open");
        let response = sender.send_request(headers_request("/headers")).await;
        let response = response.expect("an answer on the kept-alive connection");
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        bodies.push(String::from_utf8_lossy(&body).into_owned());
    }
    bodies
}

/// Sends `GET /headers` over HTTP/2 (prior knowledge) over `io`; the backend's answer.
async fn h2c_once<S>(io: S) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(headers_request("http://shop.example/headers"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

fn assert_forwarded_for(body: &str, client: &str, what: &str) {
    let expected = format!("x-forwarded-for: {client}");
    assert!(
        body.lines().any(|line| line == expected),
        "{what}: the backend did not see `{expected}`:\n{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_names_the_client_to_the_backend_and_the_access_log() {
    let backend = Backend::start("app").await;
    let pki = Pki::new();
    pki.issue("proxy", &["proxy.test"]);
    let tandem = Tandem::start(&proxy_config(&pki, "[\"127.0.0.0/8\"]", &backend));

    // (what, header, bytes per write, the client tandem must see)
    let rows: Vec<(&str, Vec<u8>, usize, &str)> = vec![
        (
            "v1 TCP4",
            b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n".to_vec(),
            usize::MAX,
            "203.0.113.7:40000",
        ),
        (
            "v1 TCP6",
            b"PROXY TCP6 2001:db8::7 ::1 40001 80\r\n".to_vec(),
            usize::MAX,
            "[2001:db8::7]:40001",
        ),
        (
            "v1 in two writes",
            b"PROXY TCP4 203.0.113.8 127.0.0.1 40002 80\r\n".to_vec(),
            20,
            "203.0.113.8:40002",
        ),
        (
            "v2 IPv4",
            v2_proxy("198.51.100.9:40003"),
            usize::MAX,
            "198.51.100.9:40003",
        ),
        (
            "v2 IPv6",
            v2_proxy("[2001:db8::9]:40004"),
            usize::MAX,
            "[2001:db8::9]:40004",
        ),
        (
            "v2 in two writes, cut inside the fixed part",
            v2_proxy("198.51.100.10:40005"),
            10,
            "198.51.100.10:40005",
        ),
    ];
    for (what, header, piece, client) in &rows {
        let tcp = connect_with(tandem.address, header, *piece).await;
        let bodies = http1_twice(tcp).await;
        let ip = client.rsplit_once(':').unwrap().0;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        for (i, body) in bodies.iter().enumerate() {
            assert_forwarded_for(body, ip, &format!("{what}, request {}", i + 1));
        }
        tandem.wait_access(&format!("client={client}"));
    }

    // h2c after the header.
    let tcp = connect_with(tandem.address, &v2_proxy("198.51.100.11:40006"), usize::MAX).await;
    assert_forwarded_for(&h2c_once(tcp).await, "198.51.100.11", "h2c after v2");
    tandem.wait_access("client=198.51.100.11:40006");

    // TLS after the header: the balancer sends it in the clear, then relays the handshake.
    let tcp = connect_with(
        tandem.tls_address(),
        b"PROXY TCP4 192.0.2.12 127.0.0.1 40007 443\r\n",
        usize::MAX,
    )
    .await;
    let tls = pki
        .client(&[b"http/1.1"])
        .connect(ServerName::try_from("proxy.test").unwrap(), tcp)
        .await
        .expect("TLS handshake after the PROXY header");
    for body in http1_twice(tls).await {
        assert_forwarded_for(&body, "192.0.2.12", "TLS after v1");
    }
    tandem.wait_access("client=192.0.2.12:40007");

    // A header that names no client (the balancer's own health check) leaves the connection's.
    let no_client: [(&str, Vec<u8>); 3] = [
        ("v2 LOCAL", v2(0, 0x00, &[])),
        (
            "v2 LOCAL with addresses",
            v2(
                0,
                0x11,
                &v2_addresses("10.9.9.9:1".parse().unwrap(), tandem.address),
            ),
        ),
        ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec()),
    ];
    for (what, header) in &no_client {
        let tcp = connect_with(tandem.address, header, usize::MAX).await;
        for body in http1_twice(tcp).await {
            assert_forwarded_for(&body, "127.0.0.1", what);
        }
    }
}

/// Reads `stream` to its end within the deadline; fails if tandem answered anything.
async fn assert_closed_unanswered(mut stream: TcpStream, what: &str) {
    let mut received = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut received)).await;
    let read = read.unwrap_or_else(|_| panic!("{what}: tandem kept the connection open"));
    // A reset (tandem closed with bytes unread) is closed too.
    if read.is_ok() {
        assert!(
            received.is_empty(),
            "{what}: tandem answered {:?}",
            String::from_utf8_lossy(&received)
        );
    }
}

/// The `tandem_proxy_protocol_rejected_total` counts, by reason.
async fn rejected(tandem: &Tandem, reason: &str) -> u64 {
    let metrics = get(&client(), &tandem.admin_url("/metrics")).await.body;
    let series = format!("tandem_proxy_protocol_rejected_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0)
}

/// Waits until the counts of `expected` (reason, count) are reached.
async fn wait_rejected(tandem: &Tandem, expected: &[(&str, u64)]) {
    let until = Instant::now() + DEADLINE;
    loop {
        let mut seen = Vec::new();
        for (reason, _) in expected {
            seen.push((*reason, rejected(tandem, reason).await));
        }
        if seen == expected {
            return;
        }
        assert!(
            Instant::now() < until,
            "rejections {seen:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_malformed_header_closes_the_connection_unserved() {
    let backend = Backend::start("app").await;
    let pki = Pki::new();
    pki.issue("proxy", &["proxy.test"]);
    let tandem = Tandem::start(&proxy_config(&pki, "[\"127.0.0.0/8\"]", &backend));
    let request = b"GET /headers HTTP/1.1\r\nhost: shop.example\r\n\r\n";
    let then_request = |header: &[u8]| [header, request].concat();
    let mut long_v1 = b"PROXY TCP4 ".to_vec();
    long_v1.resize(120, b'1');
    let mut bad_signature = v2_proxy("198.51.100.9:1");
    bad_signature[10] = b'X';
    let mut over_cap = v2_proxy("198.51.100.9:1");
    over_cap[14..16].copy_from_slice(&4097u16.to_be_bytes());
    let mut bad_version = v2_proxy("198.51.100.9:1");
    bad_version[12] = 0x31;
    let truncated = v2_proxy("198.51.100.9:1")[..20].to_vec();

    // (what, bytes sent, reason counted, whether tandem waits the header read timeout first)
    let rows: Vec<(&str, Vec<u8>, &str, bool)> = vec![
        ("plain HTTP, no header", request.to_vec(), "missing", false),
        (
            "a TLS ClientHello, no header",
            vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0],
            "missing",
            false,
        ),
        (
            "v1 with a bad source address",
            then_request(b"PROXY TCP4 203.0.113.999 127.0.0.1 40000 80\r\n"),
            "malformed",
            false,
        ),
        (
            "v1 with an IPv6 address under TCP4",
            then_request(b"PROXY TCP4 2001:db8::1 127.0.0.1 40000 80\r\n"),
            "malformed",
            false,
        ),
        (
            "v1 with a port out of range",
            then_request(b"PROXY TCP4 203.0.113.7 127.0.0.1 70000 80\r\n"),
            "malformed",
            false,
        ),
        (
            "v1 ending in LF alone",
            then_request(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\n"),
            "malformed",
            false,
        ),
        ("v1 without CRLF in 107 bytes", long_v1, "too_long", false),
        (
            "v2 with a bad signature",
            then_request(&bad_signature),
            "missing",
            false,
        ),
        (
            "v2 announcing more than 4 KiB",
            then_request(&over_cap),
            "too_long",
            false,
        ),
        (
            "v2 with version 3",
            then_request(&bad_version),
            "malformed",
            false,
        ),
        ("v2 cut short, then silence", truncated, "timeout", true),
        (
            "v1 cut short, then silence",
            b"PROXY TCP4 203.0.113.7 ".to_vec(),
            "timeout",
            true,
        ),
    ];
    let mut expected: Vec<(&str, u64)> = Vec::new();
    for (what, bytes, reason, waits) in &rows {
        let started = Instant::now();
        let tcp = connect_with(tandem.address, bytes, usize::MAX).await;
        assert_closed_unanswered(tcp, what).await;
        let upper = if *waits {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(900)
        };
        let lower = if *waits {
            Duration::from_millis(900)
        } else {
            Duration::ZERO
        };
        assert_took(started.elapsed(), lower..upper, what);
        match expected.iter_mut().find(|(r, _)| r == reason) {
            Some((_, count)) => *count += 1,
            None => expected.push((reason, 1)),
        }
        wait_rejected(&tandem, &expected).await;
    }
    assert_eq!(backend.count(), 0, "no request reached the backend");
    // The TLS listener, too, wants the header first.
    let tcp = connect_with(tandem.tls_address(), request, usize::MAX).await;
    assert_closed_unanswered(tcp, "plain HTTP on the TLS listener").await;
    let missing = expected.iter().find(|(r, _)| *r == "missing").unwrap().1;
    expected.retain(|(r, _)| *r != "missing");
    expected.push(("missing", missing + 1));
    wait_rejected(&tandem, &expected).await;
    tandem.wait_log_all(&["PROXY protocol header refused", "peer=127.0.0.1:"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outside_proxy_protocol_from_is_refused_whatever_it_sends() {
    let backend = Backend::start("app").await;
    let pki = Pki::new();
    pki.issue("proxy", &["proxy.test"]);
    let tandem = Tandem::start(&proxy_config(
        &pki,
        "[\"10.0.0.0/8\", \"fd00::/8\"]",
        &backend,
    ));
    let header = [
        &b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n"[..],
        b"GET /headers HTTP/1.1\r\nhost: shop.example\r\n\r\n",
    ]
    .concat();
    for address in [tandem.address, tandem.tls_address()] {
        let tcp = connect_with(address, &header, usize::MAX).await;
        assert_closed_unanswered(tcp, "a PROXY header from 127.0.0.1").await;
    }
    wait_rejected(&tandem, &[("untrusted_peer", 2)]).await;
    tandem.wait_log_all(&[
        "PROXY protocol header refused",
        "peer=127.0.0.1:",
        "untrusted_peer",
    ]);
    assert_eq!(backend.count(), 0);
}

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["--check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stderr)
}

#[test]
fn proxy_protocol_needs_its_networks_and_they_need_it() {
    let pool = "[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:9\"\n";
    // (the [listen] keys, the key and line an error names; None: valid)
    let rows: [(&str, Option<(&str, &str)>); 7] = [
        (
            "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.7\"]",
            None,
        ),
        ("proxy_protocol = false", None),
        (
            "proxy_protocol = true",
            Some(("listen.proxy_protocol", ":3")),
        ),
        (
            "proxy_protocol_from = [\"10.0.0.0/8\"]",
            Some(("listen.proxy_protocol_from", ":3")),
        ),
        (
            "proxy_protocol = true\nproxy_protocol_from = []",
            Some(("listen.proxy_protocol_from", ":4")),
        ),
        (
            "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"ten\"]",
            Some(("listen.proxy_protocol_from[1]", ":4")),
        ),
        (
            "accept-proxy = true",
            Some(("did you mean `proxy_protocol`", ":3")),
        ),
    ];
    for (keys, error) in rows {
        let config = format!("[listen]\naddresses = [\"127.0.0.1:0\"]\n{keys}\n{pool}");
        let (valid, stderr) = check(&config);
        match error {
            None => assert!(valid, "`{keys}` refused:\n{stderr}"),
            Some((key, line)) => {
                assert!(!valid, "`{keys}` accepted");
                assert!(
                    stderr
                        .lines()
                        .any(|l| l.contains(key) && l.contains(&format!("tandem.toml{line}"))),
                    "`{keys}`: no error naming {key} at line{line}:\n{stderr}"
                );
            }
        }
    }
}
