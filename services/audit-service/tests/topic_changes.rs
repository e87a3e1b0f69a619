//! The audit topic changing under the service: records Kafka deleted before the service stored
//! them (retention while it was down) are counted by topic and logged with the offsets, and
//! storing goes on from the log's new start; partitions added while it runs are stored too.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::records::{produce_records, record};
use common::{Instance, stored_message_ids};
use relais_audit_service::config::{AuditConfig, KafkaConfig, ObjectsConfig};
use relais_test_support::unique_name;

/// A group of its own on `topic`, objects closed after half a second idle.
fn config_for(topic: &str) -> AuditConfig {
    let config = AuditConfig {
        kafka: KafkaConfig {
            group_id: unique_name("it-audit-topic"),
            audit_topic: topic.to_owned(),
            ..KafkaConfig::default()
        },
        objects: ObjectsConfig {
            idle: Duration::from_millis(500),
            ..ObjectsConfig::default()
        },
        ..AuditConfig::default()
    };
    config.validate().unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_deleted_while_the_service_was_down_are_counted() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let bucket = unique_name("it-audit-resets");
    let topic = kafka.create_topic("it-audit-resets", 1).await;
    let endpoints = relais_test_support::Endpoints::from_env();
    let config = config_for(&topic);
    let start = || {
        Instance::start(
            common::args(&kafka, &bucket, endpoints.s3_endpoint.clone()),
            config.clone(),
            Default::default(),
        )
    };
    let base = 1_795_000_000;
    let records: Vec<_> = (0..300).map(|index| record(index, 300, base)).collect();

    // Offsets 0..100 stored and committed; then the service stops.
    produce_records(&kafka, &topic, &records[..100]).await;
    let first = start();
    first.wait_written(100.0).await;
    first.stop().await;

    // While it is down, 200 more arrive and retention takes the log up to offset 250.
    produce_records(&kafka, &topic, &records[100..]).await;
    kafka.delete_records_before(&topic, 0, 250).await;

    let second = start();
    second.wait_written(50.0).await;
    let deleted = format!("relais_audit_records_deleted_unread_total{{topic=\"{topic}\"}}");
    let deleted = second
        .metrics
        .wait_for_at_least(&deleted, 1.0, Duration::from_secs(30))
        .await;
    assert_eq!(deleted, 150.0, "offsets 100 to 249 deleted unread");
    let resets =
        format!("relais_audit_offset_resets_total{{topic=\"{topic}\",kind=\"deleted_unread\"}}");
    assert_eq!(second.metrics.value(&resets).await, 1.0);
    second.stop().await;

    let stored = stored_message_ids(&rgw, &bucket).await;
    let expected: Vec<String> = (0..100)
        .chain(250..300)
        .map(|index| format!("msg-{index}"))
        .collect();
    assert_eq!(
        stored
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        expected.into_iter().collect(),
        "what was read, each once"
    );
    assert!(stored.values().all(|count| *count == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_added_while_the_service_runs_are_stored() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let bucket = unique_name("it-audit-grown");
    let topic = kafka.create_topic("it-audit-grown", 1).await;
    let endpoints = relais_test_support::Endpoints::from_env();
    let mut config = config_for(&topic);
    // New partitions are seen within a second instead of half a minute.
    config
        .kafka
        .client
        .settings
        .insert("topic.metadata.refresh.interval.ms".into(), "1000".into());
    let records: Vec<_> = (0..200)
        .map(|index| record(index, 200, 1_795_000_000))
        .collect();
    produce_records(&kafka, &topic, &records[..100]).await;
    let service = Instance::start(
        common::args(&kafka, &bucket, endpoints.s3_endpoint.clone()),
        config,
        Default::default(),
    );
    service.wait_written(100.0).await;

    kafka.add_partitions(&topic, 3).await;
    // Keyed by message id, the rest spread over the three partitions.
    produce_records(&kafka, &topic, &records[100..]).await;
    service.wait_written(200.0).await;
    service.stop().await;

    let objects = common::stored_objects(&rgw, &bucket).await;
    let partitions: std::collections::BTreeSet<i32> =
        objects.iter().map(|object| object.partition).collect();
    assert_eq!(
        partitions.len(),
        3,
        "objects of every partition: {partitions:?}"
    );
    let stored = stored_message_ids(&rgw, &bucket).await;
    assert_eq!(stored.len(), 200);
    assert!(stored.values().all(|count| *count == 1));
}
