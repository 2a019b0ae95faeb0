//! The status page (`/status` on the admin listener): what an operator looks at during an
//! incident. One self-contained HTML document (no external assets), readable on a laptop and a
//! phone, that reloads itself every few seconds: each pool and backend with its state, weight,
//! health (the last check in words and its latency), open requests, request rate, totals
//! (requests, bytes, responses by status class, errors, retries, failovers), downtime and time
//! since the last change; the sessions; the peers. The same figures are exported as
//! `/status.json` and as `/status.csv` (HAProxy's stats CSV columns where the meaning matches).
//!
//! The page's buttons (drain, stop, enable, set weight) call the admin API with `fetch()` and
//! `Authorization: Bearer <token>`, the token typed into the page and kept in the tab's
//! `sessionStorage`. That is what makes them safe from cross-site request forgery: a page of
//! another site cannot send an `Authorization` header (nor a `PUT`) without a CORS preflight,
//! which tandem never grants (it sends no CORS headers), and the admin listener also refuses
//! any state-changing request whose `Origin` or `Sec-Fetch-Site` says it comes from elsewhere
//! (see `admin.rs`).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::SessionMode;
use crate::pool::{Backend, LastError, Pool};
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
             <noscript><meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\"></noscript>\
             <title>tandem status</title><style>{STYLE}</style></head><body>\
             <header><h1>tandem</h1><p>version {} · up {} · page reloads every {REFRESH_SECONDS} s · {} · \
             <a href=\"/status.json\">JSON</a> · <a href=\"/status.csv\">CSV</a></p>\
             <form id=\"admin-token\"><label>Admin token \
             <input type=\"password\" name=\"token\" autocomplete=\"off\"></label> \
             <span id=\"action-result\" role=\"status\"></span></form></header>",
            env!("CARGO_PKG_VERSION"),
            human(now.duration_since(self.started)),
            utc(SystemTime::now()),
        );
        html.push_str("<main><section id=\"pools\"><h2>Pools</h2>");
        for pool in &snapshot.pools {
            let status = PoolStatus::of(pool);
            let _ = write!(
                html,
                "<article class=\"pool\" data-pool=\"{name}\"><h3>{name} <small>{}</small></h3>\
                 <div class=\"scroll\"><table><thead><tr><th>Backend</th><th>Route</th>\
                 <th>State</th><th>Weight</th><th>Health</th><th>Last check</th><th>Open</th>\
                 <th>Req/s</th><th>Requests</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th>\
                 <th>Errors</th><th>Retries</th><th>Failovers</th><th>Sent</th><th>Downtime</th>\
                 <th>Last change</th><th>Last error</th><th>Actions</th></tr></thead><tbody>",
                status.balance,
                name = escape(&pool.name),
            );
            for (backend, row) in pool.backends.iter().zip(&status.backends) {
                let key = (pool.name.to_string(), row.address.clone());
                let sent = backend.live.sent();
                let rate = previous
                    .get(&key)
                    .filter(|(at, _)| now.duration_since(*at) <= Duration::from_secs(60))
                    .map(|(at, before)| {
                        let seconds = now.duration_since(*at).as_secs_f64().max(0.001);
                        format!("{:.1}", sent.saturating_sub(*before) as f64 / seconds)
                    })
                    .unwrap_or_else(|| "-".to_string());
                samples.insert(key, (now, sent));
                let last_error = row.last_error.as_ref().map_or_else(
                    || "-".to_string(),
                    |error| format!("{} · {}", utc(error.at), escape(&error.reason)),
                );
                let state = row.state;
                let health = row.health;
                let overridden = |shown: String, configured: String| {
                    if shown == configured {
                        String::new()
                    } else {
                        format!(" <small>(config: {configured})</small>")
                    }
                };
                let state_note = overridden(state.to_string(), row.configured_state.to_string());
                let weight_note =
                    overridden(row.weight.to_string(), row.configured_weight.to_string());
                let backup = if row.backup {
                    " <small>backup</small>"
                } else {
                    ""
                };
                let check = row
                    .check
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |check| escape(&check.result));
                let counts = &row.counts;
                let _ = write!(
                    html,
                    "<tr class=\"backend\" data-backend=\"{address}\" data-route=\"{route}\" data-state=\"{state}\" data-health=\"{health}\" data-weight=\"{weight}\">\
                     <td>{address}{backup}</td><td>{route}</td>\
                     <td><span class=\"badge {state}\">{state}</span>{state_note}</td>\
                     <td>{weight}{weight_note}</td>\
                     <td><span class=\"badge {health}\">{health}</span></td><td class=\"check\">{check}</td>\
                     <td>{}</td><td>{rate}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ago</td>\
                     <td class=\"error\">{last_error}</td>\
                     <td class=\"actions\"><button type=\"button\" data-action=\"draining\">drain</button> \
                     <button type=\"button\" data-action=\"stopped\">stop</button> \
                     <button type=\"button\" data-action=\"active\">enable</button> \
                     <input name=\"weight\" type=\"number\" min=\"1\" max=\"1000\" value=\"{weight}\" aria-label=\"weight\"> \
                     <button type=\"button\" data-action=\"weight\">set weight</button></td></tr>",
                    row.in_flight,
                    counts.requests,
                    counts.responses.c2xx,
                    counts.responses.c3xx,
                    counts.responses.c4xx,
                    counts.responses.c5xx,
                    counts.errors,
                    counts.retries,
                    counts.failovers,
                    bytes(counts.bytes_out as i64),
                    human(Duration::from_secs(row.downtime_seconds)),
                    human(Duration::from_secs(row.last_change_seconds)),
                    address = escape(&row.address),
                    route = escape(&row.route),
                    weight = row.weight,
                );
            }
            let totals = &status.totals;
            let _ = write!(
                html,
                "</tbody><tfoot><tr class=\"totals\"><th colspan=\"8\">pool total</th><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td colspan=\"4\"></td></tr></tfoot></table></div></article>",
                totals.requests,
                totals.responses.c2xx,
                totals.responses.c3xx,
                totals.responses.c4xx,
                totals.responses.c5xx,
                totals.errors,
                totals.retries,
                totals.failovers,
                bytes(totals.bytes_out as i64),
            );
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
        let _ = writeln!(
            html,
            "</section></main><script>const REFRESH_SECONDS = {REFRESH_SECONDS};{SCRIPT}</script></body></html>"
        );
        html
    }
}

