//! The status page in a real browser: headless Chromium loads `/status` from the admin listener,
//! and the rendered page shows every backend with its state and health. Screenshots (laptop and
//! phone widths) are kept in target/artifacts/ for CI.

mod support;

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
