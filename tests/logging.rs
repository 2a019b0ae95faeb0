//! The access log as an operator reads it: one line per request, to a file, in each format
//! (text, JSON, nginx's combined, HAProxy's httplog, a template); the request id it shares with
//! the backend; no session id in any of it; and rotated: moved away, then reopened at its path
//! on SIGUSR1.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use support::*;

#[tokio::test]
async fn json_access_log_to_a_file_has_one_line_per_request() {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let log = format!(
        "[log]\nformat = \"json\"\naccess_log = \"{}\"\n\n",
        log_path.display()
    );
    let listen = "[listen]\naddresses = [\"127.0.0.1:0\"]\n\n";
    let tandem = Tandem::start(&format!(
        "{listen}{log}{}",
        pool("web", "round_robin", "", &[&backend])
    ));
    let client = client();
    assert_eq!(get(&client, &tandem.url("/first?q=1")).await.status, 200);
    assert_eq!(
        get_with(&client, &tandem.url("/"), &[("host", "nowhere.example")])
            .await
            .status,
        200
    );
    let until = Instant::now() + DEADLINE;
    let lines = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each access line is JSON"))
            .collect();
        if lines.len() >= 2 {
            break lines;
        }
        assert!(
            Instant::now() < until,
            "access log has {} lines: {text}",
            lines.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 2);
    let first = &lines[0]["fields"];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/first");
    assert_eq!(first["status"], 200);
    assert_eq!(first["pool"], "web");
    assert_eq!(first["backend"], backend.address.to_string());
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["bytes"], 1);
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(first["duration_us"].as_u64().is_some());
}

/// A tandem writing its text access log to `log_path`, with an admin listener.
async fn logging_to(log_path: &Path, backend: &Backend) -> Tandem {
    let log = format!("[log]\naccess_log = \"{}\"\n\n", log_path.display());
    let listen = "[listen]\naddresses = [\"127.0.0.1:0\"]\n\n";
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\n\n";
    Tandem::start(&format!(
        "{listen}{log}{admin}{}",
        pool("web", "round_robin", "", &[backend])
    ))
}

