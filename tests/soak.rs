//! The bounded soak of issue 7: three tandem peers in proxy mode and `sync` replication over
//! two backends, under wrk (HTTP/1.1) and h2load (HTTP/2) and four session clients, while a
//! backend is killed and brought back, a peer is killed with SIGKILL and restarted, then the
//! other backend. Checked: no 5xx and no socket error for the idempotent load, no acknowledged
//! session update lost (each client's counter equals its 2xx count), and open files and memory
//! of a peer back near their baseline afterwards.
//!
//! `TANDEM_SOAK_SECONDS` sets the length (20 s by default, as in CI); the README's figures
//! come from a longer run.

mod support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const SECRET: &str = "soak-secret-for-the-tests-0123456789abc";

/// Peer `index` of three listening for peers on `ports`, over `backends`.
fn peer(index: usize, ports: &[u16], backends: &[&Backend]) -> String {
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, port)| format!("\"127.0.0.1:{port}\""))
        .collect();
    config(&format!(
        "[session]\nmode = \"proxy\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[cluster]\nname = \"soak\"\nnode_id = \"n{index}\"\nlisten = \"127.0.0.1:{}\"\npeers = [{}]\nsecret = \"{SECRET}\"\nheartbeat_interval = \"100ms\"\ndrop_after = \"500ms\"\nreplication = \"sync\"\nsync_timeout = \"1s\"\n\n{}",
        ports[index],
        peers.join(", "),
        pool(
            "app",
            "round_robin",
            "idle_timeout = \"1s\"\n[pool.sticky]\nmode = \"off\"\n[pool.health]\npath = \"/health\"\ninterval = \"200ms\"\nfall = 1\nrise = 1",
            backends
        )
    ))
}

/// Runs a load tool to completion on a thread; its stdout, or a failure naming the install.
fn run_tool(program: &'static str, args: Vec<String>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let output = Command::new(program).args(&args).output().unwrap_or_else(|error| {
            panic!("cannot run {program} ({error}): run scripts/install-test-deps.sh, which installs Debian's wrk and nghttp2-client")
        });
        assert!(output.status.success(), "{program} failed: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
}

