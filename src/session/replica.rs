//! Sessions as peers exchange them: per-attribute versions on a hybrid logical clock, the
//! messages (`Replicated`), and how a peer's message is merged into this store.
//!
//! Semantics (ARCHITECTURE.md, "Replication"): per top-level attribute the higher version wins;
//! removing an attribute leaves a tombstone; the end of a session wins over any update of it
//! (ids are never reused); session fields (route, timeouts) are one more versioned value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::clock::{self, Clock};
use super::{encoding, Change, Origin, Rejection, Session, SessionStore};

/// When a write happened, totally ordered across the cluster: a hybrid logical clock reading
/// (`unix ms << 16 | counter`), then the writing node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// The hybrid logical clock.
    pub clock: u64,
    /// A number naming the node that wrote (from its node id).
    pub node: u64,
}

/// This node's hybrid logical clock: never behind the wall clock, always past every version
/// it has issued or seen.
pub struct Hlc {
    last: AtomicU64,
    node: u64,
    clock: Arc<dyn Clock>,
}

impl Hlc {
    /// A clock for the node called `node_id`.
    pub fn new(node_id: &str, clock: Arc<dyn Clock>) -> Hlc {
        // FNV-1a: stable across processes and versions, unlike the std hasher.
        let node = node_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        Hlc {
            last: AtomicU64::new(0),
            node,
            clock,
        }
    }

    /// A version for a write made now.
    pub fn next(&self) -> Version {
        let physical = self.clock.now_ms() << 16;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = physical.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Version {
                        clock: next,
                        node: self.node,
                    }
                }
                Err(seen) => last = seen,
            }
        }
    }

    /// Moves the clock past a version received from a peer.
    pub fn observe(&self, version: Version) {
        self.last.fetch_max(version.clock, Ordering::Relaxed);
    }
}

/// Tombstones of removed attributes kept per session at most; the oldest go first.
const MAX_TOMBSTONES: usize = 256;

/// The version of each top-level attribute of a session, removed ones included.
#[derive(Debug, Clone, Default)]
pub struct AttributeVersions(Vec<(Box<str>, Version, bool)>);

impl AttributeVersions {
    /// The version of `key`'s last write, and whether it left a value (false: removed).
    pub fn get(&self, key: &str) -> Option<(Version, bool)> {
        self.0
            .iter()
            .find(|(k, _, _)| &**k == key)
            .map(|(_, version, live)| (*version, *live))
    }

