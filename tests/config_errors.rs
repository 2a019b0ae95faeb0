//! `tandem --check`: every config error is printed with its file, line and key.

use std::process::Command;

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Fails unless `stderr` has, for each (location, key), a line naming both.
fn assert_errors_at(stderr: &str, expected: &[(&str, &str)]) {
    for (location, key) in expected {
        assert!(
            stderr
                .lines()
                .any(|line| line.contains(location) && line.contains(key)),
            "no error at {location} for {key} in:\n{stderr}"
        );
    }
}

#[test]
fn the_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["--check", "-c", path])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("valid (1 pool(s), 3 backend(s))"));
}

#[test]
fn every_semantic_error_is_listed_with_its_line_and_key() {
    let config = r#"[listen]
addresses = ["127.0.0.1:8080", "not-an-address"]
header_read_timeout = "soon"
max_header_size = "huge"

[[pool]]
name = "web"
balance = "fastest"
connect_timeout = "2 parsecs"

[[pool.backend]]
address = "127.0.0.1:9001"
route = "a"
weight = 0

[[pool.backend]]
address = "127.0.0.1:9001"
route = "b"

[[pool.backend]]
address = "127.0.0.1:9003"
route = "a"
state = "sleepy"

[[pool]]
name = "web"
response_timeout = "1000000 years"
[[pool.backend]]
address = "no-port"
[[pool.backend]]
address = "bad host:80"
"#;
    let (code, _, stderr) = check(config);
    assert_eq!(code, 78, "{stderr}");
    let expected = [
        ("bad.toml:2:", "listen.addresses[1]"),
        ("bad.toml:3:", "listen.header_read_timeout"),
        ("bad.toml:4:", "listen.max_header_size"),
        ("bad.toml:8:", "pool[0].balance"),
        ("bad.toml:9:", "pool[0].connect_timeout"),
        ("bad.toml:14:", "pool[0].backend[0].weight"),
        ("bad.toml:17:", "pool[0].backend[1].address"),
        ("bad.toml:22:", "pool[0].backend[2].route"),
        ("bad.toml:23:", "pool[0].backend[2].state"),
        ("bad.toml:26:", "pool[1].name"),
        ("bad.toml:26:", "already served by an earlier pool"),
        ("bad.toml:27:", "pool[1].response_timeout"),
        ("bad.toml:29:", "pool[1].backend[0].address"),
        ("bad.toml:31:", "pool[1].backend[1].address"),
    ];
    assert_errors_at(&stderr, &expected);
    assert!(stderr.contains("14 error(s)"), "{stderr}");
    let lines: Vec<usize> = stderr
        .lines()
        .filter_map(|l| l.split(':').nth(1)?.parse().ok())
        .collect();
    assert!(lines.is_sorted(), "errors not in file order: {lines:?}");
}

#[test]
fn syntax_and_unknown_keys_name_their_line() {
    let (code, _, stderr) = check("[listen]\naddresses = [\"127.0.0.1:8080\"]\n\n[[pool]]\nname = \"web\"\nbalanse = \"weighted\"\n");
    assert_eq!(code, 78);
    assert!(
        stderr.contains("bad.toml:6:") && stderr.contains("balanse"),
        "{stderr}"
    );

    let (code, _, stderr) = check("[listen]\naddresses = [\"127.0.0.1:8080\"\n");
    assert_eq!(code, 78);
    assert!(stderr.contains("bad.toml:2:"), "{stderr}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["--check", "-c", "/nonexistent/tandem.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("/nonexistent/tandem.toml: (file): cannot read"));
}

#[test]
fn sticky_keys_are_checked() {
    let config = r#"[listen]
addresses = ["127.0.0.1:8080"]

[[pool]]
name = "web"
[pool.sticky]
mode = "learn-later"
cookies = ["bad name"]
url_parameter = "a=b"
separator = "-"
[[pool.backend]]
address = "127.0.0.1:9001"
"#;
    let (code, _, stderr) = check(config);
    assert_eq!(code, 78, "{stderr}");
    assert_errors_at(
        &stderr,
        &[
            ("bad.toml:7:", "pool[0].sticky.mode"),
            ("bad.toml:8:", "pool[0].sticky.cookies[0]"),
            ("bad.toml:9:", "pool[0].sticky.url_parameter"),
            ("bad.toml:10:", "pool[0].sticky.separator"),
        ],
    );
}

