//! The access log as an operator reads it: one line per request, to a file, as JSON; and
//! rotated: moved away, then reopened at its path on SIGUSR1.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use support::*;

#[tokio::test]
async fn json_access_log_to_a_file_has_one_line_per_request() {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let log = format!(
        "[log]\nformat = \"json\"\naccess_log = \"{}\"\n\n",
        log_path.display()
    );
    let listen = "[listen]\naddresses = [\"127.0.0.1:0\"]\n\n";
    let tandem = Tandem::start(&format!(
        "{listen}{log}{}",
        pool("web", "round_robin", "", &[&backend])
    ));
    let client = client();
    assert_eq!(get(&client, &tandem.url("/first?q=1")).await.status, 200);
    assert_eq!(
        get_with(&client, &tandem.url("/"), &[("host", "nowhere.example")])
            .await
            .status,
        200
    );
    let until = Instant::now() + DEADLINE;
    let lines = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each access line is JSON"))
            .collect();
        if lines.len() >= 2 {
            break lines;
        }
        assert!(
            Instant::now() < until,
            "access log has {} lines: {text}",
            lines.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 2);
    let first = &lines[0]["fields"];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/first");
    assert_eq!(first["status"], 200);
    assert_eq!(first["pool"], "web");
    assert_eq!(first["backend"], backend.address.to_string());
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["bytes"], 1);
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(first["duration_us"].as_u64().is_some());
}

/// A tandem writing its text access log to `log_path`, with an admin listener.
async fn logging_to(log_path: &Path, backend: &Backend) -> Tandem {
    let log = format!("[log]\naccess_log = \"{}\"\n\n", log_path.display());
    let listen = "[listen]\naddresses = [\"127.0.0.1:0\"]\n\n";
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\n\n";
    Tandem::start(&format!(
        "{listen}{log}{admin}{}",
        pool("web", "round_robin", "", &[backend])
    ))
}

/// Waits until the file at `path` exists and holds a line containing `text`.
async fn wait_for_line(path: &Path, text: &str) {
    let until = Instant::now() + DEADLINE;
    loop {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        if content.lines().any(|line| line.contains(text)) {
            return;
        }
        assert!(
            Instant::now() < until,
            "{} never had a line with {text}: {content}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of `tandem_log_reopens_total{result="<result>"}` on `tandem`.
async fn reopens(tandem: &Tandem, result: &str) -> f64 {
    let series = format!("tandem_log_reopens_total{{result=\"{result}\"}}");
    let metrics = get(&client(), &tandem.admin_url("/metrics")).await.body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_access_log_is_moved_sigusr1_makes_tandem_write_a_new_one() {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let tandem = logging_to(&log_path, &backend).await;
    let client = client();
    assert_eq!(get(&client, &tandem.url("/before")).await.status, 200);
    wait_for_line(&log_path, "path=/before").await;

    // What logrotate does: move the file, then signal.
    std::fs::rename(&log_path, &rotated).unwrap();
    tandem.signal(Signal::SIGUSR1);
    let until = Instant::now() + DEADLINE;
    while !log_path.exists() {
        assert!(Instant::now() < until, "no new access log after SIGUSR1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&client, &tandem.url("/after")).await.status, 200);
    wait_for_line(&log_path, "path=/after").await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        old.contains("path=/before") && !old.contains("path=/after"),
        "{old}"
    );
    assert!(!new.contains("path=/before"), "{new}");
    assert_eq!(reopens(&tandem, "ok").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_when_the_log_cannot_be_opened_anew_keeps_the_old_file() {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let tandem = logging_to(&logs.join("access.log"), &backend).await;
    let client = client();
    assert_eq!(get(&client, &tandem.url("/before")).await.status, 200);
    wait_for_line(&logs.join("access.log"), "path=/before").await;

    // The log's directory cannot be written to: here it is taken away, since these tests
    // may run as root, which permission bits do not stop. The open file moves with it.
    let moved = dir.path().join("logs.old");
    std::fs::rename(&logs, &moved).unwrap();
    tandem.signal(Signal::SIGUSR1);
    let until = Instant::now() + DEADLINE;
    while reopens(&tandem, "failed").await < 1.0 {
        assert!(Instant::now() < until, "the reopen never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still serving, and still logging, to the file it had.
    assert_eq!(get(&client, &tandem.url("/after")).await.status, 200);
    wait_for_line(&moved.join("access.log"), "path=/after").await;
    assert!(!logs.exists());
    assert_eq!(reopens(&tandem, "ok").await, 0.0);

    // Once the directory is back, the next SIGUSR1 opens the file there.
    std::fs::create_dir(&logs).unwrap();
    tandem.signal(Signal::SIGUSR1);
    let until = Instant::now() + DEADLINE;
    while reopens(&tandem, "ok").await < 1.0 {
        assert!(Instant::now() < until, "the reopen never succeeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&client, &tandem.url("/again")).await.status, 200);
    wait_for_line(&logs.join("access.log"), "path=/again").await;
}
