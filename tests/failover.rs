//! Failover: retries on another backend, the retry budget, and passive ejection.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// A pool whose first backend refuses every connection and whose second is `good`, with
/// passive ejection off so that every request meets the refusal in its turn.
fn refusing_then(good: &Backend) -> String {
    format!(
        "[[pool]]\nname = \"web\"\n[pool.passive]\nmax_fails = 0\n[[pool.backend]]\naddress = \"{}\"\n{}",
        refusing_address(),
        good.toml()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_under_a_get_loop_fails_no_request() {
    let backends = three_backends().await;
    let tandem = Tandem::start(&config(&pool(
        "web",
        "round_robin",
        "",
        &[&backends[0], &backends[1], &backends[2]],
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, failures, url) = (Arc::clone(&stop), Arc::clone(&failures), tandem.url("/"));
        loops.push(tokio::spawn(async move {
            let client = client();
            let mut served = 0;
            // Bounded: stops when told, or after 20,000 requests.
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let request = http::Request::get(&url).body(empty()).unwrap();
                match client.request(request).await {
                    Ok(response) if response.status() == 200 => served += 1,
                    other => {
                        eprintln!("failed: {:?}", other.map(|r| r.status()));
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            served
        }));
    }
    let until = Instant::now() + DEADLINE;
    while backends[1].count() < 100 {
        assert!(Instant::now() < until, "the loop never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    backends[1].kill().await;
    let at_kill = backends[0].count() + backends[2].count();
    while backends[0].count() + backends[2].count() < at_kill + 500 {
        assert!(
            Instant::now() < until,
            "the survivors stopped getting requests"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut served = 0;
    for task in loops {
        served += task.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed when a backend died"
    );
    assert!(served > 600);
    tandem.wait_log_all(&["backend ejected", &backends[1].address.to_string()]);
}

#[tokio::test]
async fn a_get_whose_backend_refuses_is_retried_on_another() {
    let good = Backend::start("good").await;
    let tandem = Tandem::start(&config(&refusing_then(&good)));
    let client = client();
    for _ in 0..6 {
        let answer = get(&client, &tandem.url("/")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "good");
    }
    let line = tandem.wait_access("attempts=2");
    assert!(line.contains("status=200"), "{line}");
    tandem.wait_log("retrying on another backend");
}

#[tokio::test]
async fn the_retry_budget_caps_attempts_on_a_sick_pool() {
    let (first, first_accepted, _t1) = counting_resetting_backend().await;
    let (second, second_accepted, _t2) = counting_resetting_backend().await;
    let pools = format!(
        "[[pool]]\nname = \"web\"\n[pool.retry]\nattempts = 3\nbudget = 0.0\n[pool.passive]\nmax_fails = 0\n\
         [[pool.backend]]\naddress = \"{first}\"\n[[pool.backend]]\naddress = \"{second}\"\n"
    );
    let tandem = Tandem::start(&config(&pools));
    let client = client();
    for _ in 0..30 {
        assert_eq!(get(&client, &tandem.url("/")).await.status, 502);
    }
    let attempts = first_accepted.load(Ordering::SeqCst) + second_accepted.load(Ordering::SeqCst);
    // Without a budget: 30 requests × 2 backends = 60 attempts. With it: 30 + the 10 banked.
    assert_eq!(
        attempts,
        40,
        "attempts on the sick pool; access log:\n{}",
        tandem.access_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_on_status_ejects_a_backend_until_recover_after() {
    let sick = Backend::start("sick").await;
    let fine = Backend::start("fine").await;
    sick.healthy.store(false, Ordering::SeqCst); // its /health answers 503
    let passive = "[pool.passive]\nmax_fails = 2\nfail_window = \"10s\"\nrecover_after = \"600ms\"\nfail_on_status = [503]\n";
    let tandem = Tandem::start(&config(&pool(
        "web",
        "round_robin",
        passive,
        &[&sick, &fine],
    )));
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&client, &tandem.url("/health")).await.status.as_u16());
    }
    // Round robin: sick, fine, sick (second 503: ejected), fine.
    assert_eq!(statuses, vec![503, 200, 503, 200]);
    let ejected_at = Instant::now();
    tandem.wait_log_all(&["backend ejected", &sick.address.to_string(), "status 503"]);
    for _ in 0..10 {
        assert_eq!(get(&client, &tandem.url("/health")).await.status, 200);
    }
    let until = Instant::now() + DEADLINE;
    loop {
        if get(&client, &tandem.url("/health")).await.status == 503 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the ejected backend was never tried again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        ejected_at.elapsed() >= Duration::from_millis(550),
        "tried again before recover_after"
    );
    tandem.wait_log("backend back in rotation");
}

#[tokio::test]
async fn a_small_post_whose_backend_refuses_is_retried_with_its_body() {
    let good = Backend::start("good").await;
    let tandem = Tandem::start(&config(&refusing_then(&good)));
    let client = client();
    for _ in 0..4 {
        let body = vec![b'x'; 10_000];
        let request = http::Request::post(tandem.url("/upload"))
            .header("content-length", body.len())
            .body(streamed_body(body.len() as u64))
            .unwrap();
        let answer = send(&client, request).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "10000", "the retried POST arrived whole");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_aborts_its_upload_does_not_count_against_the_backend() {
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    let passive = "[pool.passive]\nmax_fails = 1\nrecover_after = \"60s\"\n";
    let tandem = Tandem::start(&config(&pool(
        "web",
        "round_robin",
        passive,
        &[&first, &second],
    )));
    // Half of a declared 1 MB body, then the client goes away.
    let mut stream = tokio::net::TcpStream::connect(tandem.address)
        .await
        .unwrap();
    let head = "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &vec![b'x'; 500_000])
        .await
        .unwrap();
    let until = Instant::now() + DEADLINE;
    while first.open.load(Ordering::SeqCst) + second.open.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < until, "the upload never reached a backend");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(stream);
    let line = tandem.wait_access("path=/upload");
    assert!(
        line.contains("status=499"),
        "logged as the client's doing: {line}"
    );
    // Both backends still take requests: neither was ejected for the client's abort.
    let client = client();
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(&client, &tandem.url("/")).await.body);
    }
    assert_eq!(
        tally(answers.iter().map(String::as_str)).len(),
        2,
        "{answers:?}"
    );
}
