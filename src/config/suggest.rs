//! "Did you mean": tandem's word for a misspelt key or value, or for the word that mod_jk's
//! `workers.properties` or HAProxy uses where tandem says another (README, "Coming from mod_jk").

/// Words of mod_jk and HAProxy (and a few of nginx) where tandem says another, one row each:
/// where the word is written (the table, for a key; the key, for a value; dotted, without
/// indexes), the word (lowercase), and what tandem calls it there.
const SYNONYMS: &[(&str, &str, &str)] = &[
    // mod_jk's activation (A, D, S) and HAProxy's server states.
    ("pool.backend.state", "a", "active"),
    ("pool.backend.state", "enabled", "active"),
    ("pool.backend.state", "ready", "active"),
    ("pool.backend.state", "d", "draining"),
    ("pool.backend.state", "disabled", "draining"),
    ("pool.backend.state", "drain", "draining"),
    ("pool.backend.state", "s", "stopped"),
    ("pool.backend.state", "stop", "stopped"),
    ("pool.backend.state", "maint", "stopped"),
    // mod_jk's method (R, B) and HAProxy's balance algorithms.
    ("pool.balance", "r", "round_robin"),
    ("pool.balance", "request", "round_robin"),
    ("pool.balance", "roundrobin", "round_robin"),
    ("pool.balance", "rr", "round_robin"),
    ("pool.balance", "static-rr", "weighted"),
    ("pool.balance", "b", "least_conn"),
    ("pool.balance", "busyness", "least_conn"),
    ("pool.balance", "leastconn", "least_conn"),
    ("pool.balance", "source", "ip_hash"),
    ("pool.balance", "random", "random_two"),
    // HAProxy's cookie modes and stick tables.
    ("pool.sticky.mode", "prefix", "route"),
    ("pool.sticky.mode", "stick-table", "learn"),
    // mod_jk's worker keys and HAProxy's server options, where a backend is written.
    ("pool.backend", "host", "address"),
    ("pool.backend", "port", "address"),
    ("pool.backend", "lbfactor", "weight"),
    ("pool.backend", "activation", "state"),
    ("pool.backend", "distance", "backup"),
    ("pool.backend", "jvmroute", "route"),
    ("pool.backend", "maxconn", "max_connections"),
    ("pool.backend", "connection_pool_size", "max_connections"),
    ("pool.backend", "check", "[pool.health] path"),
    ("pool.backend", "inter", "[pool.health] interval"),
    ("pool.backend", "fall", "[pool.health] fall"),
    ("pool.backend", "rise", "[pool.health] rise"),
    // mod_jk's load balancer keys and HAProxy's backend keywords, where a pool is written.
    ("pool", "method", "balance"),
    ("pool", "balance_workers", "[[pool.backend]]"),
    ("pool", "server", "[[pool.backend]]"),
    ("pool", "reply_timeout", "response_timeout"),
    ("pool", "timeout_server", "response_timeout"),
    ("pool", "timeout_connect", "connect_timeout"),
    ("pool", "connection_pool_timeout", "idle_timeout"),
    ("pool", "sticky_session", "[pool.sticky] mode"),
    ("pool", "sticky_session_force", "[pool.sticky] force"),
    ("pool", "session_cookie", "[pool.sticky] cookies"),
    ("pool", "session_path", "[pool.sticky] url_parameter"),
    ("pool", "retries", "[pool.retry] attempts"),
    ("pool", "recover_time", "[pool.passive] recover_after"),
    ("pool", "max_fails", "[pool.passive] max_fails"),
    ("pool", "fail_timeout", "[pool.passive] fail_window"),
    ("pool", "maxqueue", "max_queue"),
    ("pool", "timeout_queue", "queue_timeout"),
    ("pool", "inter", "[pool.health] interval"),
    ("pool", "fall", "[pool.health] fall"),
    ("pool", "rise", "[pool.health] rise"),
    ("pool.health", "inter", "interval"),
    ("pool.health", "uri", "path"),
    ("pool.passive", "fail_timeout", "fail_window"),
    ("pool.passive", "recover_time", "recover_after"),
    ("pool.retry", "retries", "attempts"),
    ("pool.sticky", "session_cookie", "cookies"),
    ("pool.sticky", "session_path", "url_parameter"),
    ("pool.sticky", "sticky_session_force", "force"),
    ("listen", "maxconn", "max_connections"),
    ("listen", "bind", "addresses"),
    // HAProxy's `bind ... accept-proxy` (also written accept_proxy).
    ("listen", "accept-proxy", "proxy_protocol"),
    ("listen", "acceptproxy", "proxy_protocol"),
    // nginx's and HAProxy's names for the access log's format.
    ("log", "log_format", "access_log_format"),
    ("log", "log-format", "access_log_format"),
    ("log.access_log_format", "httplog", "haproxy"),
    ("log.access_log_format", "main", "combined"),
    ("log.access_log_template", "remote_addr", "client_ip"),
    ("log.access_log_template", "request_uri", "uri"),
    ("log.access_log_template", "http_user_agent", "user_agent"),
    ("log.access_log_template", "http_referer", "referer"),
    ("log.access_log_template", "request_time", "total_ms"),
    (
        "log.access_log_template",
        "upstream_response_time",
        "upstream_ms",
    ),
];

