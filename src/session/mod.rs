//! The session store of `proxy` mode: tandem owns sessions, so that backends keep no state and
//! any of them can serve any request of a session.
//!
//! Every change to a session goes through [`SessionStore`]'s methods, and each one reports
//! itself as a [`Change`] to the store's [`ChangeListener`]s while the session is still locked,
//! so a listener sees one session's changes in the order they happened. Metrics listen, and in
//! a cluster so does the replicator (`cluster::replication`); changes merged from peers come
//! back in through [`SessionStore::merge_remote`], marked remote.
//!
//! - [`contract`]: the session headers between tandem and backends.
//! - [`encoding`]: attributes as printable-ASCII JSON, merge patches, limits.
//! - [`cookie`]: the session cookie clients hold.
//! - [`id`]: fresh ids from the CSPRNG.
//! - [`expiry`]: deadlines, so that expiry never scans every session.
//! - [`snapshot`]: sessions written on shutdown and read back on start.
//! - [`replica`]: versions, peer messages, merging.
//! - [`clock`]: wall-clock time, which tests can move.

pub mod clock;
pub mod contract;
pub mod cookie;
pub mod encoding;
pub mod ended;
pub mod expiry;
pub mod id;
pub mod replica;
pub mod snapshot;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use http::HeaderValue;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::SessionConfig;
use clock::Clock;
use contract::{Command, SessionHeaders, Update};
use expiry::ExpiryQueue;
use replica::{AttributeVersions, Hlc, Version};

/// One session as the store holds it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The attributes, a JSON object encoded as printable ASCII: exactly what the
    /// `<prefix>-data` header carries, so handing it to a backend copies nothing.
    pub data: HeaderValue,
    /// The route in the cookie the client holds (the backend that last served the session).
    pub route: Box<str>,
    /// Unix ms of creation; the absolute timeout counts from here.
    pub created_ms: u64,
    /// Unix ms of the last request; the idle timeout counts from here.
    pub last_access_ms: u64,
    /// Idle timeout of this session, in ms.
    pub idle_timeout_ms: u64,
    /// Absolute timeout of this session, in ms.
    pub absolute_timeout_ms: u64,
    /// The deadline of this session's entry in the expiry queue.
    queued_ms: u64,
    /// The version of each top-level attribute's last write (for merging with peers).
    pub versions: AttributeVersions,
    /// The version of the route and timeouts.
    pub fields_version: Version,
}

impl Session {
    /// Unix ms at which the session expires unless it is used again.
    pub fn expires_ms(&self) -> u64 {
        self.last_access_ms
            .saturating_add(self.idle_timeout_ms)
            .min(self.absolute_deadline_ms())
    }

    /// Unix ms at which the session expires however it is used: its absolute timeout.
    pub fn absolute_deadline_ms(&self) -> u64 {
        self.created_ms.saturating_add(self.absolute_timeout_ms)
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// A backend (logout) or the session API invalidated it.
    Invalidated,
    /// Its idle or absolute timeout passed.
    Expired,
}

/// A change to the store, as listeners see it.
#[derive(Debug)]
pub enum Change<'a> {
    /// A session was created (by a backend's first patch, or read back from a snapshot).
    Created {
        /// Its id.
        id: &'a str,
        /// The new session.
        session: &'a Session,
    },
    /// A merge patch was applied to a session's attributes.
    Patched {
        /// The session's id.
        id: &'a str,
        /// The patch, as applied.
        patch: &'a Map<String, Value>,
        /// Encoded size of the attributes before and after.
        bytes_before: usize,
        /// Encoded size of the attributes after.
        bytes_after: usize,
        /// The session after the patch.
        session: &'a Session,
    },
    /// A request used the session.
    Touched {
        /// The session's id.
        id: &'a str,
        /// Unix ms of the use.
        at_ms: u64,
    },
    /// A backend set the session's timeouts.
    TimeoutsSet {
        /// The session's id.
        id: &'a str,
        /// The idle timeout now, in ms.
        idle_timeout_ms: u64,
        /// The absolute timeout now, in ms.
        absolute_timeout_ms: u64,
        /// The session.
        session: &'a Session,
    },
    /// The session was served by another backend than its cookie named (route takeover).
    Rerouted {
        /// The session's id.
        id: &'a str,
        /// The route its cookie names from now on.
        route: &'a str,
        /// The session.
        session: &'a Session,
    },
    /// The session got a new id; the old one no longer exists.
    Renewed {
        /// The id it had.
        old: &'a str,
        /// The id it has.
        new: &'a str,
        /// The session under its new id.
        session: &'a Session,
    },
    /// The session is gone.
    Ended {
        /// Its id.
        id: &'a str,
        /// Invalidated or expired.
        reason: EndReason,
        /// Encoded size of the attributes it had.
        bytes: usize,
    },
    /// This node let go of a session it does not hold (`backup` topology): it lives on at its
    /// holders.
    Released {
        /// Its id.
        id: &'a str,
        /// Encoded size of its attributes.
        bytes: usize,
    },
}

