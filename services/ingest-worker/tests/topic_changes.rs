//! The ingress topic deleted and created again under a running worker: the new log's messages
//! are all decided, once each, after the old log's messages read before them. Records purged
//! from a retry tier before they were read: their keys stop waiting, and a key whose message
//! the worker holds in memory keeps waiting.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use relais_ingest_worker::config::PipelineConfig;
use relais_proto::v1::{AuditRecord, OperatorAction, PipelineEvent};
use relais_resilience::UpstreamPolicy;
use relais_test_support::{KafkaTestEnv, unique_name};
use serde_json::json;

/// Every record on `topic` (read_committed) that `keep` maps to a value, read from its start
/// until none arrives for `quiet`.
async fn read_all<T>(
    kafka: &KafkaTestEnv,
    topic: &str,
    quiet: Duration,
    mut keep: impl FnMut(Read) -> Option<T>,
) -> Vec<T> {
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", unique_name("it-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut kept = Vec::new();
    while let Ok(message) = tokio::time::timeout(quiet, consumer.recv()).await {
        kept.extend(keep(detach(&message.unwrap())));
    }
    kept
}

/// Every outcome record on `topic`, read until none arrives for `quiet`.
async fn all_outcomes(kafka: &KafkaTestEnv, topic: &str, quiet: Duration) -> Vec<AuditRecord> {
    read_all(kafka, topic, quiet, |read| {
        (!is_operator_action(&read)).then(|| AuditRecord::decode(read.payload.as_slice()).unwrap())
    })
    .await
}

/// Every `retry_scheduled` event on `topic`, read until none arrives for `quiet`.
async fn all_retry_moves(kafka: &KafkaTestEnv, topic: &str, quiet: Duration) -> Vec<PipelineEvent> {
    read_all(kafka, topic, quiet, |read| {
        Some(PipelineEvent::decode(read.payload.as_slice()).unwrap())
            .filter(|event| event.retry_scheduled.is_some())
    })
    .await
}

