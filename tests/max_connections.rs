//! A backend's `max_connections` and its pool's bounded queue, through a real tandem: a gated
//! backend holds each request until the test lets it go, so the counts are exact.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use support::*;

/// A backend that answers its name once the test releases the request through `gate`, and
/// records how many requests it holds at once.
struct GatedBackend {
    name: &'static str,
    address: SocketAddr,
    /// Requests it holds now.
    open: Arc<AtomicUsize>,
    /// The most it ever held at once.
    high_water: Arc<AtomicUsize>,
    /// Requests answered.
    served: Arc<AtomicUsize>,
    /// One permit lets one held request be answered.
    gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GatedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GatedBackend {
    async fn start(name: &'static str) -> GatedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let high_water = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let state = (
            Arc::clone(&open),
            Arc::clone(&high_water),
            Arc::clone(&served),
            Arc::clone(&gate),
        );
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let (open, high_water, served, gate) = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |_request| {
                        let (open, high_water, served, gate) = (
                            open.clone(),
                            high_water.clone(),
                            served.clone(),
                            gate.clone(),
                        );
                        async move {
                            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                            high_water.fetch_max(now, Ordering::SeqCst);
                            gate.acquire().await.expect("gate open").forget();
                            open.fetch_sub(1, Ordering::SeqCst);
                            served.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(text(name))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GatedBackend {
            name,
            address,
            open,
            high_water,
            served,
            gate,
            task,
        }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn toml(&self, max_connections: usize) -> String {
        format!(
            "[[pool.backend]]\naddress = \"{}\"\nroute = \"{}\"\nmax_connections = {max_connections}\n",
            self.address, self.name
        )
    }
}

/// A tandem with an admin listener and pool `web` over `backends`, each capped at `cap`.
fn start(pool_keys: &str, backends: &[&GatedBackend], cap: usize) -> Tandem {
    let mut pools = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"web\"\nbalance = \"round_robin\"\n{pool_keys}\n"
    );
    for backend in backends {
        pools.push_str(&backend.toml(cap));
    }
    Tandem::start(&config(&pools))
}

/// Waits (bounded) until `condition` holds.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The value of `series` (name and labels as exposed) on `/metrics`, 0 when absent.
async fn metric(tandem: &Tandem, series: &str) -> f64 {
    let exposition = get(&client(), &tandem.admin_url("/metrics")).await.body;
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits (bounded) until `series` reads `value` on `/metrics`.
async fn until_metric(tandem: &Tandem, series: &str, value: f64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = metric(tandem, series).await;
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {now}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const FULL: &str = "tandem_queue_rejected_total{pool=\"web\",reason=\"full\"}";
const TIMEOUT: &str = "tandem_queue_rejected_total{pool=\"web\",reason=\"timeout\"}";
const QUEUE: &str = "tandem_queue_length{pool=\"web\"}";

#[tokio::test]
async fn a_slow_backend_never_holds_more_than_its_cap_and_the_overflow_is_refused_at_once() {
    let slow = GatedBackend::start("slow").await;
    let tandem = start("max_queue = 10\nqueue_timeout = \"60s\"\n", &[&slow], 2);
    let url = tandem.url("/");
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&client(), &url).await })
        })
        .collect();
    // Two at the backend, ten queued, and the other eight refused while nothing moves.
    until("two requests at the backend", || slow.open() == 2).await;
    until_metric(&tandem, QUEUE, 10.0).await;
    until_metric(&tandem, FULL, 8.0).await;
    let finished: Vec<_> = clients.iter().filter(|c| c.is_finished()).collect();
    assert_eq!(finished.len(), 8, "the overflow is answered at once");
    slow.gate.add_permits(20);
    let mut statuses = Vec::new();
    for client in clients {
        let answer = client.await.unwrap();
        if answer.status == 503 {
            assert_eq!(
                answer.body,
                "503 Service Unavailable: the servers are busy\n"
            );
        } else {
            assert_eq!(answer.body, "slow");
        }
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 12);
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 8);
    assert_eq!(slow.high_water.load(Ordering::SeqCst), 2);
    assert_eq!(slow.served.load(Ordering::SeqCst), 12);
    until_metric(&tandem, QUEUE, 0.0).await;
    assert_eq!(metric(&tandem, TIMEOUT).await, 0.0);
}

