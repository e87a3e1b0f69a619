//! The worker's own metrics (the outbound HTTP metrics belong to the resilience crate).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::{Registry, Unit};
use relais_telemetry::exemplar::{self, LatencyHistogram, latency_histogram};

use crate::records::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub partition: i32,
}

/// Handles to every worker metric (each an `Arc` inside; clone freely).
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    messages: Family<OutcomeLabels, Counter>,
    rejections: Family<ReasonLabels, Counter>,
    dead_letters: Family<ReasonLabels, Counter>,
    processing: Family<OutcomeLabels, LatencyHistogram>,
    /// `messages` and `processing` of each outcome, in [`Outcome::LABELS`] order: created at
    /// zero and resolved once, since every message counts in one of them.
    by_outcome: Arc<[OutcomeSeries; Outcome::LABELS.len()]>,
    pub parked: Gauge,
    pub queue_depth: Gauge,
    pub queue_capacity: Gauge,
    pub paused_partitions: Gauge,
    pub pauses: Counter,
    pub assigned_partitions: Gauge,
    handovers: Family<ResultLabels, Counter>,
    /// Outcomes committed ahead of their partition's offset (finished behind an unfinished
    /// message).
    pub outcomes_ahead: Counter,
    /// Messages read again whose outcome was committed ahead before this assignment: not sent
    /// again.
    pub recorded_skipped: Counter,
    /// The longest commit metadata written now (smaller once a broker refused it).
    pub offset_metadata_limit: Gauge,
    transactions: Family<ResultLabels, Counter>,
    transaction_duration: LatencyHistogram,
    pub committed_messages: Counter,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub transaction_call_retries: Counter,
    pub producer_replacements: Counter,
    refused_records: Family<TopicLabels, Counter>,
    pub dlq_truncated: Counter,
    pub uncommitted: Gauge,
    upstream_held: Family<HeldLabels, Gauge>,
    upstream_queued: Family<UpstreamLabels, Gauge>,
    upstream_in_flight: Family<UpstreamLabels, Gauge>,
    upstream_concurrency_limit: Family<UpstreamLabels, Gauge>,
    upstream_concurrency_knee: Family<UpstreamLabels, Gauge>,
    ingress_to_outcome: Family<UpstreamLabels, LatencyHistogram>,
    retries_scheduled: Family<RetryLabels, Counter>,
    /// Records waiting in each retry topic, over this replica's partitions.
    pub retry_waiting: Family<TopicLabels, Gauge>,
    /// How long the head of each retry topic (over this replica's partitions) has waited.
    pub retry_oldest: Family<TopicLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Keys with messages in a retry tier whose later messages follow them (ordering "key").
    pub retry_waiting_keys: Gauge,
}