/// `/status.json`: every pool with its totals and its backends, as the page shows them.
pub fn render_json(runtime: &Runtime) -> serde_json::Value {
    let pools: Vec<PoolStatus> = runtime
        .snapshot()
        .pools
        .iter()
        .map(|pool| PoolStatus::of(pool))
        .collect();
    serde_json::json!({ "pools": pools })
}

/// The columns of `/status.csv`, named as in HAProxy's stats CSV where the meaning matches,
/// so that tools reading HAProxy's CSV by column name read this too.
const CSV_COLUMNS: &str = "pxname,svname,scur,stot,bout,eresp,wretr,wredis,status,weight,act,bck,\
lastchg,downtime,check_status,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,last_chk";

/// `/status.csv`: a `# ` header naming the columns, then per pool one row per backend (its
/// address as `svname`) and a `BACKEND` row with the pool's totals, as HAProxy lays them out.
pub fn render_csv(runtime: &Runtime) -> String {
    let mut out = format!("# {CSV_COLUMNS}\n");
    for pool in &runtime.snapshot().pools {
        let status = PoolStatus::of(pool);
        for row in &status.backends {
            let haproxy_status = match (row.state, row.health) {
                ("stopped", _) => "MAINT",
                (_, "down") => "DOWN",
                (_, "ejected") => "NOLB",
                ("draining", _) => "DRAIN",
                _ => "UP",
            };
            let (code, duration, words) =
                row.check.as_ref().map_or(("", String::new(), ""), |check| {
                    (
                        check.code,
                        check.duration_ms.to_string(),
                        check.result.as_str(),
                    )
                });
            csv_row(
                &mut out,
                &status.name,
                &row.address,
                row.in_flight,
                &row.counts,
                haproxy_status,
                row.weight,
                (u32::from(!row.backup), u32::from(row.backup)),
                (
                    row.last_change_seconds.to_string(),
                    row.downtime_seconds.to_string(),
                ),
                (code, &duration, words),
            );
        }
        let up = pool.backends.iter().any(|backend| backend.takes_new_work());
        let weight = status.backends.iter().map(|row| row.weight).sum();
        let backups = status.backends.iter().filter(|row| row.backup).count() as u32;
        let in_flight = status.backends.iter().map(|row| row.in_flight).sum();
        csv_row(
            &mut out,
            &status.name,
            "BACKEND",
            in_flight,
            &status.totals,
            if up { "UP" } else { "DOWN" },
            weight,
            (status.backends.len() as u32 - backups, backups),
            (String::new(), String::new()),
            ("", "", ""),
        );
    }
    out
}

