//! Sliding-window aggregates over the events taken in, overall and per upstream.
//!
//! Events are counted in one-second slots by their decision time (not by when the gateway read
//! them, so a restarted gateway that reads the last 15 minutes back shows the same figures).
//! A window is the sum of its slots, so counts are exact. Latencies go into a log-scale
//! histogram with eight buckets per doubling: a reported quantile is the upper bound of the
//! bucket holding the true value, at most 9.05 % above it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use utoipa::ToSchema;

use crate::event::{CircuitState, Event, Outcome};

/// Slots kept: the longest window.
const SLOTS: u64 = 15 * 60;
/// The windows reported, in seconds.
pub const WINDOWS: [(&str, u64); 3] = [("1m", 60), ("5m", 300), ("15m", 900)];
/// Upstream names come from worker configuration; past this many the rest are counted
/// together, so a misbehaving producer cannot grow the map without bound.
const MAX_UPSTREAMS: usize = 64;
const OTHER_UPSTREAMS: &str = "(other)";
/// Rejected input has no upstream.
const NO_UPSTREAM: &str = "(none)";

/// Smallest latency bucket bound, in microseconds, and buckets per doubling.
const LATENCY_FLOOR_US: f64 = 8.0;
const BUCKETS_PER_DOUBLING: f64 = 8.0;
/// 8 µs · 2^(224/8) ≈ 2.1e9 µs ≈ 36 minutes: longer than any delivery deadline.
const LATENCY_BUCKETS: usize = 224;

fn bucket_upper_us(index: usize) -> f64 {
    LATENCY_FLOOR_US * (index as f64 / BUCKETS_PER_DOUBLING).exp2()
}

fn bucket_of(latency_us: f64) -> usize {
    if latency_us <= LATENCY_FLOOR_US {
        return 0;
    }
    let estimate = (BUCKETS_PER_DOUBLING * (latency_us / LATENCY_FLOOR_US).log2()).ceil();
    let mut index = (estimate.max(0.0) as usize).min(LATENCY_BUCKETS - 1);
    // Float rounding can put the estimate one bucket off either way.
    while index + 1 < LATENCY_BUCKETS && bucket_upper_us(index) < latency_us {
        index += 1;
    }
    while index > 0 && bucket_upper_us(index - 1) >= latency_us {
        index -= 1;
    }
    index
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    events: u64,
    delivered: u64,
    rejected: u64,
    failed: u64,
    dead_lettered: u64,
    retries_scheduled: u64,
    retries: u64,
    timeouts: u64,
    decided_closed: u64,
    decided_half_open: u64,
    decided_open: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.events += other.events;
        self.delivered += other.delivered;
        self.rejected += other.rejected;
        self.failed += other.failed;
        self.dead_lettered += other.dead_lettered;
        self.retries_scheduled += other.retries_scheduled;
        self.retries += other.retries;
        self.timeouts += other.timeouts;
        self.decided_closed += other.decided_closed;
        self.decided_half_open += other.decided_half_open;
        self.decided_open += other.decided_open;
    }
}

#[derive(Debug, Clone, Default)]
struct Slot {
    second: u64,
    counts: Counts,
    /// Allocated on the first latency sample of the slot.
    latency: Option<Box<[u32; LATENCY_BUCKETS]>>,
}

#[derive(Debug, Clone)]
struct Series {
    slots: Vec<Slot>,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            slots: vec![Slot::default(); SLOTS as usize],
        }
    }
}

