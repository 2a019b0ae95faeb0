//! The admin listener's health endpoints and Prometheus metrics, checked by Prometheus's own
//! tools: `promtool check metrics` on the exposition, and a real Prometheus server scraping it
//! and running every query of the Grafana dashboard in `contrib/grafana/tandem.json`.

mod support;

use std::collections::BTreeSet;
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
                "tandem_health_checks_total{{backend=\"{}\",pool=\"web\",result=\"pass\",route=\"{}\"}}",
                backend.address, backend.name
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
            "tandem_requests_total{{backend=\"{}\",method=\"GET\",pool=\"web\",route=\"{}\",status=\"2xx\"}}",
            backend.address, backend.name
        );
        assert_eq!(series(&exposition, &get_ok), Some(3.0), "{get_ok}");
        let up = format!(
            "tandem_backend_up{{backend=\"{}\",pool=\"web\",route=\"{}\"}}",
            backend.address, backend.name
        );
        assert_eq!(series(&exposition, &up), Some(1.0));
        let active = format!(
            "tandem_backend_state{{backend=\"{}\",pool=\"web\",route=\"{}\",state=\"active\"}}",
            backend.address, backend.name
        );
        assert_eq!(series(&exposition, &active), Some(1.0));
        let connections = format!(
            "tandem_backend_connections{{backend=\"{}\",pool=\"web\",route=\"{}\"}}",
            backend.address, backend.name
        );
        let open = series(&exposition, &connections).unwrap_or(0.0);
        assert!(
            open >= 1.0,
            "kept-alive connections are counted: {connections} = {open}"
        );
        let upstream = format!(
            "tandem_upstream_response_duration_seconds_count{{backend=\"{}\",pool=\"web\",route=\"{}\"}}",
            backend.address, backend.name
        );
        assert!(series(&exposition, &upstream).is_some(), "{upstream}");
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
    // Counters of what has not happened yet show at 0, for rate() to read 0 rather than nothing.
    for counter in ["tandem_failovers_total", "tandem_route_takeovers_total"] {
        let series_name = format!("{counter}{{pool=\"web\"}}");
        assert_eq!(
            series(&exposition, &series_name),
            Some(0.0),
            "{series_name}"
        );
    }

    let version = format!(
        "tandem_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(series(&exposition, &version), Some(1.0), "{version}");
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        let value = series(&exposition, name).unwrap_or(-1.0);
        assert!(value >= 0.0, "{name} = {value}");
    }
    let started = series(&exposition, "process_start_time_seconds").unwrap_or(0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 600.0..=now + 1.0).contains(&started),
        "process_start_time_seconds = {started}, now {now}"
    );
    assert!(series(&exposition, "process_resident_memory_bytes").unwrap() > 1e6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_removed_by_a_reload_keeps_its_route_on_its_series() {
    let backends = [Backend::start("a").await, Backend::start("b").await];
    let tandem = Tandem::start(&admin_config(&[&backends[0], &backends[1]]));
    let http = client();
    for _ in 0..2 {
        assert_eq!(get(&http, &tandem.url("/")).await.status, 200);
    }
    tandem.reload(&admin_config(&[&backends[0]]));
    let exposition = get(&http, &tandem.admin_url("/metrics")).await.body;
    for backend in &backends {
        let served = format!(
            "tandem_requests_total{{backend=\"{}\",method=\"GET\",pool=\"web\",route=\"{}\",status=\"2xx\"}}",
            backend.address, backend.name
        );
        assert_eq!(
            series(&exposition, &served),
            Some(1.0),
            "{served}\n{exposition}"
        );
    }
    let gone = format!("tandem_backend_up{{backend=\"{}\"", backends[1].address);
    assert!(
        !exposition.contains(&gone),
        "only configured backends have gauges"
    );
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
    /// Scrapes `targets` (admin listeners) every second, as job `tandem`.
    fn start(targets: &[std::net::SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tandem\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
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

    /// Prometheus's answer to an instant query (`{"status": "success", "data": ...}` or
    /// `{"status": "error", "error": ...}`); `None` while it does not answer (starting up).
    async fn answer(&self, query: &str) -> Option<serde_json::Value> {
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
        serde_json::from_slice(&body).ok()
    }

    /// The value of an instant query, if it has one result.
    async fn query(&self, query: &str) -> Option<f64> {
        let json = self.answer(query).await?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` answers `expected`.
    async fn wait_for(&self, query: &str, expected: f64) {
        let until = Instant::now() + Duration::from_secs(60);
        while self.query(query).await != Some(expected) {
            assert!(
                Instant::now() < until,
                "Prometheus never answered {expected} for {query}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
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
    let prometheus = Prometheus::start(&[tandem.admin_address()]);
    prometheus
        .wait_for(
            "sum(tandem_requests_total{pool=\"web\",status=\"2xx\"})",
            7.0,
        )
        .await;
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

/// The peers' shared secret in the dashboard test's cluster.
const CLUSTER_SECRET: &str = "metrics-test-cluster-secret-0123456789";

/// Node `index` of a two-node proxy-mode cluster whose peers listen on `ports`: pool `jk` takes
/// `/app` with route stickiness over `dead` (a backend that refuses connections) and `spare`;
/// pool `shop` takes the rest over the health-checked `shop` backends, without stickiness.
fn cluster_node(
    index: usize,
    ports: &[u16; 2],
    dead: std::net::SocketAddr,
    spare: &Backend,
    shop: &[&Backend],
) -> String {
    let health = "[pool.health]\npath = \"/health\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n";
    let jk = format!(
        "[[pool]]\nname = \"jk\"\npaths = [\"/app\"]\n\n[[pool.backend]]\naddress = \"{dead}\"\nroute = \"dead\"\n{}",
        spare.toml()
    );
    config(&format!(
        "[session]\nmode = \"proxy\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[cluster]\nname = \"metrics\"\nnode_id = \"n{index}\"\nlisten = \"127.0.0.1:{}\"\npeers = [\"127.0.0.1:{}\"]\nsecret = \"{CLUSTER_SECRET}\"\nheartbeat_interval = \"100ms\"\ndrop_after = \"1s\"\n\n{jk}\n{}",
        ports[index],
        ports[1 - index],
        pool("shop", "round_robin", &format!("[pool.sticky]\nmode = \"off\"\n\n{health}"), shop)
    ))
}

/// Waits until the `/metrics` of `tandem` has a line starting with `prefix` whose value passes
/// `accept`.
async fn wait_metric(tandem: &Tandem, prefix: &str, accept: impl Fn(f64) -> bool) {
    let until = Instant::now() + DEADLINE;
    loop {
        let text = get(&client(), &tandem.admin_url("/metrics")).await.body;
        let found = text.lines().any(|line| {
            line.strip_prefix(prefix)
                .and_then(|rest| rest.rsplit(' ').next()?.parse().ok())
                .is_some_and(&accept)
        });
        if found {
            return;
        }
        assert!(Instant::now() < until, "no {prefix}... as wanted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names of the samples of an exposition (a histogram's `_bucket`, `_sum` and `_count`).
fn sample_names(exposition: &str) -> impl Iterator<Item = String> + '_ {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line[..line.find(['{', ' ']).unwrap_or(line.len())].to_string())
}

/// The index just past the quoted string that opens at `start`.
fn past_string(text: &[char], start: usize) -> usize {
    let quote = text[start];
    let mut i = start + 1;
    while i < text.len() && text[i] != quote {
        i += if text[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// The index just past the `close` that ends the group opening at `start`, over quoted strings.
fn past_closing(text: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < text.len() && text[i] != close {
        i = match text[i] {
            '"' | '\'' | '`' => past_string(text, i),
            _ => i + 1,
        };
    }
    i + 1
}

/// The metric names a PromQL expression selects: its identifiers, less the functions,
/// aggregations and keywords, and less the label names of matchers (`{...}`), grouping clauses
/// (`by (...)`) and the durations of ranges (`[...]`).
fn metric_names(expression: &str) -> Vec<String> {
    const AGGREGATIONS: [&str; 12] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];
    let text: Vec<char> = expression.chars().collect();
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            '"' | '\'' | '`' => i = past_string(&text, i),
            '{' => i = past_closing(&text, i, '}'),
            '[' => i = past_closing(&text, i, ']'),
            c if c.is_ascii_digit() || c == '.' => {
                while i < text.len() && (text[i].is_ascii_alphanumeric() || text[i] == '.') {
                    i += 1;
                }
            }
            c if word_char(c) => {
                let start = i;
                while i < text.len() && word_char(text[i]) {
                    i += 1;
                }
                let word: String = text[start..i].iter().collect();
                let mut next = i;
                while next < text.len() && text[next].is_whitespace() {
                    next += 1;
                }
                let called = text.get(next) == Some(&'(');
                if GROUPING.contains(&word.as_str()) {
                    if called {
                        i = past_closing(&text, next, ')');
                    }
                } else if !called
                    && !AGGREGATIONS.contains(&word.as_str())
                    && !KEYWORDS.contains(&word.as_str())
                {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// `query` with Grafana's variables as Prometheus can run it: the interval ones (`$__...`) as
/// `1m`, the dashboard's own (`$pool`, always in a `=~` matcher) as "any value".
fn with_variables_expanded(query: &str) -> String {
    let mut out = String::new();
    let mut rest = query;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = rest[at + 1..].trim_start_matches('{');
        let length = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..length];
        out.push_str(if name.starts_with("__") { "1m" } else { ".*" });
        rest = after[length..]
            .strip_prefix('}')
            .unwrap_or(&after[length..]);
    }
    out.push_str(rest);
    out
}

/// Every query of a Grafana dashboard, as (where it is, PromQL with the variables expanded,
/// the label its result must carry): each panel target's `expr`, and each templating variable's
/// `label_values(selector, label)` as `count by (label) (selector)`.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String, Option<String>)> {
    let mut queries = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    let nested = panels
        .iter()
        .flat_map(|row| row["panels"].as_array().into_iter().flatten());
    for panel in panels.iter().chain(nested) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            let place = format!("panel `{}` {}", panel["title"], target["refId"]);
            queries.push((place, with_variables_expanded(expr), None));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let query = variable["query"]["query"]
            .as_str()
            .expect("a query variable");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .expect("label_values(selector, label)");
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let label = label.trim().to_string();
        let promql = format!("count by ({label}) ({selector})");
        let place = format!("variable `{}`", variable["name"]);
        queries.push((place, with_variables_expanded(&promql), Some(label)));
    }
    queries
}

