//! Which pool serves a request: an immutable table matched on Host and path prefix.
//!
//! The most specific match wins: an exact host beats a `*.` wildcard (the longer wildcard first),
//! which beats a pool that names no host; among those, the longest path prefix wins. Path prefixes
//! match as nginx's prefix locations and HAProxy's `path_beg` do: `/api` also matches `/apix`.

use crate::config::PoolConfig;

/// The pools' matchers, most specific first.
#[derive(Debug)]
pub struct RouteTable {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    host: HostMatch,
    path: String,
    pool: usize,
}

#[derive(Debug, Clone)]
enum HostMatch {
    Any,
    /// `*.example.com`, kept as `.example.com`.
    Suffix(String),
    Exact(String),
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
            HostMatch::Exact(exact) => host == exact,
        }
    }

    fn rank(&self) -> (u8, usize) {
        match self {
            HostMatch::Any => (0, 0),
            HostMatch::Suffix(suffix) => (1, suffix.len()),
            HostMatch::Exact(_) => (2, 0),
        }
    }
}

impl RouteTable {
    /// Builds the table; pool indexes are positions in `pools`.
    pub fn new(pools: &[PoolConfig]) -> RouteTable {
        let mut entries = Vec::new();
        for (pool, config) in pools.iter().enumerate() {
            let hosts: Vec<HostMatch> = if config.hosts.is_empty() {
                vec![HostMatch::Any]
            } else {
                config
                    .hosts
                    .iter()
                    .map(|h| match h.strip_prefix('*') {
                        Some(suffix) => HostMatch::Suffix(suffix.to_string()),
                        None => HostMatch::Exact(h.clone()),
                    })
                    .collect()
            };
            let paths = if config.paths.is_empty() {
                vec!["/".to_string()]
            } else {
                config.paths.clone()
            };
            for host in hosts {
                for path in &paths {
                    entries.push(Entry {
                        host: host.clone(),
                        path: path.clone(),
                        pool,
                    });
                }
            }
        }
        entries.sort_by(|a, b| {
            b.host
                .rank()
                .cmp(&a.host.rank())
                .then(b.path.len().cmp(&a.path.len()))
                .then(a.pool.cmp(&b.pool))
        });
        RouteTable { entries }
    }

    /// The pool for `host` (lowercase, no port) and `path`, if any pool serves them.
    pub fn lookup(&self, host: &str, path: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|e| e.host.matches(host) && path.starts_with(e.path.as_str()))
            .map(|e| e.pool)
    }
}

/// The host part of a Host header or URI authority, lowercased, without port or trailing dot.
pub fn normalize_host(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BalanceMethod, PoolConfig};
    use std::time::Duration;

    fn pool(hosts: &[&str], paths: &[&str]) -> PoolConfig {
        PoolConfig {
            name: format!("{hosts:?}{paths:?}"),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            balance: BalanceMethod::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle_per_backend: 1,
            slow_start: None,
            max_queue: 100,
            queue_timeout: Duration::from_secs(5),
            sticky: None,
            health: None,
            tls: None,
            retry: crate::config::RetryConfig {
                attempts: 1,
                budget: 0.0,
                methods: vec![],
            },
            passive: crate::config::PassiveConfig {
                max_fails: 0,
                fail_window: Duration::from_secs(1),
                recover_after: Duration::from_secs(1),
                fail_on_status: vec![],
            },
            backends: vec![],
        }
    }

    #[test]
    fn most_specific_match_wins() {
        let table = RouteTable::new(&[
            pool(&[], &[]),
            pool(&[], &["/api"]),
            pool(&["*.example.com"], &[]),
            pool(&["shop.example.com"], &[]),
            pool(&["shop.example.com"], &["/static"]),
        ]);
        assert_eq!(table.lookup("other.org", "/"), Some(0));
        assert_eq!(table.lookup("other.org", "/api/v1"), Some(1));
        assert_eq!(table.lookup("www.example.com", "/api"), Some(2));
        assert_eq!(table.lookup("example.com", "/"), Some(0));
        assert_eq!(table.lookup("shop.example.com", "/cart"), Some(3));
        assert_eq!(table.lookup("shop.example.com", "/static/a.css"), Some(4));
    }

    #[test]
    fn no_default_pool_means_no_match() {
        let table = RouteTable::new(&[pool(&["a.test"], &[])]);
        assert_eq!(table.lookup("b.test", "/"), None);
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("localhost"), "localhost");
    }
}
