//! No poison pill: whatever a record holds, what the worker writes for it stays bounded, and a
//! record the broker refuses is handled alone. Each case is followed by normal records, which
//! must all get their outcomes within seconds.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use rand::{RngCore as _, SeedableRng as _};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use relais_ingest_worker::config::PipelineConfig;
use relais_ingest_worker::records::headers;
use relais_proto::v1::Outcome;
use relais_resilience::UpstreamPolicy;
use relais_test_support::{KafkaTestEnv, unique_name};
use sha2::Digest as _;

/// Produces `payload` under `key` with lz4 and a 4 MiB client limit, so the broker takes a
/// record larger than the worker's own producer limit.
async fn produce_large(kafka: &KafkaTestEnv, topic: &str, key: &str, payload: &[u8]) {
    let producer: FutureProducer = kafka
        .client_config()
        .set("compression.type", "lz4")
        .set("message.max.bytes", "4194304")
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Starts a worker on `topics`, sends the large record then 50 normal ones on the same
/// partition, and returns the audit and DLQ records.
async fn large_then_normal(
    kafka: &KafkaTestEnv,
    topics: &Topics,
    large: &[u8],
) -> (Vec<relais_proto::v1::AuditRecord>, Vec<Read>, Worker, Sim) {
    let sim = Sim::start().await;
    let worker = Worker::start(
        kafka,
        topics,
        &unique_name("it-group"),
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
    );
    produce_large(kafka, &topics.ingress, "poison", large).await;
    produce(kafka, &topics.ingress, &valid_events("after", 50, 50)).await;
    let audit = read_outcomes(kafka, &topics.audit, 51, Duration::from_secs(30)).await;
    let dlq = read_exactly(
        kafka,
        &topics.dlq,
        1,
        Duration::from_secs(10),
        Duration::from_millis(500),
    )
    .await;
    (audit, dlq, worker, sim)
}

fn assert_fifty_delivered(audit: &[relais_proto::v1::AuditRecord]) {
    assert_exactly_once(audit, 51);
    let delivered = audit
        .iter()
        .filter(|record| record.outcome == Outcome::Delivered as i32)
        .count();
    assert_eq!(
        delivered, 50,
        "every normal record behind the large one delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compressed_record_above_the_producer_limit_is_rejected_with_a_bounded_dlq_copy() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let topics = Topics {
        ingress: kafka
            .create_topic_with("it-ingress", 1, &[("max.message.bytes", "4194304")])
            .await,
        ..Topics::create(&kafka, 1).await
    };
    // A 1.2 MB JSON document: it compresses to a few KB, so the broker took it.
    let filler = "x".repeat(1_200_000);
    let large = format!(
        r#"{{"id":"huge","type":"order.created","occurred_at":"{}","source":"s","data":{{"blob":"{filler}"}}}}"#,
        chrono::Utc::now().to_rfc3339()
    )
    .into_bytes();
    let (audit, dlq, worker, _sim) = large_then_normal(&kafka, &topics, &large).await;
    assert_fifty_delivered(&audit);
    let rejected = audit
        .iter()
        .find(|record| record.outcome == Outcome::Rejected as i32)
        .unwrap();
    assert_eq!(rejected.reason_code, "too_large");
    assert_eq!(rejected.payload_bytes, large.len() as u64);

    let copy = &dlq[0];
    assert_eq!(
        copy.payload.len(),
        256 * 1024,
        "the copy keeps dlq.max_payload_bytes"
    );
    assert_eq!(copy.payload, large[..256 * 1024]);
    assert_eq!(copy.headers[headers::DLQ_TRUNCATED], "payload");
    assert_eq!(
        copy.headers[headers::DLQ_ORIGINAL_BYTES],
        large.len().to_string()
    );
    assert_eq!(
        copy.headers[headers::DLQ_ORIGINAL_SHA256],
        sha256_hex(&large)
    );
    assert_eq!(copy.headers[headers::DLQ_REASON], "too_large");
    assert!(worker.metric("relais_worker_dlq_truncated_total").await >= 1.0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dlq_copy_the_broker_refuses_is_written_without_its_payload_and_blocks_nothing() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    // The DLQ topic takes at most 64 KiB per batch; the copy of a 200 KB record, which the
    // worker's own limits allow, cannot be compressed below that.
    let topics = Topics {
        dlq: kafka
            .create_topic_with("it-dlq", 1, &[("max.message.bytes", "65536")])
            .await,
        ..Topics::create(&kafka, 1).await
    };
    let mut large = vec![0u8; 200_000];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut large);
    let (audit, dlq, worker, _sim) = large_then_normal(&kafka, &topics, &large).await;
    assert_fifty_delivered(&audit);
    let rejected = audit
        .iter()
        .find(|record| record.outcome == Outcome::Rejected as i32)
        .unwrap();
    assert_eq!(rejected.reason_code, "malformed_json");

    let copy = &dlq[0];
    assert!(copy.payload.is_empty());
    assert_eq!(copy.headers[headers::DLQ_TRUNCATED], "payload");
    assert_eq!(copy.headers[headers::DLQ_ORIGINAL_BYTES], "200000");
    assert_eq!(
        copy.headers[headers::DLQ_ORIGINAL_SHA256],
        sha256_hex(&large)
    );
    assert_eq!(copy.headers[headers::DLQ_REASON], "malformed_json");
    assert!(
        worker
            .metric(&format!(
                "relais_worker_refused_records_total{{topic=\"{}\"}}",
                topics.dlq
            ))
            .await
            >= 1.0
    );
    worker.stop().await;
}
