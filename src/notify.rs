//! Tells the service manager where tandem is, over the sd_notify protocol (`$NOTIFY_SOCKET`, as
//! systemd sets it for a `Type=notify` unit): `READY=1` once tandem serves as `/readyz` would
//! say (listeners serving and, in a cluster, the peers' sessions in, or `drop_after` waited for
//! them), `RELOADING=1` with `MONOTONIC_USEC` then `READY=1` around each config reload (SIGHUP
//! or the admin API), and `STOPPING=1` when a drain begins. So `systemctl start` returns when
//! clients can be sent here, and `systemctl reload` when the new config is in force. Without
//! `NOTIFY_SOCKET` every call does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::runtime::Runtime;

/// How often readiness is looked at until it first holds (a cluster's sync has no event).
const READY_POLL: Duration = Duration::from_millis(20);

/// Whether `READY=1` went out: a reload before it must not announce readiness early. One per
/// process, as the notify socket is.
static READY_SENT: AtomicBool = AtomicBool::new(false);

/// Whether a service manager listens.
fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Waits until `runtime` is ready for traffic, then sends `READY=1` (once per process).
pub async fn announce_ready(runtime: Arc<Runtime>) {
    if !enabled() {
        return;
    }
    while !runtime.ready_for_traffic() {
        tokio::time::sleep(READY_POLL).await;
    }
    if !READY_SENT.swap(true, Ordering::SeqCst) {
        send(&[NotifyState::Ready, NotifyState::Status("serving")]);
    }
}

/// A config reload begins: `RELOADING=1` and the clock systemd ≥ 253 needs with it.
pub fn reloading() {
    if !enabled() || !READY_SENT.load(Ordering::SeqCst) {
        return;
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(error) => {
            tracing::warn!(%error, "cannot read the monotonic clock for the service manager")
        }
    }
}

/// The reload is over, the new config in force or refused (`status` says which): `READY=1`.
pub fn reloaded(status: &str) {
    if enabled() && READY_SENT.load(Ordering::SeqCst) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }
}

/// A drain begins: `STOPPING=1`.
pub fn stopping() {
    if enabled() {
        send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot tell the service manager (NOTIFY_SOCKET)");
    }
}
