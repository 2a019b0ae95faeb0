//! `scripts/install-test-deps.sh` as a fresh machine runs it: it installs only the packages whose
//! tools are missing, and never Debian's recommended packages (which pulled in some 150 packages,
//! avahi-daemon and cups helpers among them, for prometheus and chromium).

use std::path::Path;
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-test-deps.sh");

/// The script's `--dry-run` plan with `PATH` set to `path`.
fn plan(path: &str) -> String {
    let output = Command::new("/bin/bash")
        .args([SCRIPT, "--dry-run"])
        .env("PATH", path)
        .output()
        .expect("run scripts/install-test-deps.sh");
    assert!(
        output.status.success(),
        "the dry run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the plan is text")
}

#[test]
fn a_machine_without_the_tools_installs_them_without_recommended_packages() {
    // A PATH that has only the shell's helpers and two of the tools, as a fresh machine would.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["id", "curl", "python3"] {
        let found = ["/usr/bin", "/bin", "/usr/local/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(tool))
            .find(|path| path.exists());
        let Some(found) = found else {
            panic!("{tool} is not on this machine: run scripts/install-test-deps.sh")
        };
        std::os::unix::fs::symlink(found, bin.path().join(tool)).unwrap();
    }
    let plan = plan(bin.path().to_str().unwrap());
    let words: Vec<&str> = plan.split_whitespace().collect();
    assert!(
        plan.starts_with("apt-get install -y -q --no-install-recommends "),
        "plan: {plan}"
    );
    for missing in [
        "gcc",
        "g++",
        "prometheus",
        "chromium",
        "wrk",
        "nghttp2-client",
    ] {
        assert!(
            words.contains(&missing),
            "{missing} is not in the plan: {plan}"
        );
    }
    for present in ["curl", "python3"] {
        assert!(
            !words.contains(&present),
            "{present} is there, yet planned: {plan}"
        );
    }
}

#[test]
fn a_machine_with_every_tool_installs_nothing() {
    // The suite runs after the script installed what was missing, so nothing is left to install.
    let path = std::env::var("PATH").unwrap();
    assert_eq!(
        plan(&path),
        "",
        "everything the tests need is already installed"
    );
}
