//! The verifier: after a scenario, everything that went in is accounted for.
//!
//! It reads every record of the run's ingress topic, every record of its DLQ, and every audit
//! object of its bucket, and checks that each ingress message has exactly one final outcome in
//! RGW, and that the DLQ holds exactly the messages whose outcome sends them there (rejected
//! input and dead letters), each once. Object by object, it checks the audit trail against the
//! audit topic: every committed audit record stored exactly once, and each object named after
//! its first record, none overlapping another.

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
    /// Audit records missing from or repeated in the objects, and objects misnamed or
    /// overlapping (see [`audit_object_errors`]).
    pub audit_object_errors: u64,
}

impl Verdict {
    pub fn is_exact(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.dlq_mismatches == 0
            && self.audit_object_errors == 0
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

/// Every data object of `bucket`: its key and its lines.
async fn audit_objects(rgw: &RgwTestEnv, bucket: &str) -> Vec<(String, Vec<serde_json::Value>)> {
    let bucket = rgw.bucket(bucket);
    let mut objects = Vec::new();
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
            let lines = text
                .lines()
                .map(|line| serde_json::from_str(line).expect("JSON line"))
                .collect();
            objects.push((object.key.clone(), lines));
        }
    }
    objects
}

/// Every audit line of `bucket` as (ingress position, outcome).
pub async fn read_audit_trail(rgw: &RgwTestEnv, bucket: &str) -> Vec<(Position, String)> {
    let mut lines = Vec::new();
    for (_, values) in audit_objects(rgw, bucket).await {
        for value in values {
            if value["kind"] == "operator_action" {
                // Not a message's outcome (an upstream held or disabled, say).
                continue;
            }
            let position = (
                i32::try_from(value["ingress"]["partition"].as_i64().unwrap_or(-1)).unwrap_or(-1),
                value["ingress"]["offset"].as_i64().unwrap_or(-1),
            );
            lines.push((
                position,
                value["outcome"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    lines
}

/// A data object as stored: its key's partition and first offset, and its lines' audit offsets.
struct StoredObject {
    key: String,
    partition: i32,
    start_offset: i64,
    offsets: Vec<i64>,
}

/// Every data object of `bucket` with its lines' audit offsets.
async fn stored_objects(rgw: &RgwTestEnv, bucket: &str) -> Vec<StoredObject> {
    let mut objects = Vec::new();
    for (key, values) in audit_objects(rgw, bucket).await {
        let (partition, start_offset) =
            relais_audit_service::object::data_key_position(&key).unwrap_or((-1, -1));
        let offsets = values
            .iter()
            .map(|value| value["audit"]["offset"].as_i64().unwrap_or(-1))
            .collect();
        objects.push(StoredObject {
            key,
            partition,
            start_offset,
            offsets,
        });
    }
    objects
}

/// The audit trail against the audit topic: each committed record of the topic stored exactly
/// once, nothing stored that is not in the topic, each object named after its first record,
/// and a partition's objects not overlapping (a stale upload that replaced a newer object
/// shows up here as missing records). Returns the number of errors, each described on stderr.
pub async fn audit_object_errors(
    kafka: &KafkaTestEnv,
    rgw: &RgwTestEnv,
    audit_topic: &str,
    bucket: &str,
) -> u64 {
    let committed: BTreeSet<Position> = read_topic(kafka, audit_topic)
        .into_iter()
        .map(|(position, _)| position)
        .collect();
    let mut objects = stored_objects(rgw, bucket).await;
    objects.sort_by_key(|object| (object.partition, object.start_offset));
    let mut errors = 0u64;
    let mut report = |what: String| {
        errors += 1;
        if errors <= 20 {
            eprintln!("[verify] {what}");
        }
    };
    let mut stored: BTreeMap<Position, u64> = BTreeMap::new();
    let mut previous_end: BTreeMap<i32, (i64, String)> = BTreeMap::new();
    for object in &objects {
        if object.offsets.first() != Some(&object.start_offset) {
            report(format!(
                "{} is not named after its first record",
                object.key
            ));
        }
        if let Some((end, key)) = previous_end.get(&object.partition)
            && object.start_offset <= *end
        {
            report(format!("{} overlaps {key}", object.key));
        }
        if let Some(last) = object.offsets.iter().max() {
            previous_end.insert(object.partition, (*last, object.key.clone()));
        }
        for offset in &object.offsets {
            *stored.entry((object.partition, *offset)).or_default() += 1;
        }
    }
    for position in &committed {
        match stored.get(position) {
            None => report(format!("audit record {position:?} is in no object")),
            Some(count) if *count > 1 => {
                report(format!("audit record {position:?} is stored {count} times"));
            }
            Some(_) => {}
        }
    }
    for position in stored.keys().filter(|p| !committed.contains(p)) {
        report(format!(
            "stored record {position:?} is not in the audit topic"
        ));
    }
    errors
}

/// Checks one run (see the module docs).
pub async fn verify(
    kafka: &KafkaTestEnv,
    rgw: &RgwTestEnv,
    topics: &crate::Topics,
    bucket: &str,
) -> Verdict {
    let (ingress_topic, dlq_topic) = (&topics.ingress, &topics.dlq);
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
    verdict.audit_object_errors = audit_object_errors(kafka, rgw, &topics.audit, bucket).await;
    verdict
}
