//! Offset resets: records Kafka deleted before a consumer read them, and logs that went back
//! behind a consumer.
//!
//! Every consumer of Relais starts again at the earliest offset when the offset it would read
//! next is no longer in the log. That happens when retention (or a delete-records request)
//! removed records the consumer had not read yet, after an outage or a lag longer than the
//! topic keeps its records; and when the topic was deleted and created again, or a partition's
//! log truncated, so that the consumer's offset lies beyond the log's end. librdkafka treats
//! both alike and says so only in a warning: nothing in the records read afterwards shows that
//! any were skipped. [`ResetWatch`] picks those warnings out of a client's log, and
//! [`next_reset`] measures each against the partition's watermarks, so that the service can
//! count what was lost and say where.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::mpsc;

/// A partition whose fetch offset librdkafka found outside the log and reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetReset {
    pub topic: String,
    pub partition: i32,
    /// The offset the consumer was about to fetch: the first it did not read.
    pub at: i64,
}

/// What a reset meant, measured against the partition's watermarks just after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetOutcome {
    /// The log now starts after `at`: the offsets from `at` up to `log_start` were deleted
    /// before they were read. A transactional topic spends an offset on each commit marker,
    /// so `offsets` counts at most that many records.
    DeletedUnread { offsets: i64, log_start: i64 },
    /// The log now ends before `at`: the topic was created again or the partition's log was
    /// truncated. Reading starts over at `log_start`, at offsets read before in the old log.
    Rewound { log_end: i64, log_start: i64 },
    /// `at` lies within the log as it is now (the reset came from a replica behind its
    /// leader, say): nothing is known to be lost.
    WithinLog,
}

impl ResetOutcome {
    /// Every [`Self::kind`].
    pub const KINDS: [&'static str; 3] = ["deleted_unread", "rewound", "within_log"];

    /// A short name for metric labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ResetOutcome::DeletedUnread { .. } => "deleted_unread",
            ResetOutcome::Rewound { .. } => "rewound",
            ResetOutcome::WithinLog => "within_log",
        }
    }
}

/// What a reset at `at` meant, given the partition's watermarks (`low`: the log's first
/// offset, `high`: one past its last).
pub fn measure(at: i64, low: i64, high: i64) -> ResetOutcome {
    if at < low {
        ResetOutcome::DeletedUnread {
            offsets: low - at,
            log_start: low,
        }
    } else if at > high {
        ResetOutcome::Rewound {
            log_end: high,
            log_start: low,
        }
    } else {
        ResetOutcome::WithinLog
    }
}

/// The reset a librdkafka log line reports, if it reports one. librdkafka writes a warning
/// under the facility `OFFSET` for each reset caused by an error, in the form
/// `{topic} [{partition}]: offset reset (at offset {offset} (leader epoch {epoch}), broker
/// {id}) to ...`, after the name of the thread that wrote it (`[thrd:main]: `); resets
/// without a known offset name none and are left out.
pub fn parse_reset(facility: &str, message: &str) -> Option<OffsetReset> {
    if facility != "OFFSET" {
        return None;
    }
    let message = match message.strip_prefix("[thrd:") {
        Some(rest) => rest.split_once("]: ")?.1,
        None => message,
    };
    let (topic, rest) = message.split_once(" [")?;
    let (partition, rest) = rest.split_once("]: offset reset (at offset ")?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Some(OffsetReset {
        topic: topic.to_owned(),
        partition: partition.parse().ok()?,
        at: rest[..digits].parse().ok()?,
    })
}

/// Makes librdkafka pass its warnings to the client's context whatever the service's log
/// filter: rdkafka sets librdkafka's level from the filter at the client's creation, and a
/// filter of errors only would hide the resets from [`ResetWatch`]. The lines are still
/// filtered as they are forwarded.
pub fn watched(config: &mut ClientConfig) -> &mut ClientConfig {
    if (config.log_level as i32) < RDKafkaLogLevel::Warning as i32 {
        config.set_log_level(RDKafkaLogLevel::Warning);
    }
    config
}

