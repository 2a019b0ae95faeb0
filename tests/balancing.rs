//! Balance methods seen from outside: real backends behind a real tandem process.

mod support;

use std::sync::atomic::Ordering;
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
