//! The audit topic changing under the service: records Kafka deleted before the service stored
//! them (retention while it was down) are counted by topic and logged with the offsets, and
//! storing goes on from the log's new start; partitions added while it runs are stored too; a
//! topic deleted and created again never has the new log's objects replace the old log's.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::records::{produce_records, record};
use common::{Instance, stored_message_ids};
use relais_audit_service::config::{AuditConfig, KafkaConfig, ObjectsConfig};
use relais_proto::v1::AuditRecord;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_created_again_never_replaces_the_old_logs_objects() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let bucket = unique_name("it-audit-recreated");
    let topic = kafka.create_topic("it-audit-recreated", 1).await;
    let endpoints = relais_test_support::Endpoints::from_env();
    let start = |config: AuditConfig| {
        Instance::start(
            common::args(&kafka, &bucket, endpoints.s3_endpoint.clone()),
            config,
            Default::default(),
        )
    };
    // Both logs hold 100 records at the same event times, so their objects are cut alike and
    // each object of the new log has the key of one of the old log's.
    let base = 1_795_000_000;
    let old_log: Vec<_> = (0..100).map(|index| record(index, 100, base)).collect();
    let new_log: Vec<_> = (0..100)
        .map(|index| AuditRecord {
            message_id: format!("again-{index}"),
            ..record(index, 100, base)
        })
        .collect();
    produce_records(&kafka, &topic, &old_log).await;
    let first = start(config_for(&topic));
    first.wait_written(100.0).await;
    first.stop().await;
    let old_objects = common::stored_objects(&rgw, &bucket).await;

    kafka.recreate_topic(&topic, 1).await;
    produce_records(&kafka, &topic, &new_log).await;
    let second = start(config_for(&topic));
    second.wait_written(100.0).await;
    let second_keys = second
        .metrics
        .value("relais_audit_objects_under_second_key_total")
        .await;
    second.stop().await;

    let objects = common::stored_objects(&rgw, &bucket).await;
    let beside: Vec<_> = objects
        .iter()
        .filter(|object| object.key.contains('~'))
        .collect();
    assert!(!beside.is_empty(), "objects stored under second keys");
    assert_eq!(second_keys, beside.len() as f64);
    for old in &old_objects {
        let now = objects
            .iter()
            .find(|object| object.key == old.key)
            .expect("the old log's object is still there");
        assert_eq!(now.offsets, old.offsets, "{} unchanged", old.key);
    }
    let expected: std::collections::BTreeSet<String> = (0..100)
        .flat_map(|index| [format!("msg-{index}"), format!("again-{index}")])
        .collect();
    let stored = stored_message_ids(&rgw, &bucket).await;
    assert_eq!(
        stored
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        expected,
        "both logs' records"
    );
    assert!(stored.values().all(|count| *count == 1), "each once");
    let listed: std::collections::BTreeSet<String> =
        common::list_keys(&rgw, &bucket).await.into_iter().collect();
    for object in &beside {
        assert!(
            listed.contains(&format!("{}.idx", object.key)),
            "{} has its lookup index",
            object.key
        );
    }

    // The new log read again from its start (a group of its own, as a crash before the
    // commit would): its objects go to the same second keys, not to a third.
    let third = start(config_for(&topic));
    third.wait_written(100.0).await;
    third.stop().await;
    let again = stored_message_ids(&rgw, &bucket).await;
    assert_eq!(again, stored, "the same objects, written again in place");
}
