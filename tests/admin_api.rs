//! The admin API for pools and backends: states set at runtime (and how they outlive reloads),
//! a reload on request, the running config, and the token that guards every write.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use support::*;

const TOKEN: &str = "admin-token-for-tests-0123";

fn admin_config(backends: &[&Backend], a_state: &str) -> String {
    let mut pools = String::from("[[pool]]\nname = \"web\"\n");
    for backend in backends {
        let state = if backend.name == "a" {
            a_state
        } else {
            "active"
        };
        pools.push_str(&format!("{}state = \"{state}\"\n", backend.toml()));
    }
    config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n{pools}"
    ))
}

async fn set_state(tandem: &Tandem, backend: &str, state: &str, token: Option<&str>) -> Answer {
    let mut request =
        http::Request::put(tandem.admin_url(&format!("/api/pools/web/backends/{backend}/state")));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = full(&format!(r#"{{"state":"{state}"}}"#));
    send(&client(), request.body(body).unwrap()).await
}

async fn reload(tandem: &Tandem, token: Option<&str>) -> Answer {
    let mut request = http::Request::post(tandem.admin_url("/api/reload"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(&client(), request.body(empty()).unwrap()).await
}

/// Backend `a`'s state as `GET /api/pools` shows it.
async fn state_of_a(tandem: &Tandem) -> String {
    let answer = get(&client(), &tandem.admin_url("/api/pools")).await;
    assert_eq!(answer.status, 200, "read-only, open on loopback");
    let pools: Value = serde_json::from_str(&answer.body).unwrap();
    let backends = pools["pools"][0]["backends"].as_array().unwrap();
    let a = backends.iter().find(|b| b["route"] == "a").unwrap();
    a["state"].as_str().unwrap().to_string()
}

/// Where 12 requests without a session land.
async fn new_requests(tandem: &Tandem) -> Vec<String> {
    let http = client();
    let mut served = Vec::new();
    for _ in 0..12 {
        served.push(get(&http, &tandem.url("/")).await.body);
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_states_set_through_the_api_drain_stop_and_outlive_reloads() {
    let backends = three_backends().await;
    let all = [&backends[0], &backends[1], &backends[2]];
    let tandem = Tandem::start(&admin_config(&all, "active"));
    let http = client();
    let session = [("cookie", "JSESSIONID=S1.a")];

    // Load in the background the whole time: nothing may fail.
    let running = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn({
        let url = tandem.url("/");
        let running = Arc::clone(&running);
        async move {
            let http = client();
            let mut failures = 0;
            for _ in 0..100_000 {
                if !running.load(Ordering::SeqCst) {
                    break;
                }
                if get(&http, &url).await.status != 200 {
                    failures += 1;
                }
            }
            failures
        }
    });

    // Writes need the token.
    assert_eq!(set_state(&tandem, "a", "draining", None).await.status, 401);
    assert_eq!(
        set_state(&tandem, "a", "draining", Some("wrong-token-wrong-token"))
            .await
            .status,
        401
    );
    assert_eq!(reload(&tandem, None).await.status, 401);
    assert!(new_requests(&tandem).await.contains(&"a".to_string()));

    // Draining: no new requests, but a's sessions still reach it.
    let drained = set_state(&tandem, "a", "draining", Some(TOKEN)).await;
    assert_eq!(drained.status, 200, "{}", drained.body);
    assert_eq!(state_of_a(&tandem).await, "draining");
    assert!(!new_requests(&tandem).await.contains(&"a".to_string()));
    assert_eq!(get_with(&http, &tandem.url("/"), &session).await.body, "a");

    // Stopped: its sessions go elsewhere.
    assert_eq!(
        set_state(&tandem, "a", "stopped", Some(TOKEN)).await.status,
        200
    );
    assert_ne!(get_with(&http, &tandem.url("/"), &session).await.body, "a");

    // A reload of an unchanged file keeps the state set through the API...
    let reloaded = reload(&tandem, Some(TOKEN)).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    assert_eq!(state_of_a(&tandem).await, "stopped");
    // ...until the file changes that backend's state.
    tandem.rewrite_config(&admin_config(&all, "draining"));
    assert_eq!(reload(&tandem, Some(TOKEN)).await.status, 200);
    assert_eq!(state_of_a(&tandem).await, "draining");
    tandem.wait_log("the config file changed the backend's state");

    // A broken file is refused, with its errors, and the running config stays.
    tandem.rewrite_config("[listen]\naddresses = [\"nowhere\"]\n");
    let refused = reload(&tandem, Some(TOKEN)).await;
    assert_eq!(refused.status, 422);
    assert!(
        refused.body.contains("listen.addresses[0]"),
        "{}",
        refused.body
    );
    assert_eq!(state_of_a(&tandem).await, "draining");

    running.store(false, Ordering::SeqCst);
    assert_eq!(load.await.unwrap(), 0, "no request failed under load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_config_is_shown_without_its_secrets() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&admin_config(&[&backend], "active"));
    let answer = get(&client(), &tandem.admin_url("/api/config")).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("[[pool.backend]]"), "{}", answer.body);
    assert!(
        answer.body.contains("token = \"(hidden)\""),
        "{}",
        answer.body
    );
    assert!(!answer.body.contains(TOKEN));
}
