//! audit-service metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use relais_telemetry::exemplar::{LatencyHistogram, latency_histogram};

#[derive(Debug, Clone)]
pub struct AuditMetrics {
    pub records_consumed: Counter,
    pub records_written: Counter,
    pub records_quarantined: Counter,
    pub objects_written: Counter,
    pub bytes_written: Counter,
    pub uncompressed_written: Counter,
    pub object_size: Histogram,
    pub put_duration: LatencyHistogram,
    pub put_retries: Counter,
    pub buffer_records: Gauge,
    pub buffer_bytes: Gauge,
    pub oldest_unflushed_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub paused: Gauge,
    pub consumer_lag: Gauge,
    pub assigned_partitions: Gauge,
    pub commits: Counter,
    pub commit_failures: Counter,
    pub trail_lookups: Family<Vec<(&'static str, &'static str)>, Counter>,
    pub pressure_closes: Counter,
    /// Items stored under their second key: their own held an object of another log.
    pub second_keys: Counter,
    /// The consumer's offset resets: audit records Kafka deleted before they were stored.
    pub resets: relais_kafka::resets::ResetMetrics,
}

impl AuditMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let audit = registry.sub_registry_with_prefix("relais_audit");
        let metrics = Self {
            records_consumed: Counter::default(),
            records_written: Counter::default(),
            records_quarantined: Counter::default(),
            objects_written: Counter::default(),
            bytes_written: Counter::default(),
            uncompressed_written: Counter::default(),
            object_size: Histogram::new(exponential_buckets(1024.0, 4.0, 10)),
            put_duration: latency_histogram(exponential_buckets(0.005, 2.0, 14)),
            put_retries: Counter::default(),
            buffer_records: Gauge::default(),
            buffer_bytes: Gauge::default(),
            oldest_unflushed_age: Gauge::default(),
            paused: Gauge::default(),
            consumer_lag: Gauge::default(),
            assigned_partitions: Gauge::default(),
            commits: Counter::default(),
            commit_failures: Counter::default(),
            trail_lookups: Family::default(),
            pressure_closes: Counter::default(),
            second_keys: Counter::default(),
            resets: relais_kafka::resets::ResetMetrics::register(audit),
        };
        audit.register(
            "records_consumed",
            "Audit records read from Kafka",
            metrics.records_consumed.clone(),
        );
        audit.register(
            "records_written",
            "Audit records stored in RGW and committed",
            metrics.records_written.clone(),
        );
        audit.register(
            "records_quarantined",
            "Undecodable records stored under the quarantine prefix",
            metrics.records_quarantined.clone(),
        );
        audit.register(
            "objects_written",
            "Data objects stored and committed",
            metrics.objects_written.clone(),
        );
        audit.register_with_unit(
            "written",
            "Compressed bytes stored",
            Unit::Bytes,
            metrics.bytes_written.clone(),
        );
        audit.register_with_unit(
            "uncompressed_written",
            "Bytes stored before compression (NDJSON); with `written`, the compression ratio",
            Unit::Bytes,
            metrics.uncompressed_written.clone(),
        );
        audit.register_with_unit(
            "object_size",
            "Compressed size of stored objects",
            Unit::Bytes,
            metrics.object_size.clone(),
        );
        audit.register_with_unit(
            "put_duration",
            "Time to store one object, retries included",
            Unit::Seconds,
            metrics.put_duration.clone(),
        );
        audit.register(
            "put_retries",
            "PUT attempts that failed and were retried",
            metrics.put_retries.clone(),
        );
        audit.register(
            "objects_under_second_key",
            "Objects and quarantined records stored under their second key, because their own held an object of another log of the topic (deleted and created again, or a partition truncated), which is kept",
            metrics.second_keys.clone(),
        );
        audit.register(
            "buffer_records",
            "Records held in memory, not yet stored",
            metrics.buffer_records.clone(),
        );
        audit.register_with_unit(
            "buffer",
            "Uncompressed bytes held in memory, not yet stored",
            Unit::Bytes,
            metrics.buffer_bytes.clone(),
        );
        audit.register_with_unit(
            "oldest_unflushed_age",
            "How long the oldest record held in memory has waited",
            Unit::Seconds,
            metrics.oldest_unflushed_age.clone(),
        );
        audit.register(
            "paused",
            "1 while consumption is paused because the buffer is full",
            metrics.paused.clone(),
        );
        audit.register(
            "consumer_lag",
            "Records on the audit topic not yet read (assigned partitions); read ones awaiting storage are in buffer_records",
            metrics.consumer_lag.clone(),
        );
        audit.register(
            "assigned_partitions",
            "Audit topic partitions assigned to this instance",
            metrics.assigned_partitions.clone(),
        );
        audit.register(
            "commits",
            "Offset commits after stored objects",
            metrics.commits.clone(),
        );
        audit.register(
            "commit_failures",
            "Offset commits that failed; they are tried again, and their partitions store nothing more until one succeeds",
            metrics.commit_failures.clone(),
        );
        audit.register(
            "trail_lookups",
            "Trail lookups by result: complete, partial (stopped at the deadline), rejected (no slot free before it)",
            metrics.trail_lookups.clone(),
        );
        audit.register(
            "pressure_closes",
            "Objects closed early because the buffer was full (their partitions' open objects filled it)",
            metrics.pressure_closes.clone(),
        );
        metrics
    }
}

impl AuditMetrics {
    /// Counts a trail lookup by its result.
    pub fn trail_lookup(&self, result: &'static str) {
        self.trail_lookups
            .get_or_create(&vec![("result", result)])
            .inc();
    }
}
