//! DLQ replay: dead-lettered messages go back to the ingress topic with their original bytes
//! and are delivered once the upstream is healthy; a reason filter selects what is replayed.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use relais_ingest_worker::config::{KafkaConfig, PipelineConfig, WorkerConfig};
use relais_ingest_worker::records::headers;
use relais_operator::replay::{ReplayRequest, ReplaySummary, Selection, replay};
use relais_proto::v1::Outcome;
use relais_resilience::UpstreamPolicy;
use relais_resilience::policy::RetryPolicyConfig;
use relais_test_support::KafkaTestEnv;
use relais_test_support::unique_name;
use serde_json::json;

async fn run_replay(
    kafka: &KafkaTestEnv,
    config: &WorkerConfig,
    request: &ReplayRequest,
) -> anyhow::Result<ReplaySummary> {
    let client = config.kafka_client(kafka.bootstrap())?;
    replay(&config.replay_target(client), request, &|_| {}).await
}

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
    let first = read_outcomes(&kafka, &topics.audit, 9, Duration::from_secs(60)).await;
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
            replay_ledger_topic: kafka.create_topic("it-replays", 1).await,
            ..KafkaConfig::default()
        },
        ..WorkerConfig::default()
    };
    let retries_exhausted = ReplayRequest {
        selection: Selection {
            reasons: vec!["retries_exhausted".into()],
            ..Selection::default()
        },
        requested_by: "it".into(),
        ..ReplayRequest::default()
    };
    let dry = run_replay(
        &kafka,
        &config,
        &ReplayRequest {
            dry_run: true,
            ..retries_exhausted.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!((dry.scanned, dry.replayed, dry.skipped), (9, 8, 1));
    let summary = run_replay(&kafka, &config, &retries_exhausted)
        .await
        .unwrap();
    assert_eq!(summary.replayed, 8, "the malformed one stays in the DLQ");
    assert_eq!(summary.by_reason["retries_exhausted"], 8);

    let all = read_outcomes(&kafka, &topics.audit, 17, Duration::from_secs(60)).await;
    let delivered: Vec<_> = all
        .iter()
        .filter(|r| r.outcome == Outcome::Delivered as i32)
        .collect();
    assert_eq!(delivered.len(), 8, "every replayed message delivered");
    let mut ids: Vec<&str> = delivered.iter().map(|r| r.message_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..8).map(|i| format!("d-{i}")).collect::<Vec<_>>());

    // The ledger remembers: the same replay again finds nothing left to replay.
    let again = run_replay(&kafka, &config, &retries_exhausted)
        .await
        .unwrap();
    assert_eq!(
        (again.replayed, again.already_replayed),
        (0, 8),
        "{again:?}"
    );
    worker.stop().await;
}

/// A replay with one reason never hides the dead letters of another from a later replay, and
/// dead letters written after a replay began are there for the next one. Each replayed record
/// names the DLQ record it came from, and the message's trail holds both outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dead_letter_stays_reachable_whatever_earlier_replays_selected() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    sim.set_faults(json!({"errors": {"410": 1.0}})).await;
    let topics = Topics::create(&kafka, 2).await;
    let mut config = worker_config(
        &topics,
        &unique_name("it-group"),
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
        None,
    );
    // 410 as a final FAILED answer, as before upstreams were disabled for it.
    for upstream in config.upstreams.values_mut() {
        upstream.disable_on_gone = false;
    }
    let worker = Worker::start_config(&kafka, config);
    let now = chrono::Utc::now().to_rfc3339();
    let mut messages = valid_events("gone", 10, 5);
    for index in 0..5 {
        messages.push((
            format!("entity-{index}"),
            format!(
                r#"{{"id":"typed-{index}","type":"order.created","occurred_at":"{now}","source":"s","data":[1]}}"#
            )
            .into_bytes(),
        ));
    }
    produce(&kafka, &topics.ingress, &messages).await;
    read_exactly(
        &kafka,
        &topics.dlq,
        15,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    sim.set_faults(json!({})).await;

    let config = WorkerConfig {
        kafka: KafkaConfig {
            ingress_topic: topics.ingress.clone(),
            dlq_topic: topics.dlq.clone(),
            replay_ledger_topic: kafka.create_topic("it-replays", 1).await,
            ..KafkaConfig::default()
        },
        ..WorkerConfig::default()
    };
    let request = |reason: &str| ReplayRequest {
        selection: Selection {
            reasons: vec![reason.to_owned()],
            ..Selection::default()
        },
        requested_by: "it".into(),
        ..ReplayRequest::default()
    };
    let gone = run_replay(&kafka, &config, &request("http_410"))
        .await
        .unwrap();
    assert_eq!((gone.replayed, gone.skipped), (10, 5), "{gone:?}");
    let typed = run_replay(&kafka, &config, &request("wrong_type"))
        .await
        .unwrap();
    assert_eq!(
        (typed.replayed, typed.skipped),
        (5, 10),
        "the wrong_type letters skipped by the first replay are still there: {typed:?}"
    );

    // The replayed wrong_type events are rejected again: five new dead letters, written after
    // both replays began. The next replay finds exactly those.
    read_exactly(
        &kafka,
        &topics.dlq,
        20,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    let all = run_replay(&kafka, &config, &ReplayRequest::default())
        .await
        .unwrap();
    assert_eq!((all.replayed, all.already_replayed), (5, 15), "{all:?}");

    let replayed = read_exactly(
        &kafka,
        &topics.ingress,
        15 + 20,
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .await;
    let origins: Vec<&String> = replayed
        .iter()
        .filter_map(|record| record.headers.get(headers::REPLAY_OF))
        .collect();
    assert_eq!(origins.len(), 20);
    assert!(
        origins
            .iter()
            .all(|origin| origin.starts_with(&format!("{}/0/", topics.dlq))),
        "{origins:?}"
    );

    // 15 first outcomes, 15 from the first two replays, 5 from the last.
    let audit = read_outcomes(&kafka, &topics.audit, 35, Duration::from_secs(60)).await;
    for index in 0..10 {
        let id = format!("gone-{index}");
        let mut trail: Vec<i32> = audit
            .iter()
            .filter(|record| record.message_id == id)
            .map(|record| record.outcome)
            .collect();
        trail.sort_unstable();
        assert_eq!(
            trail,
            [Outcome::Delivered as i32, Outcome::Failed as i32],
            "{id}: the FAILED outcome and the replayed one"
        );
    }
    worker.stop().await;
}
