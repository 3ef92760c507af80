//! Retries: bounded, exponential backoff with full jitter, and only for calls that are safe to
//! repeat — GETs, state reports (a repeated report with the same timestamp changes nothing) and
//! triggers that carry an `Idempotency-Key` (the API answers a repeat with the first session).
//! Creating a workflow, cancelling a session and a trigger without a key are never retried.

use crate::error::Error;
use std::time::Duration;

/// Whether a call may be sent again after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    Idempotent,
    NotIdempotent,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRetryPolicy {
    /// Retries after the first try (so `max_retries + 1` tries in all).
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RequestRetryPolicy {
    /// 3 retries: about 0.2 s, 0.4 s, 0.8 s ceilings.
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RequestRetryPolicy {
    /// Never retries.
    pub const NONE: RequestRetryPolicy = RequestRetryPolicy {
        max_retries: 0,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    };

    /// The ceiling before retry number `retry` (1-based): `min(max_delay, base_delay * 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(20));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The delay before retry number `retry` given a uniform sample `u` in [0, 1) (full jitter),
    /// or the server's `Retry-After` when it sent one (capped at `max_delay`).
    pub fn delay(&self, retry: u32, u: f64, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_delay);
        }
        self.ceiling(retry).mul_f64(u.clamp(0.0, 1.0))
    }

    /// Whether try number `tries_so_far + 1` should be made after `err`.
    pub fn should_retry(&self, idempotency: Idempotency, err: &Error, tries_so_far: u32) -> bool {
        idempotency == Idempotency::Idempotent && err.is_transient() && tries_so_far <= self.max_retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: u16) -> Error {
        Error::from_response(status, None, b"")
    }

    #[test]
    fn only_idempotent_calls_retry_and_only_on_transient_errors() {
        let p = RequestRetryPolicy::default();
        let net = Error::Network {
            url: "u".into(),
            message: "refused".into(),
        };
        let timeout = Error::Timeout {
            url: "u".into(),
            after: Duration::from_secs(1),
        };
        for e in [&net, &timeout, &server(429), &server(502), &server(503), &server(504)] {
            assert!(p.should_retry(Idempotency::Idempotent, e, 1), "{e:?}");
            assert!(!p.should_retry(Idempotency::NotIdempotent, e, 1), "{e:?}");
        }
        for s in [400, 401, 403, 404, 409, 413, 422, 500, 501] {
            assert!(!p.should_retry(Idempotency::Idempotent, &server(s), 1), "{s}");
        }
    }

    #[test]
    fn retries_are_bounded() {
        let p = RequestRetryPolicy::default();
        let e = server(503);
        assert!(p.should_retry(Idempotency::Idempotent, &e, 3));
        assert!(!p.should_retry(Idempotency::Idempotent, &e, 4), "3 retries = 4 tries");
        assert!(!RequestRetryPolicy::NONE.should_retry(Idempotency::Idempotent, &e, 1));
    }

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_and_a_cap() {
        let p = RequestRetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(3), Duration::from_millis(400));
        assert_eq!(p.ceiling(5), Duration::from_secs(1), "capped");
        assert_eq!(p.ceiling(60), Duration::from_secs(1), "no overflow");
        assert_eq!(p.delay(3, 0.0, None), Duration::ZERO);
        assert_eq!(p.delay(3, 0.5, None), Duration::from_millis(200));
        assert_eq!(p.delay(3, 7.0, None), Duration::from_millis(400), "u is clamped");
        assert_eq!(
            p.delay(1, 0.5, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(p.delay(1, 0.5, Some(Duration::from_secs(30))), Duration::from_secs(1));
    }
}