    /// Records a write of `key` at `version` (`live`: it left a value).
    pub fn set(&mut self, key: &str, version: Version, live: bool) {
        match self.0.iter_mut().find(|(k, _, _)| &**k == key) {
            Some(entry) => {
                entry.1 = version;
                entry.2 = live;
            }
            None => self.0.push((key.into(), version, live)),
        }
        let tombstones = self.0.iter().filter(|(_, _, live)| !live).count();
        if tombstones > MAX_TOMBSTONES {
            if let Some(oldest) = self
                .0
                .iter()
                .enumerate()
                .filter(|(_, (_, _, live))| !live)
                .min_by_key(|(_, (_, version, _))| *version)
                .map(|(index, _)| index)
            {
                self.0.remove(oldest);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(Box<str>, Version, bool)> {
        self.0.iter()
    }
}

/// One attribute in a message: its key, its value (`None`: removed) and its version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicatedAttribute {
    /// The top-level key.
    pub key: String,
    /// The value as JSON text; `None` for a removal.
    pub value: Option<Box<RawValue>>,
    /// The write's version.
    pub version: Version,
}

/// What peers send each other about sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Replicated {
    /// A session's fields and some (or all) of its attributes.
    Upsert {
        /// The session id.
        id: String,
        /// The route its cookie names.
        route: String,
        /// Unix ms of creation.
        created_ms: u64,
        /// Unix ms of the last request known.
        last_access_ms: u64,
        /// Idle timeout, ms.
        idle_timeout_ms: u64,
        /// Absolute timeout, ms.
        absolute_timeout_ms: u64,
        /// The version of the route and timeouts.
        fields_version: Version,
        /// Attributes written (all of them for a new session).
        attributes: Vec<ReplicatedAttribute>,
    },
    /// A session was used at `at_ms`.
    Touch {
        /// The session id.
        id: String,
        /// Unix ms of the use.
        at_ms: u64,
    },
    /// A session ended (invalidated, expired, or renewed away); it never comes back.
    Ended {
        /// The session id.
        id: String,
    },
    /// A sticky session of pool `pool` lives at `route` now (a route takeover, or an id learned
    /// in `learn` mode), known to the backends as `backend_id`.
    Placement {
        /// The pool's name.
        pool: String,
        /// The session key in the pool's sticky table.
        key: String,
        /// The route of the backend that holds the session; empty when the sender forgot the
        /// placement (the backend replaced the session with a new one).
        route: String,
        /// The id the backends know the session by.
        backend_id: String,
    },
    /// The sender's full state has all been sent (a joining peer is ready after it).
    SyncDone,
    /// A request for session `id` (`backup` topology: the sender does not hold it), answered
    /// with a `Fetched` frame carrying `tag`.
    Fetch {
        /// The session id.
        id: String,
        /// Matches the answer to the request.
        tag: u64,
    },
    /// Part of the sender's digest of the sessions it has: (id, digest of its state) pairs. The
    /// receiver answers `Wanted` frames naming the sessions it lacks or has otherwise.
    Digest {
        /// (session id, digest of the session) pairs.
        entries: Vec<(String, u64)>,
    },
    /// The sender's digest is complete.
    DigestDone,
    /// A request for session `id`'s lock (`lock_sessions`), to its owner; granted by a
    /// `Locked` frame carrying `tag`.
    Lock {
        /// The session id.
        id: String,
        /// Names the grant.
        tag: u64,
    },
    /// The sender's request `tag` gives back its session lock.
    Unlock {
        /// The grant's tag.
        tag: u64,
    },
}

impl Replicated {
    /// A short fixed name of the message's kind, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Replicated::Upsert { .. } => "upsert",
            Replicated::Touch { .. } => "touch",
            Replicated::Ended { .. } => "ended",
            Replicated::Placement { .. } => "placement",
            Replicated::SyncDone => "sync_done",
            Replicated::Fetch { .. } => "fetch",
            Replicated::Digest { .. } => "digest",
            Replicated::DigestDone => "digest_done",
            Replicated::Lock { .. } => "lock",
            Replicated::Unlock { .. } => "unlock",
        }
    }

    /// The message for session `id`: its fields and the attributes named by `keys` (all of
    /// them with `None`).
    pub fn upsert(id: &str, session: &Session, keys: Option<&[&str]>) -> Replicated {
        let values: Map<String, Value> =
            serde_json::from_slice(session.data.as_bytes()).unwrap_or_default();
        let attributes = session
            .versions
            .iter()
            .filter(|(key, _, _)| keys.is_none_or(|keys| keys.contains(&&**key)))
            .map(|(key, version, live)| ReplicatedAttribute {
                key: key.to_string(),
                value: live
                    .then(|| values.get(&**key))
                    .flatten()
                    .and_then(|value| serde_json::value::to_raw_value(value).ok()),
                version: *version,
            })
            .collect();
        Replicated::Upsert {
            id: id.to_string(),
            route: session.route.to_string(),
            created_ms: session.created_ms,
            last_access_ms: session.last_access_ms,
            idle_timeout_ms: session.idle_timeout_ms,
            absolute_timeout_ms: session.absolute_timeout_ms,
            fields_version: session.fields_version,
            attributes,
        }
    }
}