#[test]
fn health_keys_are_checked() {
    let config = r#"[listen]
addresses = ["127.0.0.1:8080"]

[[pool]]
name = "web"
[pool.health]
path = "health"
method = "POST"
interval = "0s"
rise = 0
expect_status = [200, 999]
start = "maybe"
[[pool.backend]]
address = "127.0.0.1:9001"
"#;
    let (code, _, stderr) = check(config);
    assert_eq!(code, 78, "{stderr}");
    assert_errors_at(
        &stderr,
        &[
            ("bad.toml:7:", "pool[0].health.path"),
            ("bad.toml:8:", "pool[0].health.method"),
            ("bad.toml:9:", "pool[0].health.interval"),
            ("bad.toml:10:", "pool[0].health.rise"),
            ("bad.toml:11:", "pool[0].health.expect_status[1]"),
            ("bad.toml:12:", "pool[0].health.start"),
        ],
    );
}

#[test]
fn retry_and_passive_keys_are_checked() {
    let config = r#"[listen]
addresses = ["127.0.0.1:8080"]

[[pool]]
name = "web"
[pool.retry]
attempts = 0
budget = 1.5
methods = ["GET", "NOT A METHOD"]
[pool.passive]
max_fails = -1
fail_window = "whenever"
recover_after = "0ms"
fail_on_status = [42]
[[pool.backend]]
address = "127.0.0.1:9001"
"#;
    let (code, _, stderr) = check(config);
    assert_eq!(code, 78, "{stderr}");
    assert_errors_at(
        &stderr,
        &[
            ("bad.toml:7:", "pool[0].retry.attempts"),
            ("bad.toml:8:", "pool[0].retry.budget"),
            ("bad.toml:9:", "pool[0].retry.methods[1]"),
            ("bad.toml:11:", "pool[0].passive.max_fails"),
            ("bad.toml:12:", "pool[0].passive.fail_window"),
            ("bad.toml:13:", "pool[0].passive.recover_after"),
            ("bad.toml:14:", "pool[0].passive.fail_on_status[0]"),
        ],
    );
}

#[test]
fn redirect_must_name_another_backend_of_the_pool() {
    let config = r#"[listen]
addresses = ["127.0.0.1:8080"]

[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:9001"
route = "a"
redirect = "a"
[[pool.backend]]
address = "127.0.0.1:9002"
route = "b"
redirect = "nowhere"
domain = "not a name"
"#;
    let (code, _, stderr) = check(config);
    assert_eq!(code, 78, "{stderr}");
    assert_errors_at(
        &stderr,
        &[
            ("bad.toml:9:", "pool[0].backend[0].redirect"),
            ("bad.toml:13:", "pool[0].backend[1].redirect"),
            ("bad.toml:14:", "pool[0].backend[1].domain"),
        ],
    );
}

#[test]
fn insert_mode_needs_a_long_secret() {
    let config = r#"[listen]
addresses = ["127.0.0.1:8080"]

[[pool]]
name = "web"
[pool.sticky]
mode = "insert"
secret = "short"
[[pool.backend]]
address = "127.0.0.1:9001"
"#;
    let (code, _, stderr) = check(config);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("bad.toml:8: pool[0].sticky.secret"),
        "{stderr}"
    );
}

