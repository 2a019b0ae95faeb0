//! Session ids: fresh ones from the operating system's CSPRNG, and the `<id><sep><route>` shape
//! of the cookie value.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::TryRngCore;

/// Random bytes per id: 192 bits, well over the 128 the contract promises, so that guessing a
/// live id among millions stays hopeless.
const ID_BYTES: usize = 24;

/// Length of every id tandem issues (URL-safe base64 of [`ID_BYTES`], no padding).
pub const ID_LENGTH: usize = ID_BYTES * 4 / 3;

/// A new session id: URL-safe base64 of bytes from the OS's CSPRNG (getrandom).
pub fn fresh() -> String {
    let mut bytes = [0u8; ID_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Splits a cookie value into the id and the route after `separator`. Only values shaped as
/// tandem issues them are accepted (an id of the right length and alphabet), so that a forged
/// value never reaches the store as a key of some other shape.
pub fn parse(value: &str, separator: char) -> Option<(&str, &str)> {
    let (id, route) = value.split_once(separator).unwrap_or((value, ""));
    is_well_formed(id).then_some((id, route))
}

/// Whether `id` has the length and alphabet of the ids [`fresh`] makes.
pub fn is_well_formed(id: &str) -> bool {
    id.len() == ID_LENGTH
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_url_safe_and_distinct() {
        let a = fresh();
        let b = fresh();
        assert_eq!(a.len(), ID_LENGTH);
        assert_ne!(a, b);
        assert_eq!(parse(&a, '.'), Some((a.as_str(), "")));
        let value = format!("{a}.b1");
        assert_eq!(parse(&value, '.'), Some((a.as_str(), "b1")));
    }

    /// Attack case S09: 200,000 ids, all distinct, and their bits balanced (the monobit test).
    #[test]
    fn ids_are_unique_and_their_bits_look_random() {
        let mut seen = std::collections::HashSet::new();
        let mut ones = 0u64;
        let count = 200_000;
        for _ in 0..count {
            let id = fresh();
            let bytes = URL_SAFE_NO_PAD.decode(&id).unwrap();
            ones += bytes.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
            assert!(seen.insert(id), "a repeated id");
        }
        let bits = (count * ID_BYTES * 8) as f64;
        let share = ones as f64 / bits;
        assert!((share - 0.5).abs() < 0.001, "share of one bits: {share}");
    }

    #[test]
    fn values_of_another_shape_are_refused() {
        assert_eq!(parse("short.b1", '.'), None);
        assert_eq!(parse(&"a".repeat(ID_LENGTH + 1), '.'), None);
        assert_eq!(
            parse(&format!("{}/../x", "a".repeat(ID_LENGTH - 5)), '.'),
            None
        );
    }
}