/// One line of `/status.csv`, in [`CSV_COLUMNS`] order.
#[allow(clippy::too_many_arguments)]
fn csv_row(
    out: &mut String,
    pool: &str,
    server: &str,
    in_flight: usize,
    counts: &Counts,
    status: &str,
    weight: u32,
    (active, backup): (u32, u32),
    (last_change, downtime): (String, String),
    (check_code, check_duration, check_words): (&str, &str, &str),
) {
    let classes = &counts.responses;
    let _ = writeln!(
        out,
        "{},{},{in_flight},{},{},{},{},{},{status},{weight},{active},{backup},{last_change},{downtime},\
         {check_code},{check_duration},{},{},{},{},{},{}",
        csv_field(pool),
        csv_field(server),
        counts.requests,
        counts.bytes_out,
        counts.errors,
        counts.retries,
        counts.failovers,
        classes.c1xx,
        classes.c2xx,
        classes.c3xx,
        classes.c4xx,
        classes.c5xx,
        csv_field(check_words),
    );
}

/// `text` as one CSV field (RFC 4180): quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// A pool's figures: its backends' and their sums.
#[derive(serde::Serialize)]
struct PoolStatus {
    name: String,
    balance: &'static str,
    /// Sums of the backends' counts.
    totals: Counts,
    backends: Vec<BackendStatus>,
}

impl PoolStatus {
    fn of(pool: &Pool) -> PoolStatus {
        let backends: Vec<BackendStatus> =
            pool.backends.iter().map(|b| BackendStatus::of(b)).collect();
        let mut totals = Counts::default();
        for backend in &backends {
            totals.add(&backend.counts);
        }
        PoolStatus {
            name: pool.name.to_string(),
            balance: pool.config.balance.name(),
            totals,
            backends,
        }
    }
}

/// One backend's figures, read once for the page and both exports.
#[derive(serde::Serialize)]
struct BackendStatus {
    address: String,
    route: String,
    backup: bool,
    /// The state in force (the admin API's, else the file's) and the file's.
    state: &'static str,
    configured_state: &'static str,
    /// `up`, `down` (active checks) or `ejected` (passive checks).
    health: &'static str,
    /// The weight in force (the admin API's, else the file's) and the file's.
    weight: u32,
    configured_weight: u32,
    in_flight: usize,
    #[serde(flatten)]
    counts: Counts,
    /// The latest active health check; `null` without checks or before the first.
    check: Option<CheckStatus>,
    /// Seconds since the health or admin state last changed.
    last_change_seconds: u64,
    /// Seconds the health checks have held it down, in all.
    downtime_seconds: u64,
    #[serde(serialize_with = "last_error")]
    last_error: Option<LastError>,
}

impl BackendStatus {
    fn of(backend: &Backend) -> BackendStatus {
        let live = &backend.live;
        let health = if !live.is_up() {
            "down"
        } else if backend.is_ejected() {
            "ejected"
        } else {
            "up"
        };
        let counters = &live.counters;
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let class = |i: usize| load(&counters.by_class[i]);
        BackendStatus {
            address: backend.config.address.clone(),
            route: backend.config.route.clone(),
            backup: backend.config.backup,
            state: backend.state().name(),
            configured_state: backend.config.state.name(),
            health,
            weight: backend.weight(),
            configured_weight: backend.config.weight,
            in_flight: live.in_flight(),
            counts: Counts {
                requests: load(&counters.responses),
                bytes_out: load(&counters.bytes_out),
                responses: StatusClasses {
                    c1xx: class(0),
                    c2xx: class(1),
                    c3xx: class(2),
                    c4xx: class(3),
                    c5xx: class(4),
                },
                errors: load(&counters.errors),
                retries: load(&counters.retries),
                failovers: load(&counters.failovers),
            },
            check: live.last_check().map(|check| CheckStatus {
                passed: check.passed,
                code: check.code,
                result: check.words,
                duration_ms: check.duration_ms,
            }),
            last_change_seconds: live.since_last_change().as_secs(),
            downtime_seconds: live.downtime().as_secs(),
            last_error: live.last_error(),
        }
    }
}

