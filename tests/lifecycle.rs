//! Signals: SIGHUP reloads without losing requests, SIGTERM drains in-flight requests.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_a_request_loop_loses_no_request() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let tandem = Tandem::start(&config(&pool("web", "round_robin", "", &[&old])));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, failures, url) = (
            Arc::clone(&stop),
            Arc::clone(&failures),
            tandem.url("/slow?ms=5"),
        );
        loops.push(tokio::spawn(async move {
            let client = client();
            let mut answers = Vec::new();
            // Bounded: stops when told, or after 20,000 requests.
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let request = http::Request::get(&url).body(empty()).unwrap();
                match client.request(request).await {
                    Ok(response) if response.status() == 200 => answers.push(
                        response.headers()["x-backend"]
                            .to_str()
                            .unwrap()
                            .to_string(),
                    ),
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            answers
        }));
    }
    let until = Instant::now() + DEADLINE;
    while old.count() < 50 {
        assert!(Instant::now() < until, "the loop never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tandem.reload(&config(&pool("web", "round_robin", "", &[&new])));
    let served_by_old = old.count();
    while new.count() < 50 {
        assert!(
            Instant::now() < until,
            "the new backend never got requests after the reload"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut answers = Vec::new();
    for task in loops {
        answers.extend(task.await.unwrap());
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed across the reload"
    );
    assert_eq!(answers.len(), old.count() + new.count());
    // In-flight requests finish on the old pool, and nothing new goes there afterwards.
    assert!(
        old.count() <= served_by_old + 4,
        "old backend kept getting requests after the reload"
    );
}

#[tokio::test]
async fn a_broken_config_is_refused_on_reload_and_the_old_one_stays() {
    let backend = Backend::start("b").await;
    let tandem = Tandem::start(&config(&pool("web", "round_robin", "", &[&backend])));
    let broken = config("[[pool]]\nname = \"web\"\nbalance = \"fastest\"\n[[pool.backend]]\naddress = \"127.0.0.1:1\"\n");
    let bad_line = broken.lines().position(|l| l.contains("fastest")).unwrap() + 1;
    tandem.rewrite_config(&broken);
    tandem.signal(Signal::SIGHUP);
    tandem.wait_log("reload refused");
    let error_line = tandem.wait_log("unknown balance method");
    assert!(
        error_line.contains(&format!("tandem.toml:{bad_line}:")),
        "{error_line}"
    );
    assert_eq!(get(&client(), &tandem.url("/")).await.body, "b");
}

#[tokio::test]
async fn sigterm_lets_a_slow_request_finish_and_exits_zero() {
    let backend = Backend::start("b").await;
    let mut tandem = Tandem::start(&config(&pool("web", "round_robin", "", &[&backend])));
    let url = tandem.url("/slow?ms=1500");
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    let until = Instant::now() + DEADLINE;
    while backend.open.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < until, "slow request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tandem.signal(Signal::SIGTERM);
    tandem.wait_log("no longer accepting");
    let refused = tokio::net::TcpStream::connect(tandem.address).await;
    assert!(
        refused.is_err(),
        "tandem still accepted connections while draining"
    );
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "b");
    let status = tandem.wait_exit();
    assert_eq!(status.code(), Some(0));
}
