//! Balance methods seen from outside: real backends behind a real tandem process.

mod support;

use std::sync::atomic::Ordering;

use hyper_util::client::legacy::connect::HttpConnector;
use std::time::{Duration, Instant};

use support::*;

#[tokio::test]
async fn round_robin_visits_three_backends_in_exact_order() {
    let backends = three_backends().await;
    let tandem = Tandem::start(&config(&pool(
        "web",
        "round_robin",
        "",
        &[&backends[0], &backends[1], &backends[2]],
    )));
    let client = client();
    let mut order = Vec::new();
    for _ in 0..9 {
        order.push(get(&client, &tandem.url("/")).await.body);
    }
    let first = order[0].clone();
    let start = ["a", "b", "c"].iter().position(|n| *n == first).unwrap();
    let expected: Vec<String> = (0..9)
        .map(|i| ["a", "b", "c"][(start + i) % 3].to_string())
        .collect();
    assert_eq!(order, expected);
}

#[tokio::test]
async fn weights_five_one_one_hold_in_every_cycle_of_seven() {
    let heavy = Backend::start("heavy").await;
    let light1 = Backend::start("light1").await;
    let light2 = Backend::start("light2").await;
    let pools = format!(
        "[[pool]]\nname = \"web\"\nbalance = \"weighted\"\n\
         [[pool.backend]]\naddress = \"{}\"\nweight = 5\n\
         [[pool.backend]]\naddress = \"{}\"\nweight = 1\n\
         [[pool.backend]]\naddress = \"{}\"\nweight = 1\n",
        heavy.address, light1.address, light2.address
    );
    let tandem = Tandem::start(&config(&pools));
    let client = client();
    let mut answers = Vec::new();
    for _ in 0..700 {
        answers.push(get(&client, &tandem.url("/")).await.body);
    }
    for (cycle, chunk) in answers.chunks(7).enumerate() {
        let counts = tally(chunk.iter().map(String::as_str));
        let heavy_count = counts.get("heavy").copied().unwrap_or(0);
        assert!((4..=6).contains(&heavy_count), "cycle {cycle}: {counts:?}");
        for light in ["light1", "light2"] {
            let n = counts.get(light).copied().unwrap_or(0);
            assert!(n <= 2, "cycle {cycle}: {counts:?}");
        }
    }
    let totals = tally(answers.iter().map(String::as_str));
    assert_eq!(totals["heavy"], 500, "{totals:?}");
    assert_eq!(totals["light1"], 100, "{totals:?}");
    assert_eq!(totals["light2"], 100, "{totals:?}");
}

