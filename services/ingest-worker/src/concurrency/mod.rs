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
//!
//! A round trip that grows with the limit (the upstream, or the worker's own host, queues what
//! it cannot serve at once) never rises against a mean that follows it, so one more rule
//! watches the rate instead ([`rates`]): the knee is the smallest recent limit that delivered
//! at least 90 % as much per second as the recent limits above it. A window that would raise
//! a limit already twice the knee returns it to 90 % of the knee instead: each delivery more
//! in flight there only waits longer. Going back to just below the knee measures it again
//! from below, so the knee comes down when less in flight delivers as much, and goes up with
//! an upstream that comes to take more (the rate then rises with the limit). Back-pressure
//! forgets the rates: the upstream says what it takes, and refused deliveries waiting in their
//! slots make the windows after it deliver less than their limit says.

mod rates;

use std::time::Duration;

use tokio::time::Instant;

use rates::RateByLimit;

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
/// A limit this many times the knee is not raised (see the module docs).
const BEYOND_KNEE: usize = 2;
/// Where a limit beyond the knee returns to, in tenths of the knee.
const KNEE_RETURN: usize = 9;

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
    /// Windows closed so far.
    windows: u64,
    /// Whether the last window lowered the limit: deliveries started under the higher one
    /// then end in this window, which says nothing of the rate at the lower.
    lowered: bool,
    rates: RateByLimit,
    /// The knee as of the last window (see the module docs).
    knee: Option<usize>,
    window: Window,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    rtt_sum: f64,
    rtt_count: u32,
    delivered: u32,
    reached_limit: bool,
    backpressure: bool,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            rtt_sum: 0.0,
            rtt_count: 0,
            delivered: 0,
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
            windows: 0,
            lowered: false,
            rates: RateByLimit::new(),
            knee: None,
            window: Window::new(now),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The smallest recent limit that delivered about as much per second as the larger ones;
    /// `None` until a few limits have been seen.
    pub fn knee(&self) -> Option<usize> {
        self.knee
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
        self.window.delivered += 1;
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
        self.windows += 1;
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
        let elapsed = now.saturating_duration_since(window.started).as_secs_f64();
        let lowered_before = std::mem::take(&mut self.lowered);
        if window.backpressure {
            // Deliveries refused wait out Retry-After or a backoff in their slots, and the
            // windows until they end deliver less than their limit says: the rates recorded
            // since the last back-pressure are the ones that tell.
            self.rates.clear();
        } else if window.reached_limit && !lowered_before {
            self.rates
                .record(self.windows, self.limit, window.delivered, elapsed);
        }
        self.knee = self.rates.knee(self.windows);
        if window.backpressure || rose {
            // The decrease that ends slow start halves the limit: its last doubling overshot.
            let factor = if self.slow_start { 0.5 } else { DECREASE };
            self.lower_to((self.limit as f64 * factor) as usize);
        } else if window.reached_limit && holds {
            if let Some(below_knee) = self.beyond_knee() {
                self.lower_to(below_knee);
            } else {
                self.increase();
            }
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

    /// Where the limit should go back to when it has gone so far past the knee that more in
    /// flight only waits: a little below the knee, so the knee is measured again from below.
    fn beyond_knee(&self) -> Option<usize> {
        let knee = self.knee?;
        (self.limit >= knee.saturating_mul(BEYOND_KNEE)).then(|| knee * KNEE_RETURN / 10)
    }

    fn lower_to(&mut self, limit: usize) {
        self.limit = limit.max(1);
        self.lowered = true;
        self.slow_start = false;
        self.growing_for = 0;
    }

    fn increase(&mut self) {
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
    }
}

#[cfg(test)]
mod tests;
