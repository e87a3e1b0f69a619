//! Adaptive concurrency per upstream: the in-flight limit follows what the upstream can take,
//! by additive increase and multiplicative decrease (AIMD) on back-pressure and round-trip
//! time, after Vector's adaptive request concurrency and the congestion control it borrows.
//!
//! Deliveries are observed in windows about one smoothed round trip long. At the end of a
//! window:
//!
//! - **decrease** to `limit × 0.9` (at least 1) when the window saw back-pressure (a 429 or 503
//!   answer, or a timeout) or its mean round trip was more than twice the long-run mean, as
//!   was the window before: the upstream is saturated or failing. One window's rise alone is
//!   not enough: windows are short (a round trip, at least 20 ms), and on a busy host a
//!   scheduling hiccup doubles one window's mean;
//! - **increase** when the window reached the limit (the limit was what held deliveries back)
//!   and its mean round trip stayed within 1.25 × the long-run mean: more would be taken. For
//!   the first sixteen such windows in a row by 1: near what the upstream takes, where a
//!   decrease comes every few windows, the sawtooth stays small and costs few refusals. From
//!   the seventeenth on by one more each window (1, 2, 3, …, at most half the limit): a limit that
//!   keeps growing is far below what the upstream takes (the decrease came from a hiccup, or
//!   the upstream grew), and closes a gap of `g` in about `16 + √(2g)` windows instead of `g`.
//!   Until the first decrease the increase is by half the limit instead (slow start, after
//!   TCP's, gentler than its doubling so the overshoot costs fewer refusals), so an upstream
//!   that takes hundreds at once (100 ms answers at thousands a second) is reached in about
//!   ten round trips; that first decrease halves the limit, since the last increase
//!   overshot;
//! - otherwise keep it; the count of growing windows starts again.
//!
//! The long-run mean is an exponentially weighted mean of the windows' means (weight 0.2) over
//! windows without back-pressure. The limit stays within `1..=max_in_flight` and starts at
//! `min(max_in_flight, 8)`.

use std::time::Duration;

use tokio::time::Instant;

/// Where the limit starts.
const INITIAL: usize = 8;
/// Multiplicative decrease.
const DECREASE: f64 = 0.9;
/// A window mean above `long-run mean × RTT_RISE` counts as a latency rise.
const RTT_RISE: f64 = 2.0;
/// A window mean at most `long-run mean × RTT_HOLDS` lets the limit grow.
const RTT_HOLDS: f64 = 1.25;
/// Growing windows in a row after which each grows the limit by one more than the last.
const STEADY_GROWTH_WINDOWS: usize = 16;
/// Weight of a new window in the long-run mean.
const EWMA_WEIGHT: f64 = 0.2;
/// Shortest window, so a very fast upstream is not judged on a handful of calls.
const MIN_WINDOW: Duration = Duration::from_millis(20);

/// What one delivery told about its upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feedback {
    /// Mean round trip of its attempts that got an answer; `None` when none did.
    pub rtt: Option<Duration>,
    /// A 429 or 503 answer, or a timeout.
    pub backpressure: bool,
}

/// The adaptive limit of one upstream.
#[derive(Debug)]
pub struct AdaptiveLimit {
    limit: usize,
    max: usize,
    /// Long-run mean round trip, seconds.
    long_rtt: Option<f64>,
    /// True until the first decrease: increases double the limit.
    slow_start: bool,
    /// Whether the last window's round trip rose (see the module docs).
    rose_before: bool,
    /// Windows in a row that raised the limit (see the module docs).
    growing_for: usize,
    window: Window,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    rtt_sum: f64,
    rtt_count: u32,
    reached_limit: bool,
    backpressure: bool,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            rtt_sum: 0.0,
            rtt_count: 0,
            reached_limit: false,
            backpressure: false,
        }
    }
}

