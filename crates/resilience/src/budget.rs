//! The retry budget: retries may be at most `ratio` of the requests seen over a sliding window,
//! plus a floor of `min_retries_per_second` so quiet periods can still retry.
//!
//! Without a budget, an upstream that fails every call sees `max_attempts` times its normal
//! load exactly when it is least able to take it; with one, at most `1 + ratio` times.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::policy::RetryBudgetPolicy;

/// A per-upstream retry budget. Cheap to consult: one short lock, no allocation per call.
#[derive(Debug)]
pub struct RetryBudget {
    policy: RetryBudgetPolicy,
    started: Instant,
    window_seconds: u64,
    buckets: Mutex<VecDeque<Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    second: u64,
    requests: u64,
    retries: u64,
}

impl RetryBudget {
    pub fn new(policy: RetryBudgetPolicy) -> Self {
        let window_seconds = policy.window.as_secs().max(1);
        Self {
            policy,
            started: Instant::now(),
            window_seconds,
            buckets: Mutex::new(VecDeque::with_capacity(window_seconds as usize + 1)),
        }
    }

    /// Counts a first attempt (retries are counted by [`try_retry`](Self::try_retry)).
    pub fn record_request(&self) {
        self.with_current(|bucket| bucket.requests += 1);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_retry(&self) -> bool {
        let (requests, retries) = self.totals();
        if retries >= self.allowed(requests) {
            return false;
        }
        self.with_current(|bucket| bucket.retries += 1);
        true
    }

    /// Share of the budget in use over the window (0 = none, 1 = exhausted), for metrics.
    pub fn utilisation(&self) -> f64 {
        let (requests, retries) = self.totals();
        let allowed = self.allowed(requests);
        if allowed == 0 {
            return 1.0;
        }
        (retries as f64 / allowed as f64).min(1.0)
    }

    fn allowed(&self, requests: u64) -> u64 {
        let floor = u64::from(self.policy.min_retries_per_second) * self.window_seconds;
        floor + (requests as f64 * self.policy.ratio).floor() as u64
    }

    fn current_second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn totals(&self) -> (u64, u64) {
        let now = self.current_second();
        let mut buckets = self.lock();
        self.prune(&mut buckets, now);
        buckets
            .iter()
            .fold((0, 0), |(req, ret), b| (req + b.requests, ret + b.retries))
    }

    fn with_current(&self, update: impl FnOnce(&mut Bucket)) {
        let now = self.current_second();
        let mut buckets = self.lock();
        self.prune(&mut buckets, now);
        if buckets.back().is_none_or(|bucket| bucket.second != now) {
            buckets.push_back(Bucket {
                second: now,
                requests: 0,
                retries: 0,
            });
        }
        if let Some(bucket) = buckets.back_mut() {
            update(bucket);
        }
    }

    fn prune(&self, buckets: &mut VecDeque<Bucket>, now: u64) {
        while buckets
            .front()
            .is_some_and(|bucket| bucket.second + self.window_seconds <= now)
        {
            buckets.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Bucket>> {
        // Every update is a single counter increment, so a poisoned lock holds consistent data.
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(RetryBudgetPolicy {
            ratio,
            min_retries_per_second: min_per_second,
            window: Duration::from_secs(10),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_capped_at_the_ratio_of_requests() {
        let budget = budget(0.2, 0);
        for _ in 0..100 {
            budget.record_request();
        }
        let granted = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 20);
        assert!((budget.utilisation() - 1.0).abs() < f64::EPSILON);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_retries_without_traffic() {
        let budget = budget(0.2, 1);
        let granted = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 10, "one per second over a 10 s window");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let budget = budget(0.5, 0);
        for _ in 0..10 {
            budget.record_request();
        }
        assert_eq!((0..10).filter(|_| budget.try_retry()).count(), 5);
        assert!(!budget.try_retry());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!budget.try_retry(), "old requests no longer earn retries");
        budget.record_request();
        budget.record_request();
        assert!(budget.try_retry(), "new requests earn new retries");
        assert!(!budget.try_retry());
    }
}