#[tokio::test]
async fn a_request_queued_past_queue_timeout_is_a_503_and_not_the_backends_fault() {
    let slow = GatedBackend::start("slow").await;
    // One failure would eject the backend, were a queue timeout counted against it.
    let passive = "[pool.passive]\nmax_fails = 1\nrecover_after = \"60s\"\n";
    let tandem = start(
        &format!("queue_timeout = \"300ms\"\n{passive}"),
        &[&slow],
        1,
    );
    let url = tandem.url("/");
    let held = {
        let url = url.clone();
        tokio::spawn(async move { get(&client(), &url).await })
    };
    until("the first request at the backend", || slow.open() == 1).await;
    let started = Instant::now();
    let queued = get(&client(), &url).await;
    assert_eq!(queued.status, 503);
    assert_took(
        started.elapsed(),
        Duration::from_millis(250)..Duration::from_secs(5),
        "the queued request's 503",
    );
    assert_eq!(metric(&tandem, TIMEOUT).await, 1.0);
    assert_eq!(metric(&tandem, FULL).await, 0.0);
    slow.gate.add_permits(2);
    assert_eq!(held.await.unwrap().status, 200);
    // Still in rotation: the next request is served by it.
    let next = get(&client(), &url).await;
    assert_eq!((next.status.as_u16(), next.body.as_str()), (200, "slow"));
    assert_eq!(slow.high_water.load(Ordering::SeqCst), 1);
    let up = "tandem_backend_up{backend=\"".to_string() + &slow.address.to_string();
    assert_eq!(
        metric(&tandem, &(up + "\",pool=\"web\",route=\"slow\"}")).await,
        1.0
    );
}

#[tokio::test]
async fn a_queued_request_takes_the_backend_that_frees_up() {
    let slow = GatedBackend::start("slow").await;
    let tandem = start("max_queue = 5\nqueue_timeout = \"60s\"\n", &[&slow], 1);
    let url = tandem.url("/");
    let spawn = || {
        let url = url.clone();
        tokio::spawn(async move { get(&client(), &url).await })
    };
    let first = spawn();
    until("the first request at the backend", || slow.open() == 1).await;
    let second = spawn();
    until_metric(&tandem, QUEUE, 1.0).await;
    assert_eq!(slow.served.load(Ordering::SeqCst), 0);
    slow.gate.add_permits(1);
    assert_eq!(first.await.unwrap().status, 200);
    // The queued request goes to the backend as soon as the first one ends.
    until("the queued request at the backend", || slow.open() == 1).await;
    until_metric(&tandem, QUEUE, 0.0).await;
    slow.gate.add_permits(1);
    assert_eq!(second.await.unwrap().body, "slow");
    assert_eq!(slow.high_water.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn round_robin_skips_a_full_backend_when_another_has_room() {
    let a = GatedBackend::start("a").await;
    let b = GatedBackend::start("b").await;
    let tandem = start("max_queue = 5\nqueue_timeout = \"60s\"\n", &[&a, &b], 1);
    let url = tandem.url("/");
    let spawn = || {
        let url = url.clone();
        tokio::spawn(async move { get(&client(), &url).await })
    };
    // One held on each backend; then the second one's is let go.
    let first = spawn();
    until("one request held", || a.open() + b.open() == 1).await;
    let (busy, other) = if a.open() == 1 { (&a, &b) } else { (&b, &a) };
    let second = spawn();
    until("the second request on the other backend", || {
        other.open() == 1
    })
    .await;
    other.gate.add_permits(1);
    assert_eq!(second.await.unwrap().body, other.name);
    // Round robin's turn is the busy backend's now: it is full, so the other one serves.
    for _ in 0..3 {
        other.gate.add_permits(1);
        let answer = get(&client(), &url).await;
        assert_eq!(answer.body, other.name);
    }
    assert_eq!(metric(&tandem, QUEUE).await, 0.0);
    busy.gate.add_permits(1);
    assert_eq!(first.await.unwrap().body, busy.name);
    assert_eq!(busy.high_water.load(Ordering::SeqCst), 1);
    assert_eq!(other.high_water.load(Ordering::SeqCst), 1);
}