impl Series {
    fn record(&mut self, second: u64, event: &Event) {
        let slot = &mut self.slots[(second % SLOTS) as usize];
        if slot.second != second {
            if slot.second > second {
                return; // older than the longest window
            }
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        let counts = &mut slot.counts;
        if event.outcome == Outcome::RetryScheduled {
            // A move to a retry tier: the message is still waiting, not decided.
            counts.retries_scheduled += 1;
            return;
        }
        counts.events += 1;
        match event.outcome {
            Outcome::Delivered => counts.delivered += 1,
            Outcome::Rejected => counts.rejected += 1,
            Outcome::Failed => counts.failed += 1,
            Outcome::DeadLettered => counts.dead_lettered += 1,
            Outcome::RetryScheduled | Outcome::Unspecified => {}
        }
        counts.retries += u64::from(event.view.attempts.saturating_sub(1));
        counts.timeouts += u64::from(event.view.timed_out);
        match event.circuit_state {
            CircuitState::Closed => counts.decided_closed += 1,
            CircuitState::HalfOpen => counts.decided_half_open += 1,
            CircuitState::Open => counts.decided_open += 1,
            CircuitState::Unknown => {}
        }
        if event.view.attempts > 0 {
            let latency = slot
                .latency
                .get_or_insert_with(|| Box::new([0; LATENCY_BUCKETS]));
            latency[bucket_of(event.delivery_latency.as_secs_f64() * 1e6)] += 1;
        }
    }

    fn window(&self, now_second: u64, seconds: u64) -> WindowStats {
        let mut counts = Counts::default();
        let mut latency = vec![0u64; LATENCY_BUCKETS];
        for slot in &self.slots {
            if slot.second > now_second || slot.second + seconds <= now_second {
                continue;
            }
            counts.add(&slot.counts);
            if let Some(histogram) = &slot.latency {
                for (total, count) in latency.iter_mut().zip(histogram.iter()) {
                    *total += u64::from(*count);
                }
            }
        }
        WindowStats::new(&counts, &latency, seconds)
    }
}

/// Figures of one window.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WindowStats {
    pub events: u64,
    /// Events per second over the window.
    pub rate_per_second: f64,
    pub delivered: u64,
    pub rejected: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    /// Messages moved to a retry tier: still waiting, so not among `events` (outcomes).
    pub retries_scheduled: u64,
    /// (failed + dead-lettered) / (delivered + failed + dead-lettered): delivery errors, not
    /// bad input. 0 when nothing was delivered or failed.
    pub error_ratio: f64,
    /// Attempts beyond the first.
    pub retries: u64,
    /// Events whose last attempt ended in a timeout.
    pub timeouts: u64,
    pub latency_ms: LatencyQuantiles,
    /// How many events were decided while the circuit was in each state.
    pub decided_in_circuit_state: CircuitCounts,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LatencyQuantiles {
    /// Events with at least one attempt.
    pub samples: u64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CircuitCounts {
    pub closed: u64,
    pub half_open: u64,
    pub open: u64,
}

fn quantile(histogram: &[u64], samples: u64, q: f64) -> Option<f64> {
    if samples == 0 {
        return None;
    }
    // Nearest rank: the smallest value with at least ⌈q·n⌉ samples at or below it.
    let rank = ((q * samples as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (index, count) in histogram.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(bucket_upper_us(index) / 1000.0);
        }
    }
    None
}

impl WindowStats {
    fn new(counts: &Counts, latency: &[u64], seconds: u64) -> Self {
        let decided = counts.delivered + counts.failed + counts.dead_lettered;
        let errors = counts.failed + counts.dead_lettered;
        let samples = latency.iter().sum();
        Self {
            events: counts.events,
            rate_per_second: counts.events as f64 / seconds as f64,
            delivered: counts.delivered,
            rejected: counts.rejected,
            failed: counts.failed,
            dead_lettered: counts.dead_lettered,
            retries_scheduled: counts.retries_scheduled,
            error_ratio: if decided == 0 {
                0.0
            } else {
                errors as f64 / decided as f64
            },
            retries: counts.retries,
            timeouts: counts.timeouts,
            latency_ms: LatencyQuantiles {
                samples,
                p50: quantile(latency, samples, 0.50),
                p95: quantile(latency, samples, 0.95),
                p99: quantile(latency, samples, 0.99),
            },
            decided_in_circuit_state: CircuitCounts {
                closed: counts.decided_closed,
                half_open: counts.decided_half_open,
                open: counts.decided_open,
            },
        }
    }
}

/// One window, overall and per upstream.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Window {
    /// `1m`, `5m` or `15m`.
    pub window: String,
    pub seconds: u64,
    pub overall: WindowStats,
    pub upstreams: BTreeMap<String, WindowStats>,
}

/// The last circuit state an event showed for an upstream.
#[derive(Debug, Clone, Copy)]
pub struct SeenCircuit {
    pub state: CircuitState,
    pub at: SystemTime,
}

#[derive(Debug, Default)]
struct Inner {
    overall: Series,
    upstreams: HashMap<String, Series>,
    circuits: HashMap<String, SeenCircuit>,
}

/// The aggregates; one per gateway.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

fn epoch_second(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

impl Stats {
    pub fn record(&self, event: &Event, now: SystemTime) {
        let now_second = epoch_second(now);
        // A worker's clock slightly ahead of ours must not put events into the future.
        let second = epoch_second(event.decided_at).min(now_second);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let upstream = match event.view.upstream.as_str() {
            "" => NO_UPSTREAM,
            name => name,
        };
        if event.circuit_state != CircuitState::Unknown && upstream != NO_UPSTREAM {
            let seen = inner
                .circuits
                .entry(upstream.to_owned())
                .or_insert(SeenCircuit {
                    state: event.circuit_state,
                    at: event.decided_at,
                });
            if event.decided_at >= seen.at {
                *seen = SeenCircuit {
                    state: event.circuit_state,
                    at: event.decided_at,
                };
            }
        }
        if second + SLOTS <= now_second {
            return;
        }
        inner.overall.record(second, event);
        let key = if inner.upstreams.contains_key(upstream) || inner.upstreams.len() < MAX_UPSTREAMS
        {
            upstream
        } else {
            OTHER_UPSTREAMS
        };
        inner
            .upstreams
            .entry(key.to_owned())
            .or_default()
            .record(second, event);
    }

    pub fn windows(&self, now: SystemTime) -> Vec<Window> {
        let now_second = epoch_second(now);
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        WINDOWS
            .iter()
            .map(|(name, seconds)| Window {
                window: (*name).to_owned(),
                seconds: *seconds,
                overall: inner.overall.window(now_second, *seconds),
                upstreams: inner
                    .upstreams
                    .iter()
                    .map(|(upstream, series)| {
                        (upstream.clone(), series.window(now_second, *seconds))
                    })
                    .collect(),
            })
            .collect()
    }

    /// The last circuit state seen on events, per upstream.
    pub fn circuits(&self) -> HashMap<String, SeenCircuit> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .circuits
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use relais_proto::v1::PipelineEvent;

    use super::*;
    use crate::event::EventId;

    fn event(
        decided_at: SystemTime,
        upstream: &str,
        outcome: relais_proto::v1::Outcome,
        attempts: u32,
        latency_us: u64,
    ) -> Event {
        let since = decided_at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        Event::from_proto(
            EventId {
                partition: 0,
                offset: 0,
            },
            PipelineEvent {
                trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
                upstream: upstream.into(),
                outcome: outcome as i32,
                attempts,
                delivery_latency_us: latency_us,
                circuit_state: relais_proto::v1::CircuitState::Closed as i32,
                decided_at: Some(relais_proto::Timestamp {
                    seconds: i64::try_from(since.as_secs()).unwrap(),
                    nanos: i32::try_from(since.subsec_nanos()).unwrap(),
                }),
                ..PipelineEvent::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn bucket_bounds_hold_every_value_within_the_stated_precision() {
        for value in [1.0, 8.0, 8.5, 100.0, 999.0, 1000.0, 12_345.0, 3e6, 1e9] {
            let index = bucket_of(value);
            let upper = bucket_upper_us(index);
            assert!(upper >= value, "{value} in bucket ending {upper}");
            if value > LATENCY_FLOOR_US {
                assert!(upper / value < 1.0906, "{value}: {upper}");
                assert!(bucket_upper_us(index - 1) < value);
            }
        }
    }

    #[test]
    fn windows_count_exactly_and_quantiles_stay_within_a_bucket() {
        let stats = Stats::default();
        let now = SystemTime::now();
        let mut latencies = Vec::new();
        for i in 0..1000u64 {
            let latency = 1000 + i * 37; // 1 ms to 38 ms
            latencies.push(latency);
            let outcome = if i % 10 == 0 {
                relais_proto::v1::Outcome::Failed
            } else {
                relais_proto::v1::Outcome::Delivered
            };
            let attempts = if i % 4 == 0 { 3 } else { 1 };
            stats.record(
                &event(
                    now - Duration::from_secs(i % 50),
                    "a",
                    outcome,
                    attempts,
                    latency,
                ),
                now,
            );
        }
        // Older than one minute, within five.
        for _ in 0..7 {
            stats.record(
                &event(
                    now - Duration::from_secs(200),
                    "b",
                    relais_proto::v1::Outcome::Rejected,
                    0,
                    0,
                ),
                now,
            );
        }
        // Older than the longest window: not counted.
        stats.record(
            &event(
                now - Duration::from_secs(2000),
                "b",
                relais_proto::v1::Outcome::Delivered,
                1,
                5,
            ),
            now,
        );
        let windows = stats.windows(now);
        let one = &windows[0];
        assert_eq!(one.overall.events, 1000);
        assert_eq!(one.overall.failed, 100);
        assert_eq!(one.overall.retries, 250 * 2);
        assert!((one.overall.error_ratio - 0.1).abs() < 1e-9);
        let five = &windows[1];
        assert_eq!(five.overall.events, 1007);
        assert_eq!(five.upstreams["b"].rejected, 7);
        assert_eq!(windows[2].overall.events, 1007);

        latencies.sort_unstable();
        for (q, reported) in [
            (0.50, one.overall.latency_ms.p50),
            (0.95, one.overall.latency_ms.p95),
            (0.99, one.overall.latency_ms.p99),
        ] {
            let rank = (q * 1000.0_f64).ceil() as usize;
            let exact_ms = latencies[rank - 1] as f64 / 1000.0;
            let reported = reported.unwrap();
            assert!(
                reported >= exact_ms && reported / exact_ms < 1.0906,
                "q{q}: exact {exact_ms} reported {reported}"
            );
        }
    }
}
