//! Wall-clock time for session timeouts, behind a trait so that tests and benchmarks can move
//! time forward instead of sleeping through an idle timeout.
//!
//! Session times are Unix milliseconds (not `Instant`s) because they outlive the process in
//! the snapshot file and travel to peers. A time that comes from elsewhere (a peer, or a
//! snapshot file written under another clock) is judged against this node's clock: see
//! [`SKEW_ALLOWANCE`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How far ahead of this node's clock a session time from elsewhere (a peer's message, a
/// snapshot file) may be and still be taken as it is: clocks kept by NTP differ by
/// milliseconds, and a message is in transit for a moment. A creation time beyond it is
/// refused (`Rejection::ClockSkew`), and a time of use beyond it is taken as now, when the news
/// of that use arrives: otherwise a peer whose clock runs ahead could make this node keep a
/// session for as long as its clock is ahead, past both of the session's timeouts.
pub const SKEW_ALLOWANCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks the creation time of a session from elsewhere against this node's clock, `now_ms`:
/// `Err` with how many ms ahead of it the time is, when that is beyond [`SKEW_ALLOWANCE`].
pub fn check_foreign_creation(created_ms: u64, now_ms: u64) -> Result<(), u64> {
    let ahead_ms = created_ms.saturating_sub(now_ms);
    if ahead_ms > SKEW_ALLOWANCE.as_millis() as u64 {
        return Err(ahead_ms);
    }
    Ok(())
}

/// A session's time of use from elsewhere, `used_ms`, as this node takes it at `now_ms`: as it
/// is within [`SKEW_ALLOWANCE`] of now, else now (the news of the use is arriving); never past
/// the session's absolute deadline, `absolute_deadline_ms` (its creation plus its absolute
/// timeout), after which no use counts.
pub fn foreign_use_ms(used_ms: u64, now_ms: u64, absolute_deadline_ms: u64) -> u64 {
    let latest_ms = now_ms.saturating_add(SKEW_ALLOWANCE.as_millis() as u64);
    let used_ms = if used_ms > latest_ms { now_ms } else { used_ms };
    used_ms.min(absolute_deadline_ms)
}

/// A source of the current time in Unix milliseconds.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock: what tandem runs on.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64)
    }
}

/// A clock that moves only when told: for tests of idle and absolute expiry, and benchmarks.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock that reads `start_ms` until advanced.
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock(AtomicU64::new(start_ms))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_from_elsewhere_are_judged_against_this_clock() {
        let now = 1_800_000_000_000;
        let allowance = SKEW_ALLOWANCE.as_millis() as u64;
        assert_eq!(check_foreign_creation(now - 60_000, now), Ok(()));
        assert_eq!(check_foreign_creation(now + allowance, now), Ok(()));
        assert_eq!(check_foreign_creation(now + 600_000, now), Err(600_000));
        let far = u64::MAX;
        assert_eq!(foreign_use_ms(now - 1_000, now, far), now - 1_000);
        assert_eq!(foreign_use_ms(now + allowance, now, far), now + allowance);
        assert_eq!(foreign_use_ms(now + 600_000, now, far), now);
        assert_eq!(
            foreign_use_ms(now, now, now - 5),
            now - 5,
            "past the absolute deadline"
        );
        assert_eq!(foreign_use_ms(u64::MAX, u64::MAX, far), u64::MAX);
    }
}