/// Waits until the file at `path` exists and holds a line containing `text`.
async fn wait_for_line(path: &Path, text: &str) {
    let until = Instant::now() + DEADLINE;
    loop {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        if content.lines().any(|line| line.contains(text)) {
            return;
        }
        assert!(
            Instant::now() < until,
            "{} never had a line with {text}: {content}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of `tandem_log_reopens_total{result="<result>"}` on `tandem`.
async fn reopens(tandem: &Tandem, result: &str) -> f64 {
    let series = format!("tandem_log_reopens_total{{result=\"{result}\"}}");
    let metrics = get(&client(), &tandem.admin_url("/metrics")).await.body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_access_log_is_moved_sigusr1_makes_tandem_write_a_new_one() {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let tandem = logging_to(&log_path, &backend).await;
    let client = client();
    assert_eq!(get(&client, &tandem.url("/before")).await.status, 200);
    wait_for_line(&log_path, "path=/before").await;

    // What logrotate does: move the file, then signal.
    std::fs::rename(&log_path, &rotated).unwrap();
    tandem.signal(Signal::SIGUSR1);
    let until = Instant::now() + DEADLINE;
    while !log_path.exists() {
        assert!(Instant::now() < until, "no new access log after SIGUSR1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&client, &tandem.url("/after")).await.status, 200);
    wait_for_line(&log_path, "path=/after").await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        old.contains("path=/before") && !old.contains("path=/after"),
        "{old}"
    );
    assert!(!new.contains("path=/before"), "{new}");
    assert_eq!(reopens(&tandem, "ok").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_when_the_log_cannot_be_opened_anew_keeps_the_old_file() {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let tandem = logging_to(&logs.join("access.log"), &backend).await;
    let client = client();
    assert_eq!(get(&client, &tandem.url("/before")).await.status, 200);
    wait_for_line(&logs.join("access.log"), "path=/before").await;

    // The log's directory cannot be written to: here it is taken away, since these tests
    // may run as root, which permission bits do not stop. The open file moves with it.
    let moved = dir.path().join("logs.old");
    std::fs::rename(&logs, &moved).unwrap();
    tandem.signal(Signal::SIGUSR1);
    let until = Instant::now() + DEADLINE;
    while reopens(&tandem, "failed").await < 1.0 {
        assert!(Instant::now() < until, "the reopen never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still serving, and still logging, to the file it had.
    assert_eq!(get(&client, &tandem.url("/after")).await.status, 200);
    wait_for_line(&moved.join("access.log"), "path=/after").await;
    assert!(!logs.exists());
    assert_eq!(reopens(&tandem, "ok").await, 0.0);

    // Once the directory is back, the next SIGUSR1 opens the file there.
    std::fs::create_dir(&logs).unwrap();
    tandem.signal(Signal::SIGUSR1);
    let until = Instant::now() + DEADLINE;
    while reopens(&tandem, "ok").await < 1.0 {
        assert!(Instant::now() < until, "the reopen never succeeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&client, &tandem.url("/again")).await.status, 200);
    wait_for_line(&logs.join("access.log"), "path=/again").await;
}

/// The request every format test sends: a query, Host, User-Agent (with quotes, which the text
/// formats escape), Referer, and an X-Request-Id of the client's own.
const TARGET: &str = "/cart/view?q=1&b=two";
const AGENT: &str = "Mozilla/5.0 (X11) \"q\"";
const AGENT_ESCAPED: &str = "Mozilla/5.0 (X11) \\x22q\\x22";
const REFERER: &str = "http://ref.example/page?a=1";
const CLIENT_ID: &str = "client-chosen-id";

/// A tandem writing its access log to a file with `log_keys` in `[log]`, `tables` after it,
/// and one pool (`pool_extra` in it) of one backend.
struct Logging {
    tandem: Tandem,
    backend: Backend,
    log_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Logging {
    async fn start(log_keys: &str, tables: &str, pool_extra: &str) -> Logging {
        let backend = Backend::start("b").await;
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("access.log");
        let tandem = Tandem::start(&format!(
            "[listen]\naddresses = [\"127.0.0.1:0\"]\n\n[log]\naccess_log = \"{}\"\n{log_keys}\n\n{tables}\n{}",
            log_path.display(),
            pool("web", "round_robin", pool_extra, &[&backend])
        ));
        Logging {
            tandem,
            backend,
            log_path,
            _dir: dir,
        }
    }

    /// Sends `target` with the test's headers; returns the new access-log line and the
    /// X-Request-Id the backend got.
    async fn line_for(&self, target: &str) -> (String, String) {
        let before = self.lines().len();
        let headers = [
            ("host", "shop.example"),
            ("user-agent", AGENT),
            ("referer", REFERER),
            ("x-request-id", CLIENT_ID),
        ];
        let answer = get_with(&client(), &self.tandem.url(target), &headers).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let until = Instant::now() + DEADLINE;
        let line = loop {
            if let Some(line) = self.lines().get(before) {
                break line.clone();
            }
            assert!(Instant::now() < until, "no access line for {target}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let sent_id = self.backend.last_headers.lock().unwrap().as_ref().unwrap()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        (line, sent_id)
    }

    fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        // A line is complete once its newline is written.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(str::to_string).collect()
    }
}

/// A request id tandem made: 32 lowercase hex digits.
fn assert_generated(id: &str) {
    assert_eq!(id.len(), 32, "{id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{id}"
    );
}

/// A time field: milliseconds, a number.
fn assert_millis(text: &str) -> f64 {
    text.parse::<f64>()
        .unwrap_or_else(|_| panic!("`{text}` is no number of milliseconds"))
}

/// `02/Dec/2026:15:51:56`, the date of nginx's and HAProxy's lines.
fn assert_log_date(date: &str) {
    let bytes = date.as_bytes();
    assert_eq!(date.len(), 20, "{date}");
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    assert!(months.contains(&&date[3..6]), "{date}");
    for at in [0, 1, 7, 8, 9, 10, 12, 13, 15, 16, 18, 19] {
        assert!(bytes[at].is_ascii_digit(), "{date}");
    }
    assert_eq!(
        (bytes[2], bytes[6], bytes[11]),
        (b'/', b'/', b':'),
        "{date}"
    );
}

#[tokio::test]
async fn combined_lines_are_nginxs_with_tandems_fields_after() {
    let logging = Logging::start("access_log_format = \"combined\"", "", "").await;
    let (line, id) = logging.line_for(TARGET).await;
    assert_generated(&id);
    let rest = line.strip_prefix("127.0.0.1 - - [").expect(&line);
    let (date, rest) = rest.split_once(" +0000] ").expect(&line);
    assert_log_date(date);
    let expected = format!(
        "\"GET {TARGET} HTTP/1.1\" 200 1 \"{REFERER}\" \"{AGENT_ESCAPED}\" host=\"shop.example\" \
         request_id=\"{id}\" pool=web backend={} attempts=1 upstream_ms=",
        logging.backend.address
    );
    let times = rest.strip_prefix(&expected).expect(&line);
    let (upstream, total) = times.split_once(" total_ms=").expect(&line);
    assert!(assert_millis(upstream) <= assert_millis(total), "{line}");
}

#[tokio::test]
async fn haproxy_lines_have_httplogs_fields_in_order() {
    let logging = Logging::start("access_log_format = \"haproxy\"", "", "").await;
    let (line, id) = logging.line_for(TARGET).await;
    assert_generated(&id);
    let (client, rest) = line.split_once(" [").expect(&line);
    assert!(client.starts_with("127.0.0.1:"), "{line}");
    assert!(
        client["127.0.0.1:".len()..].parse::<u16>().is_ok(),
        "{line}"
    );
    let (date, rest) = rest.split_once("] ").expect(&line);
    let (date, millis) = date.split_once('.').expect(&line);
    assert_log_date(date);
    assert!(millis.len() == 3 && millis.parse::<u16>().is_ok(), "{line}");
    let fields: Vec<&str> = rest.splitn(9, ' ').collect();
    assert_eq!(fields[0], "tandem", "{line}");
    assert_eq!(fields[1], format!("web/{}", logging.backend.address));
    let timers: Vec<i64> = fields[2]
        .split('/')
        .map(|t| t.parse().expect(&line))
        .collect();
    assert_eq!(timers.len(), 5, "{line}");
    assert_eq!(&timers[..3], [0, 0, 0], "{line}");
    assert!(timers[3] >= 0 && timers[3] <= timers[4], "{line}");
    assert_eq!(
        &fields[3..8],
        ["200", "1", "-", "-", "----"],
        "status, bytes, cookies, termination: {line}"
    );
    let expected = format!(
        "-/-/-/-/0 0/0 {{shop.example|{AGENT_ESCAPED}|{REFERER}|{id}}} \"GET {TARGET} HTTP/1.1\""
    );
    assert_eq!(fields[8], expected, "{line}");
}

#[tokio::test]
async fn json_lines_have_every_field() {
    let logging = Logging::start("access_log_format = \"json\"", "", "").await;
    let (line, id) = logging.line_for(TARGET).await;
    assert_generated(&id);
    let entry: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert!(entry["timestamp"].as_str().is_some(), "{line}");
    let fields = &entry["fields"];
    let expected = serde_json::json!({
        "client": fields["client"],
        "method": "GET",
        "path": "/cart/view",
        "query": "q=1&b=two",
        "version": "HTTP/1.1",
        "status": 200,
        "bytes": 1,
        "duration_us": fields["duration_us"],
        "upstream_us": fields["upstream_us"],
        "host": "shop.example",
        "user_agent": AGENT,
        "referer": REFERER,
        "request_id": id,
        "pool": "web",
        "backend": logging.backend.address.to_string(),
        "attempts": 1,
    });
    assert_eq!(*fields, expected);
    assert!(fields["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(fields["upstream_us"].as_u64().unwrap() <= fields["duration_us"].as_u64().unwrap());
}

#[tokio::test]
async fn a_template_line_has_the_fields_it_names() {
    let template = "{client_ip}|{method}|{uri}|{path}|{query}|{version}|{status}|{bytes}|{host}|\
                    {user_agent}|{referer}|{request_id}|{pool}|{backend}|{attempts}|{{x}}|\
                    {upstream_ms}|{total_ms}";
    let keys = format!("access_log_format = \"template\"\naccess_log_template = \"{template}\"");
    let logging = Logging::start(&keys, "", "").await;
    let (line, id) = logging.line_for(TARGET).await;
    assert_generated(&id);
    let fields: Vec<&str> = line.split('|').collect();
    let backend = logging.backend.address.to_string();
    assert_eq!(
        fields[..16],
        [
            "127.0.0.1",
            "GET",
            TARGET,
            "/cart/view",
            "q=1&b=two",
            "HTTP/1.1",
            "200",
            "1",
            "shop.example",
            AGENT_ESCAPED,
            REFERER,
            &id,
            "web",
            &backend,
            "1",
            "{x}",
        ],
        "{line}"
    );
    assert!(
        assert_millis(fields[16]) <= assert_millis(fields[17]),
        "{line}"
    );
}

#[tokio::test]
async fn text_lines_keep_their_keys_and_gain_the_new_fields() {
    let logging = Logging::start("", "", "").await;
    let (line, id) = logging.line_for(TARGET).await;
    assert_generated(&id);
    let expected =
        " method=GET path=/cart/view query=q=1&b=two version=HTTP/1.1 status=200 bytes=1 \
                    duration_us=";
    assert!(line.contains(expected), "{line}");
    let expected = format!(
        " host=\"shop.example\" user_agent=\"{AGENT_ESCAPED}\" referer=\"{REFERER}\" \
         request_id=\"{id}\" pool=\"web\" backend=\"{}\" attempts=1",
        logging.backend.address
    );
    assert!(line.ends_with(&expected), "{line}");
    let upstream = line.split(" upstream_us=").nth(1).expect(&line);
    assert!(
        upstream.split(' ').next().unwrap().parse::<u64>().is_ok(),
        "{line}"
    );
}

#[tokio::test]
async fn a_trusted_proxys_request_id_is_kept_and_anyone_elses_replaced() {
    let untrusted = Logging::start("access_log_format = \"json\"", "", "").await;
    let (line, sent) = untrusted.line_for("/").await;
    assert_ne!(sent, CLIENT_ID);
    assert_generated(&sent);
    assert!(
        line.contains(&format!("\"request_id\":\"{sent}\"")),
        "{line}"
    );
    // Another request, another id.
    let (_, again) = untrusted.line_for("/").await;
    assert_ne!(again, sent);

    let trusted = Logging::start(
        "access_log_format = \"json\"",
        "[forwarded]\ntrusted = [\"127.0.0.0/8\"]\n",
        "",
    )
    .await;
    let (line, sent) = trusted.line_for("/").await;
    assert_eq!(sent, CLIENT_ID);
    assert!(
        line.contains(&format!("\"request_id\":\"{CLIENT_ID}\"")),
        "{line}"
    );
}

#[tokio::test]
async fn no_format_logs_a_session_id_from_the_path_or_the_query() {
    let target = "/cart;jsessionid=SECRETPATH.b/view?q=1&shopsid=SECRETSTICKY&JSESSIONID=SECRETJ";
    let formats = [
        "",
        "format = \"json\"",
        "access_log_format = \"combined\"",
        "access_log_format = \"haproxy\"",
        "access_log_format = \"template\"\naccess_log_template = \"{uri} {path} {query}\"",
    ];
    for keys in formats {
        let logging =
            Logging::start(keys, "", "[pool.sticky]\nurl_parameter = \"shopsid\"\n").await;
        let (line, _) = logging.line_for(target).await;
        assert!(!line.contains("SECRET"), "{keys}: {line}");
        assert!(
            line.contains("q=1&shopsid=-&JSESSIONID=-"),
            "{keys}: {line}"
        );
    }
}

#[test]
fn a_template_naming_an_unknown_field_is_a_config_error_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let config =
        "[listen]\naddresses = [\"127.0.0.1:8080\"]\n\n[log]\naccess_log_format = \"template\"\n\
                  access_log_template = \"{client} {user_agnet}\"\n\n[[pool]]\nname = \"web\"\n\n\
                  [[pool.backend]]\naddress = \"127.0.0.1:9\"\n";
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["--check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.lines().any(|line| line.contains("bad.toml:6:")
            && line.contains("log.access_log_template")
            && line.contains("unknown field `user_agnet`")
            && line.contains("did you mean `user_agent`?")),
        "{stderr}"
    );
}
