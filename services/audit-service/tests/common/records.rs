//! Audit records for the storage and lookup tests: building them, producing them, and an
//! instance with small objects to store them.

use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use relais_audit_service::config::{AuditConfig, BufferConfig, KafkaConfig, ObjectsConfig};
use relais_proto::v1::{AuditRecord, Outcome};
use relais_test_support::{KafkaTestEnv, unique_name};

use super::Instance;

/// Starts an instance with small objects under `prefix`.
pub fn start(kafka: &KafkaTestEnv, bucket: &str, topic: &str, prefix: &str) -> Instance {
    let objects = ObjectsConfig {
        prefix: prefix.to_owned(),
        max_records: 5000,
        idle: Duration::from_secs(1),
        ..ObjectsConfig::default()
    };
    start_with(kafka, bucket, topic, objects, BufferConfig::default())
}

pub fn start_with(
    kafka: &KafkaTestEnv,
    bucket: &str,
    topic: &str,
    objects: ObjectsConfig,
    buffer: BufferConfig,
) -> Instance {
    let endpoints = relais_test_support::Endpoints::from_env();
    let config = AuditConfig {
        kafka: KafkaConfig {
            group_id: unique_name("it-audit"),
            audit_topic: topic.to_owned(),
            ..KafkaConfig::default()
        },
        objects,
        buffer,
        ..AuditConfig::default()
    };
    config.validate().unwrap();
    Instance::start(
        super::args(kafka, bucket, endpoints.s3_endpoint),
        config,
        Default::default(),
    )
}

/// Record `index` of `total`, with event times running forward over three hours (as a
/// partition's records do, give or take some late ones).
pub fn record(index: usize, total: usize, base: i64) -> AuditRecord {
    AuditRecord {
        message_id: format!("msg-{index}"),
        trace_id: format!("{:032x}", index + 1),
        span_id: format!("{:016x}", index + 1),
        outcome: if index.is_multiple_of(10) {
            Outcome::Rejected
        } else {
            Outcome::Delivered
        } as i32,
        event_type: "order.created".into(),
        occurred_at: Some(relais_proto::Timestamp {
            seconds: base + (index * 3 * 3600 / total) as i64,
            nanos: 0,
        }),
        worker_id: "w".into(),
        ..Default::default()
    }
}

pub async fn produce(kafka: &KafkaTestEnv, topic: &str, payloads: Vec<(String, Vec<u8>)>) {
    let producer: FutureProducer = kafka
        .client_config()
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut pending = Vec::with_capacity(payloads.len());
    for (key, payload) in &payloads {
        pending.push(
            producer
                .send_result(FutureRecord::to(topic).key(key).payload(payload))
                .unwrap(),
        );
    }
    for delivery in pending {
        delivery.await.unwrap().unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Produces audit records keyed by their message id.
pub async fn produce_records(kafka: &KafkaTestEnv, topic: &str, records: &[AuditRecord]) {
    let payloads = records
        .iter()
        .map(|r| (r.message_id.clone(), r.encode_to_vec()))
        .collect();
    produce(kafka, topic, payloads).await;
}