/// Where a change was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// On this node (a backend's response, the session API, expiry).
    Local,
    /// On a peer, merged here: replication does not send it on.
    Remote,
}

/// Something that follows every change to the store (metrics, replication).
pub trait ChangeListener: Send + Sync {
    /// Called for each change, while the changed session is locked; must be quick.
    fn changed(&self, change: &Change<'_>, origin: Origin);
    /// Called when a session update is refused.
    fn rejected(&self, rejection: &Rejection);
}

/// Why a session update was refused. Nothing of a refused update is applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// Not JSON, not an object, a repeated header.
    #[error("malformed session update: {0}")]
    Malformed(String),
    /// A `<prefix>-command` other than invalidate or renew.
    #[error("unknown session command `{0}`")]
    UnknownCommand(String),
    /// A timeout that is not a number of seconds, or over its maximum.
    #[error("{0}")]
    BadTimeout(String),
    /// More top-level attributes than `max_attributes`.
    #[error("the session would have {count} attributes, over the limit of {limit}")]
    TooManyAttributes {
        /// Attributes after the patch.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// One attribute larger than `max_attribute_bytes`.
    #[error("attribute `{key}` would be {size} bytes encoded, over the limit of {limit}")]
    AttributeTooLarge {
        /// The attribute's key (its first 64 characters).
        key: String,
        /// Its encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The whole session larger than `max_session_bytes`.
    #[error("the session would be {size} bytes encoded, over the limit of {limit}")]
    SessionTooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// `max_sessions` are live already.
    #[error("{limit} sessions are live, the most this node may hold")]
    TooManySessions {
        /// The limit.
        limit: usize,
    },
    /// A session from a peer or a snapshot file was created later than this node's clock
    /// allows (`clock::SKEW_ALLOWANCE`): the clock that stamped it runs ahead, and taking it
    /// as it is would keep the session past its timeouts.
    #[error("the session was created {ahead_ms} ms ahead of this node's clock, more than the allowance of {allowance_ms} ms")]
    ClockSkew {
        /// How far ahead of this node's clock the creation time is.
        ahead_ms: u64,
        /// The allowance.
        allowance_ms: u64,
    },
}

impl Rejection {
    /// Every value [`Rejection::reason`] returns.
    pub const REASONS: [&'static str; 8] = [
        "malformed",
        "unknown_command",
        "bad_timeout",
        "too_many_attributes",
        "attribute_too_large",
        "session_too_large",
        "too_many_sessions",
        "clock_skew",
    ];

    /// A short fixed name for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::UnknownCommand(_) => "unknown_command",
            Rejection::BadTimeout(_) => "bad_timeout",
            Rejection::TooManyAttributes { .. } => "too_many_attributes",
            Rejection::AttributeTooLarge { .. } => "attribute_too_large",
            Rejection::SessionTooLarge { .. } => "session_too_large",
            Rejection::TooManySessions { .. } => "too_many_sessions",
            Rejection::ClockSkew { .. } => "clock_skew",
        }
    }
}

/// A request's live session, as found when the request came in.
#[derive(Debug, Clone)]
pub struct Current {
    /// The session id (without route).
    pub id: Arc<str>,
    /// The route the request's cookie named: the affinity hint, and what a takeover rewrites.
    pub route: Box<str>,
    /// The attributes, ready for the `<prefix>-data` header.
    pub data: HeaderValue,
}

