//! Sticky routing on the route suffix of a session id (`route` mode), through a real tandem.

mod support;

use support::*;

/// a, b, c behind round robin, with `sticky` as the pool's extra keys.
async fn sticky_pool(extra: &str, states: [&str; 3]) -> ([Backend; 3], Tandem) {
    let backends = three_backends().await;
    let mut pools = format!("[[pool]]\nname = \"web\"\n{extra}\n");
    for (backend, state) in backends.iter().zip(states) {
        pools.push_str(&format!("{}state = \"{state}\"\n", backend.toml()));
    }
    let tandem = Tandem::start(&config(&pools));
    (backends, tandem)
}

const ACTIVE: [&str; 3] = ["active", "active", "active"];

#[tokio::test]
async fn a_session_cookie_sticks_to_its_route_over_100_requests() {
    let (_backends, tandem) = sticky_pool("", ACTIVE).await;
    let client = client();
    for _ in 0..100 {
        let answer = get_with(
            &client,
            &tandem.url("/headers"),
            &[("cookie", "theme=x; JSESSIONID=8F3A41C1.b")],
        )
        .await;
        assert_eq!(answer.headers["x-backend"], "b");
        // The request reaches the backend unchanged: tandem does not strip the backend's cookie.
        assert!(
            answer
                .body
                .contains("cookie: theme=x; JSESSIONID=8F3A41C1.b"),
            "{}",
            answer.body
        );
    }
}

#[tokio::test]
async fn the_url_form_sticks_too() {
    let (_backends, tandem) = sticky_pool("", ACTIVE).await;
    let client = client();
    for _ in 0..20 {
        assert_eq!(
            get(&client, &tandem.url("/shop/cart;jsessionid=77AB.c?item=1"))
                .await
                .body,
            "c"
        );
    }
    // The session id itself never lands in the access log.
    tandem.wait_access("path=/shop/cart;jsessionid=-");
    assert!(
        !tandem.access_log().contains("77AB"),
        "{}",
        tandem.access_log()
    );
}

#[tokio::test]
async fn unknown_routes_and_ids_without_route_are_balanced() {
    let (_backends, tandem) = sticky_pool("", ACTIVE).await;
    let client = client();
    let mut answers = Vec::new();
    for cookie in [
        "JSESSIONID=1.zz",
        "JSESSIONID=2",
        "JSESSIONID=3.",
        "JSESSIONID=4.zz",
        "JSESSIONID=5",
        "JSESSIONID=6",
    ] {
        answers.push(
            get_with(&client, &tandem.url("/"), &[("cookie", cookie)])
                .await
                .body,
        );
    }
    let counts = tally(answers.iter().map(String::as_str));
    assert_eq!(
        counts.len(),
        3,
        "round robin should have used every backend: {counts:?}"
    );
    assert!(counts.values().all(|&n| n == 2), "{counts:?}");
}

#[tokio::test]
async fn the_first_cookie_whose_route_is_known_wins() {
    let (_backends, tandem) = sticky_pool("", ACTIVE).await;
    let client = client();
    let answer = get_with(
        &client,
        &tandem.url("/"),
        &[(
            "cookie",
            "JSESSIONID=X.nope; JSESSIONID=Y.c; JSESSIONID=Z.a",
        )],
    )
    .await;
    assert_eq!(answer.body, "c");
}

#[tokio::test]
async fn a_draining_backend_keeps_its_sessions_but_gets_no_new_ones() {
    let (backends, tandem) = sticky_pool("", ["active", "draining", "active"]).await;
    let client = client();
    for _ in 0..10 {
        assert_eq!(
            get_with(&client, &tandem.url("/"), &[("cookie", "JSESSIONID=S.b")])
                .await
                .body,
            "b"
        );
    }
    for _ in 0..10 {
        assert_ne!(get(&client, &tandem.url("/")).await.body, "b");
    }
    assert_eq!(backends[1].count(), 10);
}

#[tokio::test]
async fn a_stopped_backends_sessions_go_elsewhere() {
    let (backends, tandem) = sticky_pool("", ["active", "stopped", "active"]).await;
    let client = client();
    for _ in 0..10 {
        let answer = get_with(&client, &tandem.url("/"), &[("cookie", "JSESSIONID=S.b")]).await;
        assert_eq!(answer.status, 200);
        assert_ne!(answer.body, "b");
    }
    assert_eq!(backends[1].count(), 0);
}

