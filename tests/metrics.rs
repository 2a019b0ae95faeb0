//! The admin listener's health endpoints and Prometheus metrics, checked by Prometheus's own
//! tools: `promtool check metrics` on the exposition, and a real Prometheus server scraping it.

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// A config with an admin listener and one pool `web` over `backends`, health-checked.
fn admin_config(backends: &[&Backend]) -> String {
    let health = "[pool.health]\npath = \"/health\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n";
    config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n{}",
        pool("web", "round_robin", health, backends)
    ))
}

/// The value of the series `name{labels}` in an exposition, if present.
fn series(exposition: &str, name_and_labels: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        line.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .parse()
            .ok()
    })
}

fn tool_missing(tool: &str, error: std::io::Error) -> ! {
    panic!("cannot run {tool} ({error}): run scripts/install-test-deps.sh, which installs Debian's prometheus package")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_pass_promtool_and_count_what_happened() {
    let backends = [Backend::start("a").await, Backend::start("b").await];
    let tandem = Tandem::start(&admin_config(&[&backends[0], &backends[1]]));
    let http = client();
    for _ in 0..6 {
        assert_eq!(get(&http, &tandem.url("/")).await.status, 200);
    }
    let upload = http::Request::post(tandem.url("/upload"))
        .header("content-length", "100")
        .body(full(&"x".repeat(100)))
        .unwrap();
    assert_eq!(send(&http, upload).await.status, 200);
    // Health probes have run by the time a probe counter shows.
    let until = Instant::now() + DEADLINE;
    let exposition = loop {
        let text = get(&http, &tandem.admin_url("/metrics")).await.body;
        let probed = |backend: &Backend| {
            let labels = format!(
                "tandem_health_checks_total{{backend=\"{}\",pool=\"web\",result=\"pass\"}}",
                backend.address
            );
            series(&text, &labels).is_some()
        };
        if backends.iter().all(probed) {
            break text;
        }
        assert!(Instant::now() < until, "no health check counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| tool_missing("promtool", error));
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{exposition}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    for backend in &backends {
        let get_ok = format!(
            "tandem_requests_total{{backend=\"{}\",method=\"GET\",pool=\"web\",status=\"2xx\"}}",
            backend.address
        );
        assert_eq!(series(&exposition, &get_ok), Some(3.0), "{get_ok}");
        let up = format!(
            "tandem_backend_up{{backend=\"{}\",pool=\"web\"}}",
            backend.address
        );
        assert_eq!(series(&exposition, &up), Some(1.0));
        let active = format!(
            "tandem_backend_state{{backend=\"{}\",pool=\"web\",state=\"active\"}}",
            backend.address
        );
        assert_eq!(series(&exposition, &active), Some(1.0));
        let connections = format!(
            "tandem_backend_connections{{backend=\"{}\",pool=\"web\"}}",
            backend.address
        );
        let open = series(&exposition, &connections).unwrap_or(0.0);
        assert!(
            open >= 1.0,
            "kept-alive connections are counted: {connections} = {open}"
        );
    }
    assert_eq!(
        series(&exposition, "tandem_request_body_bytes_total{pool=\"web\"}"),
        Some(100.0)
    );
    assert_eq!(
        series(
            &exposition,
            "tandem_request_duration_seconds_count{pool=\"web\"}"
        ),
        Some(7.0)
    );
    assert!(!exposition.contains("/upload"), "no paths in labels");
}

/// A Prometheus server on its own temp dir, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tandem\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| tool_missing("prometheus", error));
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of an instant query, if it has one result.
    async fn query(&self, query: &str) -> Option<f64> {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/query?query={}",
            self.port,
            query
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        );
        let request = http::Request::get(url).body(empty()).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(2), client().request(request))
            .await
            .ok()?
            .ok()?;
        let body = http_body_util::BodyExt::collect(answer.into_body())
            .await
            .ok()?
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_server_scrapes_the_request_count() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&admin_config(&[&backend]));
    let http = client();
    for _ in 0..7 {
        assert_eq!(get(&http, &tandem.url("/")).await.status, 200);
    }
    let prometheus = Prometheus::start(tandem.admin_address());
    let query = "sum(tandem_requests_total{pool=\"web\",status=\"2xx\"})";
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if prometheus.query(query).await == Some(7.0) {
            break;
        }
        assert!(
            Instant::now() < until,
            "Prometheus never answered 7 for {query}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_the_drain_begins_and_healthz_stays_200() {
    let backend = Backend::start("a").await;
    let mut tandem = Tandem::start(&admin_config(&[&backend]));
    let http = client();
    assert_eq!(get(&http, &tandem.admin_url("/readyz")).await.status, 200);
    let admin = tandem.admin_address();
    // A slow request keeps the drain going while readiness is checked.
    let slow = tokio::spawn({
        let url = tandem.url("/slow?ms=3000");
        async move { get(&client(), &url).await.status }
    });
    let until = Instant::now() + DEADLINE;
    while backend.open.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < until, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tandem.signal(nix::sys::signal::Signal::SIGTERM);
    tandem.wait_log("draining");
    let readyz = get(&http, &format!("http://{admin}/readyz")).await;
    assert_eq!(readyz.status, 503);
    assert_eq!(
        get(&http, &format!("http://{admin}/healthz")).await.status,
        200
    );
    assert_eq!(slow.await.unwrap(), 200, "the request in flight finishes");
    assert!(tandem.wait_exit().success());
}
