//! Sessions replicated among tandem peers in proxy mode: written through one peer, read
//! through the others; merged by version when written concurrently; ended everywhere; and a
//! peer that (re)starts receives the full state before it says it is ready.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const SECRET: &str = "replication-secret-for-the-tests-0123456";
/// The admin token of every node (the session API needs it).
const TOKEN: &str = "admin-token-for-replication-tests";

/// A relay with `delay` in front of each port in `ports`, and the relays' ports.
async fn relays_to(ports: &[u16], delay: Duration) -> (Vec<FaultRelay>, Vec<u16>) {
    let mut relays = Vec::new();
    for &port in ports {
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        relays.push(FaultRelay::start(target, delay).await);
    }
    let relay_ports = relays.iter().map(|relay| relay.address.port()).collect();
    (relays, relay_ports)
}

/// A ready cluster of `count` nodes over `backend` (with `extra` keys in `[cluster]`) whose
/// peers talk through relays that hold every chunk back `delay`: the relays (which must live as
/// long as the nodes) and the nodes.
async fn cluster_via_relays(
    backend: &Backend,
    count: usize,
    delay: Duration,
    extra: &str,
) -> (Vec<FaultRelay>, Vec<Tandem>) {
    let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
    let (relays, relay_ports) = relays_to(&ports, delay).await;
    let nodes: Vec<Tandem> = (0..count)
        .map(|i| Tandem::start(&node_via(i, ports[i], &relay_ports, backend, extra)))
        .collect();
    for tandem in &nodes {
        tandem.wait_ready().await;
    }
    (relays, nodes)
}

/// A proxy-mode node `index` of a cluster listening on `ports`, over `backend`.
fn node(index: usize, ports: &[u16], backend: &Backend) -> String {
    node_with(index, ports, backend, "")
}

/// `node` with `extra` keys in `[cluster]`.
fn node_with(index: usize, ports: &[u16], backend: &Backend, extra: &str) -> String {
    node_via(index, ports[index], ports, backend, extra)
}

/// Node `index` listening for peers on `listen`, dialling them at `peer_ports` (its own entry
/// skipped), with `extra` keys in `[cluster]`.
fn node_via(
    index: usize,
    listen: u16,
    peer_ports: &[u16],
    backend: &Backend,
    extra: &str,
) -> String {
    let peers: Vec<String> = peer_ports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, port)| format!("\"127.0.0.1:{port}\""))
        .collect();
    config(&format!(
        "[session]\nmode = \"proxy\"\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[cluster]\nname = \"shop\"\nnode_id = \"n{index}\"\nlisten = \"127.0.0.1:{}\"\npeers = [{}]\nsecret = \"{SECRET}\"\nheartbeat_interval = \"100ms\"\ndrop_after = \"1s\"\n{extra}\n\n{}",
        listen,
        peers.join(", "),
        pool("app", "round_robin", "[pool.sticky]\nmode = \"off\"", &[backend])
    ))
}

/// Sends `/session` to `tandem` with `cookie`, the backend answering with `respond` headers;
/// returns the backend's view and the Set-Cookie pair, if any.
async fn call(
    tandem: &Tandem,
    cookie: Option<&str>,
    respond: &[(&str, &str)],
) -> (Value, Option<String>) {
    let mut request = http::Request::get(tandem.url("/session"));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    for (name, value) in respond {
        request = request.header(format!("x-respond-{name}"), *value);
    }
    let answer = send(&client(), request.body(empty()).unwrap()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let cookie = answer
        .headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string());
    (serde_json::from_str(&answer.body).unwrap(), cookie)
}