impl AdaptiveLimit {
    pub fn new(max: usize, now: Instant) -> Self {
        Self {
            limit: INITIAL.min(max).max(1),
            max: max.max(1),
            long_rtt: None,
            slow_start: true,
            rose_before: false,
            growing_for: 0,
            window: Window::new(now),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Notes that `in_flight` deliveries were under way when a new one started.
    pub fn started(&mut self, in_flight: usize) {
        if in_flight + 1 >= self.limit {
            self.window.reached_limit = true;
        }
    }

    /// Takes a finished delivery's feedback; returns the limit after it.
    pub fn finished(&mut self, feedback: Feedback, now: Instant) -> usize {
        self.window.backpressure |= feedback.backpressure;
        if let Some(rtt) = feedback.rtt {
            self.window.rtt_sum += rtt.as_secs_f64();
            self.window.rtt_count += 1;
        }
        let length = self
            .long_rtt
            .map_or(MIN_WINDOW, Duration::from_secs_f64)
            .max(MIN_WINDOW);
        if now.saturating_duration_since(self.window.started) >= length {
            self.close_window(now);
        }
        self.limit
    }

    fn close_window(&mut self, now: Instant) {
        let window = std::mem::replace(&mut self.window, Window::new(now));
        let mean = (window.rtt_count > 0).then(|| window.rtt_sum / f64::from(window.rtt_count));
        let rose_now =
            matches!((mean, self.long_rtt), (Some(mean), Some(long)) if mean > long * RTT_RISE);
        let rose = rose_now && self.rose_before;
        self.rose_before = rose_now;
        let holds = match (mean, self.long_rtt) {
            (Some(mean), Some(long)) => mean <= long * RTT_HOLDS,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        if window.backpressure || rose {
            // The decrease that ends slow start halves the limit: its last doubling overshot.
            let factor = if self.slow_start { 0.5 } else { DECREASE };
            self.limit = ((self.limit as f64 * factor) as usize).max(1);
            self.slow_start = false;
            self.growing_for = 0;
        } else if window.reached_limit && holds {
            self.growing_for += 1;
            let half = (self.limit / 2).max(1);
            let step = if self.slow_start {
                half
            } else {
                self.growing_for
                    .saturating_sub(STEADY_GROWTH_WINDOWS)
                    .clamp(1, half)
            };
            self.limit = (self.limit + step).min(self.max);
        } else {
            self.growing_for = 0;
        }
        if !window.backpressure
            && let Some(mean) = mean
        {
            self.long_rtt = Some(match self.long_rtt {
                Some(long) => long + EWMA_WEIGHT * (mean - long),
                None => mean,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(30);

    /// Runs windows against an upstream that takes `capacity` at once and refuses beyond.
    fn run(limit: &mut AdaptiveLimit, capacity: usize, windows: usize, start: Instant) -> Instant {
        let mut now = start;
        for _ in 0..windows {
            let in_flight = limit.limit();
            for index in 0..in_flight {
                limit.started(index);
            }
            now += RTT;
            for index in 0..in_flight {
                limit.finished(
                    Feedback {
                        rtt: Some(RTT),
                        backpressure: index >= capacity,
                    },
                    now,
                );
            }
        }
        now
    }

    #[test]
    fn the_limit_converges_near_what_the_upstream_takes() {
        let start = Instant::now();
        let mut limit = AdaptiveLimit::new(256, start);
        assert_eq!(limit.limit(), 8);
        run(&mut limit, 40, 400, start);
        let settled = limit.limit();
        // The sawtooth of AIMD around the capacity, within 20 % below and 10 % above.
        assert!((32..=44).contains(&settled), "settled at {settled}");
    }

    #[test]
    fn slow_start_reaches_a_wide_upstream_in_a_few_round_trips() {
        let start = Instant::now();
        let mut limit = AdaptiveLimit::new(1000, start);
        // Windows are at least a round trip long: the first at 20 ms, then at the mean RTT.
        run(&mut limit, 800, 12, start);
        assert!(
            limit.limit() >= 400,
            "growing by half from 8 while nothing pushes back: {}",
            limit.limit()
        );
        run(&mut limit, 800, 400, start + RTT * 12);
        let settled = limit.limit();
        assert!(
            (640..=801).contains(&settled),
            "then AIMD near 800: {settled}"
        );
    }

    #[test]
    fn after_a_decrease_the_limit_grows_faster_while_the_upstream_keeps_taking_more() {
        let start = Instant::now();
        let mut limit = AdaptiveLimit::new(1000, start);
        // Slow start against an upstream that takes 200 ends near it.
        let now = run(&mut limit, 200, 40, start);
        let settled = limit.limit();
        assert!((160..=220).contains(&settled), "near 200: {settled}");
        // The upstream now takes 800: one by one it would take 500 windows and more; growing
        // faster after sixteen windows in a row, about 60.
        run(&mut limit, 800, 70, now);
        assert!(
            limit.limit() >= 700,
            "{} after 70 windows from {settled}",
            limit.limit()
        );
    }

    #[test]
    fn near_a_capacity_few_calls_are_refused() {
        let start = Instant::now();
        let mut limit = AdaptiveLimit::new(256, start);
        let mut now = run(&mut limit, 20, 100, start);
        let (mut calls, mut refused) = (0, 0);
        for _ in 0..500 {
            let in_flight = limit.limit();
            calls += in_flight;
            refused += in_flight.saturating_sub(20);
            now = run(&mut limit, 20, 1, now);
        }
        let share = refused as f64 / calls as f64;
        assert!(share <= 0.05, "{refused} of {calls} calls refused");
    }

    /// One window of `count` deliveries that took `rtt` each, their answers spread over one
    /// normal round trip.
    fn window(limit: &mut AdaptiveLimit, now: &mut Instant, count: usize, rtt: Duration) {
        for index in 0..count {
            limit.started(index);
        }
        let begun = *now;
        for answered in 1..=count {
            *now = begun + RTT * answered as u32 / count as u32;
            limit.finished(
                Feedback {
                    rtt: Some(rtt),
                    backpressure: false,
                },
                *now,
            );
        }
    }

    #[test]
    fn a_single_window_of_slow_answers_is_not_a_latency_rise() {
        let start = Instant::now();
        let mut limit = AdaptiveLimit::new(256, start);
        let mut now = start;
        for _ in 0..60 {
            let count = limit.limit();
            window(&mut limit, &mut now, count, RTT);
        }
        let before = limit.limit();
        // One window three times slower: a hiccup of the host, not a saturated upstream.
        window(&mut limit, &mut now, before, RTT * 3);
        assert!(limit.limit() >= before, "{} after {before}", limit.limit());
        // Slow answers window after window are a rise.
        let kept = limit.limit();
        for _ in 0..3 {
            window(&mut limit, &mut now, kept, RTT * 3);
        }
        assert!(limit.limit() < kept, "{} after {kept}", limit.limit());
    }

    #[test]
    fn it_never_leaves_its_bounds() {
        let start = Instant::now();
        let mut limit = AdaptiveLimit::new(16, start);
        let later = run(&mut limit, 1000, 200, start);
        assert_eq!(limit.limit(), 16, "capped at max_in_flight");
        run(&mut limit, 0, 200, later);
        assert_eq!(limit.limit(), 1, "never below one");
    }

    #[test]
    fn a_latency_rise_lowers_the_limit_and_traffic_below_the_limit_keeps_it() {
        let start = Instant::now();
        let mut limit = AdaptiveLimit::new(64, start);
        let mut now = run(&mut limit, 1000, 30, start);
        let before = limit.limit();
        // Three times slower, no refusals: the upstream is queueing.
        let slow = |limit: &mut AdaptiveLimit, now: &mut Instant, count: usize| {
            for _ in 0..count {
                limit.started(0);
            }
            *now += RTT * 3;
            for _ in 0..count {
                limit.finished(
                    Feedback {
                        rtt: Some(RTT * 3),
                        backpressure: false,
                    },
                    *now,
                );
            }
        };
        for _ in 0..3 {
            slow(&mut limit, &mut now, before);
        }
        assert!(limit.limit() < before, "{} after {before}", limit.limit());
        // Traffic that never comes near the limit does not raise it.
        let kept = limit.limit();
        for _ in 0..50 {
            slow(&mut limit, &mut now, 1);
        }
        assert_eq!(limit.limit(), kept);
    }
}