#[tokio::test]
async fn cookie_names_url_parameter_and_separator_are_configurable() {
    let sticky = "[pool.sticky]\ncookies = [\"PHPSESSID\", \"sid\"]\nurl_parameter = \"\"\nseparator = \":\"\n";
    let (_backends, tandem) = sticky_pool(sticky, ACTIVE).await;
    let client = client();
    assert_eq!(
        get_with(&client, &tandem.url("/"), &[("cookie", "sid=Q:c")])
            .await
            .body,
        "c"
    );
    assert_eq!(
        get_with(
            &client,
            &tandem.url("/"),
            &[("cookie", "sid=Q:c; PHPSESSID=R:a")]
        )
        .await
        .body,
        "a"
    );
    // The default cookie and the URL form are off now: these are balanced, so not all on `a`.
    let answers: Vec<String> = futures_util::future::join_all((0..6).map(|_| {
        let client = client.clone();
        let url = tandem.url("/x;jsessionid=T:a");
        async move {
            get_with(&client, &url, &[("cookie", "JSESSIONID=U:a")])
                .await
                .body
        }
    }))
    .await;
    assert!(answers.iter().any(|b| b != "a"), "{answers:?}");
}

#[tokio::test]
async fn sticky_off_ignores_session_ids() {
    let (_backends, tandem) = sticky_pool("[pool.sticky]\nmode = \"off\"\n", ACTIVE).await;
    let client = client();
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(
            get_with(&client, &tandem.url("/"), &[("cookie", "JSESSIONID=S.b")])
                .await
                .body,
        );
    }
    assert_eq!(
        tally(answers.iter().map(String::as_str)).len(),
        3,
        "{answers:?}"
    );
}

#[tokio::test]
async fn sticky_force_answers_503_rather_than_moving_a_session() {
    let (backends, tandem) = sticky_pool(
        "[pool.sticky]\nforce = true\n",
        ["active", "stopped", "active"],
    )
    .await;
    let client = client();
    let answer = get_with(&client, &tandem.url("/"), &[("cookie", "JSESSIONID=S.b")]).await;
    assert_eq!(answer.status, 503);
    tandem.wait_log("sticky.force keeps it there");
    // Requests without a session, or whose backend is fine, are served as usual.
    assert_ne!(get(&client, &tandem.url("/")).await.body, "b");
    assert_eq!(
        get_with(&client, &tandem.url("/"), &[("cookie", "JSESSIONID=S.c")])
            .await
            .body,
        "c"
    );
    assert_eq!(backends[1].count(), 0);
}