/// Resets waiting to be measured, at most; more at once are only logged.
const WAITING_RESETS: usize = 1024;

/// The log callback of a consumer's context: forwards librdkafka's lines to `tracing` as
/// rdkafka's own context does, and hands each offset reset to [`next_reset`]. It also serves
/// as the whole context of a consumer that needs no rebalance callbacks.
#[derive(Debug, Clone)]
pub struct ResetWatch {
    resets: mpsc::Sender<OffsetReset>,
}

impl ResetWatch {
    /// A watch and the receiver [`next_reset`] measures from.
    pub fn new() -> (Self, mpsc::Receiver<OffsetReset>) {
        let (resets, receiver) = mpsc::channel(WAITING_RESETS);
        (Self { resets }, receiver)
    }

    /// One line of librdkafka's log. Runs on librdkafka's threads: it never waits.
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
        }
        if let Some(reset) = parse_reset(facility, message)
            && let Err(error) = self.resets.try_send(reset)
        {
            tracing::error!(%error, "offset reset not measured: too many at once");
        }
    }
}

impl ClientContext for ResetWatch {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        ResetWatch::log(self, level, fac, log_message);
    }
}

impl ConsumerContext for ResetWatch {}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResetLabels {
    topic: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

/// A service's counts of its consumers' offset resets, registered under its prefix.
#[derive(Debug, Clone, Default)]
pub struct ResetMetrics {
    resets: Family<ResetLabels, Counter>,
    deleted_unread: Family<TopicLabels, Counter>,
}

impl ResetMetrics {
    /// Registers `offset_resets` and `records_deleted_unread` in `registry` (the service's
    /// prefixed registry).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "offset_resets",
            "Offset resets of this service's consumers, by topic and kind: deleted_unread \
             (records deleted before they were read), rewound (the log ends before the \
             consumer's offset: the topic created again or truncated), within_log",
            metrics.resets.clone(),
        );
        registry.register(
            "records_deleted_unread",
            "Offsets deleted by Kafka (retention, delete-records) before this service read them, \
             by topic: the records lost, at most (commit markers take offsets too)",
            metrics.deleted_unread.clone(),
        );
        metrics
    }

    /// Counts one measured reset.
    pub fn record(&self, reset: &OffsetReset, outcome: ResetOutcome) {
        let topic = reset.topic.clone();
        if let ResetOutcome::DeletedUnread { offsets, .. } = outcome {
            self.deleted_unread
                .get_or_create(&TopicLabels {
                    topic: topic.clone(),
                })
                .inc_by(offsets.unsigned_abs());
        }
        self.resets
            .get_or_create(&ResetLabels {
                topic,
                kind: outcome.kind(),
            })
            .inc();
    }

    /// Every series of `topics` at zero from the start, so that an alert can tell a first
    /// reset from a missing series.
    pub fn prepare<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        for topic in topics {
            let topic = topic.to_owned();
            let _ = self.deleted_unread.get_or_create(&TopicLabels {
                topic: topic.clone(),
            });
            for kind in ResetOutcome::KINDS {
                let _ = self.resets.get_or_create(&ResetLabels {
                    topic: topic.clone(),
                    kind,
                });
            }
        }
    }
}

/// How long one watermark query may take.
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits for the next reset the watch passes on, measures it against its partition's
/// watermarks (queried with `consumer`) and logs it; `None` once the watch is gone. A reset
/// whose watermarks cannot be read is logged and given as [`ResetOutcome::WithinLog`]: nothing
/// is known about it beyond the warning.
pub async fn next_reset<C, X>(
    resets: &mut mpsc::Receiver<OffsetReset>,
    consumer: &Arc<C>,
) -> Option<(OffsetReset, ResetOutcome)>
where
    C: Consumer<X> + Send + Sync + 'static,
    X: ConsumerContext + 'static,
{
    let reset = resets.recv().await?;
    let (client, asked) = (Arc::clone(consumer), reset.clone());
    let watermarks = tokio::task::spawn_blocking(move || {
        client.fetch_watermarks(&asked.topic, asked.partition, WATERMARKS_TIMEOUT)
    })
    .await
    .ok()?; // the runtime is shutting down
    let outcome = match watermarks {
        Ok((low, high)) => measure(reset.at, low, high),
        Err(error) => {
            tracing::error!(topic = %reset.topic, partition = reset.partition, at = reset.at,
                %error, "offset reset: the partition's watermarks could not be read");
            ResetOutcome::WithinLog
        }
    };
    log_outcome(&reset, outcome);
    Some((reset, outcome))
}

