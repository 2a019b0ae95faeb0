//! Real Tomcat behind tandem: two Tomcat 10 nodes (`jvmRoute` tc1 and tc2) replicating their
//! sessions with SimpleTcpCluster + DeltaManager over static membership on loopback, serving a
//! counter kept in the HttpSession. Killing the node a session sticks to must cost the user
//! nothing: the next request is answered by the other node with the counter intact, the
//! client's cookie ends up naming that node, and the session stays there. Run once without and
//! once with JvmRouteBinderValve on the Tomcats.
//!
//! Without replication (no `<Cluster>`), the other node starts a new session: the user loses
//! the counter once, but keeps the new session the other node set (tandem must not override
//! its cookie).
//!
//! Needs Debian's tomcat10 and a JDK (javac compiles the test servlet):
//! `scripts/install-test-deps.sh` installs both.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const TOMCAT_HOME: &str = "/usr/share/tomcat10";
/// Tomcat nodes take seconds to start and to form their cluster.
const TOMCAT_DEADLINE: Duration = Duration::from_secs(90);

const SERVLET: &str = r#"
import jakarta.servlet.http.*;
import java.io.IOException;

/** /count adds one to the session's counter (creating the session); /peek only reads it. */
public class Counter extends HttpServlet {
    @Override
    protected void doGet(HttpServletRequest request, HttpServletResponse response) throws IOException {
        boolean count = request.getServletPath().equals("/count");
        HttpSession session = request.getSession(count);
        Integer n = session == null ? null : (Integer) session.getAttribute("n");
        if (count) {
            n = n == null ? 1 : n + 1;
            session.setAttribute("n", n);
        }
        response.setContentType("text/plain");
        response.getWriter().print(System.getProperty("tandem.node") + " " + (n == null ? "none" : n));
    }
}
"#;

const WEB_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<web-app xmlns="https://jakarta.ee/xml/ns/jakartaee" version="6.0">
  <distributable/>
  <servlet><servlet-name>counter</servlet-name><servlet-class>Counter</servlet-class></servlet>
  <servlet-mapping><servlet-name>counter</servlet-name><url-pattern>/count</url-pattern></servlet-mapping>
  <servlet-mapping><servlet-name>counter</servlet-name><url-pattern>/peek</url-pattern></servlet-mapping>
</web-app>
"#;

/// Fails with the install step when Tomcat or a JDK is missing (never skips quietly).
fn require_tools() {
    let missing: Vec<&str> = [
        (
            Path::new(TOMCAT_HOME).join("bin/bootstrap.jar").exists(),
            "tomcat10",
        ),
        (
            Command::new("javac").arg("-version").output().is_ok(),
            "a JDK (default-jdk-headless)",
        ),
    ]
    .iter()
    .filter(|(present, _)| !present)
    .map(|(_, name)| *name)
    .collect();
    assert!(
        missing.is_empty(),
        "this test needs {missing:?}: run scripts/install-test-deps.sh"
    );
}

/// Compiles the counter servlet into a webapp directory, once per test run.
fn build_webapp(dir: &Path) -> PathBuf {
    let app = dir.join("app");
    let classes = app.join("WEB-INF/classes");
    std::fs::create_dir_all(&classes).unwrap();
    std::fs::write(app.join("WEB-INF/web.xml"), WEB_XML).unwrap();
    let source = dir.join("Counter.java");
    std::fs::write(&source, SERVLET).unwrap();
    let servlet_api = Path::new(TOMCAT_HOME).join("lib/servlet-api.jar");
    let status = Command::new("javac")
        .arg("-cp")
        .arg(&servlet_api)
        .arg("-d")
        .arg(&classes)
        .arg(&source)
        .status()
        .expect("run javac");
    assert!(status.success(), "javac failed on the test servlet");
    app
}

/// How the Tomcat nodes share their sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replication {
    /// No `<Cluster>`: each node has only its own sessions.
    None,
    /// SimpleTcpCluster + DeltaManager: every node has every session, under its original id.
    DeltaManager,
    /// DeltaManager, and JvmRouteBinderValve renaming a session to the node that takes it over.
    DeltaManagerWithBinderValve,
}

/// One Tomcat node in its own CATALINA_BASE.
struct TomcatNode {
    route: &'static str,
    http_port: u16,
    child: Child,
    base: PathBuf,
}

