//! Metrics of outgoing calls, registered once per process and shared by every upstream.
//!
//! `http_client_request_duration_seconds` follows the OpenTelemetry HTTP client conventions
//! (name, label names, recommended buckets; the trace id as exemplar). Everything else carries
//! the `relais_` prefix. Every label is bounded: upstream names come from configuration, and
//! statuses, phases, kinds and reasons are small fixed sets.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::attempt::AttemptRecord;
use crate::circuit::CircuitState;

/// The OpenTelemetry recommended buckets for `http.client.request.duration` (seconds), the
/// same as for servers.
pub use relais_telemetry::exemplar::TraceExemplar;
use relais_telemetry::exemplar::{LatencyHistogram, latency_histogram};
pub use relais_telemetry::http_server::HTTP_DURATION_BUCKETS;

/// Recorded once per attempt, so built without copying strings: shared or static values only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpClientLabels {
    pub upstream: Arc<str>,
    pub http_request_method: &'static str,
    pub server_address: Arc<str>,
    /// Empty when no response arrived.
    pub http_response_status_code: Option<u16>,
    /// Empty on success.
    pub error_type: Option<Cow<'static, str>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub upstream: Arc<str>,
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamReasonLabels {
    pub upstream: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    pub upstream: Arc<str>,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub upstream: String,
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub upstream: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

type DurationFamily = Family<HttpClientLabels, HistogramWithExemplars<TraceExemplar>>;

/// Handles to every resilience metric; clone freely (each is an `Arc` inside).
#[derive(Debug, Clone)]
pub struct ResilienceMetrics {
    pub(crate) request_duration: DurationFamily,
    pub(crate) phase_duration: Family<PhaseLabels, LatencyHistogram>,
    pub(crate) retries: Family<UpstreamReasonLabels, Counter>,
    pub(crate) retry_stops: Family<UpstreamReasonLabels, Counter>,
    pub(crate) timeouts: Family<TimeoutLabels, Counter>,
    pub(crate) circuit_transitions: Family<TransitionLabels, Counter>,
    pub(crate) circuit_state: Family<StateLabels, Gauge>,
    pub(crate) circuit_rejected: Family<UpstreamLabels, Counter>,
    pub(crate) retry_budget_utilisation:
        Family<UpstreamLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub(crate) bulkhead_in_flight: Family<UpstreamLabels, Gauge>,
    pub(crate) bulkhead_rejected: Family<UpstreamLabels, Counter>,
    pub(crate) throttled: Family<UpstreamReasonLabels, Counter>,
}

impl ResilienceMetrics {
    /// Creates the metrics and registers them in `registry` (which should carry the `relais`
    /// prefix; the OpenTelemetry-named histogram is registered at the root).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            request_duration: Family::new_with_constructor(|| {
                HistogramWithExemplars::new(HTTP_DURATION_BUCKETS.into_iter())
            }),
            phase_duration: Family::new_with_constructor(|| {
                latency_histogram(HTTP_DURATION_BUCKETS.into_iter())
            }),
            retries: Family::default(),
            retry_stops: Family::default(),
            timeouts: Family::default(),
            circuit_transitions: Family::default(),
            circuit_state: Family::default(),
            circuit_rejected: Family::default(),
            retry_budget_utilisation: Family::default(),
            bulkhead_in_flight: Family::default(),
            bulkhead_rejected: Family::default(),
            throttled: Family::default(),
        };
        registry.register_with_unit(
            "http_client_request_duration",
            "Duration of HTTP client attempts (OpenTelemetry http.client.request.duration)",
            prometheus_client::registry::Unit::Seconds,
            metrics.request_duration.clone(),
        );
        let relais = registry.sub_registry_with_prefix("relais");
        relais.register_with_unit(
            "http_client_phase_duration",
            "Duration of each phase of an HTTP attempt as measured by the network probe",
            prometheus_client::registry::Unit::Seconds,
            metrics.phase_duration.clone(),
        );
        relais.register(
            "http_client_retries",
            "Retries sent, by the cause of the failed attempt",
            metrics.retries.clone(),
        );
        relais.register(
            "http_client_retry_stops",
            "Deliveries whose retries stopped before success, by why they stopped",
            metrics.retry_stops.clone(),
        );
        relais.register(
            "http_client_timeouts",
            "Attempts ended by a timeout, by which limit fired",
            metrics.timeouts.clone(),
        );
        relais.register(
            "circuit_transitions",
            "Circuit breaker state changes",
            metrics.circuit_transitions.clone(),
        );
        relais.register(
            "circuit_state",
            "Circuit breaker state: 1 for the current state, 0 for the others",
            metrics.circuit_state.clone(),
        );
        relais.register(
            "circuit_rejected_calls",
            "Calls refused because the circuit was open",
            metrics.circuit_rejected.clone(),
        );
        relais.register(
            "retry_budget_utilisation_ratio",
            "Share of the retry budget in use over its window (1 = exhausted)",
            metrics.retry_budget_utilisation.clone(),
        );
        relais.register(
            "bulkhead_in_flight_calls",
            "Calls currently holding a bulkhead slot",
            metrics.bulkhead_in_flight.clone(),
        );
        relais.register(
            "bulkhead_rejected_calls",
            "Calls that found no bulkhead slot within the wait limit",
            metrics.bulkhead_rejected.clone(),
        );
        relais.register(
            "throttled_calls",
            "Calls that had to wait before an attempt: reason rate_limit (the upstream's rate limit had no token) or retry_after (the upstream asked for a pause with Retry-After)",
            metrics.throttled.clone(),
        );
        metrics
    }

    /// Creates every series of a newly configured upstream at zero: a counter that has never
    /// moved is then a flat line at 0, not a missing series that alerts and dashboards cannot
    /// tell from a broken scrape. Label values come from fixed sets.
    pub(crate) fn prepare_upstream(&self, upstream: &str) {
        self.set_circuit_state(upstream, CircuitState::Closed);
        let name = || upstream.to_owned();
        for stop in crate::classify::RetryStop::ALL {
            let _ = self.retry_stops.get_or_create(&UpstreamReasonLabels {
                upstream: name(),
                reason: stop.as_str(),
            });
        }
        for cause in ["status_5xx", "status_429"] {
            let _ = self.retries.get_or_create(&UpstreamReasonLabels {
                upstream: name(),
                reason: cause,
            });
        }
        for kind in crate::classify::TimeoutKind::ALL {
            let _ = self.timeouts.get_or_create(&TimeoutLabels {
                upstream: Arc::from(upstream),
                kind: kind.as_str(),
            });
        }
        for (from, to) in [
            (CircuitState::Closed, CircuitState::Open),
            (CircuitState::Open, CircuitState::HalfOpen),
            (CircuitState::HalfOpen, CircuitState::Closed),
            (CircuitState::HalfOpen, CircuitState::Open),
        ] {
            let _ = self.circuit_transitions.get_or_create(&TransitionLabels {
                upstream: name(),
                from: from.as_str(),
                to: to.as_str(),
            });
        }
        let _ = self
            .circuit_rejected
            .get_or_create(&UpstreamLabels { upstream: name() });
        let _ = self
            .bulkhead_rejected
            .get_or_create(&UpstreamLabels { upstream: name() });
        for reason in ["rate_limit", "retry_after"] {
            let _ = self.throttled.get_or_create(&UpstreamReasonLabels {
                upstream: name(),
                reason,
            });
        }
    }

    /// The `throttled_calls` series of an upstream for `reason` (`rate_limit`, `retry_after`).
    pub(crate) fn throttled_calls(&self, upstream: &str, reason: &'static str) -> Counter {
        self.throttled
            .get_or_create(&UpstreamReasonLabels {
                upstream: upstream.to_owned(),
                reason,
            })
            .clone()
    }

    /// Sets the 0/1 state series of an upstream.
    pub(crate) fn set_circuit_state(&self, upstream: &str, current: CircuitState) {
        for state in CircuitState::ALL {
            self.circuit_state
                .get_or_create(&StateLabels {
                    upstream: upstream.to_owned(),
                    state: state.as_str(),
                })
                .set(i64::from(state == current));
        }
    }

    pub(crate) fn record_transition(&self, upstream: &str, from: CircuitState, to: CircuitState) {
        self.circuit_transitions
            .get_or_create(&TransitionLabels {
                upstream: upstream.to_owned(),
                from: from.as_str(),
                to: to.as_str(),
            })
            .inc();
        self.set_circuit_state(upstream, to);
    }
}

