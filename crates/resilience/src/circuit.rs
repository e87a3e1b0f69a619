//! The circuit breaker of one upstream: closed → open → half-open → closed.
//!
//! - **Closed**: calls pass; every attempt's result goes into a sliding window of the last
//!   `window_size` attempts. Once the window holds `minimum_calls`, the circuit opens when the
//!   failure rate or the slow-call rate reaches its threshold.
//! - **Open**: calls fail at once, without touching the upstream, for `open_duration`.
//! - **Half-open**: up to `half_open_calls` trial calls pass, and their attempts are judged by
//!   the same thresholds as the closed window: the circuit re-opens as soon as the trials'
//!   failure or slow-call rate reaches its threshold, and closes with a fresh window once
//!   `half_open_calls` results are in below both. Requiring every trial to succeed would make
//!   an upstream that fails a small, normal share of calls flap between open and half-open.
//!
//! The breaker gates *calls* (it sits outside the retry layer), but it learns from *attempts*:
//! the retry layer reports each attempt and stops retrying once the circuit has opened. Learning
//! only from final results would leave it blind while every call is still busy retrying.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::CircuitPolicy;

/// State of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub const ALL: [Self; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    pub fn to_proto(self) -> relais_proto::v1::CircuitState {
        match self {
            Self::Closed => relais_proto::v1::CircuitState::Closed,
            Self::Open => relais_proto::v1::CircuitState::Open,
            Self::HalfOpen => relais_proto::v1::CircuitState::HalfOpen,
        }
    }
}

/// Called on every state change with (from, to); used for metrics and logs.
pub type TransitionListener = Arc<dyn Fn(CircuitState, CircuitState) + Send + Sync>;

/// The circuit refused the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open; next trial in {retry_in:?}")]
pub struct CircuitOpen {
    /// When a call may be let through again (an estimate while half-open trials run).
    pub retry_in: Duration,
}

/// A circuit breaker, shared by every call to one upstream.
pub struct CircuitBreaker {
    policy: CircuitPolicy,
    inner: Mutex<Inner>,
    listener: Option<TransitionListener>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("policy", &self.policy)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    since: Instant,
    /// (failed, slow) per attempt, newest at the back: the sliding window while closed, the
    /// trials' results while half-open.
    window: VecDeque<(bool, bool)>,
    trials_in_flight: usize,
}

/// Admission to call through the circuit. A trial permit (half-open) frees its slot on drop.
#[derive(Debug)]
pub struct CallPermit {
    breaker: Arc<CircuitBreaker>,
    trial: bool,
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        if self.trial {
            let mut inner = self.breaker.lock();
            inner.trials_in_flight = inner.trials_in_flight.saturating_sub(1);
        }
    }
}