/// Every operator action on the audit topic, read until none arrives for `quiet`.
async fn all_operator_actions(
    kafka: &KafkaTestEnv,
    topic: &str,
    quiet: Duration,
) -> Vec<OperatorAction> {
    read_all(kafka, topic, quiet, |read| {
        is_operator_action(&read).then(|| OperatorAction::decode(read.payload.as_slice()).unwrap())
    })
    .await
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

/// The high watermark of `topic`'s partition 0.
fn log_end(kafka: &KafkaTestEnv, topic: &str) -> i64 {
    let consumer: BaseConsumer = kafka.client_config().create().unwrap();
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    high
}

/// Messages `from..to` of `keys` keys, each key's sequence in `data` for upstream-sim's order
/// check (message `n` has sequence `n / keys` of key `n % keys`).
fn keyed_events(from: usize, to: usize, keys: usize) -> Vec<(String, Vec<u8>)> {
    let mut events = ordered_events("k", "order.created", to, keys);
    events.drain(..from);
    events
}

/// How an operator empties a retry tier.
#[derive(Debug, Clone, Copy)]
enum Purge {
    DeleteRecords,
    CreateAgain,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_tier_records_deleted_before_they_were_read_stop_holding_their_keys() {
    purged_tier_stops_holding_keys(Purge::DeleteRecords).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_topic_created_again_stops_holding_the_keys_it_held() {
    purged_tier_stops_holding_keys(Purge::CreateAgain).await;
}

/// Messages of five keys wait in the long tier, four of them unread when it is emptied: those
/// four keys stop waiting, their later messages go straight to the upstream (order kept for
/// what remains), the message read before is delivered, and the loss is in the audit trail.
async fn purged_tier_stops_holding_keys(purge: Purge) {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    // Nothing listens here until the upstream comes back: connections are refused.
    let upstream = free_port();
    let topics = Topics::create(&kafka, 1).await;
    let mut config = config_with_tiers(&topics, upstream, &[secs(1), secs(12)]);
    for upstream in config.upstreams.values_mut() {
        // The one message delivered before the later ones closes the circuit again.
        upstream.policy.circuit.half_open_calls = 1;
    }
    let long_tier = format!("{}.12s", topics.retry_prefix);
    create_retry_topics(&kafka, &topics, &config).await;
    let worker = Worker::start_config(&kafka, config);
    let waiting_keys = "relais_worker_retry_waiting_keys";

    // The first key's message reaches the long tier, whose partition then pauses until it is
    // due; the next four keys' messages follow it there while it is paused: unread.
    produce(&kafka, &topics.ingress, &keyed_events(0, 1, 5)).await;
    let in_long_tier = |count: usize| {
        move |events: &[relais_proto::v1::PipelineEvent]| {
            events
                .iter()
                .filter(|event| event.retry_scheduled.as_ref().unwrap().tier == 1)
                .count()
                >= count
        }
    };
    retry_events_until(&kafka, &topics.events, secs(30), in_long_tier(1)).await;
    let others: Vec<_> = keyed_events(1, 10, 5)
        .into_iter()
        .filter(|(key, _)| key != "k-entity-0")
        .collect();
    produce(&kafka, &topics.ingress, &others).await;
    retry_events_until(&kafka, &topics.events, secs(30), in_long_tier(9)).await;
    assert_eq!(worker.metric(waiting_keys).await, 5.0);

    // An operator empties the long tier; the upstream comes back.
    let (kind, action) = match purge {
        Purge::DeleteRecords => {
            kafka
                .delete_records_before(&long_tier, 0, log_end(&kafka, &long_tier))
                .await;
            ("deleted_unread", "kafka.records_deleted")
        }
        Purge::CreateAgain => {
            kafka.recreate_topic(&long_tier, 1).await;
            ("rewound", "kafka.log_rewound")
        }
    };
    let sim = Sim::start_at(upstream).await;

    // When the paused partition resumes, its next fetch finds the purged records gone: the
    // four keys no longer wait, and the first key's message, read before, is delivered.
    let noticed =
        format!("relais_worker_offset_resets_total{{topic=\"{long_tier}\",kind=\"{kind}\"}}");
    relais_test_support::wait_until("the purge noticed", secs(60), || async {
        worker.metric(&noticed).await >= 1.0
    })
    .await;
    relais_test_support::wait_until("no key waits", secs(60), || async {
        worker.metric(waiting_keys).await == 0.0
    })
    .await;

    relais_test_support::wait_until("the upstream taken back", secs(60), || async {
        worker
            .metric("relais_circuit_state{upstream=\"default\",state=\"closed\"}")
            .await
            == 1.0
    })
    .await;

    // Later messages of the purged keys are delivered at once, not sent after the lost ones.
    let later: Vec<_> = keyed_events(10, 20, 5)
        .into_iter()
        .filter(|(key, _)| key != "k-entity-0")
        .collect();
    produce(&kafka, &topics.ingress, &later).await;
    let later_ids: Vec<String> = [11, 12, 13, 14, 16, 17, 18, 19]
        .iter()
        .map(|index| format!("k-{index}"))
        .collect();
    let deadline = Instant::now() + secs(60);
    let outcomes = loop {
        let outcomes = all_outcomes(&kafka, &topics.audit, secs(2)).await;
        if outcomes.len() > later_ids.len() || Instant::now() > deadline {
            break outcomes;
        }
    };
    worker.stop().await;
    let mut decided: Vec<&str> = outcomes.iter().map(|o| o.message_id.as_str()).collect();
    decided.sort_unstable();
    let mut expected: Vec<&str> = later_ids.iter().map(String::as_str).collect();
    expected.push("k-0");
    expected.sort_unstable();
    assert_eq!(decided, expected, "the purged messages have no outcome");
    assert!(
        outcomes
            .iter()
            .all(|outcome| outcome.outcome == relais_proto::v1::Outcome::Delivered as i32),
        "{outcomes:?}"
    );
    let moved: Vec<String> = all_retry_moves(&kafka, &topics.events, secs(2))
        .await
        .into_iter()
        .filter(|event| later_ids.contains(&event.message_id))
        .map(|event| format!("{}: {:?}", event.message_id, event.retry_scheduled))
        .collect();
    assert!(
        moved.is_empty(),
        "sent to a tier after lost messages: {moved:?}"
    );
    let seen = sim.deliveries().await;
    assert_eq!(seen["order_violations"], 0, "{seen}");
    let purge_told = all_operator_actions(&kafka, &topics.audit, secs(2))
        .await
        .iter()
        .any(|told| told.action == action && told.subject == format!("kafka/{long_tier}/0"));
    assert!(
        purge_told,
        "the lost messages are accounted for in the audit trail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_waiting_in_memory_keeps_its_order_when_the_tiers_are_read_again() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let upstream = free_port();
    let topics = Topics::create(&kafka, 1).await;
    // Two upstreams at the same (refusing) address: `default` waits in 1 s and 12 s tiers,
    // `z` in 1 s and 40 s ones. z's message waits, read and kept in memory, in the 40 s tier
    // while the 12 s tier is purged and the partition's key order state is read again.
    let mut config = config_with_tiers(&topics, upstream, &[secs(1), secs(12)]);
    let mut z = config.upstreams["default"]
        .clone()
        .with_retry_tiers(&[secs(1), secs(40)]);
    z.policy.circuit.half_open_calls = 1;
    config.upstreams.insert("z".into(), z);
    config
        .upstreams
        .get_mut("default")
        .unwrap()
        .policy
        .circuit
        .half_open_calls = 1;
    config.routing.rules = vec![relais_ingest_worker::config::RouteRule {
        type_prefix: "z.".into(),
        upstream: "z".into(),
    }];
    let long_tier = format!("{}.12s", topics.retry_prefix);
    create_retry_topics(&kafka, &topics, &config).await;
    let worker = Worker::start_config(&kafka, config);

    let z_events = ordered_events("z", "z.created", 2, 1);
    produce(&kafka, &topics.ingress, &keyed_events(0, 1, 5)).await;
    produce(&kafka, &topics.ingress, &z_events[..1]).await;
    let in_second_tier = |count: usize| {
        move |events: &[PipelineEvent]| {
            events
                .iter()
                .filter(|event| event.retry_scheduled.as_ref().unwrap().tier == 1)
                .count()
                >= count
        }
    };
    retry_events_until(&kafka, &topics.events, secs(30), in_second_tier(2)).await;
    let others: Vec<_> = keyed_events(1, 5, 5);
    produce(&kafka, &topics.ingress, &others).await;
    retry_events_until(&kafka, &topics.events, secs(30), in_second_tier(6)).await;
    kafka
        .delete_records_before(&long_tier, 0, log_end(&kafka, &long_tier))
        .await;
    let sim = Sim::start_at(upstream).await;
    let deleted = format!(
        "relais_worker_offset_resets_total{{topic=\"{long_tier}\",kind=\"deleted_unread\"}}"
    );
    relais_test_support::wait_until("the purge noticed", secs(60), || async {
        worker.metric(&deleted).await >= 1.0
    })
    .await;
    // Read again: the purged keys are gone; z's key, whose message the worker holds, is not.
    relais_test_support::wait_until("only z's key waits", secs(60), || async {
        worker.metric("relais_worker_retry_waiting_keys").await == 1.0
    })
    .await;

    // z's next message follows its first into the 40 s tier instead of overtaking it.
    produce(&kafka, &topics.ingress, &z_events[1..]).await;
    let deadline = Instant::now() + secs(90);
    let outcomes = loop {
        let outcomes = all_outcomes(&kafka, &topics.audit, secs(2)).await;
        let z_decided = outcomes.iter().filter(|o| o.upstream == "z").count();
        if z_decided == 2 || Instant::now() > deadline {
            break outcomes;
        }
    };
    worker.stop().await;
    let z_decided: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.upstream == "z")
        .map(|o| o.message_id.as_str())
        .collect();
    assert_eq!(z_decided.len(), 2, "{z_decided:?}");
    let followed = all_retry_moves(&kafka, &topics.events, secs(2))
        .await
        .iter()
        .any(|event| event.message_id == "z-1" && event.reason_code == "waiting_behind_key");
    assert!(followed, "z-1 waited behind z-0");
    let seen = sim.deliveries().await;
    assert_eq!(seen["order_violations"], 0, "{seen}");
}
