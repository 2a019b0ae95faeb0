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

// A backend without session replication: the node a session fails over to does not know it and
// starts a new one. The backend's cookie for that new session is the one the client must keep.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Incoming;

/// The sessions a Tomcat-like node holds: id → counter. Nodes sharing one replicate their
/// sessions (as DeltaManager does, under the full original id); nodes with their own do not.
type Sessions = Arc<Mutex<HashMap<String, u64>>>;

/// Numbers the sessions the Tomcat-like nodes create, unique in the test run.
static NEXT_SESSION: AtomicUsize = AtomicUsize::new(1);

/// A Tomcat-like node (`jvmRoute` = `route`). `/app/count` adds one to the counter of the
/// session named by cookie `cookie` (else by `;jsessionid=` in the URL); when the node holds no
/// session by that id it creates `N<k>.<route>` and sets it, Tomcat's way
/// (`<cookie>=N<k>.<route>; Path=/app; HttpOnly`), after an unrelated `lang` cookie.
/// `/app/peek` only reads; `/app/logout` ends the session and deletes the cookie. They answer
/// `<route> <id received, or -> <counter, or none>`.
struct CounterNode {
    route: String,
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CounterNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CounterNode {
    async fn start(route: &str, cookie: &str, sessions: &Sessions) -> CounterNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (name, cookie, sessions) = (route.to_string(), cookie.to_string(), sessions.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, cookie, sessions) = (name.clone(), cookie.clone(), sessions.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let response = count(&name, &cookie, &sessions, &request);
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CounterNode {
            route: route.to_string(),
            address,
            task,
        }
    }

    fn toml(&self) -> String {
        format!(
            "[[pool.backend]]\naddress = \"{}\"\nroute = \"{}\"\n",
            self.address, self.route
        )
    }
}

/// What a [`CounterNode`] answers.
fn count(
    route: &str,
    cookie: &str,
    sessions: &Sessions,
    request: &http::Request<Incoming>,
) -> http::Response<Full<bytes::Bytes>> {
    let prefix = format!("{cookie}=");
    let received = request
        .headers()
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(prefix.as_str()))
        .or_else(|| {
            let (_, parameter) = request.uri().path().split_once(";jsessionid=")?;
            Some(parameter.split([';', '/']).next().unwrap_or(""))
        })
        .map(str::to_string);
    let mut sessions = sessions.lock().unwrap();
    let known = received.as_ref().filter(|id| sessions.contains_key(*id));
    let mut response = http::Response::new(Full::default());
    let path = request.uri().path();
    if path.starts_with("/app/logout") {
        let ended = known.cloned().and_then(|id| sessions.remove(&id));
        let delete = format!("{cookie}=; Max-Age=0; Path=/app; HttpOnly");
        let mut response = http::Response::new(Full::from(format!(
            "{route} {} {}",
            received.as_deref().unwrap_or("-"),
            ended.map_or("none".to_string(), |n| n.to_string())
        )));
        response
            .headers_mut()
            .append("set-cookie", delete.parse().unwrap());
        return response;
    }
    let counter = match (path.starts_with("/app/count"), known) {
        (false, known) => known.map(|id| sessions[id].to_string()),
        (true, Some(id)) => {
            let counter = sessions.get_mut(id).unwrap();
            *counter += 1;
            Some(counter.to_string())
        }
        (true, None) => {
            let id = format!("N{}.{route}", NEXT_SESSION.fetch_add(1, Ordering::SeqCst));
            sessions.insert(id.clone(), 1);
            let headers = response.headers_mut();
            headers.append("set-cookie", "lang=en; Path=/".parse().unwrap());
            let set = format!("{cookie}={id}; Path=/app; HttpOnly");
            headers.append("set-cookie", set.parse().unwrap());
            Some("1".to_string())
        }
    };
    *response.body_mut() = Full::from(format!(
        "{route} {} {}",
        received.as_deref().unwrap_or("-"),
        counter.as_deref().unwrap_or("none")
    ));
    response
}

const ADMIN_TOKEN: &str = "admin-token-for-the-takeover-tests";

/// A tandem with an admin API (to stop a node) in front of `nodes`, round robin, with
/// `sticky` as the pool's `[pool.sticky]` keys; `extra` goes before the pool (a `[cluster]`).
fn counter_tandem(nodes: &[&CounterNode], sticky: &str, extra: &str) -> Tandem {
    let backends: String = nodes.iter().map(|node| node.toml()).collect();
    Tandem::start(&config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n\n{extra}\
         [[pool]]\nname = \"web\"\n[pool.sticky]\n{sticky}\n{backends}"
    )))
}

