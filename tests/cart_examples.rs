//! The shopping-cart examples (examples/cart: Python standard library, and Node without
//! dependencies) behind tandem in proxy mode with plain round robin: every request lands on
//! the next backend, none of them keeps state, and the cart survives.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use support::*;

/// One cart backend process, killed when dropped.
struct Cart {
    child: Child,
    address: SocketAddr,
}

impl Drop for Cart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cart {
    /// Starts `program script --port 0 --name name` and reads the port it printed.
    fn start(program: &str, script: &str, name: &str) -> Cart {
        let path = format!("{}/examples/cart/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(program)
            .args([&path, "--port", "0", "--name", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot run {program} ({error}): run scripts/install-test-deps.sh, which installs Debian's python3 and nodejs")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| panic!("{name} did not say where it listens: {line:?}"));
        Cart { child, address }
    }
}

/// Runs the cart walk-through of README over three copies of `script`.
async fn walk_through(program: &str, script: &str) {
    let carts: Vec<Cart> = (1..=3)
        .map(|i| Cart::start(program, script, &format!("cart{i}")))
        .collect();
    let mut pools = String::from(
        "[session]\nmode = \"proxy\"\n\n[[pool]]\nname = \"cart\"\n[pool.sticky]\nmode = \"off\"\n",
    );
    for (i, cart) in carts.iter().enumerate() {
        pools.push_str(&format!(
            "[[pool.backend]]\naddress = \"{}\"\nroute = \"cart{}\"\n",
            cart.address,
            i + 1
        ));
    }
    let tandem = Tandem::start(&config(&pools));
    let http = client();
    let mut cookie: Option<String> = None;
    let mut last_backend = String::new();
    let mut call = async |method: &str, path: &str| -> Value {
        let mut request = http::Request::builder()
            .method(method)
            .uri(tandem.url(path));
        if let Some(cookie) = &cookie {
            request = request.header("cookie", cookie.as_str());
        }
        let answer = send(&http, request.body(empty()).unwrap()).await;
        assert_eq!(answer.status, 200, "{method} {path}: {}", answer.body);
        if let Some(set) = answer.headers.get("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            cookie = (!pair.ends_with('=')).then(|| pair.to_string());
        }
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        let backend = body["backend"].as_str().unwrap().to_string();
        assert_ne!(
            backend, last_backend,
            "round robin: each request on the next backend"
        );
        last_backend = backend;
        body
    };
    call("POST", "/cart/add?item=apple").await;
    call("POST", "/cart/add?item=Zo%C3%AB%20%F0%9F%9B%92").await;
    call("POST", "/login?user=ann").await;
    for _ in 0..3 {
        let cart = call("GET", "/cart").await;
        assert_eq!(cart["items"], json!(["apple", "Zoë 🛒"]));
        assert_eq!(cart["user"], "ann");
    }
    call("POST", "/logout").await;
    let cart = call("GET", "/cart").await;
    assert_eq!(cart["items"], json!([]));
    assert_eq!(cart["user"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_cart_survives_round_robin_over_three_stateless_copies() {
    walk_through("python3", "cart.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_cart_survives_round_robin_over_three_stateless_copies() {
    walk_through("node", "cart.js").await;
}
