//! Exponential backoff with full jitter, and how `Retry-After` combines with it.

use std::time::{Duration, SystemTime};

use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::{Jitter, RetryDecision, RetryPolicy};

/// reqwest-retry's exponential policy with full jitter: the wait before retry n is uniformly
/// random in [0, min(max, base × 2ⁿ)], so clients that failed together spread out.
pub fn exponential_full_jitter(base: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBackoff::builder()
        .retry_bounds(base, max.max(base))
        .jitter(Jitter::Full)
        .base(2)
        // The retry layer enforces max_attempts itself; the policy only computes delays.
        .build_with_max_retries(u32::MAX)
}

/// The jittered wait before the retry that follows `past_retries` earlier retries.
pub fn jittered(policy: &ExponentialBackoff, past_retries: u32) -> Duration {
    let now = SystemTime::now();
    match policy.should_retry(now, past_retries) {
        RetryDecision::Retry { execute_after } => {
            execute_after.duration_since(now).unwrap_or(Duration::ZERO)
        }
        RetryDecision::DoNotRetry => Duration::ZERO,
    }
}

/// The wait before the next attempt: the jittered backoff, but never sooner than the
/// upstream's `Retry-After`. `None` when `Retry-After` exceeds `max_retry_after`: the caller
/// stops retrying rather than come back earlier than asked.
pub fn next_delay(
    jittered: Duration,
    retry_after: Option<Duration>,
    max_retry_after: Duration,
) -> Option<Duration> {
    match retry_after {
        Some(wait) if wait > max_retry_after => None,
        Some(wait) => Some(jittered.max(wait)),
        None => Some(jittered),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_under_a_doubling_capped_ceiling_and_spreads() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let policy = exponential_full_jitter(base, max);
        for (past, ceiling_ms) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1000),
            (30, 1000),
        ] {
            let samples: Vec<Duration> = (0..500).map(|_| jittered(&policy, past)).collect();
            let ceiling = Duration::from_millis(ceiling_ms);
            // SystemTime rounding can add a few microseconds.
            let slack = Duration::from_millis(2);
            assert!(
                samples.iter().all(|d| *d <= ceiling + slack),
                "retry {past}: {:?}",
                samples.iter().max()
            );
            let low = samples.iter().filter(|d| **d < ceiling / 2).count();
            assert!(
                (150..350).contains(&low),
                "retry {past}: roughly uniform, {low} of 500 in the lower half"
            );
        }
    }

    #[test]
    fn retry_after_is_a_floor_with_a_cap() {
        let cap = Duration::from_secs(30);
        let jitter = Duration::from_millis(300);
        assert_eq!(next_delay(jitter, None, cap), Some(jitter));
        assert_eq!(
            next_delay(jitter, Some(Duration::from_secs(2)), cap),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            next_delay(Duration::from_secs(3), Some(Duration::from_secs(2)), cap),
            Some(Duration::from_secs(3))
        );
        assert_eq!(next_delay(jitter, Some(Duration::from_secs(60)), cap), None);
    }
}
