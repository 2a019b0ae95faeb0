//! What a peer sends about sessions: any bytes as a JSON list of messages, each merged into a
//! store (of a node that has peers). Never a panic; what is stored stays within the limits and
//! is printable-ASCII JSON; the store's full state can always be produced again.
#![no_main]
use std::path::Path;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tandem::config::Config;
use tandem::session::clock::ManualClock;
use tandem::session::replica::Replicated;
use tandem::session::SessionStore;

fn store() -> &'static SessionStore {
    static STORE: OnceLock<SessionStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let text = "[listen]\naddresses = [\"127.0.0.1:1\"]\n[session]\nmode = \"proxy\"\nmax_sessions = 1000\nmax_session_bytes = 2048\nmax_attribute_bytes = 512\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n";
        let config = Config::parse(Path::new("fuzz.toml"), text).expect("a valid config");
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        SessionStore::new(&config.session, clock, Vec::new(), Some("fuzz"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = serde_json::from_slice::<Vec<Replicated>>(data) else {
        return;
    };
    let store = store();
    let mut ids = Vec::new();
    for message in messages {
        if let Replicated::Upsert { id, .. } = &message {
            ids.push(id.clone());
        }
        store.merge_remote(message);
    }
    assert!(store.len() <= 1000);
    for id in ids {
        if let Some(view) = store.get(&id) {
            assert!(view.bytes <= 2048, "a peer's session over the limit: {}", view.bytes);
        }
    }
    let _ = store.digest();
    let _ = store.ended_messages();
});
