//! TLS on the public listeners, with certificates made at test time (rcgen): TLS 1.3 with h2
//! and with http/1.1 (a hyper client over tokio-rustls, and curl), the certificate picked by
//! SNI, certificates swapped on reload without dropping open connections, a broken certificate
//! refused, TLS 1.0 refused, and the plain listener's redirect to HTTPS.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The config: a plain listener (redirecting to HTTPS when asked), a TLS listener with the
/// certificates `stems`, one pool over `backend`.
fn tls_config(pki: &Pki, stems: &[&str], backend: &Backend, redirect: bool) -> String {
    format!(
        "[listen]\naddresses = [\"127.0.0.1:0\"]\ntls_addresses = [\"127.0.0.1:0\"]\nredirect_to_https = {redirect}\n{}\n[log]\nlevel = \"info\"\n\n{}",
        pki.certificate_tables(stems),
        pool("web", "round_robin", "", &[backend])
    )
}

/// What one TLS connection negotiated, and the answer to one GET over it.
struct Exchange {
    version: rustls::ProtocolVersion,
    alpn: Option<Vec<u8>>,
    certificate: Vec<u8>,
    status: u16,
    body: String,
}

/// Opens a TLS connection to `address` for `server_name` offering `alpn`, and sends `GET path`
/// with HTTP/2 or HTTP/1.1 as negotiated.
async fn exchange(
    pki: &Pki,
    address: SocketAddr,
    server_name: &str,
    alpn: &[u8],
    path: &str,
) -> Exchange {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let tls = pki
        .client(&[alpn])
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    let version = session.protocol_version().unwrap();
    let negotiated = session.alpn_protocol().map(<[u8]>::to_vec);
    let certificate = session.peer_certificates().unwrap()[0].to_vec();
    let request = http::Request::get(format!("https://{server_name}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let io = TokioIo::new(tls);
    let response = if negotiated.as_deref() == Some(b"h2") {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Exchange {
        version,
        alpn: negotiated,
        certificate,
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn curl(pki: &Pki, address: SocketAddr, host: &str, arguments: &[&str]) -> (bool, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(pki.path("ca.pem"))
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", address.port()))
        .args(arguments)
        .arg(format!("https://{host}:{}/", address.port()))
        .output()
        .unwrap_or_else(|error| panic!("cannot run curl ({error}): run scripts/install-test-deps.sh, which installs Debian's curl"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_13_serves_h2_and_http11_with_the_certificate_sni_names() {
    let backend = Backend::start("app").await;
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let b = pki.issue("b", &["b.test"]);
    let wild = pki.issue("wild", &["*.wild.test"]);
    let tandem = Tandem::start(&tls_config(&pki, &["a", "b", "wild"], &backend, false));
    let address = tandem.tls_address();

    for (alpn, expected) in [(&b"h2"[..], "h2"), (b"http/1.1", "http/1.1")] {
        let seen = exchange(&pki, address, "b.test", alpn, "/").await;
        assert_eq!(seen.version, rustls::ProtocolVersion::TLSv1_3);
        assert_eq!(seen.alpn.as_deref(), Some(expected.as_bytes()));
        assert_eq!((seen.status, seen.body.as_str()), (200, "app"));
        assert_eq!(seen.certificate, b, "SNI b.test gets b's certificate");
    }
    assert_eq!(
        exchange(&pki, address, "a.test", b"h2", "/")
            .await
            .certificate,
        a
    );
    assert_eq!(
        exchange(&pki, address, "shop.wild.test", b"h2", "/")
            .await
            .certificate,
        wild
    );
    // The backend hears that the client came over TLS.
    let headers = exchange(&pki, address, "a.test", b"http/1.1", "/headers").await;
    assert!(
        headers.body.contains("x-forwarded-proto: https"),
        "{}",
        headers.body
    );

    // curl, as a user would run it.
    let (ok, out) = curl(
        &pki,
        address,
        "b.test",
        &["--http2", "--tlsv1.3", "-w", " %{http_version}"],
    );
    assert!(ok, "{out}");
    assert_eq!(out, "app 2");
    let (ok, out) = curl(
        &pki,
        address,
        "b.test",
        &["--http1.1", "-w", " %{http_version}"],
    );
    assert!(ok, "{out}");
    assert_eq!(out, "app 1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_10_client_is_refused() {
    let backend = Backend::start("app").await;
    let pki = Pki::new();
    pki.issue("a", &["a.test"]);
    let tandem = Tandem::start(&tls_config(&pki, &["a"], &backend, false));
    // A TLS 1.0 ClientHello (no extensions; one TLS 1.0 cipher suite), written by hand since
    // no client here still speaks TLS 1.0.
    let mut hello = vec![0x03, 0x01];
    hello.extend_from_slice(&[7u8; 32]);
    hello.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00]);
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    let mut stream = tokio::net::TcpStream::connect(tandem.tls_address())
        .await
        .unwrap();
    stream.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was closed");
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "an alert, not a ServerHello: {answer:?}"
    );
    tandem.wait_log("TLS handshake failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_certificates_without_dropping_connections_and_refuses_a_broken_one() {
    let backend = Backend::start("app").await;
    let pki = Pki::new();
    let old = pki.issue("a", &["a.test"]);
    let config = tls_config(&pki, &["a"], &backend, false);
    let tandem = Tandem::start(&config);
    let address = tandem.tls_address();
    // A connection opened before the reload.
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from("a.test").unwrap();
    let tls = pki.client(&[b"h2"]).connect(name, tcp).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);

    let renewed = pki.issue("a", &["a.test"]);
    assert_ne!(old, renewed);
    tandem.reload(&config);
    assert_eq!(
        exchange(&pki, address, "a.test", b"h2", "/")
            .await
            .certificate,
        renewed
    );
    let request = http::Request::get("https://a.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .expect("the old connection still works");
    assert_eq!(response.status(), 200);

    // A broken certificate file: the reload is refused with its location, the old one stays.
    std::fs::write(pki.path("a.pem"), "-----BEGIN CERTIFICATE-----\nnonsense\n").unwrap();
    tandem.signal(nix::sys::signal::Signal::SIGHUP);
    tandem.wait_log_all(&["config error", "listen.certificate[0]"]);
    tandem.wait_log("reload refused");
    assert_eq!(
        exchange(&pki, address, "a.test", b"h2", "/")
            .await
            .certificate,
        renewed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_listener_redirects_to_https() {
    let backend = Backend::start("app").await;
    let pki = Pki::new();
    pki.issue("a", &["a.test"]);
    let tandem = Tandem::start(&tls_config(&pki, &["a"], &backend, true));
    let https_port = tandem.tls_address().port();
    let answer = get_with(
        &client(),
        &tandem.url("/cart?item=1"),
        &[("host", "a.test:80")],
    )
    .await;
    assert_eq!(answer.status, 308);
    assert_eq!(
        answer.headers["location"],
        format!("https://a.test:{https_port}/cart?item=1").as_str()
    );
    assert_eq!(
        backend.count(),
        0,
        "nothing reaches a backend in plain HTTP"
    );
}

#[test]
fn check_names_a_certificate_that_does_not_match_its_key() {
    let pki = Pki::new();
    pki.issue("a", &["a.test"]);
    pki.issue("b", &["b.test"]);
    let config = format!(
        "[listen]\ntls_addresses = [\"127.0.0.1:0\"]\n[[listen.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:9\"\n",
        pki.path("a.pem").display(),
        pki.path("b.key").display()
    );
    let file = pki.path("tandem.toml");
    std::fs::write(&file, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["--check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("tandem.toml:4: listen.certificate[0]")
            && stderr.contains("does not belong"),
        "{stderr}"
    );
}

/// A backend that speaks HTTP/1.1 over TLS with the certificate `<stem>.pem`, answering
/// `tls backend` to everything.
async fn tls_backend(pki: &Pki, stem: &str) -> SocketAddr {
    let cert = pki.path(&format!("{stem}.pem"));
    let key = pki.path(&format!("{stem}.key"));
    let certificates = vec![tandem::config::CertificateConfig { cert, key }];
    let config = tandem::tls::server_config(&certificates).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(text("tls backend"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    address
}

fn tls_pool(backend: SocketAddr, tls_keys: &str) -> String {
    config(&format!(
        "[[pool]]\nname = \"secure\"\n[pool.tls]\n{tls_keys}\n[[pool.backend]]\naddress = \"{backend}\"\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_over_tls_are_verified_against_the_pools_ca() {
    let pki = Pki::new();
    pki.issue("backend", &["127.0.0.1", "backend.internal"]);
    pki.issue("named", &["backend.internal"]);
    let by_ip = tls_backend(&pki, "backend").await;
    let by_name = tls_backend(&pki, "named").await;
    let ca = format!("ca = \"{}\"", pki.path("ca.pem").display());

    let verified = Tandem::start(&tls_pool(by_ip, &ca));
    let answer = get(&client(), &verified.url("/")).await;
    assert_eq!(
        (answer.status.as_u16(), answer.body.as_str()),
        (200, "tls backend")
    );

    // A certificate for a name, not the IP: verified against `server_name`.
    let named = Tandem::start(&tls_pool(
        by_name,
        &format!("{ca}\nserver_name = \"backend.internal\""),
    ));
    assert_eq!(get(&client(), &named.url("/")).await.status, 200);
    let unnamed = Tandem::start(&tls_pool(by_name, &ca));
    assert_eq!(get(&client(), &unnamed.url("/")).await.status, 502);
    unnamed.wait_log("certificate");

    // Another CA's certificate is refused.
    let stranger = Pki::new();
    let other_ca = format!("ca = \"{}\"", stranger.path("ca.pem").display());
    let refused = Tandem::start(&tls_pool(by_ip, &other_ca));
    assert_eq!(get(&client(), &refused.url("/")).await.status, 502);
    refused.wait_log("invalid peer certificate");

    // The test-only opt-out works, and says so loudly.
    let insecure = Tandem::start(&tls_pool(by_ip, "insecure_skip_verify = true"));
    assert_eq!(get(&client(), &insecure.url("/")).await.status, 200);
    insecure.wait_log("NOT verified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_can_speak_tls_too() {
    let backend = Backend::start("app").await;
    let pki = Pki::new();
    pki.issue("a", &["a.test"]);
    let config = tls_config(&pki, &["a"], &backend, false).replacen(
        "[log]",
        "[admin]\naddress = \"127.0.0.1:0\"\ntls = true\n\n[log]",
        1,
    );
    let tandem = Tandem::start(&config);
    let admin = tandem.admin_address();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(pki.path("ca.pem"))
        .arg("--resolve")
        .arg(format!("a.test:{}:127.0.0.1", admin.port()))
        .arg(format!("https://a.test:{}/healthz", admin.port()))
        .output()
        .expect("curl: run scripts/install-test-deps.sh");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok\n");
    // Plain HTTP gets no answer.
    let plain = tokio::time::timeout(
        DEADLINE,
        client().request(
            http::Request::get(format!("http://{admin}/healthz"))
                .body(empty())
                .unwrap(),
        ),
    )
    .await
    .expect("answered or closed in time");
    assert!(plain.is_err(), "plain HTTP on a TLS admin listener");
}

/// `[pool.tls]` without `ca` verifies against the operating system's trust store (read from
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` here); an empty or unreadable store is a config error naming
/// the pool, for `--check` and at start, instead of a pool that silently trusts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_ca_uses_the_system_trust_store_and_refuses_an_empty_one() {
    let pki = Pki::new();
    pki.issue("backend", &["127.0.0.1"]);
    let backend = tls_backend(&pki, "backend").await;
    let config = tls_pool(backend, "");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, &config).unwrap();
    let empty_file = dir.path().join("empty.pem");
    std::fs::write(&empty_file, "").unwrap();
    let empty_dir = dir.path().join("certs");
    std::fs::create_dir(&empty_dir).unwrap();
    let missing_file = dir.path().join("missing.pem");

    // The system store holding the test CA: the backend verifies.
    let trusted = Tandem::start_with_env(
        &config,
        &[("SSL_CERT_FILE", pki.path("ca.pem").as_os_str())],
    );
    let answer = get(&client(), &trusted.url("/")).await;
    assert_eq!(
        (answer.status.as_u16(), answer.body.as_str()),
        (200, "tls backend")
    );

    let pool_line = config
        .lines()
        .position(|line| line == "name = \"secure\"")
        .expect("the pool's name line")
        + 1;
    for store in [
        [
            ("SSL_CERT_FILE", empty_file.as_os_str()),
            ("SSL_CERT_DIR", empty_dir.as_os_str()),
        ],
        [
            ("SSL_CERT_FILE", missing_file.as_os_str()),
            ("SSL_CERT_DIR", "".as_ref()),
        ],
    ] {
        for check in [true, false] {
            let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
            if check {
                command.arg("--check");
            }
            let output = command
                .arg("-c")
                .arg(&path)
                .envs(store)
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(78),
                "check {check}, {store:?}: {stderr}"
            );
            assert!(
                stderr.contains(&format!("tandem.toml:{pool_line}: pool[0].tls.ca"))
                    && stderr.contains("pool `secure`")
                    && stderr.contains("trust store holds no CA certificate")
                    && stderr.contains("set `ca = ")
                    && stderr.contains("ca-certificates"),
                "check {check}, {store:?}: {stderr}"
            );
        }
    }
}