/// What the client's cookie must become after a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieChange {
    /// Nothing to say.
    Keep,
    /// Set the cookie to `<id><sep><route>` (new session, renewed id, or route taken over).
    Set {
        /// The session id.
        id: Arc<str>,
        /// The route.
        route: Box<str>,
    },
    /// Clear the cookie (the session ended).
    Clear,
}

/// A session as the session API shows it.
#[derive(Debug, Serialize)]
pub struct SessionView {
    /// The session id.
    pub id: String,
    /// The route its cookie names.
    pub route: String,
    /// Unix ms of creation.
    pub created_ms: u64,
    /// Unix ms of the last request.
    pub last_access_ms: u64,
    /// Unix ms at which it expires unless used again.
    pub expires_ms: u64,
    /// Idle timeout in seconds.
    pub idle_timeout_s: u64,
    /// Absolute timeout in seconds.
    pub absolute_timeout_s: u64,
    /// Encoded size of the attributes.
    pub bytes: usize,
    /// The attributes; absent in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Value>,
}

/// Most expired sessions removed in one sweep, so that a mass expiry is done in slices.
const SWEEP_SLICE: usize = 10_000;

/// The sessions of this node.
pub struct SessionStore {
    config: SessionConfig,
    headers: Arc<SessionHeaders>,
    sessions: DashMap<Arc<str>, Session>,
    /// Live sessions, kept beside the map so that the count limit is exact under concurrency.
    live: AtomicUsize,
    expiry: Mutex<ExpiryQueue>,
    clock: Arc<dyn Clock>,
    listeners: Vec<Arc<dyn ChangeListener>>,
    /// Versions for this node's writes.
    hlc: Hlc,
    /// With peers: ids of ended sessions, until when they are remembered (Unix ms), so that
    /// a late update from a peer cannot bring one back. Empty on a single node.
    ended: ended::EndedIds,
    /// Whether this store has peers (and so remembers ended ids).
    replicated: bool,
}

/// How long an ended session id is remembered against late updates from peers.
const ENDED_MEMORY_MS: u64 = 3600 * 1000;

impl SessionStore {
    /// An empty store with `config`'s limits, timed by `clock`, reporting to `listeners`.
    /// `node_id`: this node's id in a cluster (its writes are versioned under it), `None` on
    /// its own.
    pub fn new(
        config: &SessionConfig,
        clock: Arc<dyn Clock>,
        listeners: Vec<Arc<dyn ChangeListener>>,
        node_id: Option<&str>,
    ) -> SessionStore {
        SessionStore {
            hlc: Hlc::new(node_id.unwrap_or("single"), Arc::clone(&clock)),
            ended: ended::EndedIds::new(config.max_sessions),
            replicated: node_id.is_some(),
            headers: Arc::new(SessionHeaders::new(&config.header_prefix)),
            config: config.clone(),
            sessions: DashMap::new(),
            live: AtomicUsize::new(0),
            expiry: Mutex::new(ExpiryQueue::default()),
            clock,
            listeners,
        }
    }