/// A digest of `session`'s replicated state: FNV-1a over its versions, attributes' versions
/// in key order, route, timeouts and last use. Written out here rather than taken from `std`
/// (whose hasher may change between Rust releases): peers of different builds compare these.
/// Not a defence against a forger (peers are authenticated); fast, since a node digests every
/// session it has on each peer connection.
fn session_digest(session: &Session) -> u64 {
    let mut digest = Fnv::default();
    let version = |digest: &mut Fnv, version: &Version| {
        digest.write(&version.clock.to_be_bytes());
        digest.write(&version.node.to_be_bytes());
    };
    version(&mut digest, &session.fields_version);
    digest.write(&session.last_access_ms.to_be_bytes());
    digest.write(&session.idle_timeout_ms.to_be_bytes());
    digest.write(&session.absolute_timeout_ms.to_be_bytes());
    digest.write(session.route.as_bytes());
    digest.write(&[0]);
    let mut attributes: Vec<_> = session.versions.iter().collect();
    attributes.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, attribute_version, live) in attributes {
        digest.write(key.as_bytes());
        digest.write(&[0, u8::from(*live)]);
        version(&mut digest, attribute_version);
    }
    digest.0
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

impl SessionStore {
    /// Every live session's id and a digest of its state (its versions, route, timeouts and
    /// last use): two nodes holding a session alike have the same digest for it, on any build.
    pub fn digest(&self) -> Vec<(String, u64)> {
        self.sessions
            .iter()
            .map(|entry| (entry.key().to_string(), session_digest(entry.value())))
            .collect()
    }

