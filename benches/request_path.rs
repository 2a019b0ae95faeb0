//! The request path through tandem over loopback, against the same request sent directly to the
//! backend: the difference is what tandem adds per request, and what a 1 KiB proxy-mode session
//! adds on top. Quote ratios, not absolute times.
//!
//! `cargo bench --bench request_path`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use tandem::app::App;
use tandem::config::Config;
use tandem::session::clock::SystemClock;

/// A backend answering 100 bytes, as the load rig's tinyback does.
async fn start_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                    let mut response = Response::new(Full::new(Bytes::from_static(&[b'x'; 100])));
                    if request.uri().path() == "/login" {
                        // A 1 KiB session for the session benchmark.
                        let patch = format!(r#"{{"cart":"{}"}}"#, "c".repeat(1000));
                        response.headers_mut().insert(
                            "x-tandem-session-patch",
                            http::HeaderValue::from_str(&patch).unwrap(),
                        );
                    }
                    Ok::<_, Infallible>(response)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// tandem in this process on a free port, round robin over `backends`, access log off, with
/// `extra` config appended.
async fn start_tandem(backends: &[SocketAddr], extra: &str) -> SocketAddr {
    let mut text = format!("[listen]\naddresses = [\"127.0.0.1:0\"]\n[log]\naccess_log = \"off\"\n{extra}\n[[pool]]\nname = \"bench\"\n[pool.sticky]\nmode = \"off\"\n");
    for backend in backends {
        text.push_str(&format!("[[pool.backend]]\naddress = \"{backend}\"\n"));
    }
    let config = Config::parse(Path::new("bench.toml"), &text).expect("bench config");
    let app = App::bind(config, Arc::new(SystemClock)).await.unwrap();
    let address = app.public_addresses()[0].0;
    tokio::spawn(app.serve(std::future::pending()));
    address
}

/// Logs in through a proxy-mode tandem: the backend stores 1 KiB, tandem sets the cookie.
async fn session_cookie(
    client: &Client<HttpConnector, Empty<Bytes>>,
    tandem: SocketAddr,
) -> String {
    let uri: hyper::Uri = format!("http://{tandem}/login").parse().unwrap();
    let response = client.get(uri).await.expect("login");
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

fn request_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let (direct, proxied, with_session, cookie) = rt.block_on(async {
        let backends = [start_backend().await, start_backend().await];
        let proxied = start_tandem(&backends, "").await;
        let with_session = start_tandem(&backends, "[session]\nmode = \"proxy\"").await;
        let cookie = session_cookie(&client, with_session).await;
        (backends[0], proxied, with_session, cookie)
    });
    let mut group = c.benchmark_group("keep_alive_get");
    let targets = [
        ("direct", direct, None),
        ("through_tandem", proxied, None),
        ("through_tandem_1kib_session", with_session, Some(cookie)),
    ];
    for (name, address, cookie) in targets {
        let uri: hyper::Uri = format!("http://{address}/").parse().unwrap();
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let mut request = Request::get(uri.clone());
                if let Some(cookie) = &cookie {
                    request = request.header("cookie", cookie);
                }
                let request = request.body(Empty::new()).unwrap();
                let response = client.request(request).await.expect("response");
                assert!(response.status().is_success());
                response.into_body().collect().await.expect("body");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