#[derive(Debug)]
struct OutcomeSeries {
    messages: Counter,
    processing: LatencyHistogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub upstream: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeldLabels {
    pub upstream: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

/// The results of a handover ([`WorkerMetrics::handover`]).
const HANDOVER_RESULTS: [&str; 2] = ["committed", "timed_out"];

impl WorkerMetrics {
    /// Counts a handover of revoked partitions: all their started work committed, or not.
    pub fn handover(&self, committed: bool) {
        let result = HANDOVER_RESULTS[usize::from(!committed)];
        self.handovers.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn register(registry: &mut Registry) -> Self {
        let messages = Family::<OutcomeLabels, Counter>::default();
        let processing: Family<OutcomeLabels, LatencyHistogram> =
            Family::new_with_constructor(|| {
                latency_histogram(exponential_buckets(0.0005, 2.0, 18))
            });
        let by_outcome = Arc::new(Outcome::LABELS.map(|outcome| {
            let labels = OutcomeLabels { outcome };
            OutcomeSeries {
                messages: messages.get_or_create(&labels).clone(),
                processing: processing.get_or_create(&labels).clone(),
            }
        }));
        let metrics = Self {
            messages,
            rejections: Family::default(),
            dead_letters: Family::default(),
            processing,
            by_outcome,
            parked: Gauge::default(),
            queue_depth: Gauge::default(),
            queue_capacity: Gauge::default(),
            paused_partitions: Gauge::default(),
            pauses: Counter::default(),
            assigned_partitions: Gauge::default(),
            handovers: Family::default(),
            outcomes_ahead: Counter::default(),
            recorded_skipped: Counter::default(),
            offset_metadata_limit: Gauge::default(),
            transactions: Family::default(),
            transaction_duration: latency_histogram(exponential_buckets(0.001, 2.0, 14)),
            committed_messages: Counter::default(),
            consumer_lag: Family::default(),
            transaction_call_retries: Counter::default(),
            producer_replacements: Counter::default(),
            refused_records: Family::default(),
            dlq_truncated: Counter::default(),
            uncommitted: Gauge::default(),
            upstream_held: Family::default(),
            upstream_queued: Family::default(),
            upstream_in_flight: Family::default(),
            upstream_concurrency_limit: Family::default(),
            upstream_concurrency_knee: Family::default(),
            // 1 ms to about 4.5 hours: waits for an upstream (open circuit, hold, pace, queue)
            // belong in this figure, however long.
            ingress_to_outcome: Family::new_with_constructor(|| {
                latency_histogram(exponential_buckets(0.001, 4.0, 13))
            }),
            retries_scheduled: Family::default(),
            retry_waiting: Family::default(),
            retry_oldest: Family::default(),
            retry_waiting_keys: Gauge::default(),
        };
        let worker = registry.sub_registry_with_prefix("relais_worker");
        worker.register(
            "messages",
            "Ingress messages decided, by outcome",
            metrics.messages.clone(),
        );
        worker.register(
            "rejections",
            "Ingress messages rejected as invalid, by reason code",
            metrics.rejections.clone(),
        );
        worker.register(
            "dead_letters",
            "Messages written to the DLQ, by reason code (rejections included)",
            metrics.dead_letters.clone(),
        );
        worker.register_with_unit(
            "processing_duration",
            "Time from routing a message, once read, to its outcome (its wait in its upstream's queue included)",
            Unit::Seconds,
            metrics.processing.clone(),
        );
        worker.register(
            "retries_scheduled",
            "Messages moved to a retry tier (not an outcome), by upstream and reason code",
            metrics.retries_scheduled.clone(),
        );
        worker.register(
            "retry_waiting_messages",
            "Messages waiting in each retry topic (not yet read, or read and not due yet), over this replica's partitions",
            metrics.retry_waiting.clone(),
        );
        worker.register_with_unit(
            "retry_oldest_age",
            "Time since the oldest message waiting in each retry topic (over this replica's partitions) was moved there",
            Unit::Seconds,
            metrics.retry_oldest.clone(),
        );
        worker.register(
            "retry_waiting_keys",
            "Keys with a message in a retry tier, whose later messages follow it there (ordering \"key\")",
            metrics.retry_waiting_keys.clone(),
        );
        worker.register(
            "parked_messages",
            "Messages waiting in memory for their upstream (open circuit, hold, pace)",
            metrics.parked.clone(),
        );
        worker.register(
            "queue_depth",
            "Messages read and waiting: queued for their upstream, held because their upstream's queue was full, or read from a log that started again and waiting for the messages read before",
            metrics.queue_depth.clone(),
        );
        worker.register(
            "queue_capacity",
            "Room in the upstreams' queues (pipeline.max_queued_per_upstream, or 8 x max_in_flight, per upstream)",
            metrics.queue_capacity.clone(),
        );
        worker.register(
            "paused_partitions",
            "Ingress partitions paused for backpressure: their messages found their upstream's queue full, or the uncommitted limit was reached",
            metrics.paused_partitions.clone(),
        );
        worker.register(
            "pauses",
            "Times a partition was paused for backpressure",
            metrics.pauses.clone(),
        );
        worker.register(
            "assigned_partitions",
            "Ingress partitions assigned to this replica",
            metrics.assigned_partitions.clone(),
        );
        worker.register(
            "handovers",
            "Revokes of partitions moving to another replica, by result: committed (their deliveries in flight finished and were committed first) or timed_out (some still in flight after pipeline.handover_timeout: the next owner sends them again)",
            metrics.handovers.clone(),
        );
        worker.register(
            "outcomes_ahead",
            "Outcomes committed ahead of their partition's offset (finished behind a message that had not), named in the offset's commit metadata so that whoever reads the partition next (after a move or a crash) does not send them again",
            metrics.outcomes_ahead.clone(),
        );
        worker.register(
            "recorded_skipped",
            "Messages read again whose outcome was committed ahead of the offset (by the partition's previous owner, or before a crash): recorded already, not sent again",
            metrics.recorded_skipped.clone(),
        );
        for result in HANDOVER_RESULTS {
            let _ = metrics.handovers.get_or_create(&ResultLabels { result });
        }
        worker.register(
            "transactions",
            "Outcome transactions, by result",
            metrics.transactions.clone(),
        );
        worker.register_with_unit(
            "transaction_duration",
            "Time to write and commit one outcome transaction",
            Unit::Seconds,
            metrics.transaction_duration.clone(),
        );
        worker.register(
            "committed_messages",
            "Messages whose outcome and offset were committed",
            metrics.committed_messages.clone(),
        );
        worker.register(
            "consumer_lag",
            "Messages behind the end of each assigned ingress partition",
            metrics.consumer_lag.clone(),
        );
        worker.register(
            "transaction_call_retries",
            "Transactional calls made again because librdkafka classified their error as retriable (a commit that timed out, a coordinator that moved)",
            metrics.transaction_call_retries.clone(),
        );
        worker.register(
            "transactional_producer_replacements",
            "Transactional producers made anew after librdkafka left the old one in a fatal state (a broker away longer than the delivery or transaction timeout); the transaction it left is settled and nothing is lost or written twice",
            metrics.producer_replacements.clone(),
        );
        worker.register(
            "refused_records",
            "Records the broker refused for what they are (too large, invalid), by topic; a refused dead-letter copy is written again without its payload",
            metrics.refused_records.clone(),
        );
        worker.register(
            "dlq_truncated",
            "Dead-letter copies cut to the dlq limits (their headers say what was left out)",
            metrics.dlq_truncated.clone(),
        );
        worker.register(
            "uncommitted_messages",
            "Messages read and not yet committed (queued for their upstream, in delivery, or waiting for their transaction)",
            metrics.uncommitted.clone(),
        );
        worker.register(
            "offset_metadata_limit_bytes",
            "The longest commit metadata the worker writes to name outcomes committed ahead of the offset: kafka.offset_metadata_max_bytes, halved each time a broker refused it (0: nothing committed ahead)",
            metrics.offset_metadata_limit.clone(),
        );
        worker.register(
            "upstream_held",
            "1 while an upstream is held and its messages wait: reason unauthorized (it answered 401/403; one trial call per pause) or disabled (it answered 410, or an operator disabled it; until re-enabled through the gateway)",
            metrics.upstream_held.clone(),
        );
        worker.register(
            "upstream_queued_messages",
            "Messages queued for an upstream, not yet started (a key's later messages wait behind its earlier one)",
            metrics.upstream_queued.clone(),
        );
        worker.register(
            "upstream_in_flight_deliveries",
            "Deliveries in flight to an upstream, waits for its circuit or hold included; at most its max_in_flight",
            metrics.upstream_in_flight.clone(),
        );
        worker.register_with_unit(
            "ingress_to_outcome",
            "From the ingress record's timestamp to the decided outcome, per upstream: the latency a sender sees, waits for the upstream (queue, open circuit, hold, pace) included",
            Unit::Seconds,
            metrics.ingress_to_outcome.clone(),
        );
        worker.register(
            "upstream_concurrency_limit",
            "The in-flight limit in force for an upstream: adaptive within 1..=max_in_flight, or max_in_flight",
            metrics.upstream_concurrency_limit.clone(),
        );
        worker.register(
            "upstream_concurrency_knee",
            "The adaptive in-flight limit's knee for an upstream: the smallest recent limit that delivered at least 90 % as much per second as the larger ones; the limit does not grow past twice it (0 while unknown)",
            metrics.upstream_concurrency_knee.clone(),
        );
        for outcome in ["delivered", "rejected", "failed", "dead_lettered"] {
            let _ = metrics.messages.get_or_create(&OutcomeLabels { outcome });
        }
        // Every reject reason at zero: a reason that never occurred is a flat line, not a
        // missing series.
        for reason in relais_ingress::RejectReason::ALL {
            let labels = ReasonLabels {
                reason: reason.code().to_owned(),
            };
            let _ = metrics.rejections.get_or_create(&labels);
            let _ = metrics.dead_letters.get_or_create(&labels);
        }
        metrics
    }

    pub fn record_outcome(&self, outcome: &Outcome, elapsed: Duration) {
        let series = &self.by_outcome[outcome.index()];
        series.messages.inc();
        exemplar::observe(&series.processing, elapsed.as_secs_f64());
        if *outcome != Outcome::Delivered {
            self.dead_letters
                .get_or_create(&ReasonLabels {
                    reason: outcome.reason().to_owned(),
                })
                .inc();
        }
    }

    pub fn record_retry_scheduled(&self, upstream: &str, reason: &str) {
        self.retries_scheduled
            .get_or_create(&RetryLabels {
                upstream: upstream.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn record_rejection(&self, reason: &str) {
        self.rejections
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The held gauge of one upstream and reason (created at zero).
    pub fn upstream_queued(&self, upstream: &str) -> Gauge {
        self.upstream_queued
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .clone()
    }

    /// An upstream's histogram of the time from a routed message's ingress timestamp to its
    /// outcome; resolved once per upstream, observed for every message.
    pub fn ingress_to_outcome(&self, upstream: &str) -> LatencyHistogram {
        self.ingress_to_outcome
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .clone()
    }

    pub fn upstream_concurrency_knee(&self, upstream: &str) -> Gauge {
        self.upstream_concurrency_knee
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .clone()
    }

    pub fn upstream_concurrency_limit(&self, upstream: &str) -> Gauge {
        self.upstream_concurrency_limit
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .clone()
    }

    pub fn upstream_in_flight(&self, upstream: &str) -> Gauge {
        self.upstream_in_flight
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .clone()
    }

    pub fn upstream_held(&self, upstream: &str, reason: crate::hold::HoldReason) -> Gauge {
        self.upstream_held
            .get_or_create(&HeldLabels {
                upstream: upstream.to_owned(),
                reason: reason.label(),
            })
            .clone()
    }

    /// Every output topic's refused-records series at zero from the start.
    pub fn prepare_output_topics(&self, topics: &[&str]) {
        for topic in topics {
            let _ = self.refused_records.get_or_create(&TopicLabels {
                topic: (*topic).to_owned(),
            });
        }
    }

    pub fn record_refused(&self, topic: &str) {
        self.refused_records
            .get_or_create(&TopicLabels {
                topic: topic.to_owned(),
            })
            .inc();
    }

    pub fn record_transaction(&self, committed: bool, elapsed: Duration) {
        let result = if committed { "committed" } else { "aborted" };
        self.transactions
            .get_or_create(&ResultLabels { result })
            .inc();
        exemplar::observe(&self.transaction_duration, elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::registry::Registry;

    use super::WorkerMetrics;
    use crate::records::Outcome;

    #[test]
    fn every_outcome_is_counted_under_its_own_label_from_zero() {
        let mut registry = Registry::default();
        let metrics = WorkerMetrics::register(&mut registry);
        let failed = Outcome::Failed {
            reason: "status_400".into(),
            detail: "refused".into(),
        };
        metrics.record_outcome(&failed, Duration::from_millis(3));
        metrics.record_outcome(&Outcome::Delivered, Duration::from_millis(1));
        metrics.record_outcome(&Outcome::Delivered, Duration::from_millis(1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for (outcome, count) in [
            ("delivered", 2),
            ("rejected", 0),
            ("failed", 1),
            ("dead_lettered", 0),
        ] {
            let counter = format!("relais_worker_messages_total{{outcome=\"{outcome}\"}} {count}");
            let histogram = format!(
                "relais_worker_processing_duration_seconds_count{{outcome=\"{outcome}\"}} {count}"
            );
            assert!(text.contains(&counter), "{counter} in\n{text}");
            assert!(text.contains(&histogram), "{histogram} in\n{text}");
        }
    }
}
