//! Session replication among three in-process peers on loopback (`all` topology, `async`):
//! how long one change takes to be applied on both other peers, how many changes a peer sends
//! per second, and (printed, not timed) the lag distribution and the bytes on the wire for a
//! one-attribute patch of a 1 KiB and of a 100 KiB session. Quote ratios, not absolute times.
//!
//! `cargo bench --bench replication`

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use tandem::cluster::{Cluster, StickyTables};
use tandem::config::Config;
use tandem::metrics::Metrics;
use tandem::placement::Placement;
use tandem::session::clock::SystemClock;
use tandem::session::{Change, ChangeListener, Current, Origin, Rejection, SessionStore};

const SECRET: &str = "replication-bench-secret-0123456789abcdef";

/// No sticky tables: the bench replicates sessions only.
struct NoTables;

impl StickyTables for NoTables {
    fn all(&self) -> Vec<(String, String, Placement)> {
        Vec::new()
    }
    fn record(&self, _pool: &str, _key: &str, _placement: Placement) {}
    fn forget(&self, _pool: &str, _key: &str) {}
}

/// On a receiving peer: the highest `n` a peer's patch carried, and a wake-up for waiters.
#[derive(Default)]
struct Arrivals {
    highest: AtomicU64,
    arrived: Notify,
}

impl ChangeListener for Arrivals {
    fn changed(&self, change: &Change<'_>, origin: Origin) {
        if let (Change::Patched { patch, .. }, Origin::Remote) = (change, origin) {
            if let Some(n) = patch.get("n").and_then(Value::as_u64) {
                self.highest.fetch_max(n, Ordering::Relaxed);
                self.arrived.notify_waiters();
            }
        }
    }
    fn rejected(&self, _rejection: &Rejection) {}
}

impl Arrivals {
    /// Waits until a patch with `n` at least `at_least` arrived.
    async fn wait(&self, at_least: u64) {
        loop {
            let arrived = self.arrived.notified();
            if self.highest.load(Ordering::Relaxed) >= at_least {
                return;
            }
            if tokio::time::timeout(Duration::from_secs(10), arrived)
                .await
                .is_err()
            {
                panic!("a change never arrived at a peer");
            }
        }
    }
}

struct Node {
    store: Arc<SessionStore>,
    arrivals: Arc<Arrivals>,
    metrics: Arc<Metrics>,
}

async fn start_cluster(ports: &[u16]) -> Vec<Node> {
    let mut nodes = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        let peers: Vec<String> = ports
            .iter()
            .filter(|p| *p != port)
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        let text = format!(
            "[listen]\naddresses = [\"127.0.0.1:1\"]\n[session]\nmode = \"proxy\"\nmax_session_bytes = \"200KiB\"\nmax_attribute_bytes = \"200KiB\"\n[cluster]\nname = \"bench\"\nnode_id = \"n{index}\"\nlisten = \"127.0.0.1:{port}\"\npeers = [{}]\nsecret = \"{SECRET}\"\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n",
            peers.join(", ")
        );
        let config = Config::parse(Path::new("bench.toml"), &text).unwrap();
        let cluster_config = config.cluster.clone().unwrap();
        let metrics = Arc::new(Metrics::new());
        let cluster = Arc::new(
            Cluster::new(
                cluster_config.clone(),
                metrics.peer_up.clone(),
                metrics.replication.clone(),
            )
            .unwrap(),
        );
        let arrivals = Arc::new(Arrivals::default());
        let listeners: Vec<Arc<dyn ChangeListener>> = vec![cluster.replicator(), arrivals.clone()];
        let store = Arc::new(SessionStore::new(
            &config.session,
            Arc::new(SystemClock),
            listeners,
            Some(&cluster_config.node_id),
        ));
        let listener = TcpListener::bind(cluster_config.listen).await.unwrap();
        let tables: Arc<dyn StickyTables> = Arc::new(NoTables);
        tokio::spawn(Arc::clone(&cluster).run(listener, Some(Arc::clone(&store)), tables));
        nodes.push(Node {
            store,
            arrivals,
            metrics,
        });
    }
    nodes
}

