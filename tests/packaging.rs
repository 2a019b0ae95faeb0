//! What a package or an image ships beside the proxy: shell completions and the man page
//! generated from the CLI, the `healthcheck` probe of container images, and the demo backends
//! of scripts/demo.sh.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

use support::*;

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("run tandem")
}

#[test]
fn bash_completions_parse_and_complete_the_flags() {
    let output = tandem(&["completions", "bash"]);
    assert!(output.status.success());
    let script = String::from_utf8(output.stdout).unwrap();
    assert!(
        script.contains("--check") && script.contains("--config") && script.contains("healthcheck")
    );
    // bash parses it, and completing `tandem --ch` offers --check.
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .spawn()
        .expect("bash");
    bash.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(bash.wait().unwrap().success(), "bash -n refused the script");
    let completed = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{script}\nCOMP_WORDS=(tandem --ch); COMP_CWORD=1; COMP_LINE='tandem --ch'; COMP_POINT=11; _tandem tandem --ch tandem; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        ))
        .output()
        .unwrap();
    let offered = String::from_utf8_lossy(&completed.stdout);
    assert!(
        offered.lines().any(|l| l == "--check"),
        "offered: {offered}"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let output = tandem(&["completions", shell]);
        assert!(
            output.status.success() && !output.stdout.is_empty(),
            "{shell}"
        );
    }
}

#[test]
fn the_man_page_renders_with_man() {
    let output = tandem(&["man"]);
    assert!(output.status.success());
    let roff = String::from_utf8(output.stdout).unwrap();
    assert!(roff.contains(".TH tandem 1"), "{roff}");
    let mut man = Command::new("man")
        .args(["-l", "-"])
        .env("MANWIDTH", "100")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("man: run scripts/install-test-deps.sh");
    man.stdin
        .take()
        .unwrap()
        .write_all(roff.as_bytes())
        .unwrap();
    let shown = man.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    for expected in [
        "NAME",
        "tandem - HTTP reverse-proxy",
        "--check",
        "SIGHUP",
        "READY=1",
        "tandem-healthcheck(1)",
    ] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }
    // --dir writes the page of every subcommand it refers to.
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    assert!(tandem(&["man", "--dir", dir_arg]).status.success());
    for page in [
        "tandem.1",
        "tandem-completions.1",
        "tandem-man.1",
        "tandem-healthcheck.1",
    ] {
        assert!(dir.path().join(page).is_file(), "{page}");
    }
    // The subcommands stand alone: no config file with them.
    let mixed = tandem(&["-c", "x.toml", "man"]);
    assert_eq!(mixed.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_on_200_and_1_with_a_reason_otherwise() {
    let backend = Backend::start("app").await;
    let tandem_process = Tandem::start(&config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n{}",
        pool("web", "round_robin", "", &[&backend])
    )));
    let healthz = tandem_process.admin_url("/healthz");
    let probe = |url: String| async move {
        tokio::task::spawn_blocking(move || tandem(&["healthcheck", "--timeout", "5s", &url]))
            .await
            .unwrap()
    };
    let healthy = probe(healthz).await;
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );

    let missing = probe(tandem_process.admin_url("/no-such-page")).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));

    let refused = probe(format!("http://{}/healthz", refusing_address())).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot connect"));

    let (silent, _task) = silent_backend().await;
    let started = std::time::Instant::now();
    let hung = tokio::task::spawn_blocking(move || {
        tandem(&[
            "healthcheck",
            "--timeout",
            "300ms",
            &format!("http://{silent}/healthz"),
        ])
    })
    .await
    .unwrap();
    assert_eq!(hung.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&hung.stderr).contains("no answer"));
    assert_took(
        started.elapsed(),
        std::time::Duration::from_millis(300)..DEADLINE,
        "a silent server",
    );

    let https = tandem(&["healthcheck", "https://127.0.0.1:1/healthz"]);
    assert!(String::from_utf8_lossy(&https.stderr).contains("only http://"));
}

/// The demo backends of scripts/demo.sh, each answering with its name, balanced by tandem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_backends_answer_through_tandem_in_turn() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_tandem-demo-backends"))
        .args(["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the demo backends");
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let addresses: Vec<SocketAddr> = (0..3)
        .map(|_| {
            let line = lines.next().expect("a line per backend").unwrap();
            line.split(" at ")
                .nth(1)
                .and_then(|rest| rest.strip_suffix(" is up"))
                .and_then(|address| address.parse().ok())
                .unwrap_or_else(|| panic!("no address in `{line}`"))
        })
        .collect();
    let backends: String = addresses
        .iter()
        .map(|address| format!("[[pool.backend]]\naddress = \"{address}\"\n"))
        .collect();
    let tandem_process = Tandem::start(&config(&format!(
        "[[pool]]\nname = \"web\"\nbalance = \"round_robin\"\n{backends}"
    )));
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(get(&client(), &tandem_process.url("/")).await.body);
    }
    let _ = demo.kill();
    let _ = demo.wait();
    for name in ["b1", "b2", "b3"] {
        assert!(
            answers
                .iter()
                .any(|a| a.starts_with(&format!("hello from backend {name} at "))),
            "{answers:?}"
        );
    }
}
