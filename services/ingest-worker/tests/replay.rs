//! DLQ replay: dead-lettered messages go back to the ingress topic with their original bytes
//! and are delivered once the upstream is healthy; a reason filter selects what is replayed.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use relais_ingest_worker::config::{KafkaConfig, PipelineConfig, WorkerConfig};
use relais_proto::v1::Outcome;
use relais_resilience::UpstreamPolicy;
use relais_resilience::policy::RetryPolicyConfig;
use relais_test_support::unique_name;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_dead_letters_are_delivered_after_the_upstream_recovers() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    sim.set_faults(json!({"errors": {"503": 1.0}})).await;
    let topics = Topics::create(&kafka, 3).await;
    let policy = UpstreamPolicy {
        retry: RetryPolicyConfig {
            max_attempts: 1,
            ..RetryPolicyConfig::default()
        },
        ..UpstreamPolicy::default()
    };
    let worker = Worker::start(
        &kafka,
        &topics,
        &unique_name("it-group"),
        sim.api,
        policy,
        PipelineConfig::default(),
    );
    let mut messages = valid_events("d", 8, 4);
    messages.push(("bad".into(), b"{broken".to_vec()));
    produce(&kafka, &topics.ingress, &messages).await;
    let first = audit_records(
        &read_exactly(
            &kafka,
            &topics.audit,
            9,
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
        .await,
    );
    assert_eq!(
        first
            .iter()
            .filter(|r| r.outcome == Outcome::DeadLettered as i32)
            .count(),
        8
    );
    read_exactly(
        &kafka,
        &topics.dlq,
        9,
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .await;

    sim.set_faults(json!({})).await;
    let config = WorkerConfig {
        kafka: KafkaConfig {
            group_id: unique_name("replay"),
            ingress_topic: topics.ingress.clone(),
            dlq_topic: topics.dlq.clone(),
            ..KafkaConfig::default()
        },
        ..WorkerConfig::default()
    };
    let dry = relais_ingest_worker::replay::replay(
        kafka.bootstrap(),
        &config,
        &["retries_exhausted".into()],
        None,
        true,
    )
    .await
    .unwrap();
    assert_eq!((dry.scanned, dry.replayed, dry.skipped), (9, 8, 1));
    let summary = relais_ingest_worker::replay::replay(
        kafka.bootstrap(),
        &config,
        &["retries_exhausted".into()],
        None,
        false,
    )
    .await
    .unwrap();
    assert_eq!(summary.replayed, 8, "the malformed one stays in the DLQ");
    assert_eq!(summary.by_reason["retries_exhausted"], 8);

    let all = audit_records(
        &read_exactly(
            &kafka,
            &topics.audit,
            17,
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
        .await,
    );
    let delivered: Vec<_> = all
        .iter()
        .filter(|r| r.outcome == Outcome::Delivered as i32)
        .collect();
    assert_eq!(delivered.len(), 8, "every replayed message delivered");
    let mut ids: Vec<&str> = delivered.iter().map(|r| r.message_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..8).map(|i| format!("d-{i}")).collect::<Vec<_>>());

    // A second replay resumes after the first: nothing left to replay.
    let again = relais_ingest_worker::replay::replay(kafka.bootstrap(), &config, &[], None, false)
        .await
        .unwrap();
    assert_eq!(again.replayed, 0, "{again:?}");
    worker.stop().await;
}
