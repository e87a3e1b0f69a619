//! The ingress topic deleted and created again under a running worker: the new log's messages
//! are all decided, once each, after the old log's messages read before them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use relais_ingest_worker::config::PipelineConfig;
use relais_proto::v1::AuditRecord;
use relais_resilience::UpstreamPolicy;
use relais_test_support::{KafkaTestEnv, unique_name};
use serde_json::json;

/// Every outcome record on `topic` (read_committed), read until none arrives for `quiet`.
async fn all_outcomes(kafka: &KafkaTestEnv, topic: &str, quiet: Duration) -> Vec<AuditRecord> {
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", unique_name("it-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut outcomes = Vec::new();
    while let Ok(message) = tokio::time::timeout(quiet, consumer.recv()).await {
        let read = detach(&message.unwrap());
        if !is_operator_action(&read) {
            outcomes.extend(audit_records(&[read]));
        }
    }
    outcomes
}

/// How many outcomes each message id of `prefix` has.
fn outcomes_per_id(outcomes: &[AuditRecord], prefix: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for outcome in outcomes
        .iter()
        .filter(|outcome| outcome.message_id.starts_with(prefix))
    {
        *counts.entry(outcome.message_id.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ingress_topic_created_again_has_every_new_message_decided_once() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    // Slow enough that the old log's messages are still in flight when the topic goes.
    sim.set_faults(json!({"latency": {"kind": "fixed", "ms": 50}}))
        .await;
    let topics = Topics::create(&kafka, 1).await;
    let mut config = worker_config(
        &topics,
        &unique_name("it-group"),
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
        None,
    );
    fixed_in_flight(&mut config, 4);
    let worker = Worker::start_config(&kafka, config);
    produce(&kafka, &topics.ingress, &valid_events("old", 400, 400)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker
        .metric("relais_worker_committed_messages_total")
        .await
        < 40.0
    {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Created again before the worker's next metadata refresh: it keeps the partition, and
    // its next fetch finds its offset past the new log's end and starts again at offset 0.
    kafka.recreate_topic(&topics.ingress, 1).await;
    produce(&kafka, &topics.ingress, &valid_events("new", 100, 100)).await;
    let rewound = format!(
        "relais_worker_offset_resets_total{{topic=\"{}\",kind=\"rewound\"}}",
        topics.ingress
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let outcomes = loop {
        let outcomes = all_outcomes(&kafka, &topics.audit, Duration::from_secs(2)).await;
        if outcomes_per_id(&outcomes, "new-").len() == 100 || Instant::now() > deadline {
            break outcomes;
        }
    };
    assert_eq!(worker.metric(&rewound).await, 1.0);
    worker.stop().await;

    let new = outcomes_per_id(&outcomes, "new-");
    assert_eq!(new.len(), 100, "every message of the new log decided");
    assert!(new.values().all(|count| *count == 1), "each once: {new:?}");
    let old = outcomes_per_id(&outcomes, "old-");
    assert!(
        old.values().all(|count| *count == 1),
        "the old log's messages at most once each"
    );
    assert_eq!(old.len(), 400, "those read before were decided too");
}
