//! Retries: whether a failed attempt may be tried again on another backend, and the per-pool
//! budget that keeps retries from multiplying the load on a sick pool.
//!
//! Only requests tandem holds whole are retried: without a body, or with a small one read
//! before the first attempt (see `proxy::Replay`); a larger body streams, and tandem keeps no
//! copy of what it has sent.

use std::sync::atomic::{AtomicI64, Ordering};

use http::Method;

use crate::config::RetryConfig;
use crate::error::ProxyError;

/// One retry, in the budget's unit (thousandths of a retry).
const ONE_RETRY: i64 = 1000;
/// Retries banked at most, and the reserve a quiet pool starts with.
const MAX_BANKED: i64 = 10 * ONE_RETRY;

/// Whether an attempt that failed with `error` may be retried elsewhere.
pub fn may_retry(error: &ProxyError, method: &Method, retry: &RetryConfig) -> bool {
    match error {
        // Nothing reached the backend: safe for any method.
        ProxyError::Connect(_) | ProxyError::ConnectTimeout(_) => true,
        // The backend may have acted on the request: only for methods declared safe to repeat.
        // (A stale pooled connection is first retried on the same backend, any method; see
        // `proxy::forward`.)
        ProxyError::Upstream(_) | ProxyError::Timeout(_) | ProxyError::StaleConnection(_) => {
            retry.methods.contains(method)
        }
        _ => false,
    }
}

/// Whether retrying after `error` spends the budget. A refused connection does not: nothing
/// reached that backend, and the retry is the load the next backend would have got anyway had
/// the balancer known; the budget is for failures that may mean an overloaded pool.
pub fn spends_budget(error: &ProxyError) -> bool {
    !matches!(error, ProxyError::Connect(_))
}

/// A token bucket per pool: each request deposits `budget` of a retry, each retry takes one,
/// and at most ten are banked. A pool where everything fails thus sees at most `1 + budget`
/// attempts per request once the bank is empty, instead of `attempts`.
#[derive(Debug)]
pub struct RetryBudget {
    banked: AtomicI64,
    per_request: i64,
}

impl RetryBudget {
    /// A full bank, refilled by `share` of a retry per request.
    pub fn new(share: f64) -> RetryBudget {
        RetryBudget {
            banked: AtomicI64::new(MAX_BANKED),
            per_request: (share * ONE_RETRY as f64).round() as i64,
        }
    }

    /// Called once per request.
    pub fn deposit(&self) {
        if self.per_request > 0 && self.banked.load(Ordering::Relaxed) < MAX_BANKED {
            let banked =
                self.banked.fetch_add(self.per_request, Ordering::Relaxed) + self.per_request;
            if banked > MAX_BANKED {
                self.banked.fetch_min(MAX_BANKED, Ordering::Relaxed);
            }
        }
    }

    /// Takes one retry from the bank; false when it is empty.
    pub fn withdraw(&self) -> bool {
        self.banked
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |banked| {
                (banked >= ONE_RETRY).then_some(banked - ONE_RETRY)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bank_holds_ten_and_refills_by_the_share() {
        let budget = RetryBudget::new(0.25);
        assert_eq!((0..20).filter(|_| budget.withdraw()).count(), 10);
        for _ in 0..8 {
            budget.deposit();
        }
        assert_eq!((0..20).filter(|_| budget.withdraw()).count(), 2);
        for _ in 0..1000 {
            budget.deposit();
        }
        assert_eq!((0..20).filter(|_| budget.withdraw()).count(), 10);
    }

    #[test]
    fn only_unsent_or_idempotent_attempts_are_retried() {
        let retry = RetryConfig {
            attempts: 3,
            budget: 0.2,
            methods: vec![Method::GET],
        };
        assert!(may_retry(
            &ProxyError::Connect("refused".into()),
            &Method::POST,
            &retry
        ));
        assert!(may_retry(
            &ProxyError::Upstream("reset".into()),
            &Method::GET,
            &retry
        ));
        assert!(!may_retry(
            &ProxyError::Upstream("reset".into()),
            &Method::POST,
            &retry
        ));
        assert!(!may_retry(
            &ProxyError::NoBackend { pool: "p".into() },
            &Method::GET,
            &retry
        ));
    }
}
