//! The config loader: any text is a valid config or a list of located errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(errors) = tandem::config::Config::parse(std::path::Path::new("fuzz.toml"), &text) {
        assert!(!errors.0.is_empty());
    }
});