#[tokio::test]
async fn failover_prefers_the_redirect_then_the_domain_then_any_backend() {
    let [a, b, c] = three_backends().await;
    let d = Backend::start("d").await;
    // a and b share domain x (a redirects to c); c and d share domain y.
    let pool_with = |a_state: &str, b_state: &str| {
        config(&format!(
            "[[pool]]\nname = \"web\"\n{}domain = \"x\"\nredirect = \"c\"\nstate = \"{a_state}\"\n\
             {}domain = \"x\"\nstate = \"{b_state}\"\n{}domain = \"y\"\n{}domain = \"y\"\n",
            a.toml(),
            b.toml(),
            c.toml(),
            d.toml()
        ))
    };
    let client = client();
    let sessions_of = |route: &'static str| (0..4).map(move |i| format!("JSESSIONID=S{i}.{route}"));

    let tandem = Tandem::start(&pool_with("stopped", "active"));
    for cookie in sessions_of("a") {
        let answer = get_with(&client, &tandem.url("/"), &[("cookie", &cookie)]).await;
        assert_eq!(answer.body, "c", "{cookie}: the redirect comes first");
    }
    drop(tandem);

    let tandem = Tandem::start(&pool_with("active", "stopped"));
    for cookie in sessions_of("b") {
        let answer = get_with(&client, &tandem.url("/"), &[("cookie", &cookie)]).await;
        assert_eq!(answer.body, "a", "{cookie}: then the same domain");
    }
    drop(tandem);

    let tandem = Tandem::start(&pool_with("stopped", "stopped"));
    let mut answers = Vec::new();
    for cookie in sessions_of("b") {
        answers.push(
            get_with(&client, &tandem.url("/"), &[("cookie", &cookie)])
                .await
                .body,
        );
    }
    assert!(
        answers.iter().all(|body| body == "c" || body == "d"),
        "then any backend: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learn_mode_sticks_ids_that_name_no_backend() {
    let learn = "[pool.sticky]\nmode = \"learn\"\ncookies = [\"PHPSESSID\"]\n";
    let (backends, tandem) = sticky_pool(learn, ACTIVE).await;
    let client = client();
    let login = get(&client, &tandem.url("/learn/login")).await;
    let owner = login.body.clone();
    let cookie = format!("PHPSESSID=P-{owner}");
    for _ in 0..10 {
        assert_eq!(
            get_with(&client, &tandem.url("/"), &[("cookie", &cookie)])
                .await
                .body,
            owner
        );
    }
    // An id nobody set is balanced.
    let mut unknown = Vec::new();
    for _ in 0..3 {
        unknown.push(
            get_with(&client, &tandem.url("/"), &[("cookie", "PHPSESSID=nobody")])
                .await
                .body,
        );
    }
    assert_eq!(
        tally(unknown.iter().map(String::as_str)).len(),
        3,
        "{unknown:?}"
    );

    // The owner dies: the session moves to another backend and stays there; the client's
    // cookie needs no change, so tandem sets none.
    backends
        .iter()
        .find(|b| b.name == owner)
        .unwrap()
        .kill()
        .await;
    let moved = get_with(&client, &tandem.url("/"), &[("cookie", &cookie)]).await;
    assert_eq!(moved.status, 200);
    assert_ne!(moved.body, owner);
    assert!(moved.headers.get("set-cookie").is_none());
    for _ in 0..5 {
        assert_eq!(
            get_with(&client, &tandem.url("/"), &[("cookie", &cookie)])
                .await
                .body,
            moved.body
        );
    }
}

#[tokio::test]
async fn insert_mode_sets_a_signed_affinity_cookie_that_clients_cannot_steer() {
    let insert = "[pool.sticky]\nmode = \"insert\"\nsecret = \"a long enough test secret\"\n";
    let (_backends, tandem) = sticky_pool(insert, ["active", "active", "stopped"]).await;
    let client = client();
    let first = get(&client, &tandem.url("/")).await;
    let set_cookie = first.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.starts_with(&format!("TANDEMROUTE={}.", first.body)),
        "{set_cookie}"
    );
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("Path=/"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();

    for _ in 0..10 {
        let answer = get_with(
            &client,
            &tandem.url("/headers"),
            &[("cookie", &format!("lang=en; {cookie}"))],
        )
        .await;
        assert_eq!(answer.headers["x-backend"], first.body.as_str());
        assert!(
            answer.headers.get("set-cookie").is_none(),
            "the cookie is right already"
        );
        // The backend sees the client's cookies but not tandem's own.
        assert!(answer.body.contains("cookie: lang=en"), "{}", answer.body);
        assert!(!answer.body.contains("TANDEMROUTE"), "{}", answer.body);
    }

    // A route the client wrote itself, or another route under the same signature, is not
    // believed: the request is balanced and a valid cookie issued.
    let other = if first.body == "a" { "b" } else { "a" };
    let tag = cookie.rsplit_once('.').unwrap().1;
    for forged in [
        format!("TANDEMROUTE={other}"),
        format!("TANDEMROUTE={other}.{tag}"),
    ] {
        let mut served = Vec::new();
        for _ in 0..4 {
            let answer = get_with(&client, &tandem.url("/"), &[("cookie", &forged)]).await;
            let reissued = answer.headers["set-cookie"].to_str().unwrap();
            assert!(
                reissued.starts_with(&format!("TANDEMROUTE={}.", answer.body)),
                "{reissued}"
            );
            served.push(answer.body);
        }
        assert!(
            served.iter().any(|b| b != other),
            "{forged} steered every request: {served:?}"
        );
    }

    // A cookie naming a backend that has since been stopped (what its earlier clients hold,
    // signed as tandem signs it) is re-issued for the backend that served.
    let stale = format!(
        "TANDEMROUTE={}",
        tandem::sticky::signed_route("a long enough test secret", "web", "c")
    );
    let answer = get_with(&client, &tandem.url("/"), &[("cookie", &stale)]).await;
    assert_ne!(answer.body, "c");
    assert!(answer.headers["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with(&format!("TANDEMROUTE={}.", answer.body)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_sticky_mode_forgets_what_the_old_mode_learned() {
    let learn = "[pool.sticky]\nmode = \"learn\"\ncookies = [\"PHPSESSID\"]\n";
    let (backends, tandem) = sticky_pool(learn, ACTIVE).await;
    let client = client();
    let owner = get(&client, &tandem.url("/learn/login")).await.body;
    let cookie = format!("PHPSESSID=P-{owner}");
    let route = "[pool.sticky]\nmode = \"route\"\ncookies = [\"PHPSESSID\"]\n";
    tandem.reload(&config(&pool(
        "web",
        "round_robin",
        route,
        &[&backends[0], &backends[1], &backends[2]],
    )));
    // `P-a` names no route: in route mode it is balanced, not pinned by the learned entry.
    let mut served = Vec::new();
    for _ in 0..3 {
        served.push(
            get_with(&client, &tandem.url("/"), &[("cookie", &cookie)])
                .await
                .body,
        );
    }
    assert_eq!(
        tally(served.iter().map(String::as_str)).len(),
        3,
        "{served:?}"
    );
}