#[test]
fn session_and_admin_keys_are_checked() {
    let config = r#"[listen]
addresses = ["127.0.0.1:8080"]
[session]
mode = "stateless"
separator = "-"
header_prefix = "x tandem"
idle_timeout = "2h"
absolute_timeout = "1h"
max_attribute_bytes = "64KiB"
max_sessions = 0
on_invalid_update = "ignore"
[session.cookie]
name = "my session"
path = "shop"
secure = "maybe"
same_site = "sometimes"
[admin]
address = "127.0.0.1:8080"
token = "short"
[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:9001"
"#;
    let (code, _, stderr) = check(config);
    assert_eq!(code, 78, "{stderr}");
    assert_errors_at(
        &stderr,
        &[
            ("bad.toml:4:", "session.mode"),
            ("bad.toml:5:", "session.separator"),
            ("bad.toml:6:", "session.header_prefix"),
            ("bad.toml:7:", "session.idle_timeout"),
            ("bad.toml:9:", "session.max_attribute_bytes"),
            ("bad.toml:10:", "session.max_sessions"),
            ("bad.toml:11:", "session.on_invalid_update"),
            ("bad.toml:13:", "session.cookie.name"),
            ("bad.toml:14:", "session.cookie.path"),
            ("bad.toml:15:", "session.cookie.secure"),
            ("bad.toml:16:", "session.cookie.same_site"),
            ("bad.toml:19:", "admin.token"),
            ("bad.toml", "admin.address"),
        ],
    );
}

#[test]
fn cluster_keys_are_checked() {
    let config = r#"[listen]
addresses = ["127.0.0.1:8080"]
[cluster]
name = "my cluster"
node_id = "a"
listen = "nowhere"
peers = ["10.0.0.2:7946", "no-port"]
secret = "short"
heartbeat_interval = "1s"
drop_after = "1s"
topology = "ring"
backups = 0
lock_sessions = true
[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:9001"
"#;
    let (code, _, stderr) = check(config);
    assert_eq!(code, 78, "{stderr}");
    assert_errors_at(
        &stderr,
        &[
            ("bad.toml:4:", "cluster.name"),
            ("bad.toml:6:", "cluster.listen"),
            ("bad.toml:7:", "cluster.peers[1]"),
            ("bad.toml:8:", "cluster.secret"),
            ("bad.toml:10:", "cluster.drop_after"),
            ("bad.toml:11:", "cluster.topology"),
            ("bad.toml:12:", "cluster.backups"),
            ("bad.toml:13:", "cluster.lock_sessions"),
        ],
    );
}

/// A file, and what `--check` must print for it: each line as (`line: key`, parts of the
/// message), and how many errors in all. A case is a row: adding one is adding a row.
struct Case {
    name: &'static str,
    config: &'static str,
    lines: &'static [(&'static str, &'static [&'static str])],
    count: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "unknown keys in three tables, each with the key it meant",
        config: r#"[listen]
