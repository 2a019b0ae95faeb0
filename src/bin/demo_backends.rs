//! Three tiny backends for trying tandem with `config.example.toml`: each answers every request
//! with its own name, so that balancing shows at once.
//!
//! `tandem-demo-backends` (`cargo run --release --bin tandem-demo-backends`) listens on
//! 127.0.0.1:9001, :9002 and :9003, or on the addresses given as arguments (port 0 picks a free
//! one), and prints one line per backend with the address it is bound to, until interrupted.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut addresses: Vec<String> = std::env::args().skip(1).collect();
    if addresses.is_empty() {
        addresses = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
            .map(String::from)
            .to_vec();
    }
    let mut servers = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let listener = TcpListener::bind(address).await?;
        let name = format!("backend b{} at {}", i + 1, listener.local_addr()?);
        println!("{name} is up");
        servers.push(tokio::spawn(serve(listener, name)));
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}

async fn serve(listener: TcpListener, name: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let text = format!(
                    "hello from {name}: {} {}\n",
                    request.method(),
                    request.uri()
                );
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)))) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