impl CircuitBreaker {
    pub fn new(policy: CircuitPolicy, listener: Option<TransitionListener>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                since: Instant::now(),
                window: VecDeque::with_capacity(policy.window_size),
                trials_in_flight: 0,
            }),
            policy,
            listener,
        })
    }

    /// The current state (an open circuit whose time is up reports half-open).
    pub fn state(&self) -> CircuitState {
        let mut inner = self.lock();
        self.expire_open(&mut inner);
        inner.state
    }

    /// When the circuit entered its current state.
    pub fn since(&self) -> Instant {
        self.lock().since
    }

    /// Asks to make a call.
    pub fn try_acquire(self: &Arc<Self>) -> Result<CallPermit, CircuitOpen> {
        let mut inner = self.lock();
        self.expire_open(&mut inner);
        match inner.state {
            CircuitState::Closed => Ok(CallPermit {
                breaker: Arc::clone(self),
                trial: false,
            }),
            CircuitState::Open => Err(CircuitOpen {
                retry_in: (inner.since + self.policy.open_duration)
                    .saturating_duration_since(Instant::now()),
            }),
            CircuitState::HalfOpen => {
                if inner.trials_in_flight + inner.window.len() < self.policy.half_open_calls {
                    inner.trials_in_flight += 1;
                    Ok(CallPermit {
                        breaker: Arc::clone(self),
                        trial: true,
                    })
                } else {
                    // The trials decide soon; check back after a short while.
                    Err(CircuitOpen {
                        retry_in: Duration::from_millis(100).min(self.policy.open_duration),
                    })
                }
            }
        }
    }

    /// Whether a retry may go out now (false once the circuit has opened under the call).
    pub fn allows_retry(&self) -> bool {
        self.state() != CircuitState::Open
    }

    /// Records one attempt's result.
    pub fn record(&self, failed: bool, duration: Duration) {
        let slow = duration >= self.policy.slow_call_duration;
        let mut inner = self.lock();
        self.expire_open(&mut inner);
        match inner.state {
            CircuitState::Closed => {
                if inner.window.len() == self.policy.window_size {
                    inner.window.pop_front();
                }
                inner.window.push_back((failed, slow));
                if self.should_open(&inner) {
                    self.transition(&mut inner, CircuitState::Open);
                }
            }
            CircuitState::HalfOpen => {
                inner.window.push_back((failed, slow));
                // Rates over all the trials, the missing ones counted as good: the circuit
                // re-opens as soon as the outcome is certain, without waiting for the rest.
                let trials = self.policy.half_open_calls;
                if self.rates_reach_thresholds(&inner.window, trials) {
                    self.transition(&mut inner, CircuitState::Open);
                } else if inner.window.len() >= trials {
                    self.transition(&mut inner, CircuitState::Closed);
                }
            }
            // A late result from a call that started before the circuit opened.
            CircuitState::Open => {}
        }
    }

    fn should_open(&self, inner: &Inner) -> bool {
        let calls = inner.window.len();
        calls >= self.policy.minimum_calls && self.rates_reach_thresholds(&inner.window, calls)
    }

    /// Whether the failures or slow calls in `results`, as a share of `calls`, reach a threshold.
    fn rates_reach_thresholds(&self, results: &VecDeque<(bool, bool)>, calls: usize) -> bool {
        let failures = results.iter().filter(|(failed, _)| *failed).count();
        let slow = results.iter().filter(|(_, slow)| *slow).count();
        let calls = calls.max(1) as f64;
        failures as f64 / calls >= self.policy.failure_rate_threshold
            || slow as f64 / calls >= self.policy.slow_call_rate_threshold
    }

    fn expire_open(&self, inner: &mut Inner) {
        if inner.state == CircuitState::Open && inner.since.elapsed() >= self.policy.open_duration {
            self.transition(inner, CircuitState::HalfOpen);
        }
    }

    fn transition(&self, inner: &mut Inner, to: CircuitState) {
        let from = inner.state;
        inner.state = to;
        inner.since = Instant::now();
        inner.window.clear();
        if to != CircuitState::HalfOpen {
            inner.trials_in_flight = 0;
        }
        if let Some(listener) = &self.listener {
            listener(from, to);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Updates are small and complete before any code that could panic runs.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CircuitPolicy {
        CircuitPolicy {
            window_size: 10,
            minimum_calls: 4,
            failure_rate_threshold: 0.5,
            slow_call_duration: Duration::from_secs(1),
            slow_call_rate_threshold: 0.75,
            open_duration: Duration::from_secs(5),
            half_open_calls: 2,
        }
    }

    type Transitions = Arc<Mutex<Vec<(CircuitState, CircuitState)>>>;

    fn recorded() -> (Arc<CircuitBreaker>, Transitions) {
        let transitions = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&transitions);
        let breaker = CircuitBreaker::new(
            policy(),
            Some(Arc::new(move |from, to| {
                sink.lock().unwrap().push((from, to))
            })),
        );
        (breaker, transitions)
    }

    const FAST: Duration = Duration::from_millis(10);

    #[tokio::test(start_paused = true)]
    async fn no_decision_before_the_minimum_number_of_calls() {
        let (breaker, _) = recorded();
        for _ in 0..3 {
            breaker.record(true, FAST);
        }
        assert_eq!(
            breaker.state(),
            CircuitState::Closed,
            "3 failures < minimum 4"
        );
        breaker.record(true, FAST);
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_rate() {
        let (breaker, transitions) = recorded();
        for failed in [false, false, true, false, true] {
            breaker.record(failed, FAST);
        }
        assert_eq!(breaker.state(), CircuitState::Closed, "2 of 5 = 40 %");
        breaker.record(true, FAST);
        assert_eq!(breaker.state(), CircuitState::Open, "3 of 6 = 50 %");
        assert_eq!(
            *transitions.lock().unwrap(),
            [(CircuitState::Closed, CircuitState::Open)]
        );
        let refused = breaker.try_acquire().expect_err("open refuses");
        assert_eq!(refused.retry_in, Duration::from_secs(5));
        assert!(!breaker.allows_retry());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_slow_call_rate() {
        let (breaker, _) = recorded();
        let slow = Duration::from_millis(1500);
        for duration in [slow, slow, FAST, slow] {
            breaker.record(false, duration);
        }
        assert_eq!(breaker.state(), CircuitState::Open, "3 of 4 slow = 75 %");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_forgets_old_failures() {
        let (breaker, _) = recorded();
        for _ in 0..4 {
            breaker.record(false, FAST);
        }
        for _ in 0..4 {
            breaker.record(true, FAST);
        }
        // 4 of 8 failed: open. A fresh breaker with 10 successes first, then failures:
        assert_eq!(breaker.state(), CircuitState::Open);
        let (breaker, _) = recorded();
        for _ in 0..10 {
            breaker.record(false, FAST);
        }
        for _ in 0..4 {
            breaker.record(true, FAST);
        }
        assert_eq!(breaker.state(), CircuitState::Closed, "4 of the last 10");
        breaker.record(true, FAST);
        assert_eq!(breaker.state(), CircuitState::Open, "5 of the last 10");
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_the_open_duration_then_closes_on_successes() {
        let (breaker, transitions) = recorded();
        for _ in 0..4 {
            breaker.record(true, FAST);
        }
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(breaker.try_acquire().is_err(), "still open");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(breaker.state(), CircuitState::HalfOpen);

        let first = breaker.try_acquire().expect("trial 1");
        let second = breaker.try_acquire().expect("trial 2");
        assert!(breaker.try_acquire().is_err(), "only two trials at once");
        breaker.record(false, FAST);
        drop(first);
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        breaker.record(false, FAST);
        drop(second);
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(
            *transitions.lock().unwrap(),
            [
                (CircuitState::Closed, CircuitState::Open),
                (CircuitState::Open, CircuitState::HalfOpen),
                (CircuitState::HalfOpen, CircuitState::Closed),
            ]
        );
        // A fresh window: one failure does not re-open.
        breaker.record(true, FAST);
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens_for_a_full_period() {
        let (breaker, _) = recorded();
        for _ in 0..4 {
            breaker.record(true, FAST);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let trial = breaker.try_acquire().expect("trial");
        breaker.record(true, FAST);
        drop(trial);
        assert_eq!(breaker.state(), CircuitState::Open);
        let refused = breaker.try_acquire().expect_err("re-opened");
        assert_eq!(refused.retry_in, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn trials_are_judged_by_rate_not_by_a_single_failure() {
        let breaker = CircuitBreaker::new(
            CircuitPolicy {
                half_open_calls: 4,
                ..policy()
            },
            None,
        );
        let open = |breaker: &Arc<CircuitBreaker>| {
            for _ in 0..4 {
                breaker.record(true, FAST);
            }
            assert_eq!(breaker.state(), CircuitState::Open);
        };

        // One failed trial of four (25 %) is below the 50 % threshold: the circuit closes.
        open(&breaker);
        tokio::time::advance(Duration::from_secs(5)).await;
        let permits: Vec<_> = (0..4)
            .map(|_| breaker.try_acquire().expect("trial"))
            .collect();
        assert!(breaker.try_acquire().is_err(), "four trials at most");
        for failed in [true, false, false] {
            breaker.record(failed, FAST);
            assert_eq!(breaker.state(), CircuitState::HalfOpen);
        }
        breaker.record(false, FAST);
        assert_eq!(breaker.state(), CircuitState::Closed);
        drop(permits);

        // Two failed trials (50 % of four) re-open it at the second, without waiting for more.
        open(&breaker);
        tokio::time::advance(Duration::from_secs(5)).await;
        let _permits: Vec<_> = (0..4)
            .map(|_| breaker.try_acquire().expect("trial"))
            .collect();
        breaker.record(true, FAST);
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        breaker.record(true, FAST);
        assert_eq!(breaker.state(), CircuitState::Open);

        // Slow trials count against the slow-call threshold (75 %: three of four).
        tokio::time::advance(Duration::from_secs(5)).await;
        let slow = Duration::from_millis(1500);
        for _ in 0..2 {
            breaker.record(false, slow);
        }
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        breaker.record(false, slow);
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_trials_free_their_slot() {
        let (breaker, _) = recorded();
        for _ in 0..4 {
            breaker.record(true, FAST);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let first = breaker.try_acquire().expect("trial");
        let second = breaker.try_acquire().expect("trial");
        drop(first); // cancelled before any attempt finished
        drop(second);
        assert!(breaker.try_acquire().is_ok(), "slots came back");
    }
}