addresses = ["127.0.0.1:8080"]
max_conn = 10
[[pool]]
name = "web"
balanse = "weighted"
[[pool.backend]]
address = "127.0.0.1:9001"
lbfactor = 2
"#,
        lines: &[
            (
                "3: listen.max_conn",
                &["unknown key", "did you mean `max_connections`?"],
            ),
            (
                "6: pool[0].balanse",
                &["unknown key", "did you mean `balance`?"],
            ),
            (
                "9: pool[0].backend[0].lbfactor",
                &["did you mean `weight`?"],
            ),
        ],
        count: 3,
    },
    Case {
        name: "wrong types, an unknown key and a bad value, all at once",
        config: r#"[listen]
addresses = ["127.0.0.1:8080"]
max_connections = "many"
[[pool]]
name = "web"
timeout = "2s"
[pool.health]
path = "/health"
rise = "two"
[[pool.backend]]
address = "127.0.0.1:9001"
weight = 0
"#,
        lines: &[
            (
                "3: listen.max_connections",
                &["invalid type", "expected an integer"],
            ),
            (
                "6: pool[0].timeout",
                &["unknown key `timeout`", "known keys:"],
            ),
            ("9: pool[0].health.rise", &["expected an integer"]),
            ("12: pool[0].backend[0].weight", &["not a weight"]),
        ],
        count: 4,
    },
    Case {
        name: "inline tables, dotted keys and arrays are read the same",
        config: r#"admin = { address = "127.0.0.1:9090", tokn = "admin-token-0123456789" }
[listen]
addresses = ["127.0.0.1:8080"]
[[pool]]
name = "web"
hosts = [1]
sticky.mod = "insert"
backend = [{ address = "127.0.0.1:9001", state = "disabled" }]
"#,
        lines: &[
            ("1: admin.tokn", &["did you mean `token`?"]),
            ("6: pool[0].hosts[0]", &["expected a string"]),
            ("7: pool[0].sticky.mod", &["did you mean `mode`?"]),
            ("8: pool[0].backend[0].state", &["did you mean `draining`?"]),
        ],
        count: 4,
    },
    Case {
        name: "a missing key does not hide the next table's errors nor shift its index",
        config: r#"[listen]
addresses = ["127.0.0.1:8080"]
[[pool]]
[[pool.backend]]
address = "127.0.0.1:9001"
[[pool]]
name = "api"
colour = "blue"
[[pool.backend]]
route = "a"
"#,
        lines: &[
            ("3: pool[0].name", &["is required"]),
            ("8: pool[1].colour", &["unknown key"]),
            ("9: pool[1].backend[0].address", &["is required"]),
        ],
        count: 3,
    },
    Case {
        name: "every missing key of one table",
        config: "[listen]
addresses = [\"127.0.0.1:8080\"]
[cluster]
name = \"shop\"
",
        lines: &[
            ("3: cluster.node_id", &["is required"]),
            ("3: cluster.listen", &["is required"]),
        ],
        count: 2,
    },
    Case {
        name: "a syntax error stops the reading and says where",
        config: "[listen]\naddresses = [\"127.0.0.1:8080\"]\n[[pool]]\nname = \"web\nfoo = 1\n",
        lines: &[("4: name", &["invalid basic string"])],
        count: 1,
    },
    Case {
        name: "mod_jk's and HAProxy's words get tandem's",
        config: r#"[listen]
addresses = ["127.0.0.1:8080"]
[[pool]]
name = "web"
balance = "leastconn"
[[pool.backend]]
address = "127.0.0.1:9001"
state = "disabled"
[[pool.backend]]
address = "127.0.0.1:9002"
activation = "S"
[[pool]]
name = "api"
paths = ["/api"]
balance = "roundrobin"
[pool.health]
path = "/"
inter = "2s"
[[pool.backend]]
address = "127.0.0.1:9003"
state = "S"
[[pool]]
name = "static"
paths = ["/static"]
balance = "source"
reply_timeout = "5s"
[[pool.backend]]
address = "127.0.0.1:9004"
"#,
        lines: &[
            ("5: pool[0].balance", &["did you mean `least_conn`?"]),
            ("8: pool[0].backend[0].state", &["did you mean `draining`?"]),
            (
                "11: pool[0].backend[1].activation",
                &["did you mean `state`?"],
            ),
            ("15: pool[1].balance", &["did you mean `round_robin`?"]),
            ("18: pool[1].health.inter", &["did you mean `interval`?"]),
            ("21: pool[1].backend[0].state", &["did you mean `stopped`?"]),
            ("25: pool[2].balance", &["did you mean `ip_hash`?"]),
            (
                "26: pool[2].reply_timeout",
                &["did you mean `response_timeout`?"],
            ),
        ],
        count: 8,
    },
    Case {
        name: "HAProxy's and mod_jk's words for connection caps and their queue",
        config: r#"[listen]
addresses = ["127.0.0.1:8080"]
[[pool]]
name = "web"
maxqueue = 10
timeout_queue = "2s"
[[pool.backend]]
address = "127.0.0.1:9001"
maxconn = 50
[[pool.backend]]
address = "127.0.0.1:9002"
connection_pool_size = 50
"#,
        lines: &[
            ("5: pool[0].maxqueue", &["did you mean `max_queue`?"]),
            (
                "6: pool[0].timeout_queue",
                &["did you mean `queue_timeout`?"],
            ),
            (
                "9: pool[0].backend[0].maxconn",
                &["did you mean `max_connections`?"],
            ),
            (
                "12: pool[0].backend[1].connection_pool_size",
                &["did you mean `max_connections`?"],
            ),
        ],
        count: 4,
    },
    Case {
        name: "connection caps and queue settings out of range",
        config: r#"[listen]
addresses = ["127.0.0.1:8080"]
[[pool]]
name = "web"
max_queue = -1
queue_timeout = "0s"
[[pool.backend]]
address = "127.0.0.1:9001"
max_connections = 0
"#,
        lines: &[
            ("5: pool[0].max_queue", &["out of range (0 to 100000)"]),
            ("6: pool[0].queue_timeout", &["out of range"]),
            (
                "9: pool[0].backend[0].max_connections",
                &["out of range (1 to 100000)"],
            ),
        ],
        count: 3,
    },
];

#[test]
fn every_error_of_a_file_is_listed_at_once_with_its_line_key_and_a_suggestion() {
    for case in CASES {
        let (code, _, stderr) = check(case.config);
        let name = case.name;
        assert_eq!(code, 78, "{name}:\n{stderr}");
        for (at, parts) in case.lines {
            // `file:line: key: message`, the key whole.
            let prefix = format!("bad.toml:{at}: ");
            let found = stderr.lines().find(|line| line.contains(&prefix));
            let Some(line) = found else {
                panic!("{name}: no `{prefix}` in:\n{stderr}");
            };
            for part in *parts {
                assert!(line.contains(part), "{name}: `{part}` not in `{line}`");
            }
        }
        let count = format!("{} error(s)", case.count);
        assert!(stderr.contains(&count), "{name}: not {count}:\n{stderr}");
    }
}