    /// The configuration the store was built with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The session headers of the backend contract (shared with the bodies that strip them
    /// from trailers).
    pub fn headers(&self) -> &Arc<SessionHeaders> {
        &self.headers
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Whether there is no live session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn emit(&self, change: &Change<'_>, origin: Origin) {
        for listener in &self.listeners {
            listener.changed(change, origin);
        }
    }

    /// Remembers that session `id` ended, so that peers' late updates do not revive it.
    fn remember_ended(&self, id: &str) {
        if self.replicated {
            let until = self.clock.now_ms() + ENDED_MEMORY_MS;
            self.ended.remember(id, until);
        }
    }

    fn reject(&self, rejection: Rejection) -> Rejection {
        for listener in &self.listeners {
            listener.rejected(&rejection);
        }
        rejection
    }

    /// The live session `id` for a request that uses it now (its idle timer starts again),
    /// whose cookie named `route`; `None` when there is no such session or it has just expired.
    pub fn open(&self, id: &str, route: &str) -> Option<Current> {
        let now = self.clock.now_ms();
        let mut entry = self.sessions.get_mut(id)?;
        if entry.expires_ms() <= now {
            drop(entry);
            self.expire_if_due(id, now);
            return None;
        }
        entry.last_access_ms = now;
        let (key, session) = entry.pair();
        self.emit(
            &Change::Touched {
                id: key,
                at_ms: now,
            },
            Origin::Local,
        );
        Some(Current {
            id: Arc::clone(key),
            route: route.into(),
            data: session.data.clone(),
        })
    }

    /// Takes the session headers out of a backend's response `headers` and applies what they
    /// ask, after a request with session `current` (if any) was served by the backend of
    /// `route`. `rerouted`: the session's affinity moved to that backend. Either everything
    /// applies or nothing does.
    pub fn settle(
        &self,
        current: Option<&Current>,
        headers: &mut http::HeaderMap,
        route: &str,
        rerouted: bool,
    ) -> Result<CookieChange, Rejection> {
        let update = self
            .headers
            .take_update(headers, &self.config)
            .map_err(|rejection| self.reject(rejection))?;
        if update.is_empty() && !rerouted {
            return Ok(CookieChange::Keep);
        }
        self.apply(current, update, route, rerouted)
            .map_err(|rejection| self.reject(rejection))
    }

    fn apply(
        &self,
        current: Option<&Current>,
        update: Update,
        route: &str,
        rerouted: bool,
    ) -> Result<CookieChange, Rejection> {
        let timeouts = (update.idle_timeout, update.absolute_timeout);
        if update.command == Some(Command::Invalidate) {
            // Logout: the old session ends; a patch in the same response starts a new one.
            let fresh = update.patch.map(new_attributes).filter(|a| !a.is_empty());
            let data = fresh
                .as_ref()
                .map(|attributes| encoding::encode_within_limits(attributes, &self.config))
                .transpose()?;
            let ended = current.is_some_and(|c| self.end(&c.id, EndReason::Invalidated));
            return match (fresh, data) {
                (Some(attributes), Some(data)) => self.create(&attributes, data, timeouts, route),
                _ if ended => Ok(CookieChange::Clear),
                _ => Ok(CookieChange::Keep),
            };
        }
        let live = current.filter(|c| self.sessions.contains_key(&c.id));
        let Some(current) = live else {
            // No session yet: the first non-empty patch creates one (renew has nothing to do).
            let attributes = update.patch.map(new_attributes).unwrap_or_default();
            if attributes.is_empty() {
                return Ok(CookieChange::Keep);
            }
            let data = encoding::encode_within_limits(&attributes, &self.config)?;
            return self.create(&attributes, data, timeouts, route);
        };
        if update.patch.is_some() || timeouts != (None, None) {
            self.modify(&current.id, update.patch.as_ref(), timeouts)?;
        }
        let mut cookie = CookieChange::Keep;
        if rerouted {
            if let Some(mut session) = self.sessions.get_mut(&current.id) {
                session.route = route.into();
                session.fields_version = self.hlc.next();
                let (key, session) = session.pair();
                self.emit(
                    &Change::Rerouted {
                        id: key,
                        route,
                        session,
                    },
                    Origin::Local,
                );
                cookie = CookieChange::Set {
                    id: Arc::clone(&current.id),
                    route: route.into(),
                };
            }
        }
        if update.command == Some(Command::Renew) {
            if let Some((id, route)) = self.renew(&current.id) {
                cookie = CookieChange::Set { id, route };
            }
        }
        Ok(cookie)
    }

    /// Stores a new session with `attributes`, `data` being their encoding (within the limits).
    fn create(
        &self,
        attributes: &Map<String, Value>,
        data: Vec<u8>,
        (idle, absolute): (Option<std::time::Duration>, Option<std::time::Duration>),
        route: &str,
    ) -> Result<CookieChange, Rejection> {
        if self.live.fetch_add(1, Ordering::Relaxed) >= self.config.max_sessions {
            self.live.fetch_sub(1, Ordering::Relaxed);
            return Err(Rejection::TooManySessions {
                limit: self.config.max_sessions,
            });
        }
        let now = self.clock.now_ms();
        let mut session = Session {
            data: stored(data),
            route: route.into(),
            created_ms: now,
            last_access_ms: now,
            idle_timeout_ms: idle.unwrap_or(self.config.idle_timeout).as_millis() as u64,
            absolute_timeout_ms: absolute.unwrap_or(self.config.absolute_timeout).as_millis()
                as u64,
            queued_ms: 0,
            versions: AttributeVersions::default(),
            fields_version: self.hlc.next(),
        };
        for key in attributes.keys() {
            session.versions.set(key, session.fields_version, true);
        }
        session.queued_ms = session.expires_ms();
        let id: Arc<str> = Arc::from(id::fresh());
        let entry = self.sessions.entry(Arc::clone(&id)).insert(session);
        self.emit(
            &Change::Created {
                id: &id,
                session: entry.value(),
            },
            Origin::Local,
        );
        self.queue(entry.queued_ms, Arc::clone(&id));
        Ok(CookieChange::Set {
            id,
            route: route.into(),
        })
    }

    /// Applies a patch and new timeouts to a live session, all or nothing.
    fn modify(
        &self,
        id: &str,
        patch: Option<&Map<String, Value>>,
        (idle, absolute): (Option<std::time::Duration>, Option<std::time::Duration>),
    ) -> Result<(), Rejection> {
        let Some(mut entry) = self.sessions.get_mut(id) else {
            return Ok(());
        };
        let data = match patch {
            Some(patch) => {
                let attributes: Map<String, Value> = serde_json::from_slice(entry.data.as_bytes())
                    .expect("stored attributes are a JSON object");
                let merged = encoding::merge(attributes, patch);
                Some(encoding::encode_within_limits(&merged, &self.config)?)
            }
            None => None,
        };
        let (key, session) = entry.pair_mut();
        if let (Some(data), Some(patch)) = (data, patch) {
            let bytes_before = session.data.len();
            session.data = stored(data);
            let version = self.hlc.next();
            for (name, value) in patch {
                session.versions.set(name, version, !value.is_null());
            }
            self.emit(
                &Change::Patched {
                    id: key,
                    patch,
                    bytes_before,
                    bytes_after: session.data.len(),
                    session,
                },
                Origin::Local,
            );
        }
        if idle.is_some() || absolute.is_some() {
            if let Some(idle) = idle {
                session.idle_timeout_ms = idle.as_millis() as u64;
            }
            if let Some(absolute) = absolute {
                session.absolute_timeout_ms = absolute.as_millis() as u64;
            }
            session.fields_version = self.hlc.next();
            self.emit(
                &Change::TimeoutsSet {
                    id: key,
                    idle_timeout_ms: session.idle_timeout_ms,
                    absolute_timeout_ms: session.absolute_timeout_ms,
                    session,
                },
                Origin::Local,
            );
            // A shorter timeout needs an earlier entry in the queue; a longer one is found
            // when the current entry comes due.
            let deadline = session.expires_ms();
            if deadline < session.queued_ms {
                session.queued_ms = deadline;
                self.queue(deadline, Arc::clone(key));
            }
        }
        Ok(())
    }

    /// Moves session `id` to a fresh id; returns the new id and the session's route.
    fn renew(&self, id: &str) -> Option<(Arc<str>, Box<str>)> {
        let (old, mut session) = self.sessions.remove(id)?;
        let new: Arc<str> = Arc::from(id::fresh());
        session.queued_ms = session.expires_ms();
        let route = session.route.clone();
        let entry = self.sessions.entry(Arc::clone(&new)).insert(session);
        self.remember_ended(&old);
        self.emit(
            &Change::Renewed {
                old: &old,
                new: &new,
                session: entry.value(),
            },
            Origin::Local,
        );
        self.queue(entry.queued_ms, Arc::clone(&new));
        Some((new, route))
    }

    /// Ends session `id`; returns whether it was live.
    fn end(&self, id: &str, reason: EndReason) -> bool {
        self.remember_ended(id);
        self.end_with(id, reason, Origin::Local)
    }

    /// Removes session `id`, reporting the change as made at `origin`.
    fn end_with(&self, id: &str, reason: EndReason, origin: Origin) -> bool {
        let Some((key, session)) = self.sessions.remove(id) else {
            return false;
        };
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.emit(
            &Change::Ended {
                id: &key,
                reason,
                bytes: session.data.len(),
            },
            origin,
        );
        true
    }

    /// Removes session `id` from this node without ending it: it lives on at the peers that
    /// hold it (`backup` topology). Returns whether it was here.
    pub fn release(&self, id: &str) -> bool {
        let Some((key, session)) = self.sessions.remove(id) else {
            return false;
        };
        self.live.fetch_sub(1, Ordering::Relaxed);
        let bytes = session.data.len();
        self.emit(&Change::Released { id: &key, bytes }, Origin::Local);
        true
    }

    /// Whether session `id` is here (live or not yet swept).
    pub fn contains(&self, id: &str) -> bool {
        self.sessions.contains_key(id)
    }

    /// Whether session `id` is here, or is remembered as ended.
    pub fn is_known(&self, id: &str) -> bool {
        self.contains(id) || self.has_ended(id)
    }

    /// Whether session `id` is remembered as ended (it never comes back).
    pub fn has_ended(&self, id: &str) -> bool {
        self.ended.contains(id)
    }

    /// The ids of the sessions this node has.
    pub fn ids(&self) -> Vec<Arc<str>> {
        self.sessions
            .iter()
            .map(|entry| Arc::clone(entry.key()))
            .collect()
    }

    fn expire_if_due(&self, id: &str, now: u64) -> bool {
        let removed = self
            .sessions
            .remove_if(id, |_, session| session.expires_ms() <= now);
        let Some((key, session)) = removed else {
            return false;
        };
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.remember_ended(&key);
        self.emit(
            &Change::Ended {
                id: &key,
                reason: EndReason::Expired,
                bytes: session.data.len(),
            },
            Origin::Local,
        );
        true
    }

    fn queue(&self, deadline_ms: u64, id: Arc<str>) {
        self.expiry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(deadline_ms, id);
    }

    /// Removes expired sessions whose queue entries are due, up to a slice of them; returns how
    /// many expired. Sessions used since they were queued are queued again at their deadline.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_ms();
        self.ended.forget_before(now);
        let mut expired = 0;
        for _ in 0..SWEEP_SLICE {
            let due = self
                .expiry
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop_due(now);
            let Some((deadline, id)) = due else { break };
            if self.expire_if_due(&id, now) {
                expired += 1;
                continue;
            }
            if let Some(mut session) = self.sessions.get_mut(&id) {
                if session.queued_ms == deadline {
                    session.queued_ms = session.expires_ms();
                    self.queue(session.queued_ms, id);
                }
            }
        }
        expired
    }

