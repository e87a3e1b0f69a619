//! Reads `relais.events` into the history, the aggregates and the live feed.
//!
//! Every gateway replica reads every partition (it assigns them itself; there is no consumer
//! group to share them), so any replica can answer any client. Nothing is committed: at
//! start-up a replica reads back the last `warm_up` of the topic by timestamp, so its windows
//! and its history are full at once. Only committed worker transactions are read.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use relais_telemetry::admin::ReadinessCheck;
use relais_telemetry::shutdown::CancellationToken;

use crate::event::{Event, EventId};
use crate::history::{History, Inserted};
use crate::metrics::{GatewayMetrics, ReasonLabels, TopicLabels};
use crate::protocol;
use crate::stats::Stats;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything an event updates.
#[derive(Debug, Clone)]
pub struct Sinks {
    pub history: Arc<History>,
    pub stats: Arc<Stats>,
    pub metrics: GatewayMetrics,
}

impl Sinks {
    /// Takes in one record of `relais.events`; what the history did with it, if it was an
    /// event.
    pub fn take(&self, id: EventId, payload: Option<&[u8]>, now: SystemTime) -> Option<Inserted> {
        match Event::decode(id, payload.unwrap_or_default()) {
            Ok(event) => {
                self.stats.record(&event, now);
                let frame = protocol::event_frame(&event.view);
                let inserted = self.history.insert(event, frame, now);
                self.metrics.events_consumed.inc();
                Some(inserted)
            }
            Err(rejection) => {
                tracing::debug!(%id, %rejection, "event not taken in");
                self.metrics
                    .events_rejected
                    .get_or_create(&ReasonLabels {
                        reason: rejection.as_label(),
                    })
                    .inc();
                None
            }
        }
    }
}

pub struct Intake {
    consumer: Arc<StreamConsumer>,
    topic: String,
    warm_up: Duration,
    metadata_refresh: Duration,
    sinks: Sinks,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Intake {
    pub fn new(
        kafka: &relais_kafka::KafkaClient,
        topic: &str,
        warm_up: Duration,
        metadata_refresh: Duration,
        sinks: Sinks,
    ) -> anyhow::Result<Self> {
        let mut config = kafka.config();
        config
            // Required by the client library; never used to commit or to join a group.
            .set("group.id", "relais-gateway")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Where an offset is no longer in the log: the partition's log started again, whose
            // events are all new to the gateway, or retention passed it, and the oldest kept
            // are the next unread.
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed");
        let consumer: StreamConsumer = relais_kafka::bounded_prefetch(&mut config, 16384)
            .create()
            .context("cannot create the Kafka consumer")?;
        let intake = Self {
            consumer: Arc::new(consumer),
            topic: topic.to_owned(),
            warm_up,
            metadata_refresh,
            sinks,
        };
        // At zero from the start, so that a restart shows as an increase.
        intake.log_restarts();
        Ok(intake)
    }

    /// Assigns every partition (waiting for the broker as long as it takes), then reads until
    /// shutdown.
    pub async fn run(self, ready: ReadinessCheck, shutdown: CancellationToken) {
        let mut assigned = BTreeSet::new();
        loop {
            match self.assign_new_partitions(&mut assigned, true).await {
                Ok(()) if !assigned.is_empty() => break,
                Ok(()) => ready.set_not_ready(format!("topic {} has no partitions", self.topic)),
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "cannot assign relais.events yet"
                    );
                    ready.set_not_ready("Kafka unreachable");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
        ready.set_ready();
        tracing::info!(topic = %self.topic, partitions = assigned.len(), "reading events");

        let mut refresh = tokio::time::interval(self.metadata_refresh);
        refresh.reset();
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        tokio::spawn(report_lag_every(
            Arc::clone(&self.consumer),
            self.sinks.metrics.consumer_lag.clone(),
            shutdown.clone(),
        ));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let id = EventId { partition: message.partition(), offset: message.offset() };
                        let inserted = self.sinks.take(id, message.payload(), SystemTime::now());
                        if inserted == Some(Inserted::LogRestarted) {
                            self.log_restarted(id);
                        }
                    }
                    Err(error) => {
                        // The client library reconnects by itself; errors here are transient.
                        tracing::warn!(%error, "error reading relais.events");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = housekeeping.tick() => {
                    self.sinks.history.expire(SystemTime::now());
                    self.sinks.metrics.history_events.set(self.sinks.history.len() as i64);
                }
                _ = refresh.tick() => {
                    if let Err(error) = self.assign_new_partitions(&mut assigned, false).await {
                        tracing::warn!(error = format!("{error:#}"), "cannot refresh relais.events metadata");
                    }
                }
            }
        }
    }