/// Adds the `uid` of every `datasource` anywhere in `json` to `uids`.
fn datasource_uids(json: &serde_json::Value, uids: &mut BTreeSet<String>) {
    match json {
        serde_json::Value::Object(fields) => {
            if let Some(uid) = fields.get("datasource").and_then(|d| d["uid"].as_str()) {
                uids.insert(uid.to_string());
            }
            fields
                .values()
                .for_each(|value| datasource_uids(value, uids));
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|item| datasource_uids(item, uids))
        }
        _ => {}
    }
}

#[test]
fn metric_names_leave_out_functions_labels_and_ranges() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, pool) (rate(a_bucket{pool=~"x|{y}"}[5m]))) / on (pool) group_left b or vector(0) - time() + c:d offset 5m"#,
    );
    assert_eq!(names, ["a_bucket", "b", "c:d"]);
    assert_eq!(
        with_variables_expanded(r#"rate(x{p=~"$pool",q=~"${peer}"}[$__rate_interval])"#),
        r#"rate(x{p=~".*",q=~".*"}[1m])"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_of_the_grafana_dashboard_runs_on_what_tandem_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../contrib/grafana/tandem.json")).unwrap();
    // It imports on any Grafana: its one datasource is the input DS_PROMETHEUS.
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut datasources = BTreeSet::new();
    datasource_uids(&dashboard, &mut datasources);
    let expected = BTreeSet::from(["${DS_PROMETHEUS}".to_string(), "-- Grafana --".to_string()]);
    assert_eq!(
        datasources, expected,
        "Prometheus from the input, and Grafana's annotations"
    );

    let shop = [Backend::start("a").await, Backend::start("b").await];
    let spare = Backend::start("spare").await;
    let dead = refusing_address();
    let ports = [free_port(), free_port()];
    let nodes: Vec<Tandem> = (0..2)
        .map(|i| {
            Tandem::start(&cluster_node(
                i,
                &ports,
                dead,
                &spare,
                &[&shop[0], &shop[1]],
            ))
        })
        .collect();
    for node in &nodes {
        node.wait_ready().await;
    }
    let http = client();
    // Sessions made through n0 are replicated to n1, whose acknowledgements n0 times.
    for _ in 0..3 {
        let made = get_with(
            &http,
            &nodes[0].url("/session"),
            &[("x-respond-x-tandem-session-patch", r#"{"cart":[1]}"#)],
        )
        .await;
        assert_eq!(made.status, 200, "{}", made.body);
    }
    wait_metric(&nodes[1], "tandem_sessions_live ", |live| live == 3.0).await;
    wait_metric(
        &nodes[0],
        "tandem_replication_lag_seconds_count{peer=\"n1\"}",
        |n| n > 0.0,
    )
    .await;
    // A sticky request whose backend refuses: retried on another backend, failed over, and its
    // session taken over by that backend.
    let moved = get_with(
        &http,
        &nodes[0].url("/app/whoami"),
        &[("cookie", "JSESSIONID=S1.dead")],
    )
    .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    wait_metric(
        &nodes[0],
        "tandem_route_takeovers_total{pool=\"jk\"}",
        |n| n == 1.0,
    )
    .await;
    // A backend flips down and up.
    let flips = |to: &str| {
        format!(
            "tandem_backend_flips_total{{backend=\"{}\",pool=\"shop\",route=\"b\",to=\"{to}\"}}",
            shop[1].address
        )
    };
    shop[1]
        .healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    wait_metric(&nodes[0], &flips("down"), |n| n >= 1.0).await;
    shop[1]
        .healthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    wait_metric(&nodes[0], &flips("up"), |n| n >= 1.0).await;

    let mut exported = BTreeSet::new();
    for node in &nodes {
        let exposition = get(&http, &node.admin_url("/metrics")).await.body;
        exported.extend(sample_names(&exposition));
    }
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() > 40, "{} queries", queries.len());
    for (place, query, _) in &queries {
        for name in metric_names(query) {
            assert!(
                exported.contains(&name),
                "{place} names `{name}`, which tandem does not export: {query}\nexported: {exported:?}"
            );
        }
    }

    let prometheus = Prometheus::start(&[nodes[0].admin_address(), nodes[1].admin_address()]);
    prometheus.wait_for("sum(up{job=\"tandem\"})", 2.0).await;
    // Every query parses at once; each has a result once Prometheus has scraped twice (rate()
    // needs two samples).
    let until = Instant::now() + Duration::from_secs(60);
    let mut waiting: Vec<_> = queries.iter().collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for query in waiting {
            let (place, promql, label) = query;
            let answer = prometheus.answer(promql).await.unwrap_or_default();
            assert_ne!(answer["status"], "error", "{place}: {promql}\n{answer}");
            let results = answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let labelled = |result: &serde_json::Value| {
                label
                    .as_ref()
                    .is_none_or(|label| result["metric"][label].is_string())
            };
            if answer["status"] != "success" || results.is_empty() || !results.iter().all(labelled)
            {
                still.push(query);
            }
        }
        assert!(
            still.is_empty() || Instant::now() < until,
            "queries without a result: {:#?}",
            still
                .iter()
                .map(|(place, promql, _)| format!("{place}: {promql}"))
                .collect::<Vec<_>>()
        );
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
