//! The proxy-mode session store through real sockets: tandem keeps the session, stateless
//! backends get it in headers and change it with merge patches in their responses.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tandem::app::App;
use tandem::config::Config;
use tandem::session::clock::ManualClock;

const TOKEN: &str = "test-admin-token-0123456789";

/// A proxy-mode config over `backends`, round robin without affinity, with `session_keys`
/// added to `[session]` and an admin listener.
fn proxy_config(backends: &[&Backend], session_keys: &str, sticky_mode: &str) -> String {
    let pools = pool(
        "app",
        "round_robin",
        &format!("[pool.sticky]\nmode = \"{sticky_mode}\""),
        backends,
    );
    config(&format!(
        "[session]\nmode = \"proxy\"\n{session_keys}\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n{pools}"
    ))
}

/// A browser with one cookie jar, talking to `/session` on tandem.
struct Browser {
    url: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(tandem: &Tandem) -> Browser {
        Browser::at(&tandem.url("/session"))
    }

    fn at(url: &str) -> Browser {
        Browser {
            url: url.to_string(),
            cookie: None,
        }
    }

    /// A request whose backend answers with the `respond` headers; the jar follows Set-Cookie.
    async fn send(&mut self, respond: &[(&str, &[u8])], extra: &[(&str, &str)]) -> Answer {
        self.send_to("", respond, extra).await
    }

