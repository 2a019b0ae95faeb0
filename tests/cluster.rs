//! Tandem peers: they find each other, authenticate with the cluster secret, notice a dead
//! peer and its return, refuse strangers, and survive frames that lie.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "cluster-secret-for-the-tests-0123456789";

/// The config of node `id` listening for peers on `port`, with `peers` and `extra` cluster keys.
fn node(id: &str, port: u16, peers: &[u16], backend: &Backend, extra: &str) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[cluster]\nname = \"shop\"\nnode_id = \"{id}\"\nlisten = \"127.0.0.1:{port}\"\npeers = [{}]\nsecret = \"{SECRET}\"\nheartbeat_interval = \"100ms\"\ndrop_after = \"500ms\"\n{extra}\n\n{}",
        peers.join(", "),
        pool("web", "round_robin", "", &[backend])
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_find_each_other_notice_a_death_and_a_return() {
    let backend = Backend::start("app").await;
    let ports = [free_port(), free_port(), free_port()];
    let start = |i: usize, id: &str| {
        let others: Vec<u16> = ports.iter().copied().filter(|&p| p != ports[i]).collect();
        Tandem::start(&node(id, ports[i], &others, &backend, ""))
    };
    let a = start(0, "a");
    let b = start(1, "b");
    let c = start(2, "c");
    for (tandem, others) in [(&a, ["b", "c"]), (&b, ["a", "c"]), (&c, ["a", "b"])] {
        for other in others {
            tandem.wait_log_all(&["peer is alive", &format!("peer={other}")]);
        }
    }
    let status = get(&client(), &a.admin_url("/status")).await.body;
    assert!(
        status.contains(r#"data-peer="b" data-state="up""#),
        "{status}"
    );
    let metrics = get(&client(), &a.admin_url("/metrics")).await.body;
    assert!(
        metrics.contains("tandem_cluster_peer_up{peer=\"c\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_replication_backlog{peer=\"b\"} 0"),
        "{metrics}"
    );
    assert!(status.contains("Changes queued"), "{status}");

    drop(c);
    a.wait_log_all(&["peer is dead", "peer=c"]);
    b.wait_log_all(&["peer is dead", "peer=c"]);
    let status = get(&client(), &a.admin_url("/status")).await.body;
    assert!(
        status.contains(r#"data-peer="c" data-state="down""#),
        "{status}"
    );

    let _c = start(2, "c");
    // Alive, dead, alive again.
    a.wait_log_count("peer is alive peer=c", 2);
    let status = get(&client(), &a.admin_url("/status")).await.body;
    assert!(
        status.contains(r#"data-peer="c" data-state="up""#),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_with_the_reason() {
    let backend = Backend::start("app").await;
    let [a_port, b_port, c_port] = [free_port(), free_port(), free_port()];
    let a = Tandem::start(&node("a", a_port, &[], &backend, ""));
    // b holds another secret; c belongs to another cluster.
    let b = Tandem::start(
        &node("b", b_port, &[a_port], &backend, "")
            .replace(SECRET, "another-secret-that-is-long-enough-0123456"),
    );
    let c = Tandem::start(
        &node("c", c_port, &[a_port], &backend, "").replace("name = \"shop\"", "name = \"other\""),
    );
    a.wait_log_all(&[
        "peer connection refused",
        "claiming to be `b` failed authentication",
    ]);
    a.wait_log_all(&[
        "peer connection refused",
        "peer `c` belongs to cluster `other`",
    ]);
    b.wait_log("peer refused");
    c.wait_log("peer refused");
    assert_eq!(a.log_count("peer is alive"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_lie_are_closed_without_a_large_allocation() {
    let backend = Backend::start("app").await;
    let port = free_port();
    let a = Tandem::start(&node("a", port, &[], &backend, ""));
    a.wait_log("peer listener ready");
    for attack in [
        vec![0xff, 0xff, 0xff, 0xff, 0x01],
        vec![0x00, 0x00, 0x00, 0x10, 0x01, b'{'],
        vec![0x00, 0x00, 0x00, 0x02, 0x63, 0x00],
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
    ] {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream.write_all(&attack).await.unwrap();
        let mut rest = Vec::new();
        // The Hello tandem sent first, then the close (a truncated frame waits for the
        // handshake timeout).
        let closed = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "closed in time after {attack:?}");
    }
    assert!(
        a.peak_rss() < 100 << 20,
        "no large allocation: {}",
        a.peak_rss()
    );
    a.wait_log("peer connection refused");
    // It still serves.
    assert_eq!(get(&client(), &a.url("/")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_mutual_tls_connect_and_a_foreign_certificate_is_refused() {
    let backend = Backend::start("app").await;
    let cluster_ca = Pki::new();
    let stranger_ca = Pki::new();
    for stem in ["a", "b"] {
        cluster_ca.issue(stem, &["127.0.0.1"]);
    }
    stranger_ca.issue("c", &["127.0.0.1"]);
    let tls = |pki: &Pki, stem: &str| {
        format!(
            "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cluster_ca.path("ca.pem").display(),
            pki.path(&format!("{stem}.pem")).display(),
            pki.path(&format!("{stem}.key")).display()
        )
    };
    let [a_port, b_port, c_port] = [free_port(), free_port(), free_port()];
    let a = Tandem::start(&node(
        "a",
        a_port,
        &[b_port],
        &backend,
        &tls(&cluster_ca, "a"),
    ));
    let b = Tandem::start(&node(
        "b",
        b_port,
        &[a_port],
        &backend,
        &tls(&cluster_ca, "b"),
    ));
    a.wait_log_all(&["peer is alive", "peer=b"]);
    b.wait_log_all(&["peer is alive", "peer=a"]);
    // c knows the secret but holds a certificate of another CA.
    let _c = Tandem::start(&node(
        "c",
        c_port,
        &[a_port],
        &backend,
        &tls(&stranger_ca, "c"),
    ));
    a.wait_log("peer connection refused: TLS handshake failed");
    assert_eq!(
        a.log_count("peer=c"),
        0,
        "c never got as far as its node id"
    );
}
