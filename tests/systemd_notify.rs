//! systemd integration: the sd_notify messages a `Type=notify` unit waits on, sent by the real
//! tandem binary to a notify socket of the test's own (as systemd would listen), and the unit
//! file of contrib/systemd checked by `systemd-analyze`.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

/// The notify socket systemd would listen on, in a temporary directory.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next message (one datagram: `KEY=value` lines), within the deadline.
    fn next(&self) -> Vec<String> {
        let until = Instant::now() + DEADLINE;
        let mut buffer = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buffer) {
                Ok(length) => {
                    return String::from_utf8_lossy(&buffer[..length])
                        .lines()
                        .map(String::from)
                        .collect()
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < until, "no sd_notify message in time");
                }
                Err(error) => panic!("notify socket: {error}"),
            }
        }
    }
}

/// A cluster node whose only peer never answers: `/readyz` says 503 until `drop_after`.
fn lonely_node(backend: &Backend) -> String {
    config(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[cluster]\nname = \"shop\"\nnode_id = \"a\"\nlisten = \"127.0.0.1:{}\"\npeers = [\"{}\"]\nsecret = \"cluster-secret-for-the-tests-0123456789\"\nheartbeat_interval = \"100ms\"\ndrop_after = \"1s\"\n\n{}",
        free_port(),
        refusing_address(),
        pool("web", "round_robin", "", &[backend])
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_reloading_and_stopping_reach_the_service_manager_when_they_hold() {
    let backend = Backend::start("app").await;
    let notify = NotifySocket::bind();
    let config = lonely_node(&backend);
    let mut tandem = Tandem::start_with_env(&config, &[("NOTIFY_SOCKET", notify.path.as_os_str())]);

    // READY=1 comes when /readyz says ready (here: after waiting drop_after for the peer), not
    // when the listeners open.
    let first = notify.next();
    assert!(first.contains(&"READY=1".to_string()), "{first:?}");
    let readyz = get(&client(), &tandem.admin_url("/readyz")).await;
    assert_eq!(
        readyz.status, 200,
        "READY=1 sent while /readyz says {}",
        readyz.body
    );

    // A reload, good or refused: RELOADING=1 with the monotonic clock, then READY=1.
    for (file, outcome) in [
        (config.clone(), "config reloaded"),
        ("[listen".into(), "refused"),
    ] {
        tandem.rewrite_config(&file);
        tandem.signal(Signal::SIGHUP);
        let reloading = notify.next();
        assert!(
            reloading.contains(&"RELOADING=1".to_string()),
            "{reloading:?}"
        );
        let clock = reloading
            .iter()
            .find_map(|line| line.strip_prefix("MONOTONIC_USEC="))
            .and_then(|usec| usec.parse::<u64>().ok());
        assert!(clock.is_some_and(|usec| usec > 0), "{reloading:?}");
        let reloaded = notify.next();
        assert!(reloaded.contains(&"READY=1".to_string()), "{reloaded:?}");
        assert!(
            reloaded
                .iter()
                .any(|line| line.starts_with("STATUS=") && line.contains(outcome)),
            "{reloaded:?}"
        );
    }

    // SIGTERM: STOPPING=1 as the drain begins, /readyz already 503, then a clean exit.
    tandem.signal(Signal::SIGTERM);
    let stopping = notify.next();
    assert!(stopping.contains(&"STOPPING=1".to_string()), "{stopping:?}");
    assert!(tandem.wait_exit().success());
}

/// contrib/systemd/tandem.service, its ExecStart pointed at the built binary and its man page
/// generated, passes `systemd-analyze verify` without a warning, and its hardening keeps the
/// exposure score of `systemd-analyze security` at 2.0 or below.
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze missing: run scripts/install-test-deps.sh");
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/systemd/tandem.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/tandem "), "{unit}");
    let unit = unit.replace("/usr/local/bin/tandem", env!("CARGO_BIN_EXE_tandem"));
    let unit_path = dir.path().join("tandem.service");
    std::fs::write(&unit_path, unit).unwrap();
    // Documentation=man:tandem(1) is checked by running man: give it the generated page.
    let man_dir = dir.path().join("man");
    std::fs::create_dir_all(man_dir.join("man1")).unwrap();
    let generated = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("man")
        .arg("--dir")
        .arg(man_dir.join("man1"))
        .status()
        .unwrap();
    assert!(generated.success());

    let verify = analyze(&["verify"], &unit_path, &man_dir);
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = analyze(
        &["security", "--offline=true", "--threshold=20"],
        &unit_path,
        &man_dir,
    );
    assert!(
        security.status.success(),
        "exposure above 2.0:\n{}",
        String::from_utf8_lossy(&security.stdout)
    );
}

fn analyze(args: &[&str], unit: &Path, man_dir: &Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .env("MANPATH", man_dir)
        .output()
        .expect("run systemd-analyze")
}