    async fn send_to(
        &mut self,
        query: &str,
        respond: &[(&str, &[u8])],
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut builder = http::Request::get(format!("{}{query}", self.url));
        if let Some(cookie) = &self.cookie {
            builder = builder.header("cookie", cookie.as_str());
        }
        for (name, value) in respond {
            let value = http::HeaderValue::from_bytes(value).unwrap();
            builder = builder.header(format!("x-respond-{name}"), value);
        }
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        let answer = send(&client(), builder.body(empty()).unwrap()).await;
        if let Some(set) = answer.headers.get("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_string();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        answer
    }

    /// Stores `patch` through a backend.
    async fn patch(&mut self, patch: &str) -> Answer {
        self.send(&[("x-tandem-session-patch", patch.as_bytes())], &[])
            .await
    }

    /// What the backend received: the parsed `/session` answer.
    async fn look(&mut self) -> Value {
        let answer = self.send(&[], &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        serde_json::from_str(&answer.body).unwrap()
    }

    /// The session id in the jar's cookie.
    fn id(&self) -> String {
        let value = self.cookie.as_deref().expect("a session cookie");
        let value = value.strip_prefix("TANDEMSESSION=").unwrap();
        value
            .split_once('.')
            .map_or(value, |(id, _)| id)
            .to_string()
    }
}

fn session_headers_in(answer: &Answer) -> Vec<String> {
    answer
        .headers
        .keys()
        .map(|name| name.as_str().to_string())
        .filter(|name| name.starts_with("x-tandem"))
        .collect()
}

/// The value of a metric line (`name{labels} value`) on tandem's /metrics.
async fn metric(tandem: &Tandem, series: &str) -> f64 {
    metric_at(tandem.admin_address(), series).await
}

async fn metric_at(admin: std::net::SocketAddr, series: &str) -> f64 {
    let answer = get(&client(), &format!("http://{admin}/metrics")).await;
    answer
        .body
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{}", answer.body))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_follows_the_client_across_stateless_backends() {
    let backends = three_backends().await;
    let tandem = Tandem::start(&proxy_config(
        &[&backends[0], &backends[1], &backends[2]],
        "",
        "off",
    ));
    let mut browser = Browser::new(&tandem);
    let first = browser.patch(r#"{"items":["apple"]}"#).await;
    assert_eq!(first.status, 200);
    let cookie = browser
        .cookie
        .clone()
        .expect("tandem set the session cookie");
    let set_cookie = first.headers["set-cookie"].to_str().unwrap();
    assert!(
        set_cookie.contains("HttpOnly")
            && set_cookie.contains("SameSite=Lax")
            && set_cookie.contains("Path=/"),
        "{set_cookie}"
    );
    assert!(
        !set_cookie.contains("Secure"),
        "plain HTTP gets no Secure under auto: {set_cookie}"
    );
    let mut served_by = Vec::new();
    for _ in 0..6 {
        let seen = browser.look().await;
        assert_eq!(seen["data"], json!({"items": ["apple"]}));
        assert_eq!(seen["id"].as_str().unwrap(), browser.id());
        served_by.push(seen["backend"].as_str().unwrap().to_string());
    }
    assert_eq!(
        browser.cookie.as_ref(),
        Some(&cookie),
        "the cookie stays put"
    );
    let distinct: std::collections::HashSet<_> = served_by.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "round robin over all three: {served_by:?}"
    );
    // The backend's own view: no session headers for a request without a session.
    let seen = Browser::new(&tandem).look().await;
    assert_eq!(seen["id"], Value::Null);
    assert_eq!(seen["received"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_and_nested_values_round_trip() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&proxy_config(&[&backend], "", "off"));
    let mut browser = Browser::new(&tandem);
    // One patch in raw UTF-8, one with \u escapes: both are JSON.
    let raw = r#"{"name":"Zoë 東京 🛒","deep":{"list":[1,2.5,{"x":null,"y":false}],"empty":{}}}"#;
    assert_eq!(browser.patch(raw).await.status, 200);
    let escaped = r#"{"quote":"\"\\\u0007\ud83d\ude00","newline":"a\nb"}"#;
    assert_eq!(browser.patch(escaped).await.status, 200);
    let seen = browser.look().await;
    assert_eq!(
        seen["data"],
        json!({
            "name": "Zoë 東京 🛒",
            "deep": {"list": [1, 2.5, {"x": null, "y": false}], "empty": {}},
            "quote": "\"\\\u{7}😀",
            "newline": "a\nb",
        })
    );
    // Nested merge: a null removes, an object merges, an array replaces.
    browser
        .patch(r#"{"deep":{"list":["only"],"empty":null,"added":1},"name":null}"#)
        .await;
    let seen = browser.look().await;
    assert_eq!(
        seen["data"],
        json!({"deep": {"list": ["only"], "added": 1}, "quote": "\"\\\u{7}😀", "newline": "a\nb"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_session_headers_from_the_client_never_reach_a_backend() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&proxy_config(&[&backend], "", "off"));
    let forged = [
        ("X-Tandem-Session-Id", "forged"),
        ("x-tandem-session-data", r#"{"admin":true}"#),
        ("X-TANDEM-SESSION-PATCH", r#"{"admin":true}"#),
        ("x-tandem-session-command", "renew"),
        ("x-tandem-sessionx", "1"),
        // CGI, WSGI, PHP and Rack read `_` as `-` (attack case S01).
        ("X_Tandem_Session_Data", r#"{"admin":true}"#),
        ("x_tandem-session_id", "forged"),
        // Naming them in Connection must not make tandem drop its own headers either.
        ("connection", "x-tandem-session-data, x-tandem-session-id"),
    ];
    let mut browser = Browser::new(&tandem);
    let seen: Value = serde_json::from_str(&browser.send(&[], &forged).await.body).unwrap();
    assert_eq!(
        seen["received"],
        json!([]),
        "no session yet: nothing at all"
    );
    browser.patch(r#"{"user":"ann"}"#).await;
    let id = browser.id();
    let seen: Value = serde_json::from_str(&browser.send(&[], &forged).await.body).unwrap();
    assert_eq!(seen["id"].as_str(), Some(id.as_str()));
    assert_eq!(seen["data"], json!({"user": "ann"}));
    let mut received: Vec<&str> = seen["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    received.sort();
    assert_eq!(received, ["x-tandem-session-data", "x-tandem-session-id"]);
    // The client's forged patch was not applied either.
    assert_eq!(browser.look().await["data"], json!({"user": "ann"}));
    // tandem's cookie is not the backend's business.
    let headers = backend.last_headers.lock().unwrap().clone().unwrap();
    assert!(headers.get("cookie").is_none(), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_session_headers_never_reach_the_client() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&proxy_config(&[&backend], "", "off"));
    let mut browser = Browser::new(&tandem);
    let leaks: [(&str, &[u8]); 3] = [
        ("x-tandem-session-patch", br#"{"a":1}"#),
        ("x-tandem-session-secret", b"internal"),
        ("X-Tandem-Session-Id", b"whatever"),
    ];
    for query in ["", "?status=404", "?status=500", "?status=304"] {
        let answer = browser.send_to(query, &leaks, &[]).await;
        assert_eq!(session_headers_in(&answer), Vec::<String>::new(), "{query}");
    }
    let head = send(
        &client(),
        http::Request::head(tandem.url("/session"))
            .header("x-respond-x-tandem-session-patch", r#"{"b":2}"#)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(session_headers_in(&head), Vec::<String>::new());
    // A refused update's response is tandem's own 502: nothing of the backend's.
    let refused = browser
        .send(
            &[
                ("x-tandem-session-patch", b"not json"),
                ("x-tandem-session-other", b"x"),
            ],
            &[],
        )
        .await;
    assert_eq!(refused.status, 502);
    assert_eq!(session_headers_in(&refused), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_session_id_is_never_adopted() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&proxy_config(&[&backend], "", "off"));
    let mut browser = Browser::new(&tandem);
    let forged_id = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    browser.cookie = Some(format!("TANDEMSESSION={forged_id}.a"));
    let seen = browser.look().await;
    assert_eq!(seen["id"], Value::Null, "an unknown id reaches no backend");
    browser.patch(r#"{"cart":[1]}"#).await;
    let issued = browser.id();
    assert_ne!(issued, forged_id);
    assert_eq!(issued.len(), 32);
    // Malformed and oversized ids are no better.
    for cookie in [
        "TANDEMSESSION=../../etc/passwd",
        &format!("TANDEMSESSION={}", "A".repeat(5000)),
    ] {
        let mut other = Browser::new(&tandem);
        other.cookie = Some(cookie.to_string());
        assert_eq!(other.look().await["id"], Value::Null);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_changes_the_id_keeps_the_data_and_kills_the_old_id() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&proxy_config(&[&backend], "", "off"));
    let mut browser = Browser::new(&tandem);
    browser.patch(r#"{"cart":["apple"]}"#).await;
    let old_cookie = browser.cookie.clone().unwrap();
    let old_id = browser.id();
    // Login: store the user and renew the id in one response.
    let login = browser
        .send(
            &[
                ("x-tandem-session-patch", br#"{"user":"ann"}"#),
                ("x-tandem-session-command", b"renew"),
            ],
            &[],
        )
        .await;
    assert_eq!(login.status, 200);
    let new_id = browser.id();
    assert_ne!(new_id, old_id);
    let seen = browser.look().await;
    assert_eq!(seen["id"].as_str(), Some(new_id.as_str()));
    assert_eq!(seen["data"], json!({"cart": ["apple"], "user": "ann"}));
    let mut attacker = Browser::new(&tandem);
    attacker.cookie = Some(old_cookie);
    assert_eq!(
        attacker.look().await["id"],
        Value::Null,
        "the old id is dead"
    );
    assert_eq!(metric(&tandem, "tandem_sessions_renewed_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_ends_the_session_and_clears_the_cookie() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&proxy_config(&[&backend], "", "off"));
    let mut browser = Browser::new(&tandem);
    browser.patch(r#"{"user":"ann"}"#).await;
    let cookie = browser.cookie.clone().unwrap();
    let logout = browser
        .send(&[("x-tandem-session-command", b"invalidate")], &[])
        .await;
    let set_cookie = logout.headers["set-cookie"].to_str().unwrap();
    assert!(
        set_cookie.starts_with("TANDEMSESSION=;") && set_cookie.contains("Max-Age=0"),
        "{set_cookie}"
    );
    assert_eq!(browser.cookie, None);
    let mut replay = Browser::new(&tandem);
    replay.cookie = Some(cookie);
    assert_eq!(replay.look().await["id"], Value::Null);
    assert_eq!(
        metric(&tandem, "tandem_sessions_invalidated_total").await,
        1.0
    );
    assert_eq!(metric(&tandem, "tandem_sessions_live").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_over_a_limit_are_refused_whole_with_a_502_a_log_line_and_a_metric() {
    let backend = Backend::start("a").await;
    let limits =
        "max_attributes = 3\nmax_attribute_bytes = 64\nmax_session_bytes = 128\nmax_sessions = 2";
    let tandem = Tandem::start(&proxy_config(&[&backend], limits, "off"));
    let mut browser = Browser::new(&tandem);
    assert_eq!(browser.patch(r#"{"a":1,"b":2}"#).await.status, 200);
    let cases = [
        (r#"{"c":3,"d":4}"#.to_string(), "too_many_attributes"),
        (
            format!(r#"{{"c":"{}"}}"#, "x".repeat(70)),
            "attribute_too_large",
        ),
        (
            format!(r#"{{"c":"{}","a":"{}"}}"#, "x".repeat(58), "y".repeat(58)),
            "session_too_large",
        ),
        ("[1,2]".to_string(), "malformed"),
        ("{\"a\":".to_string(), "malformed"),
    ];
    let mut expected = std::collections::HashMap::new();
    for (patch, reason) in &cases {
        let answer = browser.patch(patch).await;
        assert_eq!(answer.status, 502, "{reason}: {}", answer.body);
        *expected.entry(*reason).or_insert(0.0) += 1.0;
        let series = format!("tandem_session_updates_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&tandem, &series).await, expected[reason], "{reason}");
    }
    tandem.wait_log_all(&[
        "session update refused",
        "backend=127.0.0.1",
        "session=",
        "over the limit of 3",
    ]);
    let timeout = browser
        .send(&[("x-tandem-session-idle-timeout", b"99999999")], &[])
        .await;
    assert_eq!(timeout.status, 502);
    let command = browser
        .send(&[("x-tandem-session-command", b"drop")], &[])
        .await;
    assert_eq!(command.status, 502);
    // Nothing of any refused update was applied.
    assert_eq!(browser.look().await["data"], json!({"a": 1, "b": 2}));
    // The session count: one more fits, the third is refused.
    assert_eq!(Browser::new(&tandem).patch(r#"{"n":1}"#).await.status, 200);
    let mut third = Browser::new(&tandem);
    assert_eq!(third.patch(r#"{"n":1}"#).await.status, 502);
    assert_eq!(third.cookie, None);
    assert_eq!(
        metric(
            &tandem,
            "tandem_session_updates_rejected_total{reason=\"too_many_sessions\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_invalid_update_pass_lets_the_response_through_unapplied() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&proxy_config(
        &[&backend],
        "on_invalid_update = \"pass\"",
        "off",
    ));
    let mut browser = Browser::new(&tandem);
    browser.patch(r#"{"a":1}"#).await;
    let answer = browser.patch("{broken").await;
    assert_eq!(answer.status, 200);
    assert_eq!(session_headers_in(&answer), Vec::<String>::new());
    assert_eq!(browser.look().await["data"], json!({"a": 1}));
    assert_eq!(
        metric(
            &tandem,
            "tandem_session_updates_rejected_total{reason=\"malformed\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_affinity_a_session_prefers_its_backend_and_moves_when_it_dies() {
    let backends = three_backends().await;
    let tandem = Tandem::start(&proxy_config(
        &[&backends[0], &backends[1], &backends[2]],
        "",
        "route",
    ));
    let mut browser = Browser::new(&tandem);
    let created = browser.patch(r#"{"cart":["pear"]}"#).await;
    let owner = created.headers["x-backend"].to_str().unwrap().to_string();
    assert!(browser
        .cookie
        .as_ref()
        .unwrap()
        .ends_with(&format!(".{owner}")));
    for _ in 0..4 {
        assert_eq!(
            browser.look().await["backend"].as_str(),
            Some(owner.as_str())
        );
    }
    backends
        .iter()
        .find(|b| b.name == owner)
        .unwrap()
        .kill()
        .await;
    let seen = browser.look().await;
    let heir = seen["backend"].as_str().unwrap().to_string();
    assert_ne!(heir, owner);
    assert_eq!(
        seen["data"],
        json!({"cart": ["pear"]}),
        "the session survives its backend"
    );
    assert!(
        browser
            .cookie
            .as_ref()
            .unwrap()
            .ends_with(&format!(".{heir}")),
        "{:?}",
        browser.cookie
    );
    for _ in 0..3 {
        assert_eq!(
            browser.look().await["backend"].as_str(),
            Some(heir.as_str())
        );
    }
    // A forged route (attack case S06) steers nothing: the session is served with its data,
    // and the cookie is set back to the route that served it.
    let id = browser.id();
    browser.cookie = Some(format!("TANDEMSESSION={id}.nowhere"));
    let seen = browser.look().await;
    assert_eq!(seen["data"], json!({"cart": ["pear"]}));
    let served = seen["backend"].as_str().unwrap().to_string();
    assert_eq!(browser.cookie, Some(format!("TANDEMSESSION={id}.{served}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_through_the_snapshot() {
    let backend = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("sessions.snapshot");
    let keys = format!("snapshot = \"{}\"", snapshot.display());
    let config = proxy_config(&[&backend], &keys, "off");
    let mut tandem = Tandem::start(&config);
    let mut browsers = Vec::new();
    for i in 0..20 {
        let mut browser = Browser::new(&tandem);
        browser.patch(&format!(r#"{{"n":{i},"name":"Zoë"}}"#)).await;
        browsers.push(browser);
    }
    tandem.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(tandem.wait_exit().success());
    tandem.wait_log_all(&["session snapshot written", "sessions=20"]);
    let restarted = Tandem::start(&config);
    restarted.wait_log_all(&["sessions read back", "sessions=20"]);
    for (i, browser) in browsers.iter_mut().enumerate() {
        browser.url = restarted.url("/session");
        assert_eq!(browser.look().await["data"], json!({"n": i, "name": "Zoë"}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_moved_aside_and_tandem_starts_empty() {
    let backend = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("sessions.snapshot");
    std::fs::write(
        &snapshot,
        "{\"tandem_sessions\":1,\"written_ms\":1}\n{\"id\":\"truncat",
    )
    .unwrap();
    let keys = format!("snapshot = \"{}\"", snapshot.display());
    let tandem = Tandem::start(&proxy_config(&[&backend], &keys, "off"));
    tandem.wait_log_all(&["session snapshot unreadable", "line 2"]);
    assert!(!snapshot.exists(), "moved aside");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        aside
            .iter()
            .any(|name| name.starts_with("sessions.snapshot.corrupt-")),
        "{aside:?}"
    );
    // It serves, with no sessions.
    let mut browser = Browser::new(&tandem);
    assert_eq!(browser.patch(r#"{"a":1}"#).await.status, 200);
    assert_eq!(metric(&tandem, "tandem_sessions_live").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_api_needs_the_token_and_reads_patches_lists_and_invalidates() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&proxy_config(&[&backend], "", "off"));
    let mut browser = Browser::new(&tandem);
    browser.patch(r#"{"cart":["apple"]}"#).await;
    let id = browser.id();
    let http = client();
    let api = |path: &str| tandem.admin_url(&format!("/api/sessions{path}"));
    let auth = format!("Bearer {TOKEN}");
    for bad in [None, Some("Bearer wrong-token-wrong-token"), Some(TOKEN)] {
        let headers: Vec<(&str, &str)> = bad
            .map(|value| ("authorization", value))
            .into_iter()
            .collect();
        let answer = get_with(&http, &api(&format!("/{id}")), &headers).await;
        assert_eq!(answer.status, 401, "{bad:?}");
        assert!(!answer.body.contains("apple"));
    }
    let delete_unauthorized = send(
        &http,
        http::Request::delete(api(&format!("/{id}")))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(delete_unauthorized.status, 401);

    let read = get_with(&http, &api(&format!("/{id}")), &[("authorization", &auth)]).await;
    assert_eq!(read.status, 200);
    let view: Value = serde_json::from_str(&read.body).unwrap();
    assert_eq!(view["attributes"], json!({"cart": ["apple"]}));
    assert_eq!(view["route"], "a");

    let patched = send(
        &http,
        http::Request::patch(api(&format!("/{id}")))
            .header("authorization", &auth)
            .body(full(r#"{"cart":null,"note":"Grüße"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(browser.look().await["data"], json!({"note": "Grüße"}));
    let refused = send(
        &http,
        http::Request::patch(api(&format!("/{id}")))
            .header("authorization", &auth)
            .body(full("[]"))
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, 422);

    for i in 0..4 {
        Browser::new(&tandem)
            .patch(&format!(r#"{{"i":{i}}}"#))
            .await;
    }
    let mut listed = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let page = get_with(
            &http,
            &api(&format!("?limit=2{after}")),
            &[("authorization", &auth)],
        )
        .await;
        let page: Value = serde_json::from_str(&page.body).unwrap();
        for session in page["sessions"].as_array().unwrap() {
            assert!(session.get("attributes").is_none());
            listed.push(session["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(listed, sorted, "pages in id order, no repeats");
    assert_eq!(listed.len(), 5);

    let deleted = send(
        &http,
        http::Request::delete(api(&format!("/{id}")))
            .header("authorization", &auth)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(browser.look().await["id"], Value::Null);
    let gone = get_with(&http, &api(&format!("/{id}")), &[("authorization", &auth)]).await;
    assert_eq!(gone.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_when_idle_or_too_old_on_a_clock_the_test_moves() {
    let backend = Backend::start("a").await;
    // tandem in this process, so that the test owns its session clock.
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let keys = "idle_timeout = \"10m\"\nabsolute_timeout = \"1h\"\nmax_idle_timeout = \"2h\"";
    let text = proxy_config(&[&backend], keys, "off");
    let config = Config::parse(Path::new("in-process.toml"), &text).unwrap();
    let app = App::bind(config, clock.clone()).await.unwrap();
    let url = format!("http://{}/session", app.public_addresses()[0].0);
    let admin = app.admin_address().unwrap();
    tokio::spawn(app.serve(std::future::pending()));
    let minutes = |n: u64| Duration::from_secs(60 * n);

    // Idle: each use starts the idle timer again.
    let mut idle = Browser::at(&url);
    idle.patch(r#"{"a":1}"#).await;
    for _ in 0..3 {
        clock.advance(minutes(9));
        assert_eq!(idle.look().await["data"], json!({"a": 1}));
    }
    clock.advance(minutes(10) + Duration::from_secs(1));
    assert_eq!(
        idle.look().await["id"],
        Value::Null,
        "idle for over 10 minutes"
    );

    // Absolute: used every 9 minutes, it still ends an hour after it began.
    let mut busy = Browser::at(&url);
    busy.patch(r#"{"b":1}"#).await;
    for _ in 0..6 {
        clock.advance(minutes(9));
        assert_eq!(busy.look().await["data"], json!({"b": 1}));
    }
    clock.advance(minutes(7));
    assert_eq!(
        busy.look().await["id"],
        Value::Null,
        "over its absolute timeout"
    );

    // A backend may shorten (or lengthen, up to the maximum) one session's timeouts.
    let mut short = Browser::at(&url);
    short
        .send(
            &[
                ("x-tandem-session-patch", br#"{"c":1}"#),
                ("x-tandem-session-idle-timeout", b"60"),
            ],
            &[],
        )
        .await;
    let mut long = Browser::at(&url);
    long.send(
        &[
            ("x-tandem-session-patch", br#"{"d":1}"#),
            ("x-tandem-session-idle-timeout", b"7200"),
        ],
        &[],
    )
    .await;
    clock.advance(Duration::from_secs(61));
    assert_eq!(short.look().await["id"], Value::Null);
    clock.advance(minutes(30));
    assert_eq!(long.look().await["data"], json!({"d": 1}));

    // Expired sessions leave memory without any request for them (the sweeper).
    for i in 0..5 {
        Browser::at(&url).patch(&format!(r#"{{"e":{i}}}"#)).await;
    }
    assert_eq!(metric_at(admin, "tandem_sessions_live").await, 6.0);
    clock.advance(minutes(121));
    let until = Instant::now() + DEADLINE;
    while metric_at(admin, "tandem_sessions_live").await != 0.0 {
        assert!(Instant::now() < until, "expired sessions still held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric_at(admin, "tandem_sessions_expired_total").await, 9.0);
    assert_eq!(metric_at(admin, "tandem_session_bytes").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_url_parameter_a_client_without_cookies_keeps_its_session_in_the_url() {
    let backend = Backend::start("a").await;
    let keys = "url_parameter = \"tandemsession\"";
    let tandem = Tandem::start(&proxy_config(&[&backend], keys, "off"));
    let mut browser = Browser::new(&tandem);
    browser.patch(r#"{"cart":["apple"]}"#).await;
    let id = browser.id();
    // No cookie, the id in the path: the backend gets the session in headers, and a path
    // without the parameter (its `/headers` page answers only that exact path).
    let url = tandem.url(&format!("/headers;tandemsession={id}.a?page=2"));
    let answer = get(&client(), &url).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.body.contains(&format!("x-tandem-session-id: {id}")),
        "{}",
        answer.body
    );
    assert!(
        answer
            .body
            .contains(r#"x-tandem-session-data: {"cart":["apple"]}"#),
        "{}",
        answer.body
    );
    // An id tandem never issued is not adopted from the URL either.
    let forged = tandem.url("/headers;tandemsession=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.a");
    let answer = get(&client(), &forged).await;
    assert!(
        !answer.body.contains("x-tandem-session-id"),
        "{}",
        answer.body
    );
}