/// A new session `{"count":0}` made through `tandem`: its cookie.
async fn new_counter(tandem: &Tandem) -> String {
    let (_, cookie) = call(
        tandem,
        None,
        &[("x-tandem-session-patch", r#"{"count":0}"#)],
    )
    .await;
    cookie.expect("a session cookie")
}

/// Waits until `tandem` hands `cookie`'s session to the backend as `expected`.
async fn wait_for(tandem: &Tandem, cookie: &str, expected: &Value) {
    let until = Instant::now() + DEADLINE;
    loop {
        let (seen, _) = call(tandem, Some(cookie), &[]).await;
        if &seen["data"] == expected {
            return;
        }
        assert!(
            Instant::now() < until,
            "{} never showed {expected}; last: {}",
            tandem.url(""),
            seen["data"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cluster(backend: &Backend, ports: &[u16]) -> Vec<Tandem> {
    let nodes: Vec<Tandem> = (0..ports.len())
        .map(|i| Tandem::start(&node(i, ports, backend)))
        .collect();
    for tandem in &nodes {
        tandem.wait_ready().await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_through_one_peer_read_through_the_others_and_ended_everywhere() {
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port(), free_port()];
    let nodes = cluster(&backend, &ports).await;
    let (_, cookie) = call(
        &nodes[0],
        None,
        &[("x-tandem-session-patch", r#"{"cart":["Zoë"],"n":1}"#)],
    )
    .await;
    let cookie = cookie.expect("a session cookie");
    let expected = json!({"cart": ["Zoë"], "n": 1});
    wait_for(&nodes[1], &cookie, &expected).await;
    wait_for(&nodes[2], &cookie, &expected).await;

    // A delta through another peer reaches the first.
    call(
        &nodes[2],
        Some(&cookie),
        &[("x-tandem-session-patch", r#"{"n":2}"#)],
    )
    .await;
    wait_for(&nodes[0], &cookie, &json!({"cart": ["Zoë"], "n": 2})).await;

    // Logout through one peer ends the session on all of them.
    call(
        &nodes[1],
        Some(&cookie),
        &[("x-tandem-session-command", "invalidate")],
    )
    .await;
    for tandem in &nodes {
        wait_for(tandem, &cookie, &Value::Null).await;
    }
    // The traffic shows in the metrics.
    for series in [
        "tandem_replication_messages_total{direction=\"received\",kind=\"upsert\"}",
        "tandem_replication_messages_total{direction=\"sent\",kind=\"ended\"}",
        "tandem_replication_bytes_total{direction=\"sent\"}",
        // Node n1's changes (the logout) were acknowledged by n0: one lag observed at least.
        "tandem_replication_lag_seconds_count{peer=\"n0\"}",
    ] {
        let value = metric(&nodes[1], series).await;
        assert!(value > 0.0, "{series} = {value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_two_peers_converge_on_every_peer() {
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port(), free_port()];
    let nodes = cluster(&backend, &ports).await;
    let (_, cookie) = call(&nodes[0], None, &[("x-tandem-session-patch", r#"{"a":0}"#)]).await;
    let cookie = cookie.unwrap();
    for tandem in &nodes {
        wait_for(tandem, &cookie, &json!({"a": 0})).await;
    }
    // Different keys through two peers at once: both survive. The same key: one value wins,
    // the same on every peer.
    let (first, second) = tokio::join!(
        call(
            &nodes[0],
            Some(&cookie),
            &[("x-tandem-session-patch", r#"{"x":1,"same":"from n0"}"#)]
        ),
        call(
            &nodes[1],
            Some(&cookie),
            &[("x-tandem-session-patch", r#"{"y":2,"same":"from n1"}"#)]
        ),
    );
    drop((first, second));
    let until = Instant::now() + DEADLINE;
    loop {
        let mut views = Vec::new();
        for tandem in &nodes {
            views.push(call(tandem, Some(&cookie), &[]).await.0["data"].clone());
        }
        let agreed = views.iter().all(|view| view == &views[0]);
        if agreed && views[0]["x"] == 1 && views[0]["y"] == 2 {
            assert!(views[0]["same"] == "from n0" || views[0]["same"] == "from n1");
            break;
        }
        assert!(Instant::now() < until, "peers never converged: {views:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_receives_the_full_state_before_it_is_ready() {
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port(), free_port()];
    let mut nodes = cluster(&backend, &ports).await;
    let mut cookies = Vec::new();
    for i in 0..50 {
        let patch = format!(r#"{{"i":{i}}}"#);
        let (_, cookie) = call(&nodes[0], None, &[("x-tandem-session-patch", &patch)]).await;
        cookies.push(cookie.unwrap());
    }
    // Node 2 goes away and comes back empty: it must learn every session from its peers.
    drop(nodes.pop());
    let restarted = Tandem::start(&node(2, &ports, &backend));
    restarted.wait_ready().await;
    restarted.wait_log("full session state received from peer");
    for (i, cookie) in cookies.iter().enumerate() {
        let (seen, _) = call(&restarted, Some(cookie), &[]).await;
        assert_eq!(
            seen["data"],
            json!({"i": i}),
            "session {i} on the restarted peer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_incremented_through_rotating_peers_counts_every_increment() {
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port(), free_port()];
    let nodes = cluster(&backend, &ports).await;
    let cookie = new_counter(&nodes[0]).await;
    let mut successes = 0;
    for round in 0..30 {
        let tandem = &nodes[round % 3];
        // Async replication: the next peer is used once it has the last write (the sync-mode
        // tests below need no such wait).
        wait_for(tandem, &cookie, &json!({"count": successes})).await;
        let patch = format!(r#"{{"count":{}}}"#, successes + 1);
        call(tandem, Some(&cookie), &[("x-tandem-session-patch", &patch)]).await;
        successes += 1;
    }
    for tandem in &nodes {
        wait_for(tandem, &cookie, &json!({"count": successes})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sync_mode_every_response_finds_its_change_on_every_peer_even_past_a_kill_9() {
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port(), free_port()];
    // Peers talk through relays that hold every chunk back 30 ms: replication is slower than
    // a client's next request, which only sync mode makes safe.
    let (_relays, relay_ports) = relays_to(&ports, Duration::from_millis(30)).await;
    let sync = "replication = \"sync\"\nsync_timeout = \"2s\"";
    let start = |i: usize| Tandem::start(&node_via(i, ports[i], &relay_ports, &backend, sync));
    let mut nodes: Vec<Tandem> = (0..3).map(start).collect();
    for tandem in &nodes {
        tandem.wait_ready().await;
    }
    let cookie = new_counter(&nodes[0]).await;
    let mut successes = 0;
    for round in 0..60 {
        if round == 30 {
            // A peer dies without a word; the others go on.
            nodes[2].signal(nix::sys::signal::Signal::SIGKILL);
            nodes[2].wait_exit();
            nodes.pop();
        }
        let tandem = &nodes[round % nodes.len()];
        let patch = format!(r#"{{"count":{}}}"#, successes + 1);
        let (seen, _) = call(tandem, Some(&cookie), &[("x-tandem-session-patch", &patch)]).await;
        // No waiting between requests: each peer already holds the previous change.
        assert_eq!(seen["data"]["count"], successes, "round {round}");
        successes += 1;
    }
    // The killed peer comes back and has every acknowledged change.
    let back = start(2);
    back.wait_ready().await;
    let (seen, _) = call(&back, Some(&cookie), &[]).await;
    assert_eq!(seen["data"]["count"], successes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_both_sides_of_a_partition_are_all_present_after_it_heals() {
    let backend = Backend::start("app").await;
    let (relays, nodes) = cluster_via_relays(&backend, 2, Duration::ZERO, "").await;
    let (_, shared) = call(
        &nodes[0],
        None,
        &[("x-tandem-session-patch", r#"{"base":1}"#)],
    )
    .await;
    let shared = shared.unwrap();
    wait_for(&nodes[1], &shared, &json!({"base": 1})).await;
    // A hundred sessions of 2 KB both sides hold alike before the cut (200 KB of state).
    let bulk = format!(r#"{{"bulk":"{}"}}"#, "x".repeat(2000));
    let mut last = None;
    for _ in 0..100 {
        last = call(&nodes[0], None, &[("x-tandem-session-patch", &bulk)])
            .await
            .1;
    }
    let expected_bulk = json!({"bulk": "x".repeat(2000)});
    wait_for(&nodes[1], &last.unwrap(), &expected_bulk).await;

    for relay in &relays {
        relay.cut();
    }
    nodes[0].wait_log_all(&["peer is dead", "peer=n1"]);
    nodes[1].wait_log_all(&["peer is dead", "peer=n0"]);
    // Both sides write while they cannot see each other.
    call(
        &nodes[0],
        Some(&shared),
        &[("x-tandem-session-patch", r#"{"left":"a"}"#)],
    )
    .await;
    call(
        &nodes[1],
        Some(&shared),
        &[("x-tandem-session-patch", r#"{"right":"b"}"#)],
    )
    .await;
    let (_, only_left) = call(
        &nodes[0],
        None,
        &[("x-tandem-session-patch", r#"{"side":"left"}"#)],
    )
    .await;
    let (_, only_right) = call(
        &nodes[1],
        None,
        &[("x-tandem-session-patch", r#"{"side":"right"}"#)],
    )
    .await;

    let sent = "tandem_replication_bytes_total{direction=\"sent\"}";
    let before = metric(&nodes[0], sent).await;
    for relay in &relays {
        relay.heal();
    }
    let merged = json!({"base": 1, "left": "a", "right": "b"});
    for tandem in &nodes {
        wait_for(tandem, &shared, &merged).await;
        wait_for(
            tandem,
            &only_left.clone().unwrap(),
            &json!({"side": "left"}),
        )
        .await;
        wait_for(
            tandem,
            &only_right.clone().unwrap(),
            &json!({"side": "right"}),
        )
        .await;
    }
    // The heal exchanged digests: what both sides held alike did not travel again.
    let after = metric(&nodes[0], sent).await;
    assert!(
        after - before < 50_000.0,
        "{} bytes sent to heal a partition over 200 KB of shared state",
        after - before
    );
}

/// Writes a session snapshot of `count` sessions `{"i":N}` to `path`; returns their cookies'
/// ids.
fn write_snapshot(path: &std::path::Path, count: usize) -> Vec<String> {
    use std::io::Write;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(file, r#"{{"tandem_sessions":1,"written_ms":{now}}}"#).unwrap();
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("{i:0>32}");
        writeln!(
            file,
            r#"{{"id":"{id}","route":"app","created_ms":{now},"last_access_ms":{now},"idle_timeout_ms":3600000,"absolute_timeout_ms":7200000,"attributes":{{"i":{i}}}}}"#
        )
        .unwrap();
        ids.push(id);
    }
    writeln!(file, r#"{{"end":{count}}}"#).unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_joining_a_node_with_100000_sessions_is_ready_only_once_it_has_them_all() {
    const SESSIONS: usize = 100_000;
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port()];
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("sessions");
    let ids = write_snapshot(&snapshot, SESSIONS);
    let with_snapshot = node(0, &ports, &backend).replacen(
        "mode = \"proxy\"",
        &format!("mode = \"proxy\"\nsnapshot = \"{}\"", snapshot.display()),
        1,
    );
    let holder = Tandem::start(&with_snapshot);
    holder.wait_log_all(&["sessions read back", "sessions=100000"]);
    let joining = Tandem::start(&node(1, &ports, &backend));
    let metric = |text: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix("tandem_sessions_live "))
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Whenever it says ready, it holds all of them.
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = get(&client(), &joining.admin_url("/readyz")).await.status == 200;
        let live = metric(&get(&client(), &joining.admin_url("/metrics")).await.body);
        if ready {
            assert_eq!(live, SESSIONS as f64, "ready with {live} sessions");
            break;
        }
        assert!(
            Instant::now() < until,
            "never ready; {live} sessions so far"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in [0, 4_242, SESSIONS - 1] {
        let cookie = format!("TANDEMSESSION={}", ids[i]);
        let (seen, _) = call(&joining, Some(&cookie), &[]).await;
        assert_eq!(seen["data"], json!({"i": i}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sync_mode_concurrent_clients_each_count_every_increment_through_rotating_peers() {
    let backend = Backend::start("app").await;
    let sync = "replication = \"sync\"\nsync_timeout = \"2s\"";
    let (_relays, nodes) = cluster_via_relays(&backend, 3, Duration::from_millis(10), sync).await;
    let nodes = std::sync::Arc::new(nodes);
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let nodes = std::sync::Arc::clone(&nodes);
            tokio::spawn(async move {
                let cookie = new_counter(&nodes[client % 3]).await;
                let mut acknowledged = 0;
                for round in 0..15 {
                    let tandem = &nodes[(client + round) % 3];
                    let patch = format!(r#"{{"count":{}}}"#, acknowledged + 1);
                    let (seen, _) =
                        call(tandem, Some(&cookie), &[("x-tandem-session-patch", &patch)]).await;
                    assert_eq!(
                        seen["data"]["count"], acknowledged,
                        "client {client} round {round}"
                    );
                    acknowledged += 1;
                }
                (cookie, acknowledged)
            })
        })
        .collect();
    for client in clients {
        let (cookie, acknowledged) = client.await.unwrap();
        for tandem in nodes.iter() {
            let (seen, _) = call(tandem, Some(&cookie), &[]).await;
            assert_eq!(seen["data"]["count"], acknowledged);
        }
    }
}

/// Which of `admins` (admin listener URLs) have session `id`, by index.
async fn holders_of(admins: &[String], id: &str) -> Vec<usize> {
    let mut holders = Vec::new();
    let authorization = format!("Bearer {TOKEN}");
    for (index, admin) in admins.iter().enumerate() {
        let url = format!("{admin}/api/sessions/{id}");
        let answer = get_with(&client(), &url, &[("authorization", &authorization)]).await;
        assert!(
            answer.status == 200 || answer.status == 404,
            "{}",
            answer.body
        );
        if answer.status == 200 {
            holders.push(index);
        }
    }
    holders
}

/// Waits until every session in `ids` is on exactly `copies` of `admins`; returns how many
/// sessions each node has.
async fn wait_for_copies(admins: &[String], ids: &[String], copies: usize) -> Vec<usize> {
    let until = Instant::now() + DEADLINE;
    loop {
        let mut per_node = vec![0; admins.len()];
        let mut wrong = None;
        for id in ids {
            let holders = holders_of(admins, id).await;
            for &holder in &holders {
                per_node[holder] += 1;
            }
            if holders.len() != copies {
                wrong = Some((id.clone(), holders));
            }
        }
        let Some((id, holders)) = wrong else {
            return per_node;
        };
        assert!(
            Instant::now() < until,
            "session {id} is on nodes {holders:?}, not on {copies} of them"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_backup_topology_each_session_is_on_its_owner_and_one_backup_and_reachable_everywhere(
) {
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let backup = "topology = \"backup\"\nbackups = 1";
    let mut nodes: Vec<Tandem> = (0..4)
        .map(|i| Tandem::start(&node_with(i, &ports, &backend, backup)))
        .collect();
    for tandem in &nodes {
        tandem.wait_ready().await;
    }
    let admins: Vec<String> = nodes.iter().map(|t| t.admin_url("")).collect();

    // Forty sessions, each created through a rotating node.
    let mut sessions = Vec::new();
    for i in 0..40 {
        let patch = format!(r#"{{"n":{i}}}"#);
        let (_, cookie) = call(&nodes[i % 4], None, &[("x-tandem-session-patch", &patch)]).await;
        sessions.push(cookie.expect("a session cookie"));
    }
    let ids: Vec<String> = sessions
        .iter()
        .map(|cookie| cookie.split(['=', '.']).nth(1).unwrap().to_string())
        .collect();
    let per_node = wait_for_copies(&admins, &ids, 2).await;
    // Each node holds about half of them (2 copies over 4 nodes), not all.
    assert!(
        per_node.iter().all(|&held| (6..34).contains(&held)),
        "sessions per node: {per_node:?}"
    );

    // Every session is reachable through every node, its holders or not.
    for (i, cookie) in sessions.iter().enumerate() {
        for tandem in &nodes {
            let (seen, _) = call(tandem, Some(cookie), &[]).await;
            assert_eq!(
                seen["data"],
                json!({"n": i}),
                "session {i} via {}",
                tandem.url("")
            );
        }
    }
    // A write through a node that does not hold the session reaches its holders.
    let holders = holders_of(&admins, &ids[0]).await;
    let visitor = (0..4).find(|i| !holders.contains(i)).unwrap();
    call(
        &nodes[visitor],
        Some(&sessions[0]),
        &[("x-tandem-session-patch", r#"{"n":100}"#)],
    )
    .await;
    wait_for(&nodes[holders[0]], &sessions[0], &json!({"n": 100})).await;
    // The nodes that only visited let go of their copies.
    wait_for_copies(&admins, &ids, 2).await;

    // A node dies: its sessions move to the others, each again on two of the three.
    nodes[3].signal(nix::sys::signal::Signal::SIGKILL);
    nodes[3].wait_exit();
    nodes.pop();
    wait_for_copies(&admins[..3], &ids, 2).await;
    for (i, cookie) in sessions.iter().enumerate() {
        let expected = if i == 0 {
            json!({"n": 100})
        } else {
            json!({"n": i})
        };
        for tandem in &nodes {
            let (seen, _) = call(tandem, Some(cookie), &[]).await;
            assert_eq!(seen["data"], expected, "session {i} via {}", tandem.url(""));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_backup_topology_sync_mode_waits_for_the_sessions_holders() {
    let backend = Backend::start("app").await;
    // Replication is slower than a client's next request (30 ms relays): only waiting for
    // the holders' acknowledgements lets every next request see the change.
    let keys = "topology = \"backup\"\nbackups = 1\nreplication = \"sync\"\nsync_timeout = \"2s\"";
    let (_relays, nodes) = cluster_via_relays(&backend, 3, Duration::from_millis(30), keys).await;
    let cookie = new_counter(&nodes[0]).await;
    for round in 0..30 {
        let tandem = &nodes[round % 3];
        let patch = format!(r#"{{"count":{}}}"#, round + 1);
        let (seen, _) = call(tandem, Some(&cookie), &[("x-tandem-session-patch", &patch)]).await;
        assert_eq!(seen["data"]["count"], round, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_hostile_attribute_values_reach_a_peer_encoded_and_intact() {
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port()];
    let nodes = cluster(&backend, &ports).await;
    // CR LF with a header after it, NUL, non-ASCII and an astral character, as JSON escapes.
    let patch = r#"{"note":"a\r\nX-Admin: 1\u0000 Zo\u00eb \ud83d\ude00"}"#;
    let (_, cookie) = call(&nodes[0], None, &[("x-tandem-session-patch", patch)]).await;
    let cookie = cookie.unwrap();
    let expected = json!({"note": "a\r\nX-Admin: 1\u{0} Zoë 😀"});
    wait_for(&nodes[1], &cookie, &expected).await;
    // The backend got the value in one printable-ASCII header, and no X-Admin header of the
    // value's making.
    call(&nodes[1], Some(&cookie), &[]).await;
    let headers = backend.last_headers.lock().unwrap().clone().unwrap();
    assert!(!headers.contains_key("x-admin"));
    let data = headers["x-tandem-session-data"].as_bytes();
    assert!(data.iter().all(|byte| (0x20..0x7f).contains(byte)));
}

/// Three peers with `lock_sessions` in sync mode, behind 10 ms relays, and a counter session
/// at 0: the relays, the peers and the session's cookie.
async fn locked_counter_cluster(backend: &Backend) -> (Vec<FaultRelay>, Vec<Tandem>, String) {
    let keys = "replication = \"sync\"\nsync_timeout = \"2s\"\nlock_sessions = true";
    let (relays, nodes) = cluster_via_relays(backend, 3, Duration::from_millis(10), keys).await;
    let cookie = new_counter(&nodes[0]).await;
    (relays, nodes, cookie)
}

/// Four clients at once, each sending `rounds` read-modify-write increments of `cookie`'s
/// counter through the peers in turn (the backend adds one to what it is handed); each
/// returns its (2xx, failed) counts.
fn increment_concurrently(
    nodes: &std::sync::Arc<Vec<Tandem>>,
    cookie: &str,
    rounds: usize,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..4)
        .map(|client_index| {
            let (nodes, cookie) = (std::sync::Arc::clone(nodes), cookie.to_string());
            tokio::spawn(async move {
                let client = client();
                let (mut successes, mut failures) = (0u64, 0u64);
                for round in 0..rounds {
                    let tandem = &nodes[(client_index + round) % nodes.len()];
                    let request = http::Request::get(tandem.url("/session/increment"))
                        .header("cookie", &cookie)
                        .body(empty())
                        .unwrap();
                    let answer = tokio::time::timeout(DEADLINE, client.request(request)).await;
                    match answer {
                        Ok(Ok(response)) if response.status() == 200 => successes += 1,
                        _ => failures += 1,
                    }
                }
                (successes, failures)
            })
        })
        .collect()
}

/// The summed (2xx, failed) counts of `clients`.
async fn tally_clients(clients: Vec<tokio::task::JoinHandle<(u64, u64)>>) -> (u64, u64) {
    let (mut successes, mut failures) = (0, 0);
    for client in clients {
        let (ok, failed) = client.await.unwrap();
        successes += ok;
        failures += failed;
    }
    (successes, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_session_locks_concurrent_clients_of_one_counter_through_rotating_peers_count_every_2xx(
) {
    let backend = Backend::start("app").await;
    let (_relays, nodes, cookie) = locked_counter_cluster(&backend).await;
    let nodes = std::sync::Arc::new(nodes);
    let (successes, failures) = tally_clients(increment_concurrently(&nodes, &cookie, 15)).await;
    assert_eq!(
        (successes, failures),
        (60, 0),
        "every increment answered 2xx"
    );
    for tandem in nodes.iter() {
        let (seen, _) = call(tandem, Some(&cookie), &[]).await;
        assert_eq!(seen["data"]["count"], successes, "via {}", tandem.url(""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_session_locks_a_shared_counter_loses_no_acknowledged_increment_past_a_kill_9_of_its_owner(
) {
    let backend = Backend::start("app").await;
    let (_relays, nodes, cookie) = locked_counter_cluster(&backend).await;
    // The node that owns the session's lock (the same rendezvous hashing as tandem's).
    let id = cookie.split(['=', '.']).nth(1).unwrap();
    let topology = tandem::cluster::topology::Topology::new("n0", None);
    topology.set_live_peers(["n1".to_string(), "n2".to_string()]);
    let owner: usize = topology.owner(id)[1..].parse().unwrap();
    let nodes = std::sync::Arc::new(nodes);
    let clients = increment_concurrently(&nodes, &cookie, 30);
    // A third of the way in, the owner dies without a word.
    tokio::time::sleep(Duration::from_millis(700)).await;
    nodes[owner].signal(nix::sys::signal::Signal::SIGKILL);
    let (successes, failures) = tally_clients(clients).await;
    assert!(successes >= 60, "{successes} increments acknowledged");
    assert!(failures > 0, "the owner died after the run");
    for (index, tandem) in nodes.iter().enumerate() {
        if index == owner {
            continue;
        }
        let (seen, _) = call(tandem, Some(&cookie), &[]).await;
        let count = seen["data"]["count"].as_u64().unwrap();
        // Every acknowledged increment is there; one whose response was lost with the
        // killed peer may be there too.
        assert!(
            (successes..=successes + failures).contains(&count),
            "count {count} with {successes} acknowledged and {failures} failed, via {}",
            tandem.url("")
        );
    }
}

/// Where Debian's `faketime` package puts libfaketime, the preload library that shifts the
/// clock of the process it is loaded into (`SystemTime::now` included).
fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("faketime/libfaketime.so.1"))
        .find(|path| path.exists());
    found
        .expect("libfaketime not found: install Debian's faketime (scripts/install-test-deps.sh)")
        .display()
        .to_string()
}

/// Starts tandem on `config` with its wall clock `offset` from the real one (libfaketime's
/// syntax: `+10m`, `+10s`); the monotonic clock, which timers run on, stays true.
fn start_skewed(config: &str, offset: &str) -> Tandem {
    let library = libfaketime();
    Tandem::start_with_env(
        config,
        &[
            ("LD_PRELOAD", library.as_str()),
            ("FAKETIME", offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
}

/// Unix ms on the test's (true) clock.
fn real_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Session `id` as `tandem`'s session API shows it, if live there.
async fn session_view(tandem: &Tandem, id: &str) -> Option<Value> {
    let url = tandem.admin_url(&format!("/api/sessions/{id}"));
    let authorization = format!("Bearer {TOKEN}");
    let answer = get_with(&client(), &url, &[("authorization", &authorization)]).await;
    match answer.status.as_u16() {
        200 => Some(serde_json::from_str(&answer.body).unwrap()),
        404 => None,
        status => panic!("session API answered {status}: {}", answer.body),
    }
}

/// The value of the metric series `series` (name and labels, as printed) on `tandem`.
async fn metric(tandem: &Tandem, series: &str) -> f64 {
    let metrics = get(&client(), &tandem.admin_url("/metrics")).await.body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

/// Waits until session `id` is no longer live on `tandem`, failing if it still is at `by`.
async fn wait_gone_by(tandem: &Tandem, id: &str, by: Instant, what: &str) {
    loop {
        let Some(view) = session_view(tandem, id).await else {
            return;
        };
        assert!(
            Instant::now() < by,
            "{what}: the session is still served past its timeouts: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_by_a_peer_whose_clock_runs_ten_minutes_ahead_outlives_no_timeout() {
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port()];
    let healthy = Tandem::start(&node(0, &ports, &backend));
    let skewed = start_skewed(&node(1, &ports, &backend), "+10m");
    healthy.wait_ready().await;
    skewed.wait_ready().await;

    // A session with a 4 s idle and a 12 s absolute timeout, created through the skewed peer.
    let created = Instant::now();
    let (_, cookie) = call(
        &skewed,
        None,
        &[
            ("x-tandem-session-patch", r#"{"cart":["apple"]}"#),
            ("x-tandem-session-idle-timeout", "4"),
            ("x-tandem-session-absolute-timeout", "12"),
        ],
    )
    .await;
    let cookie = cookie.expect("a session cookie");
    let id = cookie.split(['=', '.']).nth(1).unwrap().to_string();
    let there = session_view(&skewed, &id)
        .await
        .expect("live where created");
    let ahead_s = (there["created_ms"].as_u64().unwrap() as i64 - real_now_ms() as i64) / 1000;
    assert!(
        (590..=610).contains(&ahead_s),
        "the fake clock did not take: created {ahead_s} s ahead"
    );

    // The healthy peer hears of it: it holds the session, or refuses it for its creation time.
    let refused = "tandem_session_updates_rejected_total{reason=\"clock_skew\"}";
    let until = Instant::now() + DEADLINE;
    while session_view(&healthy, &id).await.is_none() && metric(&healthy, refused).await < 1.0 {
        assert!(Instant::now() < until, "the healthy peer never heard of it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(skewed);

    // Gone by its creation plus its absolute timeout (on the true clock), with a little slack.
    let by = created + Duration::from_secs(12 + 3);
    wait_gone_by(&healthy, &id, by, "created ten minutes ahead").await;
    let (seen, _) = call(&healthy, Some(&cookie), &[]).await;
    assert_eq!(seen["data"], Value::Null, "served by the healthy peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uses_through_a_peer_whose_clock_runs_ahead_do_not_stretch_the_idle_timeout() {
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port()];
    let healthy = Tandem::start(&node(0, &ports, &backend));
    // Ahead by more than the allowance, by less than the idle timeout (or the skewed peer
    // would see the session as expired on arrival).
    let skewed = start_skewed(&node(1, &ports, &backend), "+10s");
    healthy.wait_ready().await;
    skewed.wait_ready().await;

    let (_, cookie) = call(
        &healthy,
        None,
        &[
            ("x-tandem-session-patch", r#"{"n":1}"#),
            ("x-tandem-session-idle-timeout", "15"),
            ("x-tandem-session-absolute-timeout", "60"),
        ],
    )
    .await;
    let cookie = cookie.expect("a session cookie");
    let id = cookie.split(['=', '.']).nth(1).unwrap().to_string();
    // Used through the skewed peer: a touch and a delta, each with a last use 10 s ahead.
    wait_for(&skewed, &cookie, &json!({"n": 1})).await;
    call(
        &skewed,
        Some(&cookie),
        &[("x-tandem-session-patch", r#"{"n":2}"#)],
    )
    .await;
    let last_use = Instant::now();
    let until = last_use + DEADLINE;
    let view = loop {
        let view = session_view(&healthy, &id)
            .await
            .expect("live on the healthy peer");
        if view["attributes"]["n"] == 2 {
            break view;
        }
        assert!(Instant::now() < until, "the delta never arrived: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let merged_ms = real_now_ms();
    drop(skewed);
    // Gone by the last use plus the idle timeout, with a little slack (touches are batched).
    let by = last_use + Duration::from_secs(15 + 4);
    wait_gone_by(&healthy, &id, by, "used through a peer 10 s ahead").await;
    assert!(
        view["last_access_ms"].as_u64().unwrap() <= merged_ms + 5_000,
        "a last use in this node's future: {view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_written_under_a_clock_ten_minutes_ahead_brings_back_no_session_from_it() {
    let backend = Backend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("sessions.snapshot");
    let single = config(&format!(
        "[session]\nmode = \"proxy\"\nsnapshot = \"{}\"\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n{}",
        snapshot.display(),
        pool("app", "round_robin", "[pool.sticky]\nmode = \"off\"", &[&backend])
    ));
    let mut skewed = start_skewed(&single, "+10m");
    let cookie = new_counter(&skewed).await;
    let id = cookie.split(['=', '.']).nth(1).unwrap().to_string();
    skewed.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(skewed.wait_exit().success());
    assert!(snapshot.exists(), "no snapshot written");

    let healthy = Tandem::start(&single);
    assert_eq!(
        session_view(&healthy, &id).await,
        None,
        "read back from the future"
    );
    let refused = "tandem_session_updates_rejected_total{reason=\"clock_skew\"}";
    assert_eq!(metric(&healthy, refused).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_joining_a_node_whose_clock_runs_ahead_takes_no_session_from_its_future() {
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port()];
    let skewed = start_skewed(&node(1, &ports, &backend), "+10m");
    let cookie = new_counter(&skewed).await;
    let id = cookie.split(['=', '.']).nth(1).unwrap().to_string();
    // The session reaches the joining peer through the digest exchange, not as a live change.
    let joining = Tandem::start(&node(0, &ports, &backend));
    joining.wait_ready().await;
    assert_eq!(
        session_view(&joining, &id).await,
        None,
        "taken from the future"
    );
    let refused = "tandem_session_updates_rejected_total{reason=\"clock_skew\"}";
    assert_eq!(metric(&joining, refused).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sync_mode_a_joining_peer_is_ready_only_once_every_peer_it_reached_replicates_to_it() {
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port(), free_port()];
    // Node 0 dials node 2 through a relay that refuses connections until healed; node 2
    // reaches node 0 directly. Until then node 0 hears node 2 but cannot send it changes.
    let relay = FaultRelay::start(([127, 0, 0, 1], ports[2]).into(), Duration::ZERO).await;
    relay.cut();
    let through_relay = [ports[0], ports[1], relay.address.port()];
    let sync = "replication = \"sync\"\nsync_timeout = \"1s\"";
    let first = Tandem::start(&node_via(0, ports[0], &through_relay, &backend, sync));
    let second = Tandem::start(&node_via(1, ports[1], &ports, &backend, sync));
    first.wait_ready().await;
    second.wait_ready().await;
    let cookie = new_counter(&first).await;
    let joining = Tandem::start(&node_via(2, ports[2], &ports, &backend, sync));
    let readyz = joining.admin_url("/readyz");
    // Each write through node 0 waits for node 2 up to `sync_timeout` while the relay is cut
    // (1 s a round): the relay heals after about 4 s, well past node 2's `drop_after` (1 s).
    let (heal_round, mut ready_rounds) = (5, 0);
    let until = Instant::now() + DEADLINE;
    for count in 1..=200 {
        assert!(Instant::now() < until, "node 2 never ready");
        if count == heal_round {
            relay.heal();
        }
        let patch = format!(r#"{{"count":{count}}}"#);
        call(&first, Some(&cookie), &[("x-tandem-session-patch", &patch)]).await;
        if get(&client(), &readyz).await.status != 200 {
            continue;
        }
        // Ready: every change node 0 answered for is on node 2.
        let (seen, _) = call(&joining, Some(&cookie), &[]).await;
        assert_eq!(
            seen["data"]["count"],
            count,
            "node 2 ready without node 0's acknowledged change (relay cut: {})",
            count < heal_round
        );
        ready_rounds += 1;
        if ready_rounds == 5 {
            return;
        }
    }
    panic!("node 2 was ready in only {ready_rounds} rounds");
}
