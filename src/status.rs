//! The status page (`/status` on the admin listener): what an operator looks at during an
//! incident. One self-contained HTML document (no external assets, no script), readable on a
//! laptop and a phone, that reloads itself every few seconds: each pool and backend with its
//! state, health, open requests, request rate and last error; the sessions; the peers.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::SessionMode;
use crate::runtime::Runtime;

/// Seconds between two automatic reloads of the page.
const REFRESH_SECONDS: u32 = 5;

/// Renders the page; remembers each backend's request count between renders for its rate.
pub struct StatusPage {
    started: Instant,
    /// (pool, address) → when the page was last rendered and the backend's request count then.
    previous: Mutex<HashMap<(String, String), (Instant, u64)>>,
}

impl Default for StatusPage {
    fn default() -> Self {
        StatusPage {
            started: Instant::now(),
            previous: Mutex::new(HashMap::new()),
        }
    }
}

impl StatusPage {
    /// The page for `runtime` as it is now.
    pub fn render(&self, runtime: &Runtime) -> String {
        let snapshot = runtime.snapshot();
        let now = Instant::now();
        let mut previous = self
            .previous
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut samples = HashMap::new();
        let mut html = String::with_capacity(8192);
        let _ = write!(
            html,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
             <title>tandem status</title><style>{STYLE}</style></head><body>\
             <header><h1>tandem</h1><p>version {} · up {} · page reloads every {REFRESH_SECONDS} s · {}</p></header>",
            env!("CARGO_PKG_VERSION"),
            human(now.duration_since(self.started)),
            utc(SystemTime::now()),
        );
        html.push_str("<main><section id=\"pools\"><h2>Pools</h2>");
        for pool in &snapshot.pools {
            let _ = write!(
                html,
                "<article class=\"pool\" data-pool=\"{name}\"><h3>{name} <small>{}</small></h3>\
                 <div class=\"scroll\"><table><thead><tr><th>Backend</th><th>Route</th>\
                 <th>State</th><th>Health</th><th>Open</th><th>Req/s</th><th>Last error</th>\
                 </tr></thead><tbody>",
                pool.config.balance.name(),
                name = escape(&pool.name),
            );
            for backend in &pool.backends {
                let live = &backend.live;
                let state = backend.state().name();
                let health = if !live.is_up() {
                    "down"
                } else if backend.is_ejected() {
                    "ejected"
                } else {
                    "up"
                };
                let key = (pool.name.to_string(), backend.config.address.clone());
                let sent = live.sent();
                let rate = previous
                    .get(&key)
                    .filter(|(at, _)| now.duration_since(*at) <= Duration::from_secs(60))
                    .map(|(at, before)| {
                        let seconds = now.duration_since(*at).as_secs_f64().max(0.001);
                        format!("{:.1}", sent.saturating_sub(*before) as f64 / seconds)
                    })
                    .unwrap_or_else(|| "-".to_string());
                samples.insert(key, (now, sent));
                let last_error = live.last_error().map_or_else(
                    || "-".to_string(),
                    |error| format!("{} · {}", utc(error.at), escape(&error.reason)),
                );
                let configured = backend.config.state.name();
                let overridden = if configured == state {
                    String::new()
                } else {
                    format!(" <small>(config: {configured})</small>")
                };
                let backup = if backend.config.backup {
                    " <small>backup</small>"
                } else {
                    ""
                };
                let _ = write!(
                    html,
                    "<tr class=\"backend\" data-backend=\"{address}\" data-state=\"{state}\" data-health=\"{health}\">\
                     <td>{address}{backup}</td><td>{route}</td>\
                     <td><span class=\"badge {state}\">{state}</span>{overridden}</td>\
                     <td><span class=\"badge {health}\">{health}</span></td>\
                     <td>{}</td><td>{rate}</td><td class=\"error\">{last_error}</td></tr>",
                    live.in_flight(),
                    address = escape(&backend.config.address),
                    route = escape(&backend.config.route),
                );
            }
            html.push_str("</tbody></table></div></article>");
        }
        *previous = samples;
        html.push_str("</section><section id=\"sessions\"><h2>Sessions</h2>");
        match (&runtime.sessions, snapshot.config.session.mode) {
            (Some(store), SessionMode::Proxy) => {
                let _ = write!(
                    html,
                    "<p>proxy mode: <strong data-sessions=\"{live}\">{live}</strong> live sessions, \
                     {} of attributes</p>",
                    bytes(runtime.metrics.sessions.bytes()),
                    live = store.len(),
                );
            }
            _ => html.push_str(
                "<p>backend mode: the backends own the sessions; tandem routes on their ids.</p>",
            ),
        }
        html.push_str("</section><section id=\"peers\"><h2>Peers</h2>");
        match &runtime.cluster {
            None => html.push_str("<p>No cluster: this node is on its own.</p>"),
            Some(cluster) => {
                let _ = write!(
                    html,
                    "<p>This node: <strong>{}</strong></p><div class=\"scroll\"><table><thead><tr>\
                     <th>Peer</th><th>Address</th><th>State</th><th>Last heard</th>\
                     <th>Changes queued</th></tr></thead><tbody>",
                    escape(cluster.node_id())
                );
                for (node_id, status) in cluster.peers() {
                    let state = if status.alive { "up" } else { "down" };
                    let backlog = cluster
                        .backlog(&node_id)
                        .map_or_else(|| "not connected".to_string(), |n| n.to_string());
                    let _ = write!(
                        html,
                        "<tr class=\"peer\" data-peer=\"{id}\" data-state=\"{state}\"><td>{id}</td><td>{}</td>\
                         <td><span class=\"badge {state}\">{}</span></td><td>{} ago</td><td>{backlog}</td></tr>",
                        status.address,
                        if status.alive { "alive" } else { "dead" },
                        human(status.last_heard.elapsed()),
                        id = escape(&node_id),
                    );
                }
                html.push_str("</tbody></table></div>");
            }
        }
        html.push_str("</section></main></body></html>\n");
        html
    }
}

/// The page's stylesheet: light and dark, tables scroll sideways on narrow screens.
const STYLE: &str = "\
:root{color-scheme:light dark;font-family:system-ui,sans-serif;line-height:1.4}\
body{margin:0 auto;max-width:72rem;padding:0.75rem}\
h1{margin:0;font-size:1.5rem}h2{font-size:1.2rem;margin:1.5rem 0 0.5rem}\
h3{font-size:1rem;margin:1rem 0 0.25rem}header p{margin:0.25rem 0;color:GrayText}\
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:0.9rem}\
th,td{text-align:left;padding:0.35rem 0.5rem;border-bottom:1px solid #8884;white-space:nowrap}\
td.error{white-space:normal;min-width:12rem}\
.badge{padding:0.1rem 0.45rem;border-radius:0.6rem;font-weight:600;font-size:0.8rem}\
.active,.up{background:#1a7f3722;color:#1a7f37}.draining,.ejected{background:#9a670022;color:#9a6700}\
.stopped,.down{background:#cf222e22;color:#cf222e}";

/// `text` safe inside HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A duration as people read it: `3d 4h`, `5m 12s`.
fn human(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h {}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d {}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

/// A moment as `HH:MM:SS UTC`.
fn utc(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let day = seconds % 86400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

/// A byte count with a binary unit.
fn bytes(count: i64) -> String {
    bytesize::ByteSize::b(count.max(0) as u64)
        .display()
        .iec()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_config_cannot_inject_markup() {
        assert_eq!(
            escape("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(312)), "5m 12s");
        assert_eq!(human(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d 4h");
    }
}
