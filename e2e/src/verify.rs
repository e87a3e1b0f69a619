//! The verifier: after a scenario, everything that went in is accounted for.
//!
//! It reads every record of the run's ingress topic, every record of its DLQ, and every audit
//! object of its bucket, and checks that each ingress message has exactly one final outcome in
//! RGW, and that the DLQ holds exactly the messages whose outcome sends them there (rejected
//! input and dead letters), each once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use relais_test_support::{KafkaTestEnv, RgwTestEnv};

/// A message's place in `relais.ingress`.
pub type Position = (i32, i64);

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Verdict {
    /// Ingress messages of the run.
    pub messages: u64,
    /// Ingress messages with no outcome in RGW.
    pub lost: u64,
    /// Outcomes beyond the first for a message.
    pub duplicated: u64,
    /// Messages whose outcome is not DELIVERED (each has a DLQ copy).
    pub dead_lettered: u64,
    /// DLQ records for messages whose outcome does not say DLQ, or missing ones, or repeats.
    pub dlq_mismatches: u64,
    pub outcomes: BTreeMap<String, u64>,
    /// Records stored in RGW (all outcomes, duplicates included).
    pub stored_records: u64,
}

impl Verdict {
    pub fn is_exact(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.dlq_mismatches == 0
    }
}

/// Every record of `topic` up to its current end (read_committed), as (position, headers).
pub fn read_topic(kafka: &KafkaTestEnv, topic: &str) -> Vec<(Position, BTreeMap<String, String>)> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", relais_test_support::unique_name("verifier"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("verifier consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *partition, timeout)
            .expect("watermarks");
        ends.insert(*partition, high);
        if high > low {
            assignment
                .add_partition_offset(topic, *partition, Offset::Beginning)
                .expect("assignment");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let mut done: BTreeSet<i32> = ends
        .iter()
        .filter(|(partition, _)| {
            !assignment
                .elements()
                .iter()
                .any(|e| e.partition() == **partition)
        })
        .map(|(partition, _)| *partition)
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while done.len() < partitions.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} back took over 2 minutes"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            // A transaction marker can be the last offset: a partition is read when the
            // consumer's position reached the end.
            if let Ok(position) = consumer.position() {
                for element in position.elements() {
                    if let Offset::Offset(next) = element.offset()
                        && next >= ends[&element.partition()]
                    {
                        done.insert(element.partition());
                    }
                }
            }
            continue;
        };
        let message = message.expect("record");
        let mut headers = BTreeMap::new();
        if let Some(all) = message.headers() {
            for header in all.iter() {
                headers.insert(
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        if message.offset() + 1 >= ends[&message.partition()] {
            done.insert(message.partition());
        }
        records.push(((message.partition(), message.offset()), headers));
    }
    records
}

/// Every audit line of `bucket` as (ingress position, outcome).
pub async fn read_audit_trail(rgw: &RgwTestEnv, bucket: &str) -> Vec<(Position, String)> {
    let bucket = rgw.bucket(bucket);
    let mut lines = Vec::new();
    for page in bucket
        .list("audit/".to_owned(), None)
        .await
        .expect("list the audit bucket")
    {
        for object in page
            .contents
            .iter()
            .filter(|o| o.key.ends_with(".ndjson.gz"))
        {
            let body = bucket
                .get_object(&object.key)
                .await
                .expect("audit object")
                .bytes()
                .to_vec();
            let mut text = String::new();
            flate2::read::GzDecoder::new(body.as_slice())
                .read_to_string(&mut text)
                .expect("gzip NDJSON");
            for line in text.lines() {
                let value: serde_json::Value = serde_json::from_str(line).expect("JSON line");
                if value["kind"] == "operator_action" {
                    // Not a message's outcome (an upstream held or disabled, say).
                    continue;
                }
                let position = (
                    i32::try_from(value["ingress"]["partition"].as_i64().unwrap_or(-1))
                        .unwrap_or(-1),
                    value["ingress"]["offset"].as_i64().unwrap_or(-1),
                );
                lines.push((
                    position,
                    value["outcome"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    lines
}

/// Checks one run (see the module docs).
pub async fn verify(
    kafka: &KafkaTestEnv,
    rgw: &RgwTestEnv,
    ingress_topic: &str,
    dlq_topic: &str,
    bucket: &str,
) -> Verdict {
    let ingress: BTreeSet<Position> = read_topic(kafka, ingress_topic)
        .into_iter()
        .map(|(position, _)| position)
        .collect();
    let trail = read_audit_trail(rgw, bucket).await;
    let mut outcomes_by_position: BTreeMap<Position, Vec<String>> = BTreeMap::new();
    for (position, outcome) in &trail {
        outcomes_by_position
            .entry(*position)
            .or_default()
            .push(outcome.clone());
    }
    let mut verdict = Verdict {
        messages: ingress.len() as u64,
        stored_records: trail.len() as u64,
        ..Verdict::default()
    };
    let mut expected_dlq = BTreeSet::new();
    for position in &ingress {
        match outcomes_by_position.get(position) {
            None => verdict.lost += 1,
            Some(outcomes) => {
                verdict.duplicated += outcomes.len() as u64 - 1;
                let outcome = &outcomes[0];
                *verdict.outcomes.entry(outcome.clone()).or_default() += 1;
                // Everything but a delivery leaves a DLQ copy.
                if outcome != "DELIVERED" {
                    verdict.dead_lettered += 1;
                    expected_dlq.insert(*position);
                }
            }
        }
    }
    // Outcomes for positions that are not ingress messages of this run would be a bug too.
    verdict.duplicated += outcomes_by_position
        .keys()
        .filter(|position| !ingress.contains(position))
        .count() as u64;

    let mut dlq_seen: BTreeMap<Position, u64> = BTreeMap::new();
    for (_, headers) in read_topic(kafka, dlq_topic) {
        let partition = headers
            .get("relais-dlq-source-partition")
            .and_then(|p| p.parse().ok())
            .unwrap_or(-1);
        let offset = headers
            .get("relais-dlq-source-offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or(-1);
        *dlq_seen.entry((partition, offset)).or_default() += 1;
    }
    for (position, count) in &dlq_seen {
        if !expected_dlq.contains(position) {
            verdict.dlq_mismatches += count;
        } else if *count > 1 {
            verdict.dlq_mismatches += count - 1;
        }
    }
    verdict.dlq_mismatches += expected_dlq
        .iter()
        .filter(|position| !dlq_seen.contains_key(position))
        .count() as u64;
    verdict
}
