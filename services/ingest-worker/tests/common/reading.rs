//! What the worker wrote, read back from its output topics (read_committed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use relais_proto::v1::{AuditRecord, Outcome, PipelineEvent};
use relais_test_support::{KafkaTestEnv, unique_name};

use super::Topics;

/// A record read back from an output topic.
pub struct Read {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// A consumer of its own group reading `topic` from the start, committed records only.
fn committed_reader(kafka: &KafkaTestEnv, group_prefix: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", unique_name(group_prefix))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// Reads `count` records (read_committed) from `topic`, then checks that no more arrive for
/// `settle`.
pub async fn read_exactly(
    kafka: &KafkaTestEnv,
    topic: &str,
    count: usize,
    within: Duration,
    settle: Duration,
) -> Vec<Read> {
    read_exactly_where(kafka, topic, count, within, settle, |_| true).await
}

/// Like [`read_exactly`], counting only the records `keep` takes.
pub async fn read_exactly_where(
    kafka: &KafkaTestEnv,
    topic: &str,
    count: usize,
    within: Duration,
    settle: Duration,
    keep: impl Fn(&Read) -> bool,
) -> Vec<Read> {
    let consumer = committed_reader(kafka, "it-reader", topic);
    let deadline = Instant::now() + within;
    let mut records = Vec::with_capacity(count);
    while records.len() < count {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(remaining, consumer.recv()).await {
            Ok(message) => message.unwrap(),
            Err(_) => panic!(
                "only {} of {count} records on {topic} within {within:?}",
                records.len()
            ),
        };
        let read = detach(&message);
        if keep(&read) {
            records.push(read);
        }
    }
    let settled = Instant::now() + settle;
    while let Ok(Ok(message)) = tokio::time::timeout(
        settled.saturating_duration_since(Instant::now()),
        consumer.recv(),
    )
    .await
    {
        assert!(
            !keep(&detach(&message)),
            "more than {count} records on {topic}: offset {} partition {}",
            message.offset(),
            message.partition()
        );
    }
    records
}

/// The `retry_scheduled` events on `topic`, read until `enough` holds of them.
pub async fn retry_events_until(
    kafka: &KafkaTestEnv,
    topic: &str,
    within: Duration,
    enough: impl Fn(&[PipelineEvent]) -> bool,
) -> Vec<PipelineEvent> {
    let consumer = committed_reader(kafka, "it-events", topic);
    let deadline = Instant::now() + within;
    let mut events = Vec::new();
    while !enough(&events) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Ok(message) = tokio::time::timeout(remaining, consumer.recv()).await else {
            panic!(
                "after {within:?}, {} retry events, not what the test waits for",
                events.len()
            );
        };
        let message = message.unwrap();
        let event = PipelineEvent::decode(message.payload().unwrap_or_default()).unwrap();
        if event.retry_scheduled.is_some() {
            events.push(event);
        }
    }
    events
}

/// Whether an audit topic record is an operator action rather than a message outcome.
pub fn is_operator_action(read: &Read) -> bool {
    read.headers
        .get(relais_operator::actions::SCHEMA_HEADER)
        .map(String::as_str)
        == Some(relais_operator::actions::OPERATOR_ACTION_SCHEMA)
}

pub fn detach(message: &rdkafka::message::BorrowedMessage<'_>) -> Read {
    Read {
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().unwrap_or_default().to_vec(),
        headers: message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Exactly `count` outcome records of `topic` within `within` (none more for a second after).
pub async fn read_outcomes(
    kafka: &KafkaTestEnv,
    topic: &str,
    count: usize,
    within: Duration,
) -> Vec<AuditRecord> {
    let outcomes = read_exactly_where(
        kafka,
        topic,
        count,
        within,
        Duration::from_secs(1),
        |read| !is_operator_action(read),
    )
    .await;
    audit_records(&outcomes)
}

pub fn audit_records(records: &[Read]) -> Vec<AuditRecord> {
    records
        .iter()
        .map(|record| AuditRecord::decode(record.payload.as_slice()).unwrap())
        .collect()
}

/// Asserts one outcome per ingress position.
pub fn assert_exactly_once(records: &[AuditRecord], expected: usize) {
    let positions: std::collections::BTreeSet<(i32, i64)> = records
        .iter()
        .map(|record| {
            let position = record.position.as_ref().unwrap();
            (position.partition, position.offset)
        })
        .collect();
    assert_eq!(records.len(), expected, "outcome records");
    assert_eq!(
        positions.len(),
        expected,
        "each ingress message decided once"
    );
}

/// Every one of `total` messages has exactly one outcome on the audit topic, and it says
/// delivered.
pub async fn all_delivered_once(kafka: &KafkaTestEnv, topics: &Topics, total: usize) {
    let audit = audit_records(
        &read_exactly(
            kafka,
            &topics.audit,
            total,
            Duration::from_secs(180),
            Duration::from_secs(3),
        )
        .await,
    );
    assert_exactly_once(&audit, total);
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));
}