fn patched(patch: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-tandem-session-patch",
        HeaderValue::from_str(patch).unwrap(),
    );
    headers
}

/// Creates a session of about `bytes` on `node` and waits until both peers have it.
async fn session_of(nodes: &[Node], bytes: usize) -> Current {
    let patch = format!(r#"{{"blob":"{}","n":0}}"#, "b".repeat(bytes));
    let change = nodes[0]
        .store
        .settle(None, &mut patched(&patch), "r1", false)
        .unwrap();
    let tandem::session::CookieChange::Set { id, route } = change else {
        panic!("no session created");
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes[1..].iter().any(|node| node.store.get(&id).is_none()) {
        assert!(
            Instant::now() < deadline,
            "the session never reached the peers"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Current {
        id,
        route,
        data: HeaderValue::from_static("{}"),
    }
}

/// Patch `n` of session `current` on the first node.
fn write(nodes: &[Node], current: &Current, n: u64) {
    let patch = format!(r#"{{"n":{n}}}"#);
    nodes[0]
        .store
        .settle(Some(current), &mut patched(&patch), "r1", false)
        .unwrap();
}

/// Writes change `n` and waits until both peers applied it.
async fn replicate_one(nodes: &[Node], current: &Current, n: u64) -> Duration {
    let started = Instant::now();
    write(nodes, current, n);
    for node in &nodes[1..] {
        node.arrivals.wait(n).await;
    }
    started.elapsed()
}

fn sent_bytes(node: &Node) -> u64 {
    node.metrics
        .replication
        .bytes
        .with_label_values(&["sent"])
        .get()
}

fn replication(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        })
        .collect();
    let nodes = runtime.block_on(start_cluster(&ports));
    let small = runtime.block_on(session_of(&nodes, 1024));
    let large = runtime.block_on(session_of(&nodes, 100 * 1024));
    let next = Mutex::new(1u64);
    let take = |count: u64| {
        let mut next = next.lock().unwrap();
        let first = *next;
        *next += count;
        first
    };

    // Printed figures: lag distribution and bytes per change (under `cargo bench` only, not
    // when `cargo test` runs the benchmarks once).
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    runtime.block_on(async {
        if !benchmarking {
            return;
        }
        let mut lags: Vec<Duration> = Vec::new();
        for _ in 0..2000 {
            lags.push(replicate_one(&nodes, &small, take(1)).await);
        }
        lags.sort();
        let at = |q: f64| lags[((lags.len() as f64 * q) as usize).min(lags.len() - 1)];
        println!(
            "lag to both peers, 2000 sequential changes: p50 {:?}, p99 {:?}",
            at(0.50),
            at(0.99)
        );
        for (name, session) in [("1 KiB", &small), ("100 KiB", &large)] {
            let before = sent_bytes(&nodes[0]);
            let first = take(1000);
            for n in first..first + 1000 {
                replicate_one(&nodes, session, n).await;
            }
            let per_change = (sent_bytes(&nodes[0]) - before) as f64 / 1000.0 / 2.0;
            println!(
                "bytes sent per peer per one-attribute patch of a {name} session: {per_change:.0}"
            );
        }
    });

    let mut group = c.benchmark_group("replication");
    group.bench_function("one change applied on both peers", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let first = take(iterations);
            let nodes = &nodes;
            let small = &small;
            async move {
                let mut total = Duration::ZERO;
                for n in first..first + iterations {
                    total += replicate_one(nodes, small, n).await;
                }
                total
            }
        })
    });
    group.throughput(criterion::Throughput::Elements(1000));
    group.bench_function("1000 changes sent, all applied on both peers", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let first = take(iterations * 1000);
            let nodes = &nodes;
            let small = &small;
            async move {
                let mut total = Duration::ZERO;
                for burst in 0..iterations {
                    let started = Instant::now();
                    let from = first + burst * 1000;
                    for n in from..from + 1000 {
                        write(nodes, small, n);
                    }
                    for node in &nodes[1..] {
                        node.arrivals.wait(from + 999).await;
                    }
                    total += started.elapsed();
                }
                total
            }
        })
    });
    group.finish();
}

criterion_group!(benches, replication);
criterion_main!(benches);
