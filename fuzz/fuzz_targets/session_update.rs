//! The session contract: a backend's session headers (any names and values) and merge patches
//! (any bytes), applied to a store: refused or applied whole, never a panic, and what is stored
//! is always printable-ASCII JSON within the limits.
#![no_main]
use std::path::Path;
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tandem::config::Config;
use tandem::session::clock::ManualClock;
use tandem::session::SessionStore;

fn store() -> &'static SessionStore {
    static STORE: OnceLock<SessionStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let text = "[listen]\naddresses = [\"127.0.0.1:1\"]\n[session]\nmode = \"proxy\"\nmax_sessions = 1000\nmax_session_bytes = 2048\nmax_attribute_bytes = 512\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n";
        let config = Config::parse(Path::new("fuzz.toml"), text).expect("a valid config");
        SessionStore::new(&config.session, Arc::new(ManualClock::new(1)), Vec::new(), None)
    })
}

fuzz_target!(|data: &[u8]| {
    let store = store();
    // Lines of `name: value`; a name without the prefix is given it, so that most lines reach
    // the session contract.
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let suffix = String::from_utf8_lossy(&line[..colon]).trim().to_string();
        let name = format!("x-tandem-session-{suffix}");
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    if let Ok(tandem::session::CookieChange::Set { id, .. }) =
        store.settle(None, &mut headers, "r", false)
    {
        let session = store.get(&id).expect("a session just created is live");
        assert!(session.bytes <= 2048);
        store.invalidate(&id);
    }
    assert!(headers
        .keys()
        .all(|name| !name.as_str().starts_with("x-tandem-session")));
    if let Ok(patch) = tandem::session::contract::parse_patch(data) {
        let merged = tandem::session::encoding::merge(serde_json::Map::new(), &patch);
        let encoded = tandem::session::encoding::to_ascii_json(&merged);
        assert!(encoded.iter().all(|b| (0x20..0x7f).contains(b)));
    }
});
