//! Seamless restart: a second tandem started on the same config binds the same public (and
//! admin) addresses while the first still serves; SIGTERM to the first then hands the traffic
//! over without a failed request, under wrk's keep-alive and `Connection: close` load alike.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use support::*;

/// A config listening on `public_port`, with its admin listener on `admin_port`.
fn fixed_config(public_port: u16, admin_port: u16, backend: &Backend) -> String {
    format!(
        "[listen]\naddresses = [\"127.0.0.1:{public_port}\"]\nshutdown_timeout = \"10s\"\n\n\
         [log]\nlevel = \"info\"\n\n[admin]\naddress = \"127.0.0.1:{admin_port}\"\n\n{}",
        pool("web", "round_robin", "", &[backend])
    )
}

/// Starts wrk against `url` for 6 s (bounded by wrk itself, and its per-request timeout).
fn start_wrk(url: &str, extra: &[&str]) -> std::process::Child {
    Command::new("wrk")
        .args(["-t2", "-c16", "-d6s", "--timeout", "5s", "--latency"])
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wrk (scripts/install-test-deps.sh installs it)")
}

/// Waits for wrk and fails the test unless it made requests, all answered 2xx or 3xx, with at
/// most `allowed_socket_errors` socket errors (wrk prints that line only when there are some).
fn assert_wrk_clean(wrk: std::process::Child, allowed_socket_errors: u64) {
    let output = wrk.wait_with_output().expect("wrk ran");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed:\n{report}");
    assert!(
        !report.contains("Non-2xx"),
        "requests failed across the handover:\n{report}"
    );
    let socket_errors: u64 = report
        .lines()
        .find(|line| line.contains("Socket errors"))
        .map(|line| {
            line.split(|c: char| !c.is_ascii_digit())
                .filter_map(|number| number.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    assert!(
        socket_errors <= allowed_socket_errors,
        "{socket_errors} connections failed across the handover (at most {allowed_socket_errors} allowed):\n{report}"
    );
    let requests: u64 = report
        .lines()
        .find(|line| line.contains("requests in"))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"));
    assert!(
        requests > 100,
        "wrk made only {requests} requests:\n{report}"
    );
}

/// Runs one handover under wrk: A serves, B starts on `config_b` (same public port), A gets
/// SIGTERM once B is up, and wrk must see no more than `allowed_socket_errors` failures. With
/// `share_admin`, B runs on the very same config as A (a binary upgrade).
async fn handover(wrk_extra: &[&str], share_admin: bool, allowed_socket_errors: u64) {
    let backend = Backend::start("app").await;
    let public_port = free_port();
    let admin_a = free_port();
    let admin_b = if share_admin { admin_a } else { free_port() };
    let mut a = Tandem::start(&fixed_config(public_port, admin_a, &backend));
    a.wait_ready().await;
    let wrk = start_wrk(&format!("http://127.0.0.1:{public_port}/"), wrk_extra);
    // A load schedule, not a wait on a condition: A serves wrk alone for a second first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // `start` returns once B has bound its listeners (it logs them after binding): from then
    // on the kernel queues new connections to B as well as to A.
    let b = Tandem::start(&fixed_config(public_port, admin_b, &backend));
    if !share_admin {
        b.wait_ready().await;
    }
    a.signal(Signal::SIGTERM);
    assert!(a.wait_exit().success(), "A's log:\n{}", a.log());
    assert_wrk_clean(wrk, allowed_socket_errors);
    let served_by_a = a.access_log().lines().count();
    let served_by_b = b.access_log().lines().count();
    assert!(
        served_by_a > 0 && served_by_b > 0,
        "A served {served_by_a} requests, B {served_by_b}: both should have"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_load_sees_no_error_while_a_new_process_takes_over() {
    // Keep-alive connections are only ever ended by A between a response and the next
    // request (`Connection: close` while draining): nothing may fail.
    handover(&[], false, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_load_sees_no_error_with_the_admin_port_shared_too() {
    // Each request on a new connection: one that the kernel hands to A's listener in the
    // instant between A's last accept and its close is reset (README, "Seamless restart"),
    // unless `net.ipv4.tcp_migrate_req` moves it to B. Each of wrk's 16 connections has at
    // most one handshake under way at that instant.
    let migrated = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .is_ok_and(|value| value.trim() == "1");
    handover(
        &["-H", "Connection: close"],
        true,
        if migrated { 0 } else { 16 },
    )
    .await;
}

/// A cluster node cannot share its peer port: a second process of the same node exits with
/// the peer address in its error, before it binds the public port, and the first one serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_of_a_cluster_node_refuses_to_start_and_the_first_serves_on() {
    let backend = Backend::start("app").await;
    let (public_port, peer_port, other_peer) = (free_port(), free_port(), free_port());
    let config = format!(
        "[session]\nmode = \"proxy\"\n\n[cluster]\nname = \"restart\"\nnode_id = \"n1\"\n\
         listen = \"127.0.0.1:{peer_port}\"\npeers = [\"127.0.0.1:{other_peer}\"]\n\
         secret = \"seamless-restart-cluster-secret-0123456789\"\n\n{}",
        fixed_config(public_port, free_port(), &backend)
    );
    let a = Tandem::start(&config);
    let mut second = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("-c")
        .arg(&a.config_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the second tandem");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while second.try_wait().expect("poll the second tandem").is_none() {
        if std::time::Instant::now() > until {
            let _ = second.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = second.wait_with_output().expect("second tandem ran");
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "second tandem's log:\n{log}");
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{peer_port}")),
        "second tandem's log:\n{log}"
    );
    assert_eq!(get(&client(), &a.url("/")).await.status, 200);
}