/// The number after `label` in `text` (`0` when the line is absent, as wrk omits zeros).
fn number_after(text: &str, label: &str) -> u64 {
    text.find(label).map_or(0, |at| {
        text[at + label.len()..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    })
}

/// A tandem process's open files and resident memory (bytes).
fn files_and_rss(tandem: &Tandem) -> (usize, u64) {
    let pid = tandem.pid();
    let files = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap();
    (files, kib * 1024)
}

/// What `tandem` logged as a warning or an error, for a failure's message.
fn warnings(tandem: &Tandem) -> String {
    let log = tandem.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .collect();
    lines.join("\n")
}

/// One session client: increments its own counter through the peers in `peers`, one after
/// the other, until `until`; returns (2xx responses, the counter's final value, failures).
async fn count_through(peers: Arc<Mutex<Vec<String>>>, until: Instant) -> (u64, u64, u64) {
    let client = client();
    let mut cookie: Option<String> = None;
    let (mut acknowledged, mut failures, mut turn) = (0u64, 0u64, 0usize);
    while Instant::now() < until {
        let url = {
            let peers = peers.lock().unwrap();
            turn += 1;
            peers[turn % peers.len()].clone()
        };
        let mut request = http::Request::get(format!("{url}/session")).header(
            "x-respond-x-tandem-session-patch",
            format!(r#"{{"count":{}}}"#, acknowledged + 1),
        );
        if let Some(cookie) = &cookie {
            request = request.header("cookie", cookie);
        }
        let request = request.body(empty()).unwrap();
        let Ok(Ok(response)) =
            tokio::time::timeout(Duration::from_secs(5), client.request(request)).await
        else {
            failures += 1;
            continue;
        };
        if !response.status().is_success() {
            failures += 1;
            continue;
        }
        if let Some(set) = response.headers().get("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_string();
            cookie = Some(pair);
        }
        use http_body_util::BodyExt;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let count = seen["data"]["count"].as_u64().unwrap_or(0);
        // The previous acknowledged value, or the one after it if a failed request was
        // applied all the same (it wrote that same value): never less.
        assert!(
            count == acknowledged || count == acknowledged + 1,
            "acknowledged update lost: the session says {count} after {acknowledged} acknowledged ({url})"
        );
        acknowledged += 1;
    }
    // The final value, read through the first peer.
    let url = peers.lock().unwrap()[0].clone();
    let request = http::Request::get(format!("{url}/session"))
        .header("cookie", cookie.unwrap())
        .body(empty())
        .unwrap();
    let answer = send(&client, request).await;
    let seen: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    (
        acknowledged,
        seen["data"]["count"].as_u64().unwrap(),
        failures,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_backends_and_a_peer_killed_loses_nothing_and_serves_every_get() {
    let seconds: u64 = std::env::var("TANDEM_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let length = Duration::from_secs(seconds);
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (a_address, b_address) = (a.address, b.address);
    let ports = [free_port(), free_port(), free_port()];
    let start = |i: usize| Tandem::start(&peer(i, &ports, &[&a, &b]));
    let mut nodes: Vec<Tandem> = (0..3).map(start).collect();
    for tandem in &nodes {
        tandem.wait_ready().await;
    }
    // Baseline of the peer under wrk: after a short warm-up with the same load, once its idle
    // backend connections have timed out.
    run_tool(
        "wrk",
        vec![
            "-t1".into(),
            "-c16".into(),
            "-d2s".into(),
            nodes[0].url("/"),
        ],
    )
    .join()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (base_files, base_rss) = files_and_rss(&nodes[0]);

    let started = Instant::now();
    let until = started + length;
    let wrk = run_tool(
        "wrk",
        vec![
            "-t1".into(),
            "-c16".into(),
            format!("-d{seconds}s"),
            "--latency".into(),
            nodes[0].url("/"),
        ],
    );
    let h2load = run_tool(
        "h2load",
        vec![
            "-c4".into(),
            "-m8".into(),
            "-D".into(),
            seconds.to_string(),
            nodes[1].url("/"),
        ],
    );
    let peers = Arc::new(Mutex::new(
        nodes.iter().map(|t| t.url("")).collect::<Vec<_>>(),
    ));
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(count_through(Arc::clone(&peers), until)))
        .collect();

    // The faults, spread over the run.
    let at = |share: f64| started + length.mul_f64(share);
    tokio::time::sleep_until(at(0.15).into()).await;
    a.kill().await;
    tokio::time::sleep_until(at(0.30).into()).await;
    let a = Backend::serve("a", tokio::net::TcpListener::bind(a_address).await.unwrap());
    tokio::time::sleep_until(at(0.40).into()).await;
    let dead_url = nodes[2].url("");
    peers.lock().unwrap().retain(|url| *url != dead_url);
    nodes[2].signal(nix::sys::signal::Signal::SIGKILL);
    nodes[2].wait_exit();
    tokio::time::sleep_until(at(0.55).into()).await;
    nodes[2] = start(2);
    nodes[2].wait_ready().await;
    peers.lock().unwrap().push(nodes[2].url(""));
    tokio::time::sleep_until(at(0.70).into()).await;
    b.kill().await;
    tokio::time::sleep_until(at(0.85).into()).await;
    let b = Backend::serve("b", tokio::net::TcpListener::bind(b_address).await.unwrap());

    let wrk = wrk.join().unwrap();
    let h2load = h2load.join().unwrap();
    let mut acknowledged_total = 0;
    for client in clients {
        let (acknowledged, count, failures) = client.await.unwrap();
        assert_eq!(
            count, acknowledged,
            "a session counter is not its 2xx count"
        );
        acknowledged_total += acknowledged;
        eprintln!("session client: {acknowledged} acknowledged, {failures} failed");
    }
    let requests: u64 = wrk
        .lines()
        .find(|line| line.contains("requests in"))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    let h2_requests = number_after(&h2load, "requests:");
    eprintln!("wrk:\n{wrk}\nh2load:\n{h2load}");
    assert!(requests > 0, "{wrk}");
    assert_eq!(
        number_after(&wrk, "Non-2xx or 3xx responses:"),
        0,
        "{wrk}\n{}",
        warnings(&nodes[0])
    );
    assert!(!wrk.contains("Socket errors"), "{wrk}");
    assert!(
        h2load.contains(" 0 5xx"),
        "{h2load}\n{}",
        warnings(&nodes[1])
    );
    assert!(h2load.contains(" 0 failed"), "{h2load}");
    assert!(h2load.contains(" 0 errored"), "{h2load}");

    // Afterwards, once idle backend connections have timed out (1 s here), open files come
    // back to the baseline and memory near it.
    let deadline = Instant::now() + DEADLINE;
    let (files, rss) = loop {
        let (files, rss) = files_and_rss(&nodes[0]);
        if files <= base_files || Instant::now() > deadline {
            break (files, rss);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "soak of {seconds} s: wrk {requests} requests, h2load {h2_requests}, {acknowledged_total} session updates acknowledged; peer 0: {base_files} → {files} open files, RSS {} → {} MiB",
        base_rss >> 20,
        rss >> 20
    );
    assert!(files <= base_files, "open files {base_files} → {files}");
    assert!(rss < base_rss * 2 + (32 << 20), "RSS {base_rss} → {rss}");
    drop((a, b));
}