impl Drop for TomcatNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TomcatNode {
    fn start(
        dir: &Path,
        app: &Path,
        route: &'static str,
        tribes: (u16, u16),
        own_tribes: u16,
        replication: Replication,
    ) -> TomcatNode {
        let base = dir.join(route);
        for sub in ["conf", "logs", "temp", "work", "webapps"] {
            std::fs::create_dir_all(base.join(sub)).unwrap();
        }
        for file in [
            "web.xml",
            "catalina.properties",
            "context.xml",
            "logging.properties",
        ] {
            std::fs::copy(
                Path::new(TOMCAT_HOME).join("etc").join(file),
                base.join("conf").join(file),
            )
            .unwrap();
        }
        copy_dir(app, &base.join("webapps/app"));
        let http_port = free_port();
        let binder_valve = if replication == Replication::DeltaManagerWithBinderValve {
            r#"<Valve className="org.apache.catalina.ha.session.JvmRouteBinderValve"/>"#
        } else {
            ""
        };
        let cluster = format!(
            r#"<Cluster className="org.apache.catalina.ha.tcp.SimpleTcpCluster" channelSendOptions="6">
        <Manager className="org.apache.catalina.ha.session.DeltaManager" stateTransferTimeout="5"
                 expireSessionsOnShutdown="false" notifyListenersOnReplication="true"/>
        <Channel className="org.apache.catalina.tribes.group.GroupChannel">
          <Membership className="org.apache.catalina.tribes.membership.StaticMembershipService">
            <Member className="org.apache.catalina.tribes.membership.StaticMember"
                    host="127.0.0.1" port="{t1}" uniqueId="{{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1}}"/>
            <Member className="org.apache.catalina.tribes.membership.StaticMember"
                    host="127.0.0.1" port="{t2}" uniqueId="{{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2}}"/>
          </Membership>
          <Receiver className="org.apache.catalina.tribes.transport.nio.NioReceiver"
                    address="127.0.0.1" port="{own_tribes}" autoBind="0" maxThreads="6"/>
          <Sender className="org.apache.catalina.tribes.transport.ReplicationTransmitter">
            <Transport className="org.apache.catalina.tribes.transport.nio.PooledParallelSender"/>
          </Sender>
          <Interceptor className="org.apache.catalina.tribes.group.interceptors.TcpFailureDetector"/>
        </Channel>
        <Valve className="org.apache.catalina.ha.tcp.ReplicationValve" filter=""/>
        {binder_valve}
        <ClusterListener className="org.apache.catalina.ha.session.ClusterSessionListener"/>
      </Cluster>"#,
            t1 = tribes.0,
            t2 = tribes.1,
        );
        let cluster = if replication == Replication::None {
            ""
        } else {
            cluster.as_str()
        };
        let server_xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector port="{http_port}" address="127.0.0.1" protocol="HTTP/1.1" connectionTimeout="20000"/>
    <Engine name="Catalina" defaultHost="localhost" jvmRoute="{route}">
      {cluster}
      <Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false"/>
    </Engine>
  </Service>
</Server>
"#
        );
        std::fs::write(base.join("conf/server.xml"), server_xml).unwrap();
        let log = std::fs::File::create(base.join("logs/console.log")).unwrap();
        let child = Command::new("java")
            .arg(format!("-Dcatalina.home={TOMCAT_HOME}"))
            .arg(format!("-Dcatalina.base={}", base.display()))
            .arg(format!("-Djava.io.tmpdir={}", base.join("temp").display()))
            .arg(format!("-Dtandem.node={route}"))
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(format!(
                "{TOMCAT_HOME}/bin/bootstrap.jar:{TOMCAT_HOME}/bin/tomcat-juli.jar"
            ))
            .arg("org.apache.catalina.startup.Bootstrap")
            .arg("start")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tomcat");
        TomcatNode {
            route,
            http_port,
            child,
            base,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.base.join("logs/console.log")).unwrap_or_default()
    }

    /// Waits until the node serves the webapp.
    async fn wait_ready(&self) {
        let until = Instant::now() + TOMCAT_DEADLINE;
        let client = client();
        loop {
            let request = http::Request::get(self.url("/app/peek"))
                .body(empty())
                .unwrap();
            if let Ok(Ok(response)) =
                tokio::time::timeout(Duration::from_secs(2), client.request(request)).await
            {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < until,
                "tomcat {} never came up:\n{}",
                self.route,
                self.console()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The JSESSIONID value a response sets, if any.
fn session_cookie(answer: &Answer) -> Option<String> {
    answer.headers.get_all("set-cookie").iter().find_map(|v| {
        let text = v.to_str().ok()?;
        text.strip_prefix("JSESSIONID=")
            .map(|rest| rest.split(';').next().unwrap_or("").to_string())
    })
}

async fn count(tandem: &Tandem, session: &str) -> Answer {
    get_with(
        &client(),
        &tandem.url("/app/count"),
        &[("cookie", &format!("JSESSIONID={session}"))],
    )
    .await
}

/// Two Tomcat nodes sharing sessions as `replication` says (in `dir`), ready, and a tandem in
/// front of them.
async fn tomcats_behind_tandem(dir: &Path, replication: Replication) -> (Vec<TomcatNode>, Tandem) {
    require_tools();
    let app = build_webapp(dir);
    let tribes = (free_port(), free_port());
    let nodes = vec![
        TomcatNode::start(dir, &app, "tc1", tribes, tribes.0, replication),
        TomcatNode::start(dir, &app, "tc2", tribes, tribes.1, replication),
    ];
    for node in &nodes {
        node.wait_ready().await;
    }
    let pools = format!(
        "[[pool]]\nname = \"tomcat\"\nresponse_timeout = \"10s\"\n\
         [[pool.backend]]\naddress = \"127.0.0.1:{}\"\nroute = \"tc1\"\n\
         [[pool.backend]]\naddress = \"127.0.0.1:{}\"\nroute = \"tc2\"\n",
        nodes[0].http_port, nodes[1].http_port
    );
    (nodes, Tandem::start(&config(&pools)))
}

/// The Set-Cookie values of an answer.
fn set_cookies(answer: &Answer) -> Vec<&str> {
    answer
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

async fn a_killed_tomcat_costs_the_user_nothing(replication: Replication) {
    let binder = replication == Replication::DeltaManagerWithBinderValve;
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, tandem) = tomcats_behind_tandem(dir.path(), replication).await;

    // A new session, then two more requests that stick to its node.
    let first = get(&client(), &tandem.url("/app/count")).await;
    let (owner, counter) = first.body.split_once(' ').unwrap();
    assert_eq!(counter, "1", "{}", first.body);
    let session = session_cookie(&first).expect("tomcat sets JSESSIONID");
    assert!(session.ends_with(&format!(".{owner}")), "{session}");
    for expected in 2..=3 {
        assert_eq!(
            count(&tandem, &session).await.body,
            format!("{owner} {expected}")
        );
    }

    // The other node has the session replicated, under the same id.
    let owner_index = nodes.iter().position(|n| n.route == owner).unwrap();
    let other = &nodes[1 - owner_index];
    let other_route = other.route;
    let until = Instant::now() + TOMCAT_DEADLINE;
    loop {
        let peek = get_with(
            &client(),
            &other.url("/app/peek"),
            &[("cookie", &format!("JSESSIONID={session}"))],
        )
        .await;
        if peek.body == format!("{other_route} 3") {
            break;
        }
        assert!(
            Instant::now() < until,
            "the session never reached {other_route}: {}\n{}",
            peek.body,
            other.console()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Kill the owner; the very next request is answered by the other node, counter intact.
    let mut dead = nodes.remove(owner_index);
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let answer = count(&tandem, &session).await;
    assert_eq!(
        answer.body,
        format!("{other_route} 4"),
        "the counter survived the kill"
    );
    let new_session = session_cookie(&answer).expect("the client's cookie is rewritten");
    assert_eq!(
        new_session,
        format!("{}.{other_route}", session.rsplit_once('.').unwrap().0)
    );
    // Exactly one cookie: with the valve Tomcat sets it and tandem follows (cookie crate order
    // puts HttpOnly first in tandem's own); without it, tandem rewrites it.
    let expected = if binder {
        format!("JSESSIONID={new_session}; Path=/app; HttpOnly")
    } else {
        format!("JSESSIONID={new_session}; HttpOnly; Path=/app")
    };
    assert_eq!(set_cookies(&answer), vec![expected]);

    // The client now holds a cookie naming the new node; the session stays there, still counting.
    for expected in 5..=7 {
        let answer = count(&tandem, &new_session).await;
        assert_eq!(answer.body, format!("{other_route} {expected}"));
    }
    // A client that kept the old cookie lands on the same session too.
    assert_eq!(
        count(&tandem, &session).await.body,
        format!("{other_route} 8")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tomcat_failover_without_jvm_route_binder_valve() {
    a_killed_tomcat_costs_the_user_nothing(Replication::DeltaManager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tomcat_failover_with_jvm_route_binder_valve() {
    a_killed_tomcat_costs_the_user_nothing(Replication::DeltaManagerWithBinderValve).await;
}

/// Without replication the other node cannot have the session: it starts a new one, and that
/// one must be the session the user keeps (only its cookie reaches the client, and it counts on
/// from there, not from scratch again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tomcat_failover_without_replication_keeps_the_new_session() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, tandem) = tomcats_behind_tandem(dir.path(), Replication::None).await;
    let first = get(&client(), &tandem.url("/app/count")).await;
    let (owner, counter) = first.body.split_once(' ').unwrap();
    assert_eq!(counter, "1", "{}", first.body);
    let session = session_cookie(&first).expect("tomcat sets JSESSIONID");
    assert_eq!(
        count(&tandem, &session).await.body,
        format!("{owner} 2"),
        "sticks"
    );

    let owner_index = nodes.iter().position(|n| n.route == owner).unwrap();
    let mut dead = nodes.remove(owner_index);
    let other_route = nodes[0].route;
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let answer = count(&tandem, &session).await;
    assert_eq!(
        answer.body,
        format!("{other_route} 1"),
        "the other node has no copy: a new session"
    );
    let new_session = session_cookie(&answer).expect("tomcat sets the new session's cookie");
    assert!(
        new_session.ends_with(&format!(".{other_route}")),
        "{new_session}"
    );
    assert_ne!(
        new_session.rsplit_once('.').unwrap().0,
        session.rsplit_once('.').unwrap().0
    );
    // The client's jar ends with the new session: one JSESSIONID, Tomcat's own.
    assert_eq!(
        set_cookies(&answer),
        vec![format!("JSESSIONID={new_session}; Path=/app; HttpOnly")]
    );
    for expected in 2..=3 {
        let answer = count(&tandem, &new_session).await;
        assert_eq!(answer.body, format!("{other_route} {expected}"));
        assert!(
            set_cookies(&answer).is_empty(),
            "{:?}",
            set_cookies(&answer)
        );
    }
}
