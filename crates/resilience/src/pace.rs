//! Pacing an upstream: an optional rate limit (a token bucket in requests per second), and the
//! pause an upstream asks for when it answers 429 or 503 with `Retry-After`. The pause holds
//! every call to that upstream, not only the one that was told: the others would be refused
//! alike, and each refusal counts against the upstream's patience.
//!
//! A first attempt that may not go yet is not sent at all: the call is refused with the time
//! to wait ([`crate::Refusal::Throttled`]), outside any deadline, so a rate-limited message
//! waits instead of timing out. A retry waits for its turn inside the call, within the deadline.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::RateLimitPolicy;

#[derive(Debug)]
struct State {
    /// Tokens now (at most `burst`), as of `refilled`.
    tokens: f64,
    refilled: Instant,
    /// No call before this (an upstream's `Retry-After`).
    paused_until: Option<Instant>,
}

/// The pace of one upstream, shared by all its calls.
#[derive(Debug)]
pub struct Pacer {
    rate: Option<RateLimitPolicy>,
    state: Mutex<State>,
}

/// Why a call must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The upstream asked for a pause (`Retry-After`).
    Paused(Duration),
    /// The rate limit has no token now.
    Rate(Duration),
}

impl Wait {
    pub fn duration(self) -> Duration {
        match self {
            Self::Paused(wait) | Self::Rate(wait) => wait,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::Paused(_) => "retry_after",
            Self::Rate(_) => "rate_limit",
        }
    }
}

impl Pacer {
    pub fn new(rate: Option<RateLimitPolicy>, now: Instant) -> Self {
        Self {
            state: Mutex::new(State {
                tokens: rate.as_ref().map_or(0.0, |rate| f64::from(rate.burst)),
                refilled: now,
                paused_until: None,
            }),
            rate,
        }
    }

    /// Takes a token for one request if it may go at `now`; otherwise how long to wait (the
    /// token is not taken: ask again then).
    pub fn admit(&self, now: Instant) -> Result<(), Wait> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(until) = state.paused_until {
            if now < until {
                return Err(Wait::Paused(until - now));
            }
            state.paused_until = None;
        }
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.tokens = (state.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        state.refilled = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - state.tokens;
            Err(Wait::Rate(Duration::from_secs_f64(
                missing / rate.per_second,
            )))
        }
    }

    /// The upstream asked (`Retry-After`) that no call come before `wait` from `now`.
    pub fn pause(&self, wait: Duration, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let until = now + wait;
        if state.paused_until.is_none_or(|current| current < until) {
            state.paused_until = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> Option<RateLimitPolicy> {
        Some(RateLimitPolicy { per_second, burst })
    }

    #[test]
    fn the_bucket_lets_a_burst_through_then_one_per_interval() {
        let start = Instant::now();
        let pacer = Pacer::new(rate(10.0, 3), start);
        for _ in 0..3 {
            assert_eq!(pacer.admit(start), Ok(()));
        }
        assert_eq!(
            pacer.admit(start),
            Err(Wait::Rate(Duration::from_millis(100)))
        );
        let later = start + Duration::from_millis(100);
        assert_eq!(pacer.admit(later), Ok(()));
        assert!(pacer.admit(later).is_err());
        // A long quiet time refills to the burst, no more.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(pacer.admit(much_later), Ok(()));
        }
        assert!(pacer.admit(much_later).is_err());
    }

    #[test]
    fn a_pause_holds_every_call_until_it_ends_and_only_grows() {
        let start = Instant::now();
        let pacer = Pacer::new(None, start);
        assert_eq!(pacer.admit(start), Ok(()), "no rate limit: always");
        pacer.pause(Duration::from_secs(5), start);
        pacer.pause(Duration::from_secs(1), start);
        assert_eq!(
            pacer.admit(start + Duration::from_secs(2)),
            Err(Wait::Paused(Duration::from_secs(3))),
            "a shorter pause asked later does not shorten it"
        );
        assert_eq!(pacer.admit(start + Duration::from_secs(5)), Ok(()));
    }
}
