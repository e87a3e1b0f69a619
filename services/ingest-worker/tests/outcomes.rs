//! Every ingress message gets exactly one outcome; invalid ones land in the DLQ with the right
//! reason; the worker's counters agree. Real broker, real HTTP upstream (upstream-sim).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use prost::Message as _;
use relais_ingest_worker::config::PipelineConfig;
use relais_proto::v1::Outcome;
use relais_resilience::UpstreamPolicy;
use relais_test_support::unique_name;

/// Invalid payloads of many kinds, each with the reason the worker must give.
fn invalid_kinds() -> Vec<(Vec<u8>, &'static str)> {
    let now = chrono::Utc::now().to_rfc3339();
    let event = |fields: &str| {
        format!(
            r#"{{"id":"bad","type":"order.created","occurred_at":"{now}","source":"shop"{fields}}}"#
        )
    };
    vec![
        (b"{not json".to_vec(), "malformed_json"),
        (b"\xff\xfe\x00garbage".to_vec(), "malformed_json"),
        (b"[1,2,3]".to_vec(), "not_an_object"),
        (b"   ".to_vec(), "empty"),
        (
            br#"{"type":"order.created","occurred_at":"2026-01-01T00:00:00Z","source":"s"}"#
                .to_vec(),
            "missing_field",
        ),
        (event(r#","data":[1]"#).into_bytes(), "wrong_type"),
        (
            format!(r#"{{"id":"x","type":"Order Created!","occurred_at":"{now}","source":"s"}}"#)
                .into_bytes(),
            "invalid_type_name",
        ),
        (
            br#"{"id":"x","type":"a.b","occurred_at":"yesterday","source":"s"}"#.to_vec(),
            "bad_timestamp",
        ),
        (event(r#","route":"nowhere""#).into_bytes(), "unknown_route"),
        (event(r#","extra":1"#).into_bytes(), "unknown_field"),
        (vec![b' '; 300 * 1024], "too_large"),
        (
            format!(r#"{{"id":"  ","type":"a.b","occurred_at":"{now}","source":"s"}}"#)
                .into_bytes(),
            "empty_field",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_has_exactly_one_outcome_and_invalid_ones_reach_the_dlq() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let topics = Topics::create(&kafka, 6).await;

    let total = 10_000usize;
    let kinds = invalid_kinds();
    let now = chrono::Utc::now().to_rfc3339();
    let mut messages = Vec::with_capacity(total);
    let mut expected_reason: BTreeMap<String, &'static str> = BTreeMap::new();
    for index in 0..total {
        let key = format!("entity-{}", index % 500);
        if index % 8 == 3 {
            // 12.5 % invalid, cycling through every kind.
            let (payload, reason) = &kinds[(index / 8) % kinds.len()];
            expected_reason.insert(format!("{key}#{index}"), reason);
            messages.push((key, payload.clone()));
        } else {
            let payload = format!(
                r#"{{"id":"msg-{index}","type":"Order.Created","occurred_at":"{now}","source":"test","data":{{"n":{index}}}}}"#
            );
            messages.push((key, payload.into_bytes()));
        }
    }
    let invalid = expected_reason.len();
    assert!(invalid * 10 >= total, "at least 10 % invalid");

    let worker = Worker::start(
        &kafka,
        &topics,
        &unique_name("it-group"),
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
    );
    produce(&kafka, &topics.ingress, &messages).await;

    let audit = audit_records(
        &read_exactly(
            &kafka,
            &topics.audit,
            total,
            Duration::from_secs(180),
            Duration::from_secs(3),
        )
        .await,
    );
    let positions: BTreeSet<(i32, i64)> = audit
        .iter()
        .map(|record| {
            let position = record.position.as_ref().unwrap();
            (position.partition, position.offset)
        })
        .collect();
    assert_eq!(
        positions.len(),
        total,
        "one outcome per ingress position, none twice"
    );
    let delivered = audit
        .iter()
        .filter(|r| r.outcome == Outcome::Delivered as i32)
        .count();
    let rejected: Vec<_> = audit
        .iter()
        .filter(|r| r.outcome == Outcome::Rejected as i32)
        .collect();
    assert_eq!(delivered, total - invalid);
    assert_eq!(rejected.len(), invalid);
    assert!(
        audit
            .iter()
            .all(|r| r.trace_id.len() == 32 && r.trace_id != "0".repeat(32)),
        "trace id on every record"
    );
    assert!(
        audit
            .iter()
            .filter(|r| r.outcome == Outcome::Delivered as i32)
            .all(|r| !r.attempts.is_empty() && r.upstream == "default")
    );

    let dlq = read_exactly(
        &kafka,
        &topics.dlq,
        invalid,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let mut reasons_seen: BTreeMap<String, usize> = BTreeMap::new();
    for record in &dlq {
        let reason = record
            .headers
            .get("relais-dlq-reason")
            .cloned()
            .unwrap_or_default();
        *reasons_seen.entry(reason).or_default() += 1;
        assert!(record.headers.contains_key("traceparent"));
        assert!(record.headers.contains_key("relais-dlq-source-offset"));
    }
    let mut reasons_expected: BTreeMap<String, usize> = BTreeMap::new();
    for reason in expected_reason.values() {
        *reasons_expected.entry((*reason).to_owned()).or_default() += 1;
    }
    assert_eq!(
        reasons_seen, reasons_expected,
        "every invalid message in the DLQ with its reason"
    );
    // The DLQ keeps the original bytes.
    assert!(dlq.iter().any(|record| record.payload == b"{not json"));

    let events = read_exactly(
        &kafka,
        &topics.events,
        total,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(events.len(), total);

    // The worker's counters tell the same story.
    assert_eq!(
        worker
            .metric("relais_worker_messages_total{outcome=\"delivered\"}")
            .await as usize,
        total - invalid
    );
    assert_eq!(
        worker
            .metric("relais_worker_messages_total{outcome=\"rejected\"}")
            .await as usize,
        invalid
    );
    assert_eq!(
        worker
            .metric("relais_worker_committed_messages_total")
            .await as usize,
        total
    );
    for (reason, count) in &reasons_expected {
        let metric = worker
            .metric(&format!(
                "relais_worker_rejections_total{{reason=\"{reason}\"}}"
            ))
            .await;
        assert_eq!(metric as usize, *count, "rejections of {reason}");
    }
    let upstream = sim.deliveries().await;
    assert_eq!(
        upstream["distinct_keys"].as_u64().unwrap() as usize,
        total - invalid
    );
    worker.stop().await;
}

/// Ingress messages Kafka deleted before the worker read them (retention while it was down)
/// have no outcome: the worker counts them, names their offsets in an operator action in the
/// audit trail, and delivers the rest from the log's new start, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_deleted_before_they_were_read_are_accounted_for() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let topics = Topics::create(&kafka, 1).await;
    let group = unique_name("it-deleted");
    let events = valid_events("deleted", 300, 10);
    let start = || {
        Worker::start(
            &kafka,
            &topics,
            &group,
            sim.api,
            UpstreamPolicy::default(),
            PipelineConfig::default(),
        )
    };

    produce(&kafka, &topics.ingress, &events[..100]).await;
    let first = start();
    read_outcomes(&kafka, &topics.audit, 100, Duration::from_secs(60)).await;
    first.stop().await;

    // While the worker is down, 200 more arrive and retention takes the log up to offset 250.
    produce(&kafka, &topics.ingress, &events[100..]).await;
    kafka.delete_records_before(&topics.ingress, 0, 250).await;

    let second = start();
    let outcomes = read_outcomes(&kafka, &topics.audit, 150, Duration::from_secs(60)).await;
    let offsets: BTreeSet<i64> = outcomes
        .iter()
        .map(|record| record.position.as_ref().unwrap().offset)
        .collect();
    assert_eq!(
        offsets,
        (0..100).chain(250..300).collect(),
        "each read message once"
    );

    let action = read_exactly_where(
        &kafka,
        &topics.audit,
        1,
        Duration::from_secs(30),
        Duration::from_secs(1),
        is_operator_action,
    )
    .await;
    let action = relais_proto::v1::OperatorAction::decode(action[0].payload.as_slice()).unwrap();
    assert_eq!(action.action, "kafka.records_deleted");
    assert_eq!(action.subject, format!("kafka/{}/0", topics.ingress));
    assert!(action.actor.starts_with("worker:"), "{}", action.actor);
    assert!(
        action.detail.starts_with("offsets 100 to 249 deleted"),
        "{}",
        action.detail
    );
    let deleted = format!(
        "relais_worker_records_deleted_unread_total{{topic=\"{}\"}}",
        topics.ingress
    );
    assert_eq!(second.metric(&deleted).await, 150.0);
    let resets = format!(
        "relais_worker_offset_resets_total{{topic=\"{}\",kind=\"deleted_unread\"}}",
        topics.ingress
    );
    assert_eq!(second.metric(&resets).await, 1.0);
    second.stop().await;
}
