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
async fn a_large_or_chunked_post_whose_backend_refuses_is_retried_with_its_body() {
    let good = Backend::start("good").await;
    let tandem = Tandem::start(&config(&refusing_then(&good)));
    let client = client();
    for sized in [true, false, true, false] {
        // 1 MB, streamed: too large to hold, but nothing of it was read when the connection
        // was refused, so it can still go to the other backend.
        let mut request = http::Request::post(tandem.url("/upload"));
        if sized {
            request = request.header("content-length", 1_000_000);
        }
        let answer = send(&client, request.body(streamed_body(1_000_000)).unwrap()).await;
        assert_eq!(answer.status, 200, "sized: {sized}");
        assert_eq!(answer.body, "1000000", "the retried POST arrived whole");
    }
    tandem.wait_log("retrying on another backend");
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

/// A raw HTTP/1.1 backend: on its first connection it answers the first request, then closes
/// that connection when a second request arrives on it (the backend went away since tandem
/// pooled the connection); every later connection answers `fresh`. With `close_first` it closes
/// its very first connection without answering anything. Counts the requests it answered.
async fn closing_backend(close_first: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&answered);
    tokio::spawn(async move {
        for connection in 0usize.. {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let answered = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                for request in 0usize.. {
                    // One request: a head and a Content-Length body.
                    let head_end = loop {
                        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|line| line.strip_prefix("content-length:"))
                        .map_or(0, |value| value.trim().parse().unwrap());
                    while buffer.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buffer.drain(..head_end + length);
                    let closes = connection == 0 && (close_first || request == 1);
                    if closes {
                        return;
                    }
                    let body = if connection == 0 { "first" } else { "fresh" };
                    answered.fetch_add(1, Ordering::SeqCst);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, answered)
}

fn post(tandem: &Tandem) -> http::Request<TestBody> {
    http::Request::post(tandem.url("/order"))
        .header("content-length", "5")
        .body(full("12345"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_a_pooled_connection_the_backend_closed_is_sent_again_on_a_fresh_one() {
    let (address, answered) = closing_backend(false).await;
    let tandem = Tandem::start(&config(&format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{address}\"\n"
    )));
    let client = client();
    let first = send(&client, post(&tandem)).await;
    assert_eq!((first.status.as_u16(), first.body.as_str()), (200, "first"));
    // The only backend closed the pooled connection under the second POST: no 502.
    let second = send(&client, post(&tandem)).await;
    assert_eq!(
        (second.status.as_u16(), second.body.as_str()),
        (200, "fresh")
    );
    assert_eq!(answered.load(Ordering::SeqCst), 2);
    tandem.wait_log("retrying on a fresh connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_fails_on_a_fresh_connection_is_not_sent_again() {
    let (address, answered) = closing_backend(true).await;
    let tandem = Tandem::start(&config(&format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"{address}\"\n"
    )));
    let answer = send(&client(), post(&tandem)).await;
    assert_eq!(answer.status, 502, "the backend may have acted on it");
    assert_eq!(answered.load(Ordering::SeqCst), 0);
    assert_eq!(tandem.log_count("retrying"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_elsewhere_without_spending_the_budget() {
    let fine = Backend::start("fine").await;
    let refusing = refusing_address();
    let pools = format!(
        "[[pool]]\nname = \"web\"\n[pool.retry]\nbudget = 0.0\n[pool.passive]\nmax_fails = 0\n\
         [[pool.backend]]\naddress = \"{refusing}\"\n{}",
        fine.toml()
    );
    let tandem = Tandem::start(&config(&pools));
    let client = client();
    // Half of these try the refusing backend first: far more retries than the 10 banked.
    for _ in 0..40 {
        assert_eq!(get(&client, &tandem.url("/")).await.status, 200);
    }
}
