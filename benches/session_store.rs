//! The session store on its own: opening a session for a request, applying a backend's patch,
//! creating, sweeping expired sessions, and encoding attributes for the request header. Each
//! with a 1 KiB session among 100,000. Quote ratios, not absolute times.
//!
//! `cargo bench --bench session_store`

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue};

use tandem::config::Config;
use tandem::session::clock::ManualClock;
use tandem::session::{encoding, CookieChange, SessionStore};

const SESSIONS: usize = 100_000;

fn store() -> (SessionStore, Arc<ManualClock>) {
    let text = "[listen]\naddresses = [\"127.0.0.1:1\"]\n[session]\nmode = \"proxy\"\nmax_session_bytes = \"4KiB\"\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n";
    let config = Config::parse(Path::new("bench.toml"), text).unwrap();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    (
        SessionStore::new(&config.session, clock.clone(), Vec::new(), None),
        clock,
    )
}

/// A response that stores `patch`.
fn patched(patch: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-tandem-session-patch",
        HeaderValue::from_str(patch).unwrap(),
    );
    headers
}

/// A 1 KiB session: a cart of ten items and a user.
fn one_kib() -> String {
    let items: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#"{{"sku":"SKU-{i:06}","name":"{}","qty":1}}"#,
                "n".repeat(60)
            )
        })
        .collect();
    format!(
        r#"{{"user":"ann@example.com","cart":[{}]}}"#,
        items.join(",")
    )
}

fn create(store: &SessionStore, patch: &str) -> Arc<str> {
    match store
        .settle(None, &mut patched(patch), "r1", false)
        .unwrap()
    {
        CookieChange::Set { id, .. } => id,
        other => panic!("{other:?}"),
    }
}

fn session_store(c: &mut Criterion) {
    let session = one_kib();
    assert!((1000..1100).contains(&session.len()), "{}", session.len());
    let (store, clock) = store();
    let ids: Vec<Arc<str>> = (0..SESSIONS).map(|_| create(&store, &session)).collect();
    let mut group = c.benchmark_group("session_store");
    let mut next = 0;
    group.bench_function("open_1kib", |b| {
        b.iter(|| {
            next = (next + 1) % SESSIONS;
            store.open(&ids[next], "r1").expect("live")
        })
    });
    group.bench_function("patch_one_key_of_1kib", |b| {
        b.iter(|| {
            next = (next + 1) % SESSIONS;
            let current = store.open(&ids[next], "r1").expect("live");
            let mut headers = patched(r#"{"step":2}"#);
            store
                .settle(Some(&current), &mut headers, "r1", false)
                .unwrap()
        })
    });
    group.bench_function("create_1kib", |b| {
        b.iter_batched(
            || patched(&session),
            |mut headers| store.settle(None, &mut headers, "r1", false).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("encode_1kib_for_the_header", |b| {
        let value: serde_json::Value = serde_json::from_str(&session).unwrap();
        b.iter(|| encoding::to_ascii_json(&value))
    });
    // Sweeping: 1,000 sessions come due per batch; the time is per batch.
    group.bench_function("sweep_1000_expired", |b| {
        b.iter_batched(
            || {
                let (store, clock) = self::store();
                for _ in 0..1000 {
                    create(&store, r#"{"a":1}"#);
                }
                clock.advance(Duration::from_secs(24 * 3600));
                store
            },
            |store| assert_eq!(store.sweep(), 1000),
            BatchSize::PerIteration,
        )
    });
    group.finish();
    drop(clock);
}

criterion_group!(benches, session_store);
criterion_main!(benches);
