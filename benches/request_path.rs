//! The request path through tandem over loopback, against the same request sent directly to the
//! backend: the difference is what tandem adds per request. Quote ratios, not absolute times.
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

use tandem::config::Config;
use tandem::runtime::Runtime;
use tandem::server;

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
                let service = service_fn(|_request: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(&[b'x'; 100]))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// tandem in this process on a free port, round robin over `backends`, access log off.
async fn start_tandem(backends: &[SocketAddr]) -> SocketAddr {
    let mut text = String::from("[listen]\naddresses = [\"127.0.0.1:0\"]\n[log]\naccess_log = \"off\"\n[[pool]]\nname = \"bench\"\n");
    for backend in backends {
        text.push_str(&format!("[[pool.backend]]\naddress = \"{backend}\"\n"));
    }
    let config = Config::parse(Path::new("bench.toml"), &text).expect("bench config");
    let listeners = server::bind(&config.listen.addresses).await.unwrap();
    let address = listeners[0].local_addr().unwrap();
    let limits = config.listen.clone();
    let runtime = Arc::new(Runtime::new(config));
    tokio::spawn(async move {
        server::serve(listeners, runtime, &limits, std::future::pending()).await
    });
    address
}

fn request_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (direct, proxied) = rt.block_on(async {
        let backends = [start_backend().await, start_backend().await];
        (backends[0], start_tandem(&backends).await)
    });
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut group = c.benchmark_group("keep_alive_get");
    for (name, address) in [("direct", direct), ("through_tandem", proxied)] {
        let uri: hyper::Uri = format!("http://{address}/").parse().unwrap();
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let response = client.get(uri.clone()).await.expect("response");
                assert!(response.status().is_success());
                response.into_body().collect().await.expect("body");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