    fn log_restarts(&self) -> prometheus_client::metrics::counter::Counter {
        self.sinks
            .metrics
            .events_log_restarts
            .get_or_create(&TopicLabels {
                topic: self.topic.clone(),
            })
            .clone()
    }

    fn log_restarted(&self, id: EventId) {
        self.log_restarts().inc();
        tracing::warn!(
            topic = %self.topic,
            partition = id.partition,
            offset = id.offset,
            "the partition's log started again (the topic created again, or the partition truncated): resume positions of it count in the new log from here on"
        );
    }

    /// Adds partitions not yet assigned: at start-up from `warm_up` ago, later (partitions
    /// added to a live topic) from their beginning, since all they hold is new.
    async fn assign_new_partitions(
        &self,
        assigned: &mut BTreeSet<i32>,
        warm_up: bool,
    ) -> anyhow::Result<()> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        let since = SystemTime::now()
            .checked_sub(self.warm_up)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let known = assigned.clone();
        let added = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<i32>> {
            let metadata = consumer
                .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                .context("metadata request")?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .filter(|p| !known.contains(p))
                .collect();
            if partitions.is_empty() {
                return Ok(partitions);
            }
            let mut list = TopicPartitionList::new();
            for partition in &partitions {
                let start = if warm_up {
                    let millis = since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis();
                    Offset::Offset(i64::try_from(millis).unwrap_or(i64::MAX))
                } else {
                    Offset::Beginning
                };
                list.add_partition_offset(&topic, *partition, start)?;
            }
            if warm_up {
                // Timestamps in, offsets out: the first record at or after `since`, or the end.
                list = consumer
                    .offsets_for_times(list, METADATA_TIMEOUT)
                    .context("offsets for the warm-up start")?;
                let mut fixed = TopicPartitionList::new();
                for element in list.elements() {
                    // No record since then: start at the end.
                    let offset = match element.offset() {
                        Offset::Offset(offset) => Offset::Offset(offset),
                        _ => Offset::End,
                    };
                    fixed.add_partition_offset(&topic, element.partition(), offset)?;
                }
                list = fixed;
            }
            consumer.incremental_assign(&list).context("assign")?;
            Ok(partitions)
        })
        .await
        .context("metadata task")??;
        if !added.is_empty() {
            tracing::info!(partitions = ?added, "assigned relais.events partitions");
        }
        assigned.extend(added);
        Ok(())
    }
}

/// How often the consumer-lag gauge is refreshed.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Refreshes the consumer-lag gauge in its own task. The watermark requests take a broker round
/// trip per partition; awaited inside the intake loop they held back every event behind them
/// (every 5 s, the fan-out benchmark's p99 went from 8 to 55 ms with 10 clients).
async fn report_lag_every(
    consumer: Arc<StreamConsumer>,
    gauge: prometheus_client::metrics::gauge::Gauge,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(LAG_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let consumer = Arc::clone(&consumer);
        if let Ok(Some(lag)) =
            tokio::task::spawn_blocking(move || partition_lag(consumer.as_ref())).await
        {
            gauge.set(lag);
        }
    }
}

/// Sum over assigned partitions of (high watermark − next offset to read).
fn partition_lag(consumer: &StreamConsumer) -> Option<i64> {
    let position = consumer.position().ok()?;
    let mut total = 0;
    for element in position.elements() {
        let (_, high) = consumer
            .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(2))
            .ok()?;
        if let Offset::Offset(next) = element.offset() {
            total += (high - next).max(0);
        }
    }
    Some(total)
}
