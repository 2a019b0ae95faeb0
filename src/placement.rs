//! Where sessions live when their id does not say. [`StickyTable`] holds, per session, the
//! backend that owns it and the id under which the backends know it: sessions whose route was
//! taken over (their backend could not serve them, so they moved for good, as Tomcat's
//! JvmRouteBinderValve has it), and in `learn` mode every session id learned from a backend's
//! Set-Cookie. It is the one piece of sticky state that peers will replicate, so it stays
//! behind this small interface.
//!
//! [`CookieTemplates`] remembers how backends set their session cookies (Path, HttpOnly,
//! Secure, SameSite), so that the cookie tandem rewrites after a takeover is the one the
//! backend would have set.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cookie::Cookie;

/// Where a session lives, and the id the backends know it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The route of the backend that owns the session now.
    pub route: String,
    /// The session id as the backends know it: with session replication (Tomcat's
    /// DeltaManager) the new owner holds the session under its original id, route included.
    pub backend_id: String,
}

/// Placements by session key (the id without its route in `route` mode, the whole id in `learn`
/// mode), bounded in size and age.
#[derive(Debug)]
pub struct StickyTable {
    inner: Mutex<Entries>,
    /// An entry unused for this long is forgotten (the session's idle timeout).
    ttl: Duration,
    /// Most entries kept; the oldest go first, so a flood of forged ids cannot grow the table.
    max_entries: usize,
}

#[derive(Debug, Default)]
struct Entries {
    by_base: HashMap<String, Entry>,
    /// Bases in the order they were recorded, with the sequence number of that record (an
    /// entry recorded again leaves a stale pair behind, skipped on eviction).
    order: VecDeque<(String, u64)>,
    next_sequence: u64,
}

#[derive(Debug)]
struct Entry {
    takeover: Placement,
    last_used: Instant,
    sequence: u64,
}