    /// The ids in a peer's `digest` whose session this node lacks or holds otherwise (ended
    /// ones aside): what it wants the peer to send.
    pub fn wanted(&self, digest: &[(String, u64)]) -> Vec<String> {
        digest
            .iter()
            .filter(|(id, theirs)| {
                !self.ended.contains(id)
                    && self
                        .sessions
                        .get(id.as_str())
                        .is_none_or(|session| session_digest(&session) != *theirs)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every ended id this node remembers, as messages for a peer.
    pub fn ended_messages(&self) -> Vec<Replicated> {
        self.ended
            .ids()
            .into_iter()
            .map(|id| Replicated::Ended { id: id.to_string() })
            .collect()
    }

    /// The whole of live session `id` as a message, for a peer that needs it.
    pub fn upsert_message(&self, id: &str) -> Option<Replicated> {
        let now = self.clock.now_ms();
        let entry = self.sessions.get(id)?;
        (entry.expires_ms() > now).then(|| Replicated::upsert(id, entry.value(), None))
    }

    /// Refuses (`Err`, counted) a session from elsewhere created later than this node's clock
    /// `now_ms` allows (`clock::SKEW_ALLOWANCE`).
    pub(super) fn check_foreign_creation(
        &self,
        created_ms: u64,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        clock::check_foreign_creation(created_ms, now_ms).map_err(|ahead_ms| {
            self.reject(Rejection::ClockSkew {
                ahead_ms,
                allowance_ms: clock::SKEW_ALLOWANCE.as_millis() as u64,
            })
        })
    }

    /// A session's idle and absolute timeouts from elsewhere, in ms, held to this node's
    /// `max_idle_timeout` and `max_absolute_timeout`, as a backend's would be.
    pub(super) fn within_maxima(&self, idle_ms: u64, absolute_ms: u64) -> (u64, u64) {
        (
            idle_ms.min(self.config.max_idle_timeout.as_millis() as u64),
            absolute_ms.min(self.config.max_absolute_timeout.as_millis() as u64),
        )
    }

    /// Merges a peer's message into this store, its times judged against this node's clock
    /// (`clock::SKEW_ALLOWANCE`). Nothing here is sent on to other peers.
    pub fn merge_remote(&self, message: Replicated) {
        match message {
            // Sticky placements are the pools' business; fetches and locks the cluster's.
            Replicated::SyncDone
            | Replicated::Digest { .. }
            | Replicated::DigestDone
            | Replicated::Placement { .. }
            | Replicated::Fetch { .. }
            | Replicated::Lock { .. }
            | Replicated::Unlock { .. } => {}
            Replicated::Ended { id } => {
                self.remember_ended(&id);
                self.end_with(&id, super::EndReason::Invalidated, Origin::Remote);
            }
            Replicated::Touch { id, at_ms } => {
                let now = self.clock.now_ms();
                if let Some(mut session) = self.sessions.get_mut(id.as_str()) {
                    let at_ms = clock::foreign_use_ms(at_ms, now, session.absolute_deadline_ms());
                    session.last_access_ms = session.last_access_ms.max(at_ms);
                }
            }
            Replicated::Upsert {
                id,
                route,
                created_ms,
                last_access_ms,
                idle_timeout_ms,
                absolute_timeout_ms,
                fields_version,
                attributes,
            } => {
                if !super::id::is_well_formed(&id) || self.ended.contains(&id) {
                    return;
                }
                let now = self.clock.now_ms();
                if let Err(rejection) = self.check_foreign_creation(created_ms, now) {
                    tracing::warn!(session = %super::log_ref(&id), reason = %rejection, "a peer's session not stored: that peer's clock runs ahead");
                    return;
                }
                let (idle_timeout_ms, absolute_timeout_ms) =
                    self.within_maxima(idle_timeout_ms, absolute_timeout_ms);
                // Only what is stored moves the clock: a refused message leaves it alone.
                self.hlc.observe(fields_version);
                for attribute in &attributes {
                    self.hlc.observe(attribute.version);
                }
                let id: Arc<str> = Arc::from(id);
                // A peer's sessions count against this node's limit as local ones do.
                if !self.sessions.contains_key(&id) && self.len() >= self.config.max_sessions {
                    let rejection = self.reject(super::Rejection::TooManySessions {
                        limit: self.config.max_sessions,
                    });
                    tracing::warn!(session = %super::log_ref(&id), reason = %rejection, "a peer's session not stored");
                    return;
                }
                let mut entry = self.sessions.entry(Arc::clone(&id)).or_insert_with(|| {
                    self.live.fetch_add(1, Ordering::Relaxed);
                    Session {
                        data: super::stored(b"{}".to_vec()),
                        route: route.as_str().into(),
                        created_ms,
                        // Set below, once judged against this node's clock.
                        last_access_ms: 0,
                        idle_timeout_ms,
                        absolute_timeout_ms,
                        queued_ms: 0,
                        versions: AttributeVersions::default(),
                        fields_version,
                    }
                });
                let created = entry.queued_ms == 0;
                let session = entry.value_mut();
                if fields_version > session.fields_version || created {
                    session.route = route.into();
                    session.idle_timeout_ms = idle_timeout_ms;
                    session.absolute_timeout_ms = absolute_timeout_ms;
                    session.fields_version = fields_version;
                }
                let last_access_ms =
                    clock::foreign_use_ms(last_access_ms, now, session.absolute_deadline_ms());
                session.last_access_ms = session.last_access_ms.max(last_access_ms);
                let mut values: Map<String, Value> =
                    serde_json::from_slice(session.data.as_bytes()).unwrap_or_default();
                let mut changed = Map::new();
                let mut written = Vec::new();
                for attribute in attributes {
                    let newer = session
                        .versions
                        .get(&attribute.key)
                        .is_none_or(|(version, _)| attribute.version > version);
                    if !newer {
                        continue;
                    }
                    let value = attribute
                        .value
                        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
                    written.push((attribute.key.clone(), attribute.version, value.is_some()));
                    match value {
                        Some(value) => {
                            values.insert(attribute.key.clone(), value.clone());
                            changed.insert(attribute.key, value);
                        }
                        None => {
                            values.remove(&attribute.key);
                            changed.insert(attribute.key, Value::Null);
                        }
                    }
                }
                let bytes_before = session.data.len();
                if !changed.is_empty() {
                    // Within this node's limits, or not at all (peers may be configured apart).
                    match encoding::encode_within_limits(&values, &self.config) {
                        Ok(data) => session.data = super::stored(data),
                        Err(rejection) => {
                            drop(entry);
                            if created && self.sessions.remove(&id).is_some() {
                                self.live.fetch_sub(1, Ordering::Relaxed);
                            }
                            let rejection = self.reject(rejection);
                            tracing::warn!(session = %super::log_ref(&id), reason = %rejection, "a peer's session update not applied");
                            return;
                        }
                    }
                    for (key, version, live) in written {
                        session.versions.set(&key, version, live);
                    }
                }
                let (key, session) = entry.pair();
                if created {
                    self.emit(&Change::Created { id: key, session }, Origin::Remote);
                } else if !changed.is_empty() {
                    self.emit(
                        &Change::Patched {
                            id: key,
                            patch: &changed,
                            bytes_before,
                            bytes_after: session.data.len(),
                            session,
                        },
                        Origin::Remote,
                    );
                }
                let deadline = session.expires_ms();
                if created || deadline < session.queued_ms {
                    drop(entry);
                    if let Some(mut session) = self.sessions.get_mut(&*id) {
                        session.queued_ms = deadline;
                    }
                    self.queue(deadline, id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::session::clock::ManualClock;
    use crate::session::CookieChange;

    fn store(node: &str, session_keys: &str) -> SessionStore {
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        store_on(node, session_keys, clock, Vec::new())
    }

    /// A store of node `node` with `session_keys` in `[session]`, timed by `clock`.
    fn store_on(
        node: &str,
        session_keys: &str,
        clock: Arc<ManualClock>,
        listeners: Vec<Arc<dyn crate::session::ChangeListener>>,
    ) -> SessionStore {
        let text = format!("[listen]\naddresses = [\"127.0.0.1:1\"]\n[session]\nmode = \"proxy\"\n{session_keys}\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n");
        let config = crate::config::Config::parse(Path::new("t.toml"), &text).unwrap();
        SessionStore::new(&config.session, clock, listeners, Some(node))
    }

    /// Counts refused updates by reason.
    #[derive(Default)]
    struct Refusals(std::sync::Mutex<Vec<&'static str>>);

    impl crate::session::ChangeListener for Refusals {
        fn changed(&self, _: &Change<'_>, _: Origin) {}
        fn rejected(&self, rejection: &Rejection) {
            self.0.lock().unwrap().push(rejection.reason());
        }
    }

    #[test]
    fn a_peers_times_are_judged_against_this_nodes_clock() {
        const AHEAD: std::time::Duration = std::time::Duration::from_secs(600);
        let now = 1_800_000_000_000;
        let refusals = Arc::new(Refusals::default());
        let receiver = store_on(
            "b",
            "max_idle_timeout = \"1h\"",
            Arc::new(ManualClock::new(now)),
            vec![refusals.clone()],
        );
        // Created by a peer whose clock runs 10 minutes ahead: refused, counted, and this
        // node's versions are not dragged along.
        let skewed_clock = Arc::new(ManualClock::new(now + AHEAD.as_millis() as u64));
        let skewed = store_on("a", "", skewed_clock, Vec::new());
        let from_the_future = session_message(&skewed, r#"{"n":1}"#);
        receiver.merge_remote(from_the_future);
        assert!(
            receiver.is_empty(),
            "a session created in the future was stored"
        );
        assert_eq!(*refusals.0.lock().unwrap(), ["clock_skew"]);
        assert!(receiver.hlc.next().clock < (now + 1_000) << 16);

        // Created in time, then used on a peer whose clock runs ahead: every time of use it
        // sends (touches, deltas) is taken as now, so the idle timeout runs on this clock.
        let sender = store_on(
            "c",
            "idle_timeout = \"4s\"\nabsolute_timeout = \"12s\"",
            Arc::new(ManualClock::new(now)),
            Vec::new(),
        );
        let whole = session_message(&sender, r#"{"n":1}"#);
        let Replicated::Upsert { id, .. } = &whole else {
            unreachable!()
        };
        let id = id.clone();
        receiver.merge_remote(whole);
        assert_eq!(receiver.get(&id).unwrap().last_access_ms, now);
        let future_use = now + AHEAD.as_millis() as u64;
        receiver.merge_remote(Replicated::Touch {
            id: id.clone(),
            at_ms: future_use,
        });
        assert_eq!(
            receiver.get(&id).unwrap().expires_ms,
            now + 4_000,
            "a touch"
        );
        let mut headers = http::HeaderMap::new();
        headers.insert("x-tandem-session-patch", r#"{"n":2}"#.parse().unwrap());
        let current = sender.open(&id, "r1");
        sender
            .settle(current.as_ref(), &mut headers, "r1", false)
            .unwrap();
        let mut delta = sender.upsert_message(&id).unwrap();
        if let Replicated::Upsert { last_access_ms, .. } = &mut delta {
            *last_access_ms = future_use;
        }
        receiver.merge_remote(delta);
        let seen = receiver.get(&id).unwrap();
        assert_eq!(seen.attributes, Some(serde_json::json!({"n": 2})));
        assert_eq!(seen.expires_ms, now + 4_000, "a delta");

        // Within the allowance, a time is taken as it is; never past the absolute deadline.
        receiver.merge_remote(Replicated::Touch {
            id: id.clone(),
            at_ms: now + 3_000,
        });
        assert_eq!(receiver.get(&id).unwrap().last_access_ms, now + 3_000);
        let mut long_idle = sender.upsert_message(&id).unwrap();
        if let Replicated::Upsert {
            last_access_ms,
            idle_timeout_ms,
            fields_version,
            ..
        } = &mut long_idle
        {
            *last_access_ms = now + 20_000;
            *idle_timeout_ms = 2 * 3_600_000;
            fields_version.clock += 1;
        }
        receiver.merge_remote(long_idle);
        let seen = receiver.get(&id).unwrap();
        assert_eq!(seen.last_access_ms, now + 3_000, "no use counted past now");
        assert_eq!(seen.expires_ms, now + 12_000, "the absolute timeout holds");
        assert_eq!(
            seen.idle_timeout_s, 3600,
            "held to this node's max_idle_timeout"
        );
        assert_eq!(refusals.0.lock().unwrap().len(), 1);
    }

    /// A whole session of `store` holding `attributes`, as a peer sends it.
    fn session_message(store: &SessionStore, attributes: &str) -> Replicated {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-tandem-session-patch", attributes.parse().unwrap());
        let Ok(CookieChange::Set { id, .. }) = store.settle(None, &mut headers, "r1", false) else {
            panic!("no session created");
        };
        store.upsert_message(&id).unwrap()
    }

    #[test]
    fn a_peers_sessions_count_against_max_sessions_and_the_size_limits() {
        let sender = store("a", "");
        let receiver = store(
            "b",
            "max_sessions = 2\nmax_session_bytes = \"64\"\nmax_attribute_bytes = \"64\"",
        );
        for _ in 0..3 {
            receiver.merge_remote(session_message(&sender, r#"{"n":1}"#));
        }
        assert_eq!(receiver.len(), 2);

        let receiver = store(
            "b",
            "max_session_bytes = \"64\"\nmax_attribute_bytes = \"64\"",
        );
        receiver.merge_remote(session_message(
            &sender,
            &format!(r#"{{"big":"{}"}}"#, "x".repeat(100)),
        ));
        assert!(receiver.is_empty(), "an oversized session was stored");
        // An update that would take a stored session over the limit is not applied.
        let small = session_message(&sender, r#"{"n":1}"#);
        let Replicated::Upsert { id, .. } = &small else {
            unreachable!()
        };
        let id = id.clone();
        receiver.merge_remote(small);
        let mut headers = http::HeaderMap::new();
        let patch = format!(r#"{{"big":"{}"}}"#, "x".repeat(100));
        headers.insert("x-tandem-session-patch", patch.parse().unwrap());
        let current = sender.open(&id, "r1");
        sender
            .settle(current.as_ref(), &mut headers, "r1", false)
            .unwrap();
        receiver.merge_remote(sender.upsert_message(&id).unwrap());
        let seen = receiver.get(&id).unwrap();
        assert_eq!(seen.attributes, Some(serde_json::json!({"n": 1})));
    }
}