/// Stops node `route` in `tandem`'s pool: its sessions must go elsewhere.
async fn stop(tandem: &Tandem, route: &str) {
    let request =
        http::Request::put(tandem.admin_url(&format!("/api/pools/web/backends/{route}/state")))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(full(r#"{"state":"stopped"}"#))
            .unwrap();
    let answer = send(&client(), request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// The Set-Cookie values of `answer` for cookie `name`.
fn cookies_named(answer: &Answer, name: &str) -> Vec<String> {
    let prefix = format!("{name}=");
    set_cookies(answer)
        .into_iter()
        .filter(|value| value.starts_with(&prefix))
        .collect()
}

/// The session id a Set-Cookie value sets.
fn id_in(set_cookie: &str) -> String {
    let (_, rest) = set_cookie.split_once('=').unwrap();
    rest.split(';').next().unwrap().to_string()
}

/// `path` through `tandem` with session cookie `name=id` (in a Cookie header of its own over
/// HTTP/2, as browsers split cookies there).
async fn with_session(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        TestBody,
    >,
    tandem: &Tandem,
    path: &str,
    name: &str,
    id: &str,
    h2: bool,
) -> Answer {
    let session = format!("{name}={id}");
    let joined = format!("theme=dark; {session}");
    let headers: Vec<(&str, &str)> = if h2 {
        vec![("cookie", "theme=dark"), ("cookie", session.as_str())]
    } else {
        vec![("cookie", joined.as_str())]
    };
    get_with(client, &tandem.url(path), &headers).await
}

/// Creates a session through `tandem`; returns the node that holds it and its id.
async fn new_session(tandem: &Tandem, name: &str) -> (String, String) {
    let answer = get(&client(), &tandem.url("/app/count")).await;
    let (route, rest) = answer.body.split_once(' ').unwrap();
    assert_eq!(rest, "- 1", "{}", answer.body);
    let set = cookies_named(&answer, name);
    assert_eq!(set.len(), 1, "{set:?}");
    (route.to_string(), id_in(&set[0]))
}

/// The other route of a two-node pool.
fn other(route: &str) -> &'static str {
    if route == "a" {
        "b"
    } else {
        "a"
    }
}

/// A node without the session (no replication) answers the taken-over request with a new
/// session: the client keeps the backend's cookie, tandem records no move, and the new session
/// goes straight to its node.
async fn a_new_session_on_takeover_is_the_clients(h2: bool, name: &str) {
    let nodes = [
        CounterNode::start("a", name, &Sessions::default()).await,
        CounterNode::start("b", name, &Sessions::default()).await,
    ];
    let sticky = format!("cookies = [\"OTHER\", \"{name}\"]");
    let tandem = counter_tandem(&[&nodes[0], &nodes[1]], &sticky, "");
    let http = if h2 { h2c_client() } else { client() };
    let (owner, old_id) = new_session(&tandem, name).await;
    let taker = other(&owner);
    stop(&tandem, &owner).await;

    let answer = with_session(&http, &tandem, "/app/count", name, &old_id, h2).await;
    assert_eq!(answer.body, format!("{taker} {old_id} 1"), "a new session");
    let set = cookies_named(&answer, name);
    assert_eq!(set.len(), 1, "only the backend's cookie: {set:?}");
    let new_id = id_in(&set[0]);
    assert_eq!(set[0], format!("{name}={new_id}; Path=/app; HttpOnly"));
    assert!(new_id.ends_with(&format!(".{taker}")), "{new_id}");
    assert_eq!(
        set_cookies(&answer).len(),
        2,
        "the backend's other cookies pass"
    );

    // The new session counts on; no cookie of tandem's comes after it.
    for expected in 2..=3 {
        let answer = with_session(&http, &tandem, "/app/count", name, &new_id, h2).await;
        assert_eq!(answer.body, format!("{taker} {new_id} {expected}"));
        assert!(
            set_cookies(&answer).is_empty(),
            "{:?}",
            set_cookies(&answer)
        );
    }
    // No move was recorded: the old session's id with the new route is not rewritten.
    let stale = format!("{}.{taker}", old_id.rsplit_once('.').unwrap().0);
    let answer = with_session(&http, &tandem, "/app/peek", name, &stale, h2).await;
    assert_eq!(answer.body, format!("{taker} {stale} none"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_on_takeover_is_the_clients_over_http1() {
    a_new_session_on_takeover_is_the_clients(false, "JSESSIONID").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_on_takeover_is_the_clients_over_h2() {
    a_new_session_on_takeover_is_the_clients(true, "JSESSIONID").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_on_takeover_is_the_clients_in_a_configured_cookie() {
    a_new_session_on_takeover_is_the_clients(false, "APPSESSION").await;
}

/// A session moved on an earlier request (its move is in the table) that its new node then
/// loses (expired, or the node restarted): the node's new session stands and the move is
/// forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_session_replaced_by_its_new_node_is_forgotten() {
    let replicated = Sessions::default();
    let nodes = [
        CounterNode::start("a", "JSESSIONID", &replicated).await,
        CounterNode::start("b", "JSESSIONID", &replicated).await,
    ];
    let tandem = counter_tandem(&[&nodes[0], &nodes[1]], "", "");
    let http = client();
    let (owner, old_id) = new_session(&tandem, "JSESSIONID").await;
    let taker = other(&owner);
    stop(&tandem, &owner).await;
    // The taker holds the session (replicated): tandem moves it, as before.
    let answer = with_session(&http, &tandem, "/app/count", "JSESSIONID", &old_id, false).await;
    assert_eq!(answer.body, format!("{taker} {old_id} 2"));
    let moved = format!("{}.{taker}", old_id.rsplit_once('.').unwrap().0);
    assert_eq!(
        set_cookies(&answer),
        vec![format!("JSESSIONID={moved}; HttpOnly; Path=/app")]
    );
    let answer = with_session(&http, &tandem, "/app/count", "JSESSIONID", &moved, false).await;
    assert_eq!(
        answer.body,
        format!("{taker} {old_id} 3"),
        "sent the id it knows"
    );

    replicated.lock().unwrap().clear();
    let answer = with_session(&http, &tandem, "/app/count", "JSESSIONID", &moved, false).await;
    assert_eq!(answer.body, format!("{taker} {old_id} 1"), "a new session");
    let set = cookies_named(&answer, "JSESSIONID");
    assert_eq!(set.len(), 1, "only the backend's cookie: {set:?}");
    let new_id = id_in(&set[0]);
    let answer = with_session(&http, &tandem, "/app/count", "JSESSIONID", &new_id, false).await;
    assert_eq!(answer.body, format!("{taker} {new_id} 2"));
    // The move is forgotten: the old cookie is no longer rewritten.
    let answer = with_session(&http, &tandem, "/app/peek", "JSESSIONID", &moved, false).await;
    assert_eq!(answer.body, format!("{taker} {moved} none"));
}

/// The URL form: tandem cannot rewrite the client's URL, so it never adds a cookie; the node's
/// new session reaches the client in its cookie and its links. No move is recorded either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_on_takeover_of_a_url_session_records_no_move() {
    let nodes = [
        CounterNode::start("a", "JSESSIONID", &Sessions::default()).await,
        CounterNode::start("b", "JSESSIONID", &Sessions::default()).await,
    ];
    let tandem = counter_tandem(&[&nodes[0], &nodes[1]], "", "");
    let (owner, old_id) = new_session(&tandem, "JSESSIONID").await;
    let taker = other(&owner);
    stop(&tandem, &owner).await;
    let answer = get(
        &client(),
        &tandem.url(&format!("/app/count;jsessionid={old_id}")),
    )
    .await;
    assert_eq!(answer.body, format!("{taker} {old_id} 1"), "a new session");
    let set = cookies_named(&answer, "JSESSIONID");
    assert_eq!(set.len(), 1, "only the backend's cookie: {set:?}");
    let new_id = id_in(&set[0]);
    let answer = get(
        &client(),
        &tandem.url(&format!("/app/count;jsessionid={new_id}")),
    )
    .await;
    assert_eq!(answer.body, format!("{taker} {new_id} 2"));
    let stale = format!("{}.{taker}", old_id.rsplit_once('.').unwrap().0);
    let answer = with_session(&client(), &tandem, "/app/peek", "JSESSIONID", &stale, false).await;
    assert_eq!(
        answer.body,
        format!("{taker} {stale} none"),
        "no move recorded"
    );
}

/// Learn mode: the id the node replaced is forgotten (its requests are balanced again), the
/// new one is learned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learn_mode_forgets_an_id_its_new_node_replaced() {
    let nodes = [
        CounterNode::start("a", "PHPSESSID", &Sessions::default()).await,
        CounterNode::start("b", "PHPSESSID", &Sessions::default()).await,
        CounterNode::start("c", "PHPSESSID", &Sessions::default()).await,
    ];
    let learn = "mode = \"learn\"\ncookies = [\"PHPSESSID\"]";
    let tandem = counter_tandem(&[&nodes[0], &nodes[1], &nodes[2]], learn, "");
    let http = client();
    let (owner, old_id) = new_session(&tandem, "PHPSESSID").await;
    stop(&tandem, &owner).await;
    let answer = with_session(&http, &tandem, "/app/count", "PHPSESSID", &old_id, false).await;
    let (taker, rest) = answer.body.split_once(' ').unwrap();
    assert_eq!(rest, format!("{old_id} 1"), "a new session");
    let set = cookies_named(&answer, "PHPSESSID");
    assert_eq!(set.len(), 1, "only the backend's cookie: {set:?}");
    let new_id = id_in(&set[0]);
    for expected in 2..=4 {
        let answer = with_session(&http, &tandem, "/app/count", "PHPSESSID", &new_id, false).await;
        assert_eq!(
            answer.body,
            format!("{taker} {new_id} {expected}"),
            "learned"
        );
    }
    // The replaced id names no session any more: balanced over both active nodes.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let answer = with_session(&http, &tandem, "/app/peek", "PHPSESSID", &old_id, false).await;
        served.insert(answer.body.split(' ').next().unwrap().to_string());
    }
    assert_eq!(served.len(), 2, "{old_id} still pinned to {served:?}");
}

/// The forgotten move is forgotten on the peers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_forget_a_move_whose_session_was_replaced() {
    let replicated = Sessions::default();
    let nodes = [
        CounterNode::start("a", "JSESSIONID", &replicated).await,
        CounterNode::start("b", "JSESSIONID", &replicated).await,
    ];
    let ports = [free_port(), free_port()];
    let cluster = |i: usize| {
        format!(
            "[cluster]\nname = \"edge\"\nnode_id = \"t{i}\"\nlisten = \"127.0.0.1:{}\"\n\
             peers = [\"127.0.0.1:{}\"]\nsecret = \"a-secret-for-the-takeover-test-0123456789\"\n\
             heartbeat_interval = \"100ms\"\ndrop_after = \"1s\"\n\n",
            ports[i],
            ports[1 - i]
        )
    };
    let first = counter_tandem(&[&nodes[0], &nodes[1]], "", &cluster(0));
    let second = counter_tandem(&[&nodes[0], &nodes[1]], "", &cluster(1));
    first.wait_ready().await;
    second.wait_ready().await;
    let http = client();
    let (owner, old_id) = new_session(&first, "JSESSIONID").await;
    let taker = other(&owner);
    stop(&first, &owner).await;
    let answer = with_session(&http, &first, "/app/count", "JSESSIONID", &old_id, false).await;
    assert_eq!(answer.body, format!("{taker} {old_id} 2"));
    let moved = format!("{}.{taker}", old_id.rsplit_once('.').unwrap().0);
    let seen_by_second = |expected: String| {
        let (http, second, moved) = (&http, &second, &moved);
        async move {
            let until = std::time::Instant::now() + DEADLINE;
            loop {
                let answer =
                    with_session(http, second, "/app/peek", "JSESSIONID", moved, false).await;
                if answer.body == expected {
                    return;
                }
                assert!(
                    std::time::Instant::now() < until,
                    "the second tandem answers {}, not {expected}",
                    answer.body
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    // The move reached the second tandem: it sends the taker the id it knows.
    seen_by_second(format!("{taker} {old_id} 2")).await;

    replicated.lock().unwrap().clear();
    let answer = with_session(&http, &first, "/app/count", "JSESSIONID", &moved, false).await;
    assert_eq!(answer.body, format!("{taker} {old_id} 1"), "a new session");
    // Forgotten on the second tandem too.
    seen_by_second(format!("{taker} {moved} none")).await;
}

/// A node that ends the taken-over session (a logout) deletes its cookie: tandem sets none of
/// its own after the deletion (it would bring the session's cookie back) and records no move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_its_new_node_ends_stays_ended() {
    let replicated = Sessions::default();
    let nodes = [
        CounterNode::start("a", "JSESSIONID", &replicated).await,
        CounterNode::start("b", "JSESSIONID", &replicated).await,
    ];
    let tandem = counter_tandem(&[&nodes[0], &nodes[1]], "", "");
    let http = client();
    let (owner, old_id) = new_session(&tandem, "JSESSIONID").await;
    let taker = other(&owner);
    stop(&tandem, &owner).await;
    let answer = with_session(&http, &tandem, "/app/logout", "JSESSIONID", &old_id, false).await;
    assert_eq!(answer.body, format!("{taker} {old_id} 1"), "ended there");
    assert_eq!(
        set_cookies(&answer),
        vec!["JSESSIONID=; Max-Age=0; Path=/app; HttpOnly".to_string()],
        "only the backend's deletion"
    );
    let stale = format!("{}.{taker}", old_id.rsplit_once('.').unwrap().0);
    let answer = with_session(&http, &tandem, "/app/peek", "JSESSIONID", &stale, false).await;
    assert_eq!(
        answer.body,
        format!("{taker} {stale} none"),
        "no move recorded"
    );
}