/// Holds one slow request on whichever backend gets it, then checks that quick requests all go
/// to the other backend (round robin would alternate and fail this).
async fn quick_requests_avoid_the_backend_holding_a_slow_one(balance: &str) {
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    let tandem = Tandem::start(&config(&pool("web", balance, "", &[&first, &second])));
    let client = client();
    let slow_client = client.clone();
    let slow_url = tandem.url("/slow?ms=2000");
    let slow = tokio::spawn(async move { get(&slow_client, &slow_url).await.body });
    let until = Instant::now() + DEADLINE;
    let holder = loop {
        if first.open.load(Ordering::SeqCst) == 1 {
            break "first";
        }
        if second.open.load(Ordering::SeqCst) == 1 {
            break "second";
        }
        assert!(
            Instant::now() < until,
            "the slow request never reached a backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let other = if holder == "first" { "second" } else { "first" };
    for _ in 0..10 {
        assert_eq!(get(&client, &tandem.url("/")).await.body, other);
    }
    assert_eq!(slow.await.unwrap(), holder);
}

#[tokio::test]
async fn least_conn_sends_new_requests_to_the_idle_backend() {
    quick_requests_avoid_the_backend_holding_a_slow_one("least_conn").await;
}

#[tokio::test]
async fn random_two_prefers_the_less_busy_of_two_backends() {
    // With two backends the two random choices are always both of them.
    quick_requests_avoid_the_backend_holding_a_slow_one("random_two").await;
}

#[tokio::test]
async fn draining_and_stopped_backends_get_no_new_requests() {
    let active = Backend::start("active").await;
    let draining = Backend::start("draining").await;
    let stopped = Backend::start("stopped").await;
    let pools = format!(
        "[[pool]]\nname = \"web\"\n{}{}state = \"draining\"\n{}state = \"stopped\"\n",
        active.toml(),
        draining.toml(),
        stopped.toml()
    );
    let tandem = Tandem::start(&config(&pools));
    let client = client();
    for _ in 0..6 {
        assert_eq!(get(&client, &tandem.url("/")).await.body, "active");
    }
    assert_eq!(draining.count() + stopped.count(), 0);
}

#[tokio::test]
async fn ip_hash_keeps_a_client_on_one_backend() {
    let backends = three_backends().await;
    let tandem = Tandem::start(&config(&pool(
        "web",
        "ip_hash",
        "",
        &[&backends[0], &backends[1], &backends[2]],
    )));
    let client = client();
    let first = get(&client, &tandem.url("/")).await.body;
    for _ in 0..20 {
        assert_eq!(get(&client, &tandem.url("/")).await.body, first);
    }
}

#[tokio::test]
async fn a_backup_backend_serves_only_when_no_primary_can() {
    let primary = Backend::start("primary").await;
    let backup = Backend::start("backup").await;
    let with_primary = |state: &str| {
        config(&format!(
            "[[pool]]\nname = \"web\"\n{}state = \"{state}\"\n{}backup = true\n",
            primary.toml(),
            backup.toml()
        ))
    };
    let tandem = Tandem::start(&with_primary("active"));
    let client = client();
    for _ in 0..6 {
        assert_eq!(get(&client, &tandem.url("/")).await.body, "primary");
    }
    tandem.reload(&with_primary("stopped"));
    for _ in 0..6 {
        assert_eq!(get(&client, &tandem.url("/")).await.body, "backup");
    }
}

/// The bearer token of the admin listener in the split tests.
const ADMIN_TOKEN: &str = "balancing-admin-token-0123456789";

/// What a backend of a split row is doing.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Is {
    /// Takes new work: the split is measured over these.
    Active,
    /// `state = "draining"` in the config file.
    DrainingByConfig,
    /// `draining`, set through the admin API.
    DrainingByApi,
    /// `state = "stopped"` in the config file.
    Stopped,
    /// Failing its health checks, and down by the admin API's report.
    Down,
    /// Refusing connections until the passive checks ejected it.
    Ejected,
    /// `backup = true` while every primary can serve.
    Backup,
    /// Back up from down at the start of a long slow start, so it takes a turn only now and
    /// then: the active backends' split must stay even around its skipped turns.
    SlowStarting,
}

/// How the requests must spread over the `Active` backends of a row.
#[derive(Clone, Copy, Debug)]
enum Split {
    /// After every request, no active backend has answered more than one request more than
    /// another (±1 per cycle, as HAProxy's and nginx's round robin).
    Even,
    /// Each active backend within this many requests of an equal share of what they answered
    /// (for random choices).
    Around(usize),
}

/// One row of the split table: a balance method, what each backend is doing, the split.
struct SplitRow {
    balance: &'static str,
    backends: &'static [Is],
    split: Split,
}

/// Sequential requests per active backend in a row.
const REQUESTS_PER_ACTIVE: usize = 60;

/// Sets the state of the backend at `address` through the admin API.
async fn set_state_by_api(tandem: &Tandem, address: std::net::SocketAddr, state: &str) {
    let request =
        http::Request::put(tandem.admin_url(&format!("/api/pools/web/backends/{address}/state")))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(full(&format!(r#"{{"state":"{state}"}}"#)))
            .unwrap();
    let answer = send(&client(), request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// Starts the row's pool, brings each backend into its state (waiting on the admin API for
/// the states tandem has to find out), then sends sequential requests and checks the split
/// over the active backends: `Err` says how it went wrong.
async fn check_split(row: &SplitRow) -> Result<(), String> {
    let names = ["a", "b", "c", "d", "e"];
    let mut backends = Vec::new();
    for (name, is) in names.iter().zip(row.backends) {
        let backend = Backend::start(name).await;
        if matches!(is, Is::Down | Is::SlowStarting) {
            backend.healthy.store(false, Ordering::SeqCst);
        }
        if *is == Is::Ejected {
            backend.kill().await;
        }
        backends.push(backend);
    }
    let mut pools = format!(
        "[[pool]]\nname = \"web\"\nbalance = \"{}\"\nslow_start = \"1500ms\"\n\
         [pool.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"90ms\"\nfall = 1\nrise = 1\n\
         [pool.passive]\nmax_fails = 1\nrecover_after = \"120s\"\n",
        row.balance
    );
    for (backend, is) in backends.iter().zip(row.backends) {
        pools.push_str(&backend.toml());
        pools.push_str(match is {
            Is::DrainingByConfig => "state = \"draining\"\n",
            Is::Stopped => "state = \"stopped\"\n",
            Is::Backup => "backup = true\n",
            _ => "",
        });
    }
    let tandem = Tandem::start(&config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n\n{pools}"
    )));
    for (backend, is) in backends.iter().zip(row.backends) {
        match is {
            Is::DrainingByApi => set_state_by_api(&tandem, backend.address, "draining").await,
            Is::Down => wait_backend_status(&tandem, backend.address, "up", false, false).await,
            Is::Ejected => {
                wait_backend_status(&tandem, backend.address, "ejected", true, true).await
            }
            Is::SlowStarting => {
                wait_backend_status(&tandem, backend.address, "up", false, false).await;
                backend.healthy.store(true, Ordering::SeqCst);
                wait_backend_status(&tandem, backend.address, "up", true, false).await;
            }
            _ => {}
        }
    }

    let active: Vec<&str> = backends
        .iter()
        .zip(row.backends)
        .filter(|(_, is)| **is == Is::Active)
        .map(|(backend, _)| backend.name.as_str())
        .collect();
    let client = client();
    let mut counts = vec![0usize; active.len()];
    let mut answers = Vec::new();
    for _ in 0..REQUESTS_PER_ACTIVE * active.len() {
        let answer = get(&client, &tandem.url("/")).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answers.push(answer.body.clone());
        let Some(position) = active.iter().position(|name| *name == answer.body) else {
            let slow_starting = backends
                .iter()
                .zip(row.backends)
                .any(|(backend, is)| *is == Is::SlowStarting && backend.name == answer.body);
            if !slow_starting {
                return Err(format!(
                    "{} {:?}: a backend that takes no new work answered: {answers:?}",
                    row.balance, row.backends
                ));
            }
            continue;
        };
        counts[position] += 1;
        if let Split::Even = row.split {
            let (least, most) = (counts.iter().min(), counts.iter().max());
            if most.unwrap() - least.unwrap() > 1 {
                return Err(format!(
                    "{} {:?}: uneven after {} requests, {counts:?} over {active:?}: {answers:?}",
                    row.balance,
                    row.backends,
                    answers.len()
                ));
            }
        }
    }
    if let Split::Around(tolerance) = row.split {
        // A slow-starting backend takes some requests: the share is of what the others took.
        let share = counts.iter().sum::<usize>() / counts.len();
        if counts.iter().any(|count| count.abs_diff(share) > tolerance) {
            return Err(format!(
                "{} {:?}: {counts:?} over {active:?}",
                row.balance, row.backends
            ));
        }
    }
    Ok(())
}

/// The states every method is checked around: one backend out of rotation for each reason.
fn rows_for(balance: &'static str, split: Split) -> Vec<SplitRow> {
    use Is::*;
    let layouts: [&'static [Is]; 7] = [
        &[Active, DrainingByConfig, Active],
        &[Active, DrainingByApi, Active],
        &[Active, Stopped, Active],
        &[Active, Down, Active, Active],
        &[Active, Ejected, Active],
        &[Active, Backup, Active],
        &[Active, SlowStarting, Active],
    ];
    layouts
        .into_iter()
        .map(|backends| SplitRow {
            balance,
            backends,
            split,
        })
        .collect()
}

/// Checks every row, then fails naming each row that went wrong.
async fn check_rows(rows: Vec<SplitRow>) {
    let mut failures = Vec::new();
    for row in &rows {
        if let Err(failure) = check_split(row).await {
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_evenly_around_backends_that_take_no_new_work() {
    check_rows(rows_for("round_robin", Split::Even)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_ties_split_evenly_around_backends_that_take_no_new_work() {
    check_rows(rows_for("least_conn", Split::Even)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_splits_evenly_around_backends_that_take_no_new_work() {
    check_rows(rows_for("weighted", Split::Even)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_two_splits_evenly_around_backends_that_take_no_new_work() {
    // 60 draws out of two: the standard deviation is under 4; 25 off would be over 6 of them.
    check_rows(rows_for("random_two", Split::Around(25))).await;
}

/// A client whose connections come from `ip` (any 127.x.y.z is loopback).
fn client_from(
    ip: std::net::IpAddr,
) -> hyper_util::client::legacy::Client<HttpConnector, TestBody> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(ip));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_moves_only_the_clients_of_a_backend_that_takes_no_new_work() {
    let backends = three_backends().await;
    let pools = pool(
        "web",
        "ip_hash",
        "",
        &[&backends[0], &backends[1], &backends[2]],
    );
    let tandem = Tandem::start(&config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n\n{pools}"
    )));
    let clients: Vec<_> = (10..70u8)
        .map(|n| client_from(std::net::IpAddr::from([127, 0, 1, n])))
        .collect();
    let mut before = Vec::new();
    for client in &clients {
        before.push(get(client, &tandem.url("/")).await.body);
    }
    let spread = tally(before.iter().map(String::as_str));
    assert_eq!(
        spread.len(),
        3,
        "60 clients over three backends: {spread:?}"
    );

    set_state_by_api(&tandem, backends[1].address, "draining").await;
    let mut moved = Vec::new();
    for (client, first) in clients.iter().zip(&before) {
        let now = get(client, &tandem.url("/")).await.body;
        assert_eq!(
            get(client, &tandem.url("/")).await.body,
            now,
            "a client stays on one backend"
        );
        if first == "b" {
            assert_ne!(now, "b", "the draining backend got a new client");
            moved.push(now);
        } else {
            assert_eq!(
                &now, first,
                "a client of a backend that did not change moved"
            );
        }
    }
    let moved_spread = tally(moved.iter().map(String::as_str));
    assert_eq!(
        moved_spread.len(),
        2,
        "b's clients spread over a and c: {moved_spread:?}"
    );
}