impl StickyTable {
    /// An empty table.
    pub fn new(ttl: Duration, max_entries: usize) -> StickyTable {
        StickyTable {
            inner: Mutex::new(Entries::default()),
            ttl,
            max_entries: max_entries.max(1),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The takeover of session `base`, if one is recorded and still fresh; using it keeps it fresh.
    pub fn get(&self, base: &str) -> Option<Placement> {
        let mut entries = self.entries();
        let entry = entries.by_base.get_mut(base)?;
        if entry.last_used.elapsed() > self.ttl {
            entries.by_base.remove(base);
            return None;
        }
        entry.last_used = Instant::now();
        Some(entry.takeover.clone())
    }

    /// Every live entry (for a peer that needs the full state).
    pub fn snapshot(&self) -> Vec<(String, Placement)> {
        let entries = self.entries();
        entries
            .by_base
            .iter()
            .filter(|(_, entry)| entry.last_used.elapsed() <= self.ttl)
            .map(|(base, entry)| (base.clone(), entry.takeover.clone()))
            .collect()
    }

    /// Records that session `base` now lives at `takeover.route`.
    pub fn record(&self, base: &str, takeover: Placement) {
        let mut entries = self.entries();
        let sequence = entries.next_sequence;
        entries.next_sequence += 1;
        while entries.by_base.len() >= self.max_entries && !entries.by_base.contains_key(base) {
            let Some((oldest, oldest_sequence)) = entries.order.pop_front() else {
                break;
            };
            if entries
                .by_base
                .get(&oldest)
                .is_some_and(|e| e.sequence == oldest_sequence)
            {
                entries.by_base.remove(&oldest);
            }
        }
        entries.by_base.insert(
            base.to_string(),
            Entry {
                takeover,
                last_used: Instant::now(),
                sequence,
            },
        );
        entries.order.push_back((base.to_string(), sequence));
        // Stale pairs can pile up when the same sessions are taken over again and again.
        if entries.order.len() > 2 * self.max_entries {
            let live: HashMap<String, u64> = entries
                .by_base
                .iter()
                .map(|(k, e)| (k.clone(), e.sequence))
                .collect();
            entries
                .order
                .retain(|(base, sequence)| live.get(base) == Some(sequence));
        }
    }

    /// Forgets session `base`: its backend replaced it with a new session, so the placement
    /// names a session no client holds any more.
    pub fn remove(&self, base: &str) {
        // Its pair in `order` goes stale, skipped on eviction like a re-recorded entry's.
        self.entries().by_base.remove(base);
    }

    /// Entries held now, expired ones included until they are next looked at or evicted.
    pub fn len(&self) -> usize {
        self.entries().by_base.len()
    }

    /// Whether no takeover is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Most distinct session cookie shapes remembered per pool (one per application Path, usually).
const MAX_TEMPLATES: usize = 32;

/// How the backends of a pool set their session cookies, per cookie name and Path.
#[derive(Debug, Default)]
pub struct CookieTemplates {
    templates: Mutex<Vec<Cookie<'static>>>,
}

impl CookieTemplates {
    /// Remembers the attributes of a session cookie a backend set (its value is not kept).
    pub fn learn(&self, cookie: &Cookie<'_>) {
        let mut template = Cookie::new(cookie.name().to_string(), "");
        if let Some(path) = cookie.path() {
            template.set_path(path.to_string());
        }
        template.set_http_only(cookie.http_only());
        template.set_secure(cookie.secure());
        template.set_same_site(cookie.same_site());
        let mut templates = self
            .templates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        templates.retain(|t| !(t.name() == template.name() && t.path() == template.path()));
        if templates.len() >= MAX_TEMPLATES {
            templates.remove(0);
        }
        templates.push(template);
    }

    /// The cookie `name=value` for a request to `request_path`, shaped as the backend's cookie
    /// with the longest Path that covers the request; `Path=/; HttpOnly` when none was seen.
    pub fn cookie(&self, name: &str, value: &str, request_path: &str) -> Cookie<'static> {
        let templates = self
            .templates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let best = templates
            .iter()
            .filter(|t| t.name() == name && path_covers(t.path().unwrap_or("/"), request_path))
            .max_by_key(|t| t.path().map_or(0, str::len));
        let mut cookie = match best {
            Some(template) => template.clone(),
            None => {
                let mut cookie = Cookie::new(name.to_string(), "");
                cookie.set_path("/");
                cookie.set_http_only(true);
                cookie
            }
        };
        cookie.set_value(value.to_string());
        cookie
    }
}

/// Whether a cookie with Path `path` is sent with a request for `request_path` (RFC 6265 §5.1.4).
fn path_covers(path: &str, request_path: &str) -> bool {
    request_path == path
        || (request_path.starts_with(path)
            && (path.ends_with('/') || request_path[path.len()..].starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn takeover(route: &str) -> Placement {
        Placement {
            route: route.into(),
            backend_id: "X.tc1".into(),
        }
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_oldest() {
        let table = StickyTable::new(Duration::from_secs(60), 3);
        for i in 0..100 {
            table.record(&format!("forged{i}"), takeover("tc2"));
        }
        assert_eq!(table.len(), 3);
        assert!(table.get("forged99").is_some());
        assert!(table.get("forged96").is_none());
        table.record("forged99", takeover("tc3"));
        assert_eq!(table.get("forged99").unwrap().route, "tc3");
    }

    #[test]
    fn a_removed_entry_is_gone_and_frees_its_place() {
        let table = StickyTable::new(Duration::from_secs(60), 2);
        table.record("X", takeover("tc2"));
        table.record("Y", takeover("tc2"));
        table.remove("X");
        table.remove("never recorded");
        assert!(table.get("X").is_none());
        table.record("Z", takeover("tc2"));
        assert!(
            table.get("Y").is_some(),
            "the removed entry's place was free"
        );
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn entries_expire_when_unused() {
        let table = StickyTable::new(Duration::from_millis(1), 10);
        table.record("X", takeover("tc2"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(table.get("X").is_none());
    }

    #[test]
    fn rewritten_cookies_take_the_backends_shape() {
        let templates = CookieTemplates::default();
        templates.learn(&Cookie::parse("JSESSIONID=A.tc1; Path=/shop; HttpOnly; Secure").unwrap());
        let cookie = templates.cookie("JSESSIONID", "A.tc2", "/shop/cart");
        assert_eq!(
            cookie.to_string(),
            "JSESSIONID=A.tc2; HttpOnly; Secure; Path=/shop"
        );
        let other = templates.cookie("JSESSIONID", "A.tc2", "/shopping");
        assert_eq!(other.to_string(), "JSESSIONID=A.tc2; HttpOnly; Path=/");
    }
}