fn log_outcome(reset: &OffsetReset, outcome: ResetOutcome) {
    let (topic, partition, at) = (&reset.topic, reset.partition, reset.at);
    match outcome {
        ResetOutcome::DeletedUnread { offsets, log_start } => tracing::error!(
            topic,
            partition,
            from = at,
            to = log_start,
            offsets,
            "records deleted before they were read (retention or a delete-records request): \
             reading goes on at the log's start"
        ),
        ResetOutcome::Rewound { log_end, log_start } => tracing::error!(
            topic,
            partition,
            at,
            log_end,
            log_start,
            "the log ends before the consumer's offset (the topic created again, or the \
             partition truncated): reading starts over at the log's start"
        ),
        ResetOutcome::WithinLog => tracing::warn!(
            topic,
            partition,
            at,
            "offset reset within the log: nothing known to be lost"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_warning_of_an_offset_out_of_range() {
        let line = "[thrd:main]: relais.audit [3]: offset reset (at offset 1500 (leader epoch 0), broker 1) \
                    to offset BEGINNING (leader epoch -1): fetch failed due to requested offset \
                    not available on the broker: Broker: Offset out of range";
        assert_eq!(
            parse_reset("OFFSET", line),
            Some(OffsetReset {
                topic: "relais.audit".to_owned(),
                partition: 3,
                at: 1500
            })
        );
    }

    #[test]
    fn reads_the_warning_of_a_log_truncation() {
        let line = "t-1_x [11]: offset reset (at offset 42 (leader epoch 7), broker 2) to \
                    offset END (leader epoch -1): Partition log truncation detected";
        let reset = parse_reset("OFFSET", line).unwrap();
        assert_eq!(
            (reset.topic.as_str(), reset.partition, reset.at),
            ("t-1_x", 11, 42)
        );
    }

    #[test]
    fn ignores_other_lines_and_resets_without_an_offset() {
        assert_eq!(
            parse_reset("FETCH", "t [0]: offset reset (at offset 1 (leader epoch 0)"),
            None
        );
        assert_eq!(
            parse_reset(
                "OFFSET",
                "t [0]: offset reset (at offset INVALID (leader epoch -1), \
                                   broker -1) to offset BEGINNING"
            ),
            None
        );
        assert_eq!(
            parse_reset("OFFSET", "t [x]: offset reset (at offset 5"),
            None
        );
        assert_eq!(parse_reset("OFFSET", "committed offset 5 for t [0]"), None);
    }

    #[test]
    fn a_reset_before_the_log_start_counts_the_deleted_offsets() {
        assert_eq!(
            measure(100, 250, 900),
            ResetOutcome::DeletedUnread {
                offsets: 150,
                log_start: 250
            }
        );
    }

    #[test]
    fn a_reset_beyond_the_log_end_is_a_rewind() {
        assert_eq!(
            measure(5_000, 0, 40),
            ResetOutcome::Rewound {
                log_end: 40,
                log_start: 0
            }
        );
        // An empty log created again: everything read before is gone from it.
        assert_eq!(measure(1, 0, 0).kind(), "rewound");
    }

    #[test]
    fn a_reset_within_the_log_loses_nothing_known() {
        assert_eq!(measure(250, 250, 900), ResetOutcome::WithinLog);
        assert_eq!(measure(900, 250, 900), ResetOutcome::WithinLog);
    }
}
