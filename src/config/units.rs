//! Human-readable durations ("2s", "500ms", "1m 30s") and sizes ("64KiB", "8192") in the config.

use std::time::Duration;

/// Parses a duration as humantime does; a bare number is refused because its unit would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write it like \"2s\" or \"500ms\""))
}

/// Parses a size in bytes: a plain number, or a number with a unit such as KiB, MiB, KB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| {
            format!("`{text}` is not a size; write it like \"64KiB\", \"1MiB\" or \"8192\"")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_in_the_forms_the_example_config_uses() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("2 parsecs").is_err());
        assert!(parse_duration("10").is_err());
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("8192"), Ok(8192));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
    }
}
