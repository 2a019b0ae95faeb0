//! The attributes as they travel to backends: a JSON object in pure printable ASCII, so that it
//! fits a header value and any JSON parser reads it as is. Every character outside `0x20..0x7e`
//! is written as a `\uXXXX` escape (a surrogate pair above the BMP), as JSON allows anywhere.
//!
//! Also the checks of a patched object against the limits: counted on this encoding, because
//! it is what a backend's header parser sees.

use std::io;

use serde_json::ser::{CharEscape, Formatter};
use serde_json::{Map, Value};

use super::Rejection;
use crate::config::SessionConfig;

/// A serde_json formatter that escapes everything but printable ASCII.
struct AsciiFormatter;

impl Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (index, c) in fragment.char_indices() {
            if (' '..='~').contains(&c) {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..index])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = index + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        // serde_json's own short escapes (\n, \", ...) are ASCII already.
        serde_json::ser::CompactFormatter.write_char_escape(writer, escape)
    }
}

/// `value` as printable-ASCII JSON.
pub fn to_ascii_json(value: &impl serde::Serialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, AsciiFormatter);
    value
        .serialize(&mut serializer)
        .expect("JSON values always serialize into a Vec");
    out
}

/// Checks `attributes` against the configured limits and returns its encoding. Nothing is cut
/// to fit: an object over a limit is refused whole.
pub fn encode_within_limits(
    attributes: &Map<String, Value>,
    limits: &SessionConfig,
) -> Result<Vec<u8>, Rejection> {
    if attributes.len() > limits.max_attributes {
        return Err(Rejection::TooManyAttributes {
            count: attributes.len(),
            limit: limits.max_attributes,
        });
    }
    for (key, value) in attributes {
        let size = to_ascii_json(key).len() + to_ascii_json(value).len();
        if size > limits.max_attribute_bytes {
            return Err(Rejection::AttributeTooLarge {
                key: key.chars().take(64).collect(),
                size,
                limit: limits.max_attribute_bytes,
            });
        }
    }
    let encoded = to_ascii_json(attributes);
    if encoded.len() > limits.max_session_bytes {
        return Err(Rejection::SessionTooLarge {
            size: encoded.len(),
            limit: limits.max_session_bytes,
        });
    }
    Ok(encoded)
}

/// Applies an RFC 7396 merge patch (an object; a key set to `null` is removed) to `attributes`.
pub fn merge(attributes: Map<String, Value>, patch: &Map<String, Value>) -> Map<String, Value> {
    let mut target = Value::Object(attributes);
    json_patch::merge(&mut target, &Value::Object(patch.clone()));
    match target {
        Value::Object(map) => map,
        _ => unreachable!("merging an object patch into an object gives an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn everything_outside_printable_ascii_is_escaped_and_reads_back() {
        let value = json!({"name": "Zoë 東京 🛒", "line": "a\nb\u{7f}", "quote": "\"\\"});
        let encoded = to_ascii_json(&value);
        assert!(
            encoded.iter().all(|b| (0x20..0x7f).contains(b)),
            "{encoded:?}"
        );
        let text = String::from_utf8(encoded).unwrap();
        assert!(
            text.contains(r"Zo\u00eb \u6771\u4eac \ud83d\uded2"),
            "{text}"
        );
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn merge_follows_rfc_7396() {
        let target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        let patch = json!({"a": "z", "c": {"f": null}, "n": [1, 2]});
        let Value::Object(target) = target else {
            unreachable!()
        };
        let Value::Object(patch) = patch else {
            unreachable!()
        };
        let merged = merge(target, &patch);
        assert_eq!(
            Value::Object(merged),
            json!({"a": "z", "c": {"d": "e"}, "n": [1, 2]})
        );
    }
}