/// Totals of a backend, or of a pool's backends summed.
#[derive(serde::Serialize, Default)]
struct Counts {
    /// Responses finished, whatever their status.
    requests: u64,
    /// Response body bytes sent to clients.
    bytes_out: u64,
    responses: StatusClasses,
    /// Failed attempts (connect errors, timeouts, resets, `fail_on_status`).
    errors: u64,
    retries: u64,
    failovers: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.bytes_out += other.bytes_out;
        self.responses.c1xx += other.responses.c1xx;
        self.responses.c2xx += other.responses.c2xx;
        self.responses.c3xx += other.responses.c3xx;
        self.responses.c4xx += other.responses.c4xx;
        self.responses.c5xx += other.responses.c5xx;
        self.errors += other.errors;
        self.retries += other.retries;
        self.failovers += other.failovers;
    }
}

/// Responses by status class.
#[derive(serde::Serialize, Default)]
struct StatusClasses {
    #[serde(rename = "1xx")]
    c1xx: u64,
    #[serde(rename = "2xx")]
    c2xx: u64,
    #[serde(rename = "3xx")]
    c3xx: u64,
    #[serde(rename = "4xx")]
    c4xx: u64,
    #[serde(rename = "5xx")]
    c5xx: u64,
}

/// The latest health check as the exports give it.
#[derive(serde::Serialize)]
struct CheckStatus {
    passed: bool,
    /// HAProxy's `check_status` code (`L7OK`, `L7STS`, `L4CON`, `L7TOUT`, ...).
    code: &'static str,
    /// In words: `connection refused in 0 ms`.
    result: String,
    duration_ms: u64,
}

/// A backend's last error as `{"at": "HH:MM:SS UTC", "reason": ...}`.
fn last_error<S: serde::Serializer>(
    error: &Option<LastError>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    error
        .as_ref()
        .map(|error| serde_json::json!({ "at": utc(error.at), "reason": error.reason }))
        .serialize(serializer)
}

/// The page's script: the admin token field (kept in this tab's `sessionStorage`), the action
/// buttons (each a `fetch()` to the admin API with `Authorization: Bearer`), and the periodic
/// reload, held back while a field has the focus or an action's result is on show.
const SCRIPT: &str = r#"
(() => {
  const form = document.getElementById('admin-token');
  const token = form.elements.token;
  const result = document.getElementById('action-result');
  token.value = sessionStorage.getItem('tandem-admin-token') || '';
  token.addEventListener('input', () => sessionStorage.setItem('tandem-admin-token', token.value));
  form.addEventListener('submit', (event) => event.preventDefault());
  let holdUntil = 0;
  const show = (text, ok) => {
    result.textContent = text;
    result.className = ok ? 'done' : 'failed';
    holdUntil = Date.now() + 10000;
  };
  for (const button of document.querySelectorAll('tr.backend button[data-action]')) {
    button.addEventListener('click', async () => {
      const row = button.closest('tr');
      const pool = row.closest('article').dataset.pool;
      const route = row.dataset.route;
      const action = button.dataset.action;
      const isWeight = action === 'weight';
      const body = isWeight
        ? { weight: Number(row.querySelector('input[name=weight]').value) }
        : { state: action };
      const url = '/api/pools/' + encodeURIComponent(pool) + '/backends/' +
        encodeURIComponent(route) + (isWeight ? '/weight' : '/state');
      try {
        const response = await fetch(url, {
          method: 'PUT',
          headers: { 'Authorization': 'Bearer ' + token.value, 'Content-Type': 'application/json' },
          body: JSON.stringify(body),
        });
        const answer = await response.json().catch(() => ({}));
        if (response.ok) {
          show(row.dataset.backend + ': ' + (isWeight ? 'weight ' + answer.weight : answer.state), true);
          setTimeout(() => location.reload(), 1000);
        } else {
          show(row.dataset.backend + ': refused (' + response.status + '): ' + (answer.error || response.statusText), false);
        }
      } catch (error) {
        show(row.dataset.backend + ': ' + error, false);
      }
    });
  }
  setInterval(() => {
    const focused = document.activeElement;
    if (Date.now() > holdUntil && !(focused && focused.tagName === 'INPUT')) location.reload();
  }, REFRESH_SECONDS * 1000);
})();
"#;

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
.stopped,.down{background:#cf222e22;color:#cf222e}\
td.actions input{width:4.5rem}#admin-token{margin:0.5rem 0}#action-result.failed{color:#cf222e}\
#action-result.done{color:#1a7f37}tfoot th,tfoot td{font-weight:600}";

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
