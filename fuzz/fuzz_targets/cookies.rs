//! Cookie headers and session ids: the sticky id reader, the route cutter and the proxy-mode
//! cookie parser, on any Cookie header and path.
#![no_main]
use std::path::Path;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tandem::config::Config;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let text = "[listen]\naddresses = [\"127.0.0.1:1\"]\n[session]\nmode = \"proxy\"\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n";
        Config::parse(Path::new("fuzz.toml"), text).expect("a valid config")
    })
}

fuzz_target!(|data: &[u8]| {
    let config = config();
    let (cookie, path) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (
            &data[..at],
            String::from_utf8_lossy(&data[at + 1..]).into_owned(),
        ),
        None => (data, "/".to_string()),
    };
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(cookie) {
        headers.append(http::header::COOKIE, value);
    }
    let sticky = config.pools[0].sticky.as_ref().expect("sticky by default");
    for id in tandem::sticky::session_ids(&headers, &path, sticky) {
        let _ = tandem::sticky::route_of(id.value, sticky.separator);
        let _ = tandem::sticky::session_key(id.value, sticky);
    }
    for (id, _route) in tandem::session::cookie::candidates(&headers, &path, &config.session) {
        assert!(tandem::session::id::is_well_formed(id));
    }
});
