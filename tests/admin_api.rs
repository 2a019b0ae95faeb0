//! The admin API for pools and backends: states set at runtime (and how they outlive reloads),
//! a reload on request, the running config (secrets hidden), and the token that guards every
//! write and the config.

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

    // A broken file is refused, with all its errors (as on SIGHUP: the same reading), and the
    // running config stays.
    tandem.rewrite_config(
        "[listen]\naddresses = [\"nowhere\"]\nmax_conn = 1\n[[pool]]\nname = \"web\"\nbalanse = \"weighted\"\n",
    );
    let refused = reload(&tandem, Some(TOKEN)).await;
    assert_eq!(refused.status, 422);
    for key in ["listen.addresses[0]", "listen.max_conn", "pool[0].balanse"] {
        assert!(refused.body.contains(key), "{key}: {}", refused.body);
    }
    assert_eq!(state_of_a(&tandem).await, "draining");

    running.store(false, Ordering::SeqCst);
    assert_eq!(load.await.unwrap(), 0, "no request failed under load");
}

/// One spelling of a config holding every secret key tandem has (`admin.token`,
/// `cluster.secret`, `[pool.sticky] secret` in two `[[pool]]`s), with the values it hides.
struct Spelling {
    name: &'static str,
    config: String,
    admin_token: &'static str,
    secrets: [&'static str; 3],
}

/// Every way TOML lets a file write those keys: tables, inline tables, dotted keys (quoted and
/// spaced too), arrays of tables and of inline tables, with basic, literal and multi-line strings.
fn spellings(backend: &str) -> Vec<Spelling> {
    let cluster_keys = "name = \"shop\"\nnode_id = \"a\"\nlisten = \"127.0.0.1:0\"\n";
    vec![
        Spelling {
            name: "tables",
            config: format!(
                "[listen]\naddresses = [\"127.0.0.1:0\"]\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = 'TOKEN-tables-0123456789'\n\n\
                 [cluster]\n{cluster_keys}secret = \"\"\"\nCLUSTER-tables-0123456789abcdefghijkl\"\"\"\n\n\
                 [[pool]]\nname = \"web\"\n[pool.sticky]\nmode = \"insert\"\nsecret = \"STICKY-tables-web-0123456789\"\n\
                 [[pool.backend]]\naddress = \"{backend}\"\n\n\
                 [[pool]]\nname = \"api\"\npaths = [\"/api\"]\n[pool.sticky]\nmode = \"insert\"\nsecret = '''\nSTICKY-tables-api-0123456789'''\n\
                 [[pool.backend]]\naddress = \"{backend}\"\n"
            ),
            admin_token: "TOKEN-tables-0123456789",
            secrets: [
                "CLUSTER-tables-0123456789abcdefghijkl",
                "STICKY-tables-web-0123456789",
                "STICKY-tables-api-0123456789",
            ],
        },
        Spelling {
            name: "inline tables",
            config: format!(
                "admin = {{ address = \"127.0.0.1:0\", token = \"TOKEN-inline-0123456789\" }}\n\
                 cluster = {{ name = \"shop\", node_id = \"a\", listen = \"127.0.0.1:0\", secret = \"CLUSTER-inline-0123456789abcdefghijkl\" }}\n\
                 [listen]\naddresses = [\"127.0.0.1:0\"]\n\n\
                 [[pool]]\nname = \"web\"\nsticky = {{ mode = \"insert\", secret = \"STICKY-inline-web-0123456789\" }}\n\
                 backend = [{{ address = \"{backend}\" }}]\n\n\
                 [[pool]]\nname = \"api\"\npaths = [\"/api\"]\nsticky = {{ mode = \"insert\", secret = \"STICKY-inline-api-0123456789\" }}\n\
                 [[pool.backend]]\naddress = \"{backend}\"\n"
            ),
            admin_token: "TOKEN-inline-0123456789",
            secrets: [
                "CLUSTER-inline-0123456789abcdefghijkl",
                "STICKY-inline-web-0123456789",
                "STICKY-inline-api-0123456789",
            ],
        },
        Spelling {
            name: "dotted keys",
            config: format!(
                "admin.address = \"127.0.0.1:0\"\nadmin.token = \"TOKEN-dotted-0123456789\"\n\
                 cluster.name = \"shop\"\ncluster.node_id = \"a\"\ncluster.listen = \"127.0.0.1:0\"\n\
                 cluster . secret = \"CLUSTER-dotted-0123456789abcdefghijkl\"\n\
                 listen.addresses = [\"127.0.0.1:0\"]\n\n\
                 [[pool]]\nname = \"web\"\nsticky.mode = \"insert\"\nsticky.secret = \"STICKY-dotted-web-0123456789\"\n\
                 [[pool.backend]]\naddress = \"{backend}\"\n\n\
                 [[pool]]\nname = \"api\"\npaths = [\"/api\"]\nsticky.mode = \"insert\"\n\"sticky\".'secret' = \"STICKY-dotted-api-0123456789\"\n\
                 [[pool.backend]]\naddress = \"{backend}\"\n"
            ),
            admin_token: "TOKEN-dotted-0123456789",
            secrets: [
                "CLUSTER-dotted-0123456789abcdefghijkl",
                "STICKY-dotted-web-0123456789",
                "STICKY-dotted-api-0123456789",
            ],
        },
        Spelling {
            name: "array of inline tables",
            config: format!(
                "pool = [\n  {{ name = \"web\", sticky = {{ mode = \"insert\", secret = \"STICKY-array-web-0123456789\" }}, backend = [{{ address = \"{backend}\" }}] }},\n  \
                 {{ name = \"api\", paths = [\"/api\"], sticky.mode = \"insert\", sticky.secret = \"STICKY-array-api-0123456789\", backend = [{{ address = \"{backend}\" }}] }},\n]\n\
                 [listen]\naddresses = [\"127.0.0.1:0\"]\n[admin]\naddress = \"127.0.0.1:0\"\n\"token\" = \"TOKEN-array-0123456789\"\n\
                 [cluster]\n{cluster_keys}secret = \"CLUSTER-array-0123456789abcdefghijkl\"\n"
            ),
            admin_token: "TOKEN-array-0123456789",
            secrets: [
                "CLUSTER-array-0123456789abcdefghijkl",
                "STICKY-array-web-0123456789",
                "STICKY-array-api-0123456789",
            ],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_config_needs_the_token_and_hides_every_secret_in_every_spelling() {
    let backend = Backend::start("a").await;
    for spelling in spellings(&backend.address.to_string()) {
        let name = spelling.name;
        let tandem = Tandem::start(&spelling.config);
        let url = tandem.admin_url("/api/config");

        // Without the token, or with a wrong one, the config is refused, even on loopback.
        let open = get(&client(), &url).await;
        assert_eq!(open.status, 401, "{name}: {}", open.body);
        let wrong = [("authorization", "Bearer wrong-token-wrong-token")];
        assert_eq!(
            get_with(&client(), &url, &wrong).await.status,
            401,
            "{name}"
        );

        let authorization = format!("Bearer {}", spelling.admin_token);
        let answer = get_with(&client(), &url, &[("authorization", &authorization)]).await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
        let mut hidden = spelling.secrets.to_vec();
        hidden.push(spelling.admin_token);
        for secret in &hidden {
            // Past the first word, so that a value cut in two would still be caught.
            let distinctive = &secret[secret.find('-').unwrap() + 1..];
            assert!(
                !answer.body.contains(distinctive),
                "{name}: {secret} shows in\n{}",
                answer.body
            );
        }
        // The file's shape stays: still TOML, each secret replaced in its place.
        assert_eq!(
            answer.body.matches("\"(hidden)\"").count(),
            hidden.len(),
            "{name}:\n{}",
            answer.body
        );
        let shown: toml::Table = toml::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("{name}: not TOML ({e}):\n{}", answer.body));
        assert_eq!(shown["pool"].as_array().map(Vec::len), Some(2), "{name}");
        assert!(answer.body.contains("\"/api\""), "{name}");
    }
}