/// How alike (Jaro-Winkler, 0 to 1) a written word and a known one must be to be suggested.
const ALIKE: f64 = 0.85;

/// tandem's word for `written` at `place` (see [`SYNONYMS`]): a synonym of mod_jk or HAProxy
/// first, else the `known` word spelt most alike, if any is close enough.
pub(super) fn did_you_mean<S: AsRef<str>>(
    place: &str,
    written: &str,
    known: &[S],
) -> Option<String> {
    let lower = written.to_ascii_lowercase();
    let synonym = SYNONYMS
        .iter()
        .find(|(at, word, _)| *at == place && (*word == lower || *word == lower.replace('_', "")));
    if let Some((_, _, tandem)) = synonym {
        return Some(tandem.to_string());
    }
    known
        .iter()
        .map(|word| (strsim::jaro_winkler(&lower, word.as_ref()), word.as_ref()))
        .filter(|(score, _)| *score >= ALIKE)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, word)| word.to_string())
}

/// `; did you mean `word`?` for an unknown value of the key at `place`, or nothing.
pub(super) fn hint(place: &str, written: &str, known: &[&str]) -> String {
    did_you_mean(place, written, known)
        .map(|word| format!("; did you mean `{word}`?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synonyms_come_first_then_the_closest_spelling() {
        let states = ["active", "draining", "stopped"];
        let rows = [
            (
                "pool.backend.state",
                "disabled",
                &states[..],
                Some("draining"),
            ),
            ("pool.backend.state", "D", &states, Some("draining")),
            ("pool.backend.state", "drainig", &states, Some("draining")),
            ("pool.backend.state", "sleepy", &states, None),
            (
                "listen",
                "max_conn",
                &["max_connections", "max_headers"],
                Some("max_connections"),
            ),
            (
                "pool",
                "balanse",
                &["name", "balance", "backend"],
                Some("balance"),
            ),
            ("pool", "lbfactor", &["name", "balance"], None),
            ("pool.backend", "lbfactor", &["weight"], Some("weight")),
            (
                "pool.balance",
                "least-conn",
                &["round_robin", "least_conn"],
                Some("least_conn"),
            ),
        ];
        for (place, written, known, expected) in rows {
            assert_eq!(
                did_you_mean(place, written, known).as_deref(),
                expected,
                "{place}: {written}"
            );
        }
    }

    /// The keys serde knows in `table` (dotted, `pool` and `pool.backend` being arrays), as
    /// the error for an unknown key lists them.
    fn known_keys(table: &str) -> Vec<String> {
        let mut header = String::new();
        let mut text = String::new();
        for name in table.split('.') {
            header = if header.is_empty() {
                name.to_string()
            } else {
                format!("{header}.{name}")
            };
            let array = header == "pool" || header == "pool.backend";
            text += &if array {
                format!("[[{header}]]\n")
            } else {
                format!("[{header}]\n")
            };
        }
        text += "zzz = 1\n";
        let errors = crate::config::Config::parse(std::path::Path::new("t.toml"), &text)
            .expect_err("an unknown key")
            .0;
        let error = errors
            .iter()
            .find(|e| e.key.ends_with("zzz"))
            .expect("zzz refused");
        let known = error
            .message
            .split("known keys: ")
            .nth(1)
            .expect("known keys listed");
        known.split(", ").map(str::to_string).collect()
    }

    #[test]
    fn every_synonym_names_a_word_tandem_has_in_its_place() {
        use crate::config::{BackendState, BalanceMethod};
        for (place, word, tandem) in SYNONYMS {
            assert_eq!(*word, word.to_ascii_lowercase(), "{place}: {word}");
            let known: Vec<String> = match *place {
                "pool.backend.state" => BackendState::NAMES
                    .iter()
                    .map(|(n, _)| n.to_string())
                    .collect(),
                "pool.balance" => BalanceMethod::NAMES
                    .iter()
                    .map(|(n, _)| n.to_string())
                    .collect(),
                "pool.sticky.mode" => ["route", "learn", "insert", "off"]
                    .map(String::from)
                    .to_vec(),
                "log.access_log_format" => {
                    crate::config::ACCESS_LOG_FORMATS.map(String::from).to_vec()
                }
                "log.access_log_template" => crate::logging::access::Template::field_names()
                    .map(String::from)
                    .collect(),
                table => match tandem.strip_prefix('[') {
                    Some(elsewhere) => {
                        let (table, key) =
                            elsewhere.trim_start_matches('[').split_once(']').unwrap();
                        let key = key.trim_start_matches(']').trim();
                        let (table, key) = if key.is_empty() {
                            table.rsplit_once('.').unwrap()
                        } else {
                            (table, key)
                        };
                        assert!(
                            known_keys(table).iter().any(|k| k == key),
                            "{place}: {word} -> {tandem}"
                        );
                        continue;
                    }
                    None => known_keys(table),
                },
            };
            assert!(
                known.iter().any(|k| k == tandem),
                "{place}: {word} -> {tandem} not in {known:?}"
            );
        }
    }
}
