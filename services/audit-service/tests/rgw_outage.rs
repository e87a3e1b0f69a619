//! radosgw stopped for 60 s under load: no loss, no duplicate, memory within the configured
//! bound, consumption paused and then resumed, not ready while nothing can be stored, and the
//! metrics show it.
//!
//! Its own test binary: it stops the shared radosgw, which no other test may be using then.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Instance;
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use relais_audit_service::config::{
    AuditConfig, BufferConfig, KafkaConfig, ObjectsConfig, StorageConfig,
};
use relais_proto::v1::AuditRecord;
use relais_test_support::{KafkaTestEnv, unique_name};

async fn produce(kafka: &KafkaTestEnv, topic: &str, range: std::ops::Range<usize>) {
    let producer: FutureProducer = kafka
        .client_config()
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for index in range {
        let record = AuditRecord {
            message_id: format!("msg-{index}"),
            trace_id: format!("{:032x}", index + 1),
            occurred_at: Some(relais_proto::Timestamp {
                seconds: 1_795_000_000 + index as i64 / 100,
                nanos: 0,
            }),
            ..Default::default()
        };
        pending.push(
            producer
                .send_result(
                    FutureRecord::to(topic)
                        .key(&record.message_id)
                        .payload(&record.encode_to_vec()),
                )
                .unwrap(),
        );
    }
    for delivery in pending {
        delivery.await.unwrap().unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_rgw_outage_pauses_and_loses_nothing() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let bucket = unique_name("it-audit-outage");
    let topic = kafka.create_topic("it-audit-outage", 3).await;
    let buffer_records = 6_000;
    let endpoints = relais_test_support::Endpoints::from_env();
    let config = AuditConfig {
        kafka: KafkaConfig {
            group_id: unique_name("it-audit"),
            audit_topic: topic.clone(),
            ..KafkaConfig::default()
        },
        objects: ObjectsConfig {
            max_records: 1000,
            idle: Duration::from_millis(500),
            ..ObjectsConfig::default()
        },
        buffer: BufferConfig {
            max_records: buffer_records,
            max_bytes: 64 * 1024 * 1024,
        },
        storage: StorageConfig {
            put_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(2),
            ..StorageConfig::default()
        },
        ..AuditConfig::default()
    };
    let service = Instance::start(
        common::args(&kafka, &bucket, endpoints.s3_endpoint),
        config,
        Default::default(),
    );
    let metrics = service.metrics;

    produce(&kafka, &topic, 0..10_000).await;
    metrics
        .wait_for_at_least(
            "relais_audit_records_written_total",
            10_000.0,
            Duration::from_secs(60),
        )
        .await;

    let outage = rgw.stop_gateway();
    let outage_started = Instant::now();
    produce(&kafka, &topic, 10_000..40_000).await;
    let mut saw_paused = false;
    let mut peak_buffer = 0.0f64;
    while outage_started.elapsed() < Duration::from_secs(60) {
        saw_paused |= metrics.value("relais_audit_paused").await == 1.0;
        peak_buffer = peak_buffer.max(metrics.value("relais_audit_buffer_records").await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(saw_paused, "consumption paused while RGW was down");
    // The bound is checked before each pause; one object's worth may come on top.
    assert!(
        peak_buffer <= (buffer_records + 1000) as f64,
        "buffer peaked at {peak_buffer}"
    );
    assert!(
        metrics.value("relais_audit_put_retries_total").await > 0.0,
        "PUTs were retried"
    );
    assert!(service.written().await < 40_000.0);
    let ready = service.wait_for_readiness(false).await;
    assert_eq!(ready["checks"]["rgw"]["ready"], false, "{ready}");

    outage.end();
    metrics
        .wait_for_at_least(
            "relais_audit_records_written_total",
            40_000.0,
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(
        metrics.value("relais_audit_paused").await,
        0.0,
        "consumption resumed"
    );
    service.wait_for_readiness(true).await;
    service.stop().await;

    let seen = common::stored_message_ids(&rgw, &bucket).await;
    assert_eq!(seen.len(), 40_000, "nothing lost");
    assert!(seen.values().all(|count| *count == 1), "nothing twice");
}