/// An upstream's attempt metrics. The phase series depend only on the upstream, so each is
/// looked up in its family once, when the phase first happens, rather than on every attempt.
#[derive(Debug)]
pub(crate) struct AttemptMetrics {
    metrics: ResilienceMetrics,
    upstream: Arc<str>,
    /// `http_client_phase_duration` of each phase, in [`PHASES`] order.
    phases: [OnceLock<LatencyHistogram>; PHASES.len()],
    /// The duration series of the first successful (2xx) attempt. An upstream answers nearly
    /// every attempt with the same method, server and status, so that series is kept at hand.
    usual: OnceLock<(HttpClientLabels, LatencyHistogram)>,
}

/// The phases of an attempt, as the `phase` label names them.
const PHASES: [&str; 5] = ["dns", "connect", "tls", "time_to_first_byte", "transfer"];

impl AttemptMetrics {
    pub(crate) fn new(metrics: &ResilienceMetrics, upstream: &Arc<str>) -> Self {
        Self {
            metrics: metrics.clone(),
            upstream: Arc::clone(upstream),
            phases: Default::default(),
            usual: OnceLock::new(),
        }
    }

    /// Counts one finished attempt, labelled by method and server address.
    pub(crate) fn record(
        &self,
        method: &'static str,
        server_address: &Arc<str>,
        attempt: &AttemptRecord,
        exemplar: Option<TraceExemplar>,
    ) {
        let labels = HttpClientLabels {
            upstream: Arc::clone(&self.upstream),
            http_request_method: method,
            server_address: Arc::clone(server_address),
            http_response_status_code: attempt.status,
            error_type: attempt.error_type(),
        };
        let total = attempt.timings.total.as_secs_f64();
        match self.usual.get() {
            Some((usual, series)) if *usual == labels => {
                series.observe(total, exemplar.clone(), None);
            }
            _ => {
                let series = self.metrics.request_duration.get_or_create(&labels);
                series.observe(total, exemplar.clone(), None);
                let succeeded = labels
                    .http_response_status_code
                    .is_some_and(|status| (200..300).contains(&status));
                if succeeded {
                    let _ = self.usual.set((labels.clone(), series.clone()));
                }
            }
        }
        let timings = &attempt.timings;
        let durations = [
            timings.dns,
            timings.connect,
            timings.tls,
            timings.time_to_first_byte,
            timings.transfer,
        ];
        for ((phase, series), duration) in PHASES.iter().zip(&self.phases).zip(durations) {
            // A phase that did not happen (pooled connection, no TLS) is not a zero-length one.
            if !duration.is_zero() {
                series
                    .get_or_init(|| {
                        self.metrics
                            .phase_duration
                            .get_or_create(&PhaseLabels {
                                upstream: Arc::clone(&self.upstream),
                                phase,
                            })
                            .clone()
                    })
                    .observe(duration.as_secs_f64(), exemplar.clone(), None);
            }
        }
        if let Some(kind) = attempt.timeout {
            self.metrics
                .timeouts
                .get_or_create(&TimeoutLabels {
                    upstream: Arc::clone(&self.upstream),
                    kind: kind.as_str(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use prometheus_client::registry::Registry;

    use super::{AttemptMetrics, ResilienceMetrics};
    use crate::attempt::{AttemptRecord, PhaseTimings};

    fn attempt(status: u16, connect: Duration) -> AttemptRecord {
        AttemptRecord {
            number: 0,
            started_at: SystemTime::now(),
            status: Some(status),
            error: None,
            timeout: None,
            timings: PhaseTimings {
                connect,
                time_to_first_byte: Duration::from_millis(2),
                total: Duration::from_millis(3),
                ..PhaseTimings::default()
            },
            request_bytes: 10,
            response_bytes: 2,
            backoff: Duration::ZERO,
            response: None,
        }
    }

    fn count(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn attempts_count_under_their_own_labels_whichever_series_is_kept_at_hand() {
        let mut registry = Registry::default();
        let metrics = ResilienceMetrics::register(&mut registry);
        let attempts = AttemptMetrics::new(&metrics, &Arc::from("orders"));
        let server: Arc<str> = Arc::from("127.0.0.1");
        let other_server: Arc<str> = Arc::from("orders.example");
        attempts.record("POST", &server, &attempt(302, Duration::ZERO), None);
        attempts.record("POST", &server, &attempt(503, Duration::ZERO), None);
        attempts.record(
            "POST",
            &server,
            &attempt(202, Duration::from_millis(1)),
            None,
        );
        attempts.record("POST", &server, &attempt(202, Duration::ZERO), None);
        attempts.record("POST", &other_server, &attempt(202, Duration::ZERO), None);
        attempts.record("POST", &server, &attempt(200, Duration::ZERO), None);
        attempts.record("POST", &server, &attempt(202, Duration::ZERO), None);

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let duration = |server: &str, status: u16, error: &str| {
            count(
                &text,
                &format!(
                    "http_client_request_duration_seconds_count{{upstream=\"orders\",http_request_method=\"POST\",server_address=\"{server}\",http_response_status_code=\"{status}\",error_type=\"{error}\"}}"
                ),
            )
        };
        assert_eq!(duration("127.0.0.1", 202, ""), Some(3), "{text}");
        assert_eq!(duration("127.0.0.1", 200, ""), Some(1));
        assert_eq!(duration("127.0.0.1", 503, "503"), Some(1));
        assert_eq!(duration("127.0.0.1", 302, ""), Some(1));
        assert_eq!(duration("orders.example", 202, ""), Some(1));
        let phase = |phase: &str| {
            count(
                &text,
                &format!(
                    "relais_http_client_phase_duration_seconds_count{{upstream=\"orders\",phase=\"{phase}\"}}"
                ),
            )
        };
        assert_eq!(phase("time_to_first_byte"), Some(7));
        assert_eq!(phase("connect"), Some(1));
        assert_eq!(
            phase("dns"),
            None,
            "a phase that never happened has no series"
        );
    }
}
