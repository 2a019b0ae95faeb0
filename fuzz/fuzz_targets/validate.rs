//! The request validation step on any parsed request: it answers Ok or a rejection, never
//! panics, and what it lets through is what it promises (a host[:port] authority, a target
//! within the limit, the asterisk only on OPTIONS).
//!
//! Input, one item a line: `METHOD TARGET`, then `VERSION` (`1.0`, `1.1` or `2`), then header
//! fields `name: value` (raw bytes; a field the HTTP library refuses is left out). The seeds in
//! fuzz/seeds/validate are rows of tests/validation.rs.
#![no_main]
use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use tandem::proxy::validate::{self, Limits, Rejection};

const LIMITS: Limits = Limits {
    max_fields: 100,
    max_field_bytes: 4096,
    max_uri_length: 1024,
};

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let (method, target) = match first.iter().position(|&b| b == b' ') {
        Some(at) => (&first[..at], &first[at + 1..]),
        None => (first, &b"/"[..]),
    };
    let (Ok(method), Ok(uri)) = (Method::from_bytes(method), Uri::try_from(target)) else {
        return;
    };
    let version = match lines.next() {
        Some(b"1.0") => Version::HTTP_10,
        Some(b"2") => Version::HTTP_2,
        _ => Version::HTTP_11,
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    for line in lines {
        let Some(at) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[at + 1..].strip_prefix(b" ").unwrap_or(&line[at + 1..]);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..at]),
            HeaderValue::from_bytes(value),
        ) {
            request.headers_mut().append(name, value);
        }
    }
    match validate::check(&request, &LIMITS) {
        Ok(host) => {
            assert!(request.headers().len() <= LIMITS.max_fields);
            if let Some(host) = host {
                let text = host.to_str().expect("a valid host is ASCII");
                assert!(validate::is_host_and_port(text), "{text:?}");
            }
            let target = request.uri().path_and_query().map_or("", |pq| pq.as_str());
            assert!(target.len() <= LIMITS.max_uri_length);
            assert!(target != "*" || request.method() == Method::OPTIONS);
            assert!(request.method() != Method::CONNECT);
        }
        Err(Rejection::UriTooLong { length, limit }) => assert!(length > limit),
        Err(Rejection::TooManyFields { count, limit }) => assert!(count > limit),
        Err(Rejection::FieldsTooLarge { bytes, limit }) => assert!(bytes > limit),
        Err(Rejection::BadHost(_) | Rejection::BadTarget(_)) => {}
    }
});
