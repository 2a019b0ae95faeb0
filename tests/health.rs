//! Active health checks: thresholds, traffic avoiding down backends, and coming back.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;

/// `[pool.health]` with fast checks: every 300 ms, fall 3, rise 2.
const FAST_CHECKS: &str = "[pool.health]\npath = \"/health\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\nfall = 3\nrise = 2\n";

/// Waits until `tandem` logs that `backend` went `word` (UP or DOWN).
fn wait_flip(tandem: &Tandem, backend: &Backend, word: &str) -> String {
    tandem.wait_log_all(&[&format!("backend is {word}"), &backend.address.to_string()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_goes_down_after_fall_failures_and_up_after_rise_successes() {
    let sick = Backend::start("sick").await;
    let fine = Backend::start("fine").await;
    let tandem = Tandem::start(&config(&pool(
        "web",
        "round_robin",
        FAST_CHECKS,
        &[&sick, &fine],
    )));
    let client = client();

    sick.healthy.store(false, Ordering::SeqCst);
    let failed_before = sick.health_failed.load(Ordering::SeqCst);
    let line = wait_flip(&tandem, &sick, "DOWN");
    // Exactly `fall` failed probes: the next probe is 300 ms away when the flip is logged.
    assert_eq!(
        sick.health_failed.load(Ordering::SeqCst) - failed_before,
        3,
        "{line}"
    );
    assert!(line.contains("status 503"), "the reason is logged: {line}");
    for _ in 0..10 {
        assert_eq!(get(&client, &tandem.url("/")).await.body, "fine");
    }
    // Sticky requests to the down backend are balanced to the others too.
    let answer = get_with(
        &client,
        &tandem.url("/"),
        &[("cookie", "JSESSIONID=S.sick")],
    )
    .await;
    assert_eq!(answer.body, "fine");

    let passed_before = sick.health_passed.load(Ordering::SeqCst);
    sick.healthy.store(true, Ordering::SeqCst);
    wait_flip(&tandem, &sick, "UP");
    assert_eq!(sick.health_passed.load(Ordering::SeqCst) - passed_before, 2);
    let answers: Vec<String> = {
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(get(&client, &tandem.url("/")).await.body);
        }
        answers
    };
    assert!(
        answers.iter().any(|b| b == "sick"),
        "the recovered backend gets traffic again: {answers:?}"
    );
    assert_eq!(
        tandem.log_count("backend is DOWN"),
        1,
        "a flip is logged once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_backends_start_down_answers_503_until_one_rises() {
    let backend = Backend::start("b").await;
    backend.healthy.store(false, Ordering::SeqCst);
    let checks = format!("{FAST_CHECKS}start = \"down\"\n");
    let tandem = Tandem::start(&config(&pool("web", "round_robin", &checks, &[&backend])));
    let client = client();
    let started = Instant::now();
    let answer = get(&client, &tandem.url("/")).await;
    assert_eq!(answer.status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "503 should be immediate"
    );
    backend.healthy.store(true, Ordering::SeqCst);
    wait_flip(&tandem, &backend, "UP");
    assert_eq!(get(&client, &tandem.url("/")).await.body, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_answer_in_time_goes_down() {
    let (address, _silent) = silent_backend().await;
    let fine = Backend::start("fine").await;
    let pools = format!(
        "[[pool]]\nname = \"web\"\n{FAST_CHECKS}expect_body = \"OK\"\n[[pool.backend]]\naddress = \"{address}\"\n{}",
        fine.toml()
    );
    let tandem = Tandem::start(&config(&pools));
    let line = tandem.wait_log("backend is DOWN");
    assert!(
        line.contains(&address.to_string()) && line.contains("timed out after"),
        "{line}"
    );
    for _ in 0..4 {
        assert_eq!(get(&client(), &tandem.url("/")).await.body, "fine");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_down_backend_down_and_dropping_checks_brings_it_back() {
    let sick = Backend::start("sick").await;
    let fine = Backend::start("fine").await;
    let with_checks = config(&pool("web", "round_robin", FAST_CHECKS, &[&sick, &fine]));
    let tandem = Tandem::start(&with_checks);
    sick.healthy.store(false, Ordering::SeqCst);
    wait_flip(&tandem, &sick, "DOWN");

    tandem.reload(&with_checks);
    let client = client();
    for _ in 0..6 {
        assert_eq!(
            get(&client, &tandem.url("/")).await.body,
            "fine",
            "reload forgot the backend is down"
        );
    }

    tandem.reload(&config(&pool("web", "round_robin", "", &[&sick, &fine])));
    let until = Instant::now() + DEADLINE;
    loop {
        if get(&client, &tandem.url("/")).await.body == "sick" {
            break;
        }
        assert!(
            Instant::now() < until,
            "without health checks the backend never came back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_returning_backends_share_up() {
    let steady = Backend::start("steady").await;
    let back = Backend::start("back").await;
    back.healthy.store(false, Ordering::SeqCst);
    let checks = format!("slow_start = \"3s\"\n{FAST_CHECKS}");
    let tandem = Tandem::start(&config(&pool(
        "web",
        "round_robin",
        &checks,
        &[&steady, &back],
    )));
    wait_flip(&tandem, &back, "DOWN");
    back.healthy.store(true, Ordering::SeqCst);
    wait_flip(&tandem, &back, "UP");
    let client = client();

    // Right after coming back, its share is a small fraction of round robin's half.
    let mut early = Vec::new();
    for _ in 0..40 {
        early.push(get(&client, &tandem.url("/")).await.body);
    }
    let early_share = early.iter().filter(|b| *b == "back").count();
    assert!(
        early_share <= 12,
        "{early_share} of 40 right after recovery"
    );

    // Once the ramp is over, plain round robin again: exactly every other request.
    let until = Instant::now() + DEADLINE;
    loop {
        let mut window = Vec::new();
        for _ in 0..20 {
            window.push(get(&client, &tandem.url("/")).await.body);
        }
        if window.iter().filter(|b| *b == "back").count() == 10 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the share never reached half: {window:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_its_health_checks_bring_back_is_no_longer_ejected_by_passive_checks() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let checks = "[pool.health]\npath = \"/health\"\ninterval = \"100ms\"\nfall = 1\nrise = 1\n[pool.passive]\nmax_fails = 1\nrecover_after = \"60s\"\nfail_on_status = [503]\n";
    let tandem = Tandem::start(&config(&pool("web", "round_robin", checks, &[&a, &b])));
    let client = client();
    // a fails real requests (ejected for a minute) and its checks (down).
    a.healthy.store(false, Ordering::SeqCst);
    let until = Instant::now() + DEADLINE;
    while tandem.log_count("backend ejected") == 0 {
        assert!(Instant::now() < until, "a was never ejected");
        get(&client, &tandem.url("/health")).await;
    }
    wait_flip(&tandem, &a, "DOWN");
    // Its checks pass again: it is back at once, not a minute later.
    a.healthy.store(true, Ordering::SeqCst);
    wait_flip(&tandem, &a, "UP");
    let mut bodies = Vec::new();
    for _ in 0..6 {
        bodies.push(get(&client, &tandem.url("/")).await.body);
    }
    assert!(bodies.iter().any(|body| body == "a"), "{bodies:?}");
}

/// Checks every 100 ms that never reach `fall` in the test's short failure (100 failures in a
/// row would take 10 s), rise 2, and passive checks that eject on one failure for a minute.
const EJECT_BUT_NEVER_DOWN: &str = "[pool.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"90ms\"\nfall = 100\nrise = 2\n[pool.passive]\nmax_fails = 1\nrecover_after = \"60s\"\nfail_on_status = [503]\n";

/// A pool of `flaky` and `fine` with the checks above and an admin listener.
fn eject_but_never_down(flaky: &Backend, fine: &Backend) -> String {
    config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n{}",
        pool("web", "round_robin", EJECT_BUT_NEVER_DOWN, &[flaky, fine])
    ))
}

/// Once `flaky`, ejected but never down, is healthy again (its `/health` has just started to
/// pass from `passed_before` on): the ejection ends after `rise` passing probes, long before
/// `recover_after`, and `flaky` takes requests again.
async fn ejection_ends_after_rise_probes(tandem: &Tandem, flaky: &Backend, passed_before: usize) {
    let healthy_since = Instant::now();
    wait_backend_status(tandem, flaky.address, "ejected", false, false).await;
    assert!(
        healthy_since.elapsed() < Duration::from_secs(5),
        "the ejection ended only after {:?}",
        healthy_since.elapsed()
    );
    assert!(
        flaky.health_passed.load(Ordering::SeqCst) - passed_before >= 2,
        "the ejection ended before `rise` probes passed"
    );
    assert_eq!(tandem.log_count("backend is DOWN"), 0, "it was never down");
    let client = client();
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(get(&client, &tandem.url("/")).await.body);
    }
    assert!(bodies.iter().any(|body| body == "flaky"), "{bodies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejection_for_failing_statuses_ends_after_rise_passing_probes() {
    let flaky = Backend::start("flaky").await;
    let fine = Backend::start("fine").await;
    let tandem = Tandem::start(&eject_but_never_down(&flaky, &fine));
    let client = client();
    // flaky answers 503 for a moment: a proxied request to it ejects it; its probes fail too,
    // but far fewer than `fall` of them.
    flaky.healthy.store(false, Ordering::SeqCst);
    let until = Instant::now() + DEADLINE;
    while backend_status(&tandem, flaky.address).await["ejected"] != true {
        assert!(Instant::now() < until, "flaky was never ejected");
        get(&client, &tandem.url("/health")).await;
    }
    let passed_before = flaky.health_passed.load(Ordering::SeqCst);
    flaky.healthy.store(true, Ordering::SeqCst);
    ejection_ends_after_rise_probes(&tandem, &flaky, passed_before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejection_of_a_backend_that_restarted_ends_after_rise_passing_probes() {
    let flaky = Backend::start("flaky").await;
    let fine = Backend::start("fine").await;
    let tandem = Tandem::start(&eject_but_never_down(&flaky, &fine));
    // Killed (connections refused): a request to it ejects it, and is retried on fine.
    flaky.kill().await;
    wait_backend_status(&tandem, flaky.address, "ejected", true, true).await;
    // Back on the same port a moment later, as a restarted Tomcat.
    let listener = tokio::net::TcpListener::bind(flaky.address).await.unwrap();
    let restarted = Backend::serve("flaky", listener);
    ejection_ends_after_rise_probes(&tandem, &restarted, 0).await;
}
