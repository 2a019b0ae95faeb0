//! Route takeover: when a session's backend cannot serve it, the session moves to another
//! backend for good, the client's cookie names the new route, and the backends keep seeing
//! the id they know the session by (Tomcat's DeltaManager replicates sessions under their
//! full original id).

mod support;

use support::*;

/// The Set-Cookie values of an answer.
fn set_cookies(answer: &Answer) -> Vec<String> {
    answer
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// Logs in through tandem; returns the backend that created the session.
async fn login(tandem: &Tandem) -> String {
    let answer = get(&client(), &tandem.url("/app/login")).await;
    assert_eq!(
        set_cookies(&answer),
        vec![format!(
            "JSESSIONID=S1.{}; Path=/app; HttpOnly",
            answer.body
        )]
    );
    answer.body
}

async fn whoami(tandem: &Tandem, session: &str) -> Answer {
    get_with(
        &client(),
        &tandem.url("/app/whoami"),
        &[("cookie", &format!("theme=dark; JSESSIONID={session}"))],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backends_session_moves_for_good_and_keeps_its_id_at_the_backends() {
    let backends = three_backends().await;
    let tandem = Tandem::start(&config(&pool(
        "web",
        "round_robin",
        "",
        &[&backends[0], &backends[1], &backends[2]],
    )));
    let owner = login(&tandem).await;
    let old_id = format!("S1.{owner}");
    backends
        .iter()
        .find(|b| b.name == owner)
        .unwrap()
        .kill()
        .await;

    let answer = whoami(&tandem, &old_id).await;
    assert_eq!(answer.status, 200);
    let (taker, received) = answer.body.split_once(' ').unwrap();
    assert_ne!(taker, owner);
    assert_eq!(
        received, old_id,
        "the new backend must see the id it knows the session by"
    );
    let new_id = format!("S1.{taker}");
    // Shaped as the backend's own cookie (Path=/app, HttpOnly).
    assert_eq!(
        set_cookies(&answer),
        vec![format!("JSESSIONID={new_id}; HttpOnly; Path=/app")]
    );
    tandem.wait_log("session route taken over");

    for _ in 0..10 {
        let answer = whoami(&tandem, &new_id).await;
        assert_eq!(
            answer.body,
            format!("{taker} {old_id}"),
            "sticks to the new backend, old id forwarded"
        );
        assert!(
            set_cookies(&answer).is_empty(),
            "the client's cookie is already right"
        );
    }
    // A client that kept the old cookie is sent to the new backend too, and told again.
    let answer = whoami(&tandem, &old_id).await;
    assert_eq!(answer.body, format!("{taker} {old_id}"));
    assert_eq!(
        set_cookies(&answer),
        vec![format!("JSESSIONID={new_id}; HttpOnly; Path=/app")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stays_with_its_new_backend_when_the_old_one_returns() {
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    let with_state = |state: &str| {
        config(&format!(
            "[[pool]]\nname = \"web\"\n{}state = \"{state}\"\n{}",
            first.toml(),
            second.toml()
        ))
    };
    let tandem = Tandem::start(&with_state("active"));
    let answer = get_with(
        &client(),
        &tandem.url("/app/whoami"),
        &[("cookie", "JSESSIONID=S7.first")],
    )
    .await;
    assert_eq!(answer.body, "first S7.first");

    tandem.reload(&with_state("stopped"));
    let answer = whoami(&tandem, "S7.first").await;
    assert_eq!(answer.body, "second S7.first");
    assert_eq!(
        set_cookies(&answer),
        vec!["JSESSIONID=S7.second; HttpOnly; Path=/".to_string()]
    );

    tandem.reload(&with_state("active"));
    for session in ["S7.second", "S7.first"] {
        for _ in 0..4 {
            assert_eq!(
                whoami(&tandem, session).await.body,
                "second S7.first",
                "with cookie {session}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_renames_the_session_itself_is_followed() {
    let backends = three_backends().await;
    let tandem = Tandem::start(&config(&pool(
        "web",
        "round_robin",
        "",
        &[&backends[0], &backends[1], &backends[2]],
    )));
    let owner = login(&tandem).await;
    backends
        .iter()
        .find(|b| b.name == owner)
        .unwrap()
        .kill()
        .await;

    // As with JvmRouteBinderValve, the backend that takes the session renames it to its own
    // route and sets the cookie itself: tandem adds no cookie of its own.
    let answer = get_with(
        &client(),
        &tandem.url("/app/rename"),
        &[("cookie", &format!("JSESSIONID=S1.{owner}"))],
    )
    .await;
    let taker = answer.body.clone();
    assert_ne!(taker, owner);
    assert_eq!(
        set_cookies(&answer),
        vec![format!("JSESSIONID=S1.{taker}; Path=/app; HttpOnly")]
    );

    // From then on the backend knows the session by its new id: it is forwarded unchanged,
    // and a client still holding the old cookie reaches the same backend under the new id.
    for _ in 0..5 {
        let answer = whoami(&tandem, &format!("S1.{taker}")).await;
        assert_eq!(answer.body, format!("{taker} S1.{taker}"));
        assert!(set_cookies(&answer).is_empty());
    }
    let answer = whoami(&tandem, &format!("S1.{owner}")).await;
    assert_eq!(answer.body, format!("{taker} S1.{taker}"));
    assert_eq!(
        set_cookies(&answer),
        vec![format!("JSESSIONID=S1.{taker}; HttpOnly; Path=/app")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_takeovers_are_shared_with_peers() {
    let backends = three_backends().await;
    let ports = [free_port(), free_port()];
    let pools = pool(
        "web",
        "round_robin",
        "",
        &[&backends[0], &backends[1], &backends[2]],
    );
    let node = |i: usize| {
        let peer = ports[1 - i];
        config(&format!(
            "[admin]\naddress = \"127.0.0.1:0\"\n\n[cluster]\nname = \"edge\"\nnode_id = \"t{i}\"\nlisten = \"127.0.0.1:{}\"\npeers = [\"127.0.0.1:{peer}\"]\nsecret = \"a-secret-for-the-takeover-test-0123456789\"\nheartbeat_interval = \"100ms\"\ndrop_after = \"1s\"\n\n{pools}",
            ports[i]
        ))
    };
    let first = Tandem::start(&node(0));
    let second = Tandem::start(&node(1));
    first.wait_log_all(&["full session state received", "peer=t1"]);
    second.wait_log_all(&["full session state received", "peer=t0"]);
    // Shift the second tandem's round robin, so that on its own it would choose differently.
    get(&client(), &second.url("/")).await;
    backends[0].kill().await;
    // Sessions of the dead backend `a` move through the first tandem...
    let mut moved_to = Vec::new();
    for i in 0..6 {
        let answer = whoami(&first, &format!("S{i}.a")).await;
        moved_to.push(answer.body.split(' ').next().unwrap().to_string());
    }
    assert!(moved_to.iter().all(|b| b != "a"), "{moved_to:?}");
    // ...and the second tandem sends each of them where the first one moved it.
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let mut seen = Vec::new();
        for i in 0..6 {
            let answer = whoami(&second, &format!("S{i}.a")).await;
            seen.push(answer.body.split(' ').next().unwrap().to_string());
        }
        if seen == moved_to {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the second tandem routes {seen:?}, the first moved them to {moved_to:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
