//! The access log as an operator reads it: one line per request, to a file, as JSON.

mod support;

use std::time::Instant;

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
