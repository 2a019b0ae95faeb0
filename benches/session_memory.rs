//! Memory for many 1 KiB sessions: creates them through the store as backends would (a merge
//! patch each) and reports the process's resident memory before and after. The aim is under
//! 2 GiB for 1,000,000 sessions.
//!
//! `cargo bench --bench session_memory` (1,000,000 sessions); under `cargo test` it runs a
//! quick 10,000 to check it still works.

use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use tandem::config::Config;
use tandem::session::clock::SystemClock;
use tandem::session::SessionStore;

/// tandem's allocator, so that the figure is tandem's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident memory of this process, in bytes (from /proc/self/statm).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    let count: usize = if benchmarking { 1_000_000 } else { 10_000 };
    let text = "[listen]\naddresses = [\"127.0.0.1:1\"]\n[session]\nmode = \"proxy\"\nmax_sessions = 2000000\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n";
    let config = Config::parse(Path::new("bench.toml"), text).unwrap();
    let store = SessionStore::new(&config.session, Arc::new(SystemClock), Vec::new(), None);
    let before = rss();
    for i in 0..count {
        // 1 KiB of attributes, different per session.
        let patch = format!(r#"{{"user":"user{i:08}","cart":"{}"}}"#, "c".repeat(990));
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-tandem-session-patch",
            HeaderValue::from_str(&patch).unwrap(),
        );
        store
            .settle(None, &mut headers, "r1", false)
            .expect("stored");
    }
    let after = rss();
    let grown = after.saturating_sub(before);
    println!(
        "{count} sessions of 1 KiB: resident memory grew by {:.0} MiB ({} bytes per session); {:.0} MiB in all",
        grown as f64 / (1 << 20) as f64,
        grown / count as u64,
        after as f64 / (1 << 20) as f64
    );
    assert_eq!(store.len(), count);
}
