//! The status page in a real browser: headless Chromium loads `/status` from the admin listener,
//! and the rendered page shows every backend with its state and health. Screenshots (laptop and
//! phone widths) are kept in target/artifacts/ for CI.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// Runs headless Chromium on `url` with `arguments`, in a throwaway profile; returns stdout.
fn chromium(url: &str, arguments: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(arguments)
        .arg(url)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run chromium ({error}): run scripts/install-test-deps.sh, which installs Debian's chromium")
        });
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `data-state` and `data-health` of backend `address`'s row in a rendered DOM.
fn row(dom: &str, address: &str) -> Option<(String, String)> {
    let start = dom.find(&format!("data-backend=\"{address}\""))?;
    let tag = &dom[start..start + dom[start..].find('>')?];
    let attribute = |name: &str| {
        let from = tag.find(&format!("{name}=\""))? + name.len() + 2;
        Some(tag[from..from + tag[from..].find('"')?].to_string())
    };
    Some((attribute("data-state")?, attribute("data-health")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_every_backend_with_its_state_and_health() {
    let backends = three_backends().await;
    let health = "[pool.health]\npath = \"/health\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n";
    let mut pools = format!("[[pool]]\nname = \"web\"\n{health}");
    for (backend, state) in backends.iter().zip(["active", "draining", "stopped"]) {
        pools.push_str(&format!("{}state = \"{state}\"\n", backend.toml()));
    }
    let tandem = Tandem::start(&config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n{pools}"
    )));
    for _ in 0..3 {
        assert_eq!(get(&client(), &tandem.url("/")).await.status, 200);
    }
    // Backend a fails its health checks from now on.
    backends[0]
        .healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let url = tandem.admin_url("/status");
    let until = Instant::now() + Duration::from_secs(60);
    let dom = loop {
        let dom = chromium(&url, &["--dump-dom"]);
        if row(&dom, &backends[0].address.to_string()).is_some_and(|(_, health)| health == "down") {
            break dom;
        }
        assert!(Instant::now() < until, "a never shown down:\n{dom}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let expected = [("active", "down"), ("draining", "up"), ("stopped", "up")];
    for (backend, (state, health)) in backends.iter().zip(expected) {
        let address = backend.address.to_string();
        assert_eq!(
            row(&dom, &address),
            Some((state.to_string(), health.to_string())),
            "{address} in:\n{dom}"
        );
        assert!(
            dom.contains(&format!(">{address}<")),
            "the address is shown"
        );
    }
    assert!(
        dom.contains("health check: status 503"),
        "a's last error is shown"
    );

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for (name, size) in [("laptop", "1280,800"), ("phone", "390,844")] {
        let file = artifacts.join(format!("status-page-{name}.png"));
        let _ = std::fs::remove_file(&file);
        chromium(
            &url,
            &[
                &format!("--screenshot={}", file.display()),
                &format!("--window-size={size}"),
            ],
        );
        let written = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(written > 1000, "no screenshot at {}", file.display());
    }
}

/// The admin token of the tests below.
const TOKEN: &str = "status-page-token-0123456789";

/// A config with an admin listener guarded by [`TOKEN`] and the given pools.
fn admin_config(pools: &str) -> String {
    config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n{pools}"
    ))
}

/// `PUT` of `body` to the admin API's `path`, with the token when `token`, and `extra` headers.
async fn put(
    tandem: &Tandem,
    path: &str,
    body: &str,
    token: bool,
    extra: &[(&str, &str)],
) -> Answer {
    let mut request = http::Request::put(tandem.admin_url(path));
    if token {
        request = request.header("authorization", format!("Bearer {TOKEN}"));
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    send(&client(), request.body(full(body)).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_and_csv_count_the_traffic_sent() {
    let backends = three_backends().await;
    let refused = refusing_address();
    let health = "[pool.health]\npath = \"/health\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n";
    let checked = format!(
        "[[pool]]\nname = \"checked\"\nhosts = [\"checked.test\"]\n{health}{}[[pool.backend]]\naddress = \"{refused}\"\nroute = \"gone\"\n",
        backends[1].toml()
    );
    let tandem = Tandem::start(&admin_config(&format!(
        "{}\n{checked}",
        pool("web", "round_robin", "", &[&backends[0], &backends[2]])
    )));
    backends[1]
        .healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(get(&client(), &tandem.url("/")).await.status, 200);
    }
    // Both checked backends have had a probe: one answers 503, nothing listens at the other.
    let until = Instant::now() + Duration::from_secs(30);
    let exported = loop {
        let answer = get(&client(), &tandem.admin_url("/status.json")).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let exported: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        let checks_done = exported["pools"][1]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|backend| !backend["check"].is_null());
        if checks_done {
            break exported;
        }
        assert!(Instant::now() < until, "no health check result: {exported}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let web = &exported["pools"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["totals"]["requests"], 10, "{web}");
    assert_eq!(web["totals"]["responses"]["2xx"], 10, "{web}");
    let per_backend: Vec<u64> = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|backend| backend["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(per_backend, [5, 5], "{web}");
    let checked = &exported["pools"][1]["backends"];
    let words = |i: usize| checked[i]["check"]["result"].as_str().unwrap().to_string();
    assert!(
        words(0).starts_with("status 503 in ") && words(0).ends_with(" ms"),
        "{checked}"
    );
    assert!(
        words(1).starts_with("connection refused in ") && words(1).ends_with(" ms"),
        "in words, not an error chain: {checked}"
    );
    assert_eq!(checked[1]["check"]["code"], "L4CON");
    assert_eq!(checked[1]["health"], "down");

    let answer = get(&client(), &tandem.admin_url("/status.csv")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut lines = answer.body.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|line| line.strip_prefix("# "))
        .expect("a `# ` header line")
        .split(',')
        .collect();
    for column in [
        "pxname",
        "svname",
        "stot",
        "hrsp_2xx",
        "check_status",
        "weight",
        "status",
    ] {
        assert!(header.contains(&column), "{column} in {header:?}");
    }
    let rows: Vec<HashMap<&str, &str>> = lines
        .map(|line| header.iter().copied().zip(line.split(',')).collect())
        .collect();
    let web_rows: Vec<_> = rows.iter().filter(|row| row["pxname"] == "web").collect();
    let sum = |column: &str| -> u64 {
        web_rows
            .iter()
            .filter(|row| row["svname"] != "BACKEND")
            .map(|row| row[column].parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(sum("stot"), 10, "{}", answer.body);
    assert_eq!(sum("hrsp_2xx"), 10, "{}", answer.body);
    let total = web_rows
        .iter()
        .find(|row| row["svname"] == "BACKEND")
        .unwrap();
    assert_eq!((total["stot"], total["hrsp_2xx"]), ("10", "10"));
    let gone = rows
        .iter()
        .find(|row| row["svname"] == refused.to_string())
        .unwrap();
    assert_eq!((gone["status"], gone["check_status"]), ("DOWN", "L4CON"));
    assert!(
        gone["last_chk"].starts_with("connection refused in "),
        "{}",
        answer.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_set_through_the_api_steers_weighted_and_lasts_until_the_file_changes_it() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let file = |weight_of_a: u32| {
        admin_config(&format!(
            "[[pool]]\nname = \"web\"\nbalance = \"weighted\"\n{}weight = {weight_of_a}\n{}",
            a.toml(),
            b.toml()
        ))
    };
    let tandem = Tandem::start(&file(1));
    let weights = "/api/pools/web/backends/a/weight";
    assert_eq!(
        put(&tandem, weights, r#"{"weight": 3}"#, false, &[])
            .await
            .status,
        401
    );
    for refused in [
        r#"{"weight": 0}"#,
        r#"{"weight": 1001}"#,
        r#"{"weight": "3"}"#,
        "{",
    ] {
        assert_eq!(
            put(&tandem, weights, refused, true, &[]).await.status,
            422,
            "{refused}"
        );
    }
    let set = put(&tandem, weights, r#"{"weight": 3}"#, true, &[]).await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(backend_status(&tandem, a.address).await["weight"], 3);
    let mut bodies = Vec::new();
    for _ in 0..8 {
        bodies.push(get(&client(), &tandem.url("/")).await.body);
    }
    let shares = tally(bodies.iter().map(String::as_str));
    assert_eq!((shares["a"], shares["b"]), (6, 2), "3:1 over 8 requests");

    // A reload that leaves a's weight alone keeps the one set through the API...
    tandem.reload(&format!("{}\n", file(1)));
    assert_eq!(backend_status(&tandem, a.address).await["weight"], 3);
    // ...one that changes it in the file drops it.
    tandem.reload(&file(2));
    let status = backend_status(&tandem, a.address).await;
    assert_eq!(
        (
            status["weight"].as_u64(),
            status["configured_weight"].as_u64()
        ),
        (Some(2), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_another_site_are_refused_even_with_the_token() {
    let backends = three_backends().await;
    let tandem = Tandem::start(&admin_config(&pool(
        "web",
        "round_robin",
        "",
        &[&backends[0]],
    )));
    let path = "/api/pools/web/backends/a/state";
    let drain = r#"{"state": "draining"}"#;
    let evil: &[(&str, &str)] = &[("origin", "http://evil.test")];
    assert_eq!(put(&tandem, path, drain, false, evil).await.status, 403);
    assert_eq!(put(&tandem, path, drain, true, evil).await.status, 403);
    let cross: &[(&str, &str)] = &[("sec-fetch-site", "cross-site")];
    assert_eq!(put(&tandem, path, drain, true, cross).await.status, 403);
    assert_eq!(
        backend_status(&tandem, backends[0].address).await["state"],
        "active"
    );
    // The page's own requests (same origin) and tools (no Origin) pass.
    let own = format!("http://{}", tandem.admin_address());
    let same: &[(&str, &str)] = &[("origin", &own), ("sec-fetch-site", "same-origin")];
    assert_eq!(put(&tandem, path, drain, true, same).await.status, 200);
    assert_eq!(
        backend_status(&tandem, backends[0].address).await["state"],
        "draining"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_drains_stops_enables_and_reweighs_a_backend_by_clicking() {
    let backends = three_backends().await;
    let tandem = Tandem::start(&admin_config(&pool(
        "web",
        "weighted",
        "",
        &[&backends[0], &backends[1], &backends[2]],
    )));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let node_modules = root.join("target/node-test-deps/node_modules");
    assert!(
        node_modules.join("playwright-core").is_dir(),
        "no playwright-core: run scripts/install-test-deps.sh"
    );
    let browser = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("chromium: run scripts/install-test-deps.sh");
    // `timeout` bounds the click-through (every step in it waits 20 s at most).
    let mut command = Command::new("timeout");
    command
        .args(["120", "node"])
        .arg(root.join("tests/status_page/click_actions.js"))
        .env("NODE_PATH", &node_modules)
        .env("STATUS_URL", tandem.admin_url("/status"))
        .env("TOKEN", TOKEN)
        .env("POOL", "web")
        .env("ROUTE", "b")
        .env("CHROMIUM", browser);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run node");
    assert!(
        output.status.success(),
        "click-through failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let b = backend_status(&tandem, backends[1].address).await;
    assert_eq!(
        (b["state"].as_str(), b["weight"].as_u64()),
        (Some("active"), Some(3))
    );
}