    /// Session `id` for the session API; `None` when it is not live.
    pub fn get(&self, id: &str) -> Option<SessionView> {
        let now = self.clock.now_ms();
        let entry = self.sessions.get(id)?;
        (entry.expires_ms() > now).then(|| view(entry.key(), entry.value(), true))
    }

    /// Applies `patch` to session `id` from the session API; `Ok(None)` when it is not live.
    pub fn patch(
        &self,
        id: &str,
        patch: &Map<String, Value>,
    ) -> Result<Option<SessionView>, Rejection> {
        if self.get(id).is_none() {
            return Ok(None);
        }
        self.modify(id, Some(patch), (None, None))
            .map_err(|rejection| self.reject(rejection))?;
        Ok(self.get(id))
    }

    /// Ends session `id` from the session API; returns whether it was live.
    pub fn invalidate(&self, id: &str) -> bool {
        self.end(id, EndReason::Invalidated)
    }

    /// Up to `limit` live sessions whose ids sort after `after`, in id order (a page of the
    /// session API's listing; the last id is the next page's `after`).
    pub fn list(&self, after: Option<&str>, limit: usize) -> Vec<SessionView> {
        let now = self.clock.now_ms();
        let mut page: std::collections::BinaryHeap<Arc<str>> = std::collections::BinaryHeap::new();
        for entry in self.sessions.iter() {
            let id = entry.key();
            if after.is_some_and(|after| &**id <= after) || entry.expires_ms() <= now {
                continue;
            }
            if page.len() < limit {
                page.push(Arc::clone(id));
            } else if page.peek().is_some_and(|largest| id < largest) {
                page.pop();
                page.push(Arc::clone(id));
            }
        }
        page.into_sorted_vec()
            .iter()
            .filter_map(|id| {
                let entry = self.sessions.get(id)?;
                Some(view(entry.key(), entry.value(), false))
            })
            .collect()
    }
}

