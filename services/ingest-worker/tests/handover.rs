//! Partitions moving between workers while messages of theirs wait behind others of their key:
//! what finished behind a waiting message is committed ahead of the offset, named in the
//! offset's metadata, and the next owner does not send it again. Real broker, real
//! upstream-sim.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use relais_ingest_worker::config::{PipelineConfig, WorkerConfig};
use relais_ingest_worker::schedule::Ordering;
use relais_resilience::UpstreamPolicy;
use relais_test_support::{KafkaTestEnv, unique_name};
use serde_json::json;

/// One upstream in key order, at most 16 calls in flight.
fn keyed(topics: &Topics, group: &str, sim: &Sim) -> WorkerConfig {
    let mut config = worker_config(
        topics,
        group,
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
        None,
    );
    fixed_in_flight(&mut config, 16);
    for upstream in config.upstreams.values_mut() {
        upstream.ordering = Ordering::Key;
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_finished_behind_a_waiting_message_moves_committed_and_is_not_sent_again() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    // 50 ms a call: each partition's hot key takes 15 s for its 300 messages, so the first
    // worker is busy whenever the second joins.
    sim.set_faults(json!({"latency": {"kind": "fixed", "ms": 50}}))
        .await;
    let topics = Topics::create(&kafka, 2).await;
    let messages = hot_and_cold(2, 600);
    let total = messages.len();
    let group = unique_name("it-group");
    let first = Worker::start_config(&kafka, keyed(&topics, &group, &sim));
    produce_to_partitions(&kafka, &topics.ingress, &messages).await;
    first
        .wait_for_metric("relais_worker_committed_messages_total", 100.0)
        .await;

    let second = Worker::start_config(&kafka, keyed(&topics, &group, &sim));
    second
        .wait_for_metric("relais_worker_assigned_partitions", 1.0)
        .await;
    let handovers = "relais_worker_handovers_total";
    assert!(
        first
            .metric(&format!("{handovers}{{result=\"committed\"}}"))
            .await
            >= 1.0
    );
    assert_eq!(
        first
            .metric(&format!("{handovers}{{result=\"timed_out\"}}"))
            .await,
        0.0
    );
    assert!(
        first.metric("relais_worker_outcomes_ahead_total").await > 0.0,
        "cold messages had finished behind the hot key's unstarted ones"
    );
    second
        .wait_for_metric("relais_worker_recorded_skipped_total", 1.0)
        .await;

    // Leaving, the first worker commits ahead as well: the survivor takes every partition.
    first.stop().await;
    all_delivered_once(&kafka, &topics, total).await;
    let seen = sim.deliveries().await;
    assert_eq!(
        seen["duplicate_deliveries"], 0,
        "nothing finished was sent again by the next owner: {seen}"
    );
    assert_eq!(
        seen["order_violations"], 0,
        "key order held across the moves: {seen}"
    );
    assert_eq!(seen["ordered_events"], total, "{seen}");
    second.stop().await;
}

/// Commits offset `offset` of partition 0 of `topic` for `group` with `metadata`, as a worker
/// that handed the partition over would have.
fn commit_with_metadata(
    kafka: &KafkaTestEnv,
    group: &str,
    topic: &str,
    offset: i64,
    metadata: &str,
) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, rdkafka::Offset::Offset(offset))
        .unwrap();
    offsets
        .find_partition(topic, 0)
        .unwrap()
        .set_metadata(metadata);
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
}

/// Starts a worker on a partition of 20 messages whose committed offset 5 carries `metadata`;
/// returns the ingress offsets that got an audit record, and the worker.
async fn offsets_decided_after(metadata: &str, expected: usize) -> (Vec<i64>, Worker, Sim) {
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let topics = Topics::create(&kafka, 1).await;
    let group = unique_name("it-group");
    produce(&kafka, &topics.ingress, &valid_events("m", 20, 20)).await;
    commit_with_metadata(&kafka, &group, &topics.ingress, 5, metadata);
    let worker = Worker::start_config(&kafka, keyed(&topics, &group, &sim));
    let audit = audit_records(
        &read_exactly(
            &kafka,
            &topics.audit,
            expected,
            Duration::from_secs(60),
            Duration::from_secs(3),
        )
        .await,
    );
    let mut offsets: Vec<i64> = audit
        .iter()
        .map(|record| record.position.as_ref().unwrap().offset)
        .collect();
    offsets.sort_unstable();
    (offsets, worker, sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_offsets_a_commit_names_as_recorded_ahead_are_not_sent_and_any_other_note_is_ignored() {
    init_telemetry();
    // Offset 5 committed, 7, 8 and 15 named: their outcomes are recorded already.
    let (decided, worker, sim) = offsets_decided_after("relais-ahead/1:2-3,10", 12).await;
    assert_eq!(decided, [5, 6, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19]);
    assert_eq!(sim.deliveries().await["requests"], 12);
    assert_eq!(
        worker.metric("relais_worker_recorded_skipped_total").await,
        3.0
    );
    worker.stop().await;

    // Another tool's note on the offset, or a list no worker writes, names nothing.
    for note in ["checkpoint by ops", "relais-ahead/1:3,2"] {
        let (decided, worker, sim) = offsets_decided_after(note, 15).await;
        assert_eq!(decided, (5..20).collect::<Vec<i64>>(), "{note}");
        assert_eq!(sim.deliveries().await["requests"], 15, "{note}");
        assert_eq!(
            worker.metric("relais_worker_recorded_skipped_total").await,
            0.0
        );
        worker.stop().await;
    }
}
