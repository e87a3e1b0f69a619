//! `ingest-worker replay-dlq`: moves dead-lettered records back to the ingress topic.
//!
//! It reads the DLQ from the replay group's committed position up to the end as it was at the
//! start, keeps the records whose reason matches the filter, and produces each with its
//! original key, value and headers (the worker's `relais-dlq-*` headers removed) to the
//! ingress topic. Offsets are committed after the records are acknowledged, so an interrupted
//! replay resumes where it stopped; a record replayed twice is harmless upstream (same
//! `Idempotency-Key`) and gets a second, separate outcome, as a re-sent message should.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::WorkerConfig;
use crate::records::headers;

/// How long without a record before the replay considers the DLQ read.
const IDLE: Duration = Duration::from_secs(3);

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct ReplaySummary {
    pub scanned: u64,
    pub replayed: u64,
    pub skipped: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub dry_run: bool,
}

/// Replays matching DLQ records; see the module docs.
pub async fn replay(
    bootstrap: &str,
    config: &WorkerConfig,
    reasons: &[String],
    limit: Option<u64>,
    dry_run: bool,
) -> anyhow::Result<ReplaySummary> {
    let dlq = &config.kafka.dlq_topic;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{}-dlq-replay", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .context("cannot create the DLQ consumer")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .context("cannot create the producer")?;

    // The end of each partition now: the replay stops there, so records that fail again and
    // return to the DLQ are not replayed in a loop.
    let metadata = consumer
        .fetch_metadata(Some(dlq), Duration::from_secs(10))
        .context("cannot read DLQ metadata")?;
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in metadata
        .topics()
        .iter()
        .flat_map(|topic| topic.partitions())
    {
        let (_, high) = consumer.fetch_watermarks(dlq, partition.id(), Duration::from_secs(10))?;
        ends.insert(partition.id(), high);
        assignment.add_partition(dlq, partition.id());
    }
    let committed = consumer.committed_offsets(assignment, Duration::from_secs(10))?;
    let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
    for element in committed.elements() {
        let start = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        };
        let end = ends.get(&element.partition()).copied().unwrap_or(0);
        if start < end {
            remaining.insert(element.partition(), end);
        }
    }
    consumer.subscribe(&[dlq])?;

    let mut summary = ReplaySummary {
        dry_run,
        ..ReplaySummary::default()
    };
    while !remaining.is_empty() && limit.is_none_or(|limit| summary.replayed < limit) {
        // The end offsets count transaction markers, which are never delivered, so the last
        // record of a partition may sit before its end: an idle pause also means "done".
        let message = match tokio::time::timeout(IDLE, consumer.recv()).await {
            Ok(message) => message?,
            Err(_) => break,
        };
        if remaining
            .get(&message.partition())
            .is_none_or(|end| message.offset() >= *end)
        {
            // Written after the replay began (possibly by this replay's own failures).
            remaining.remove(&message.partition());
            continue;
        }
        let partition = message.partition();
        summary.scanned += 1;
        let reason = message
            .headers()
            .and_then(|h| h.iter().find(|header| header.key == headers::DLQ_REASON))
            .and_then(|header| header.value)
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default();
        if reasons.is_empty() || reasons.contains(&reason) {
            if !dry_run {
                let mut original = OwnedHeaders::new();
                if let Some(message_headers) = message.headers() {
                    for header in message_headers.iter() {
                        if !headers::DLQ_ALL.contains(&header.key) {
                            original = original.insert(Header {
                                key: header.key,
                                value: header.value,
                            });
                        }
                    }
                }
                let mut record = FutureRecord::to(&config.kafka.ingress_topic)
                    .payload(message.payload().unwrap_or_default())
                    .headers(original);
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(error, _)| error)
                    .context("cannot write to the ingress topic")?;
            }
            summary.replayed += 1;
            *summary.by_reason.entry(reason).or_default() += 1;
        } else {
            summary.skipped += 1;
        }
        if !dry_run {
            consumer.store_offset_from_message(&message)?;
        }
        if remaining
            .get(&partition)
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            remaining.remove(&partition);
        }
    }
    if !dry_run {
        producer.flush(Duration::from_secs(30))?;
        if summary.scanned > 0 {
            consumer.commit_consumer_state(CommitMode::Sync)?;
        }
    }
    Ok(summary)
}