/// Encoded attributes as the store keeps them: trimmed to their length (the encoder's buffer
/// grows by doubling, and a 1 KiB session would otherwise hold 2 KiB for good).
fn stored(data: Vec<u8>) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(data.into_boxed_slice()))
        .expect("the encoding is printable ASCII")
}

fn view(id: &str, session: &Session, with_attributes: bool) -> SessionView {
    SessionView {
        id: id.to_string(),
        route: session.route.to_string(),
        created_ms: session.created_ms,
        last_access_ms: session.last_access_ms,
        expires_ms: session.expires_ms(),
        idle_timeout_s: session.idle_timeout_ms / 1000,
        absolute_timeout_s: session.absolute_timeout_ms / 1000,
        bytes: session.data.len(),
        attributes: with_attributes.then(|| {
            serde_json::from_slice(session.data.as_bytes())
                .expect("stored attributes are a JSON object")
        }),
    }
}

/// The attributes of a session created by `patch`: the patch applied to nothing, which drops
/// its `null`s at every depth.
fn new_attributes(patch: Map<String, Value>) -> Map<String, Value> {
    encoding::merge(Map::new(), &patch)
}

/// A short, stable, non-secret name for session `id` in logs: the first 12 hex digits of its
/// SHA-256. Enough to follow one session through a log; useless for taking it over.
pub fn log_ref(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clock::ManualClock;
    use std::time::Duration;

    fn store() -> (SessionStore, Arc<ManualClock>) {
        let text = "[listen]\naddresses = [\"127.0.0.1:1\"]\n[session]\nmode = \"proxy\"\nidle_timeout = \"10m\"\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n";
        let config = Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = SessionStore::new(&config.session, clock.clone(), Vec::new(), None);
        (store, clock)
    }

    fn respond(
        store: &SessionStore,
        current: Option<&Current>,
        pairs: &[(&str, &str)],
    ) -> CookieChange {
        let mut headers = http::HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(
                http::HeaderName::from_bytes(format!("x-tandem-session-{name}").as_bytes())
                    .unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let change = store.settle(current, &mut headers, "r1", false).unwrap();
        assert!(headers.is_empty(), "session headers are taken out");
        change
    }

    fn created(change: CookieChange) -> Arc<str> {
        match change {
            CookieChange::Set { id, .. } => id,
            other => panic!("expected a new cookie, got {other:?}"),
        }
    }

    #[test]
    fn logout_with_a_patch_starts_a_fresh_session() {
        let (store, _) = store();
        let id = created(respond(&store, None, &[("patch", r#"{"user":"ann"}"#)]));
        let current = store.open(&id, "r1").unwrap();
        let change = respond(
            &store,
            Some(&current),
            &[("command", "invalidate"), ("patch", r#"{"flash":"bye"}"#)],
        );
        let fresh = created(change);
        assert_ne!(fresh, id);
        assert!(store.open(&id, "r1").is_none());
        assert_eq!(store.open(&fresh, "r1").unwrap().data, r#"{"flash":"bye"}"#);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_patch_of_only_nulls_creates_nothing() {
        let (store, _) = store();
        assert_eq!(
            respond(&store, None, &[("patch", r#"{"a":null}"#)]),
            CookieChange::Keep
        );
        assert!(store.is_empty());
    }

    #[test]
    fn the_sweeper_removes_only_what_expired_and_requeues_what_was_used() {
        let (store, clock) = store();
        let used = created(respond(&store, None, &[("patch", r#"{"a":1}"#)]));
        let unused = created(respond(&store, None, &[("patch", r#"{"b":1}"#)]));
        let renewed = created(respond(&store, None, &[("patch", r#"{"c":1}"#)]));
        let current = store.open(&renewed, "r1").unwrap();
        let renewed = created(respond(&store, Some(&current), &[("command", "renew")]));
        clock.advance(Duration::from_secs(300));
        store.open(&used, "r1").unwrap();
        store.open(&renewed, "r1").unwrap();
        clock.advance(Duration::from_secs(301));
        assert_eq!(store.sweep(), 1, "only the unused one expired");
        assert!(store.get(&unused).is_none());
        assert!(store.get(&used).is_some() && store.get(&renewed).is_some());
        clock.advance(Duration::from_secs(300));
        assert_eq!(store.sweep(), 2);
        assert!(store.is_empty());
        assert_eq!(
            store.expiry.lock().unwrap().pop_due(u64::MAX),
            None,
            "no entry left behind"
        );
    }
}
