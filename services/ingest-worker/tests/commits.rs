//! Transaction errors answered as librdkafka classifies them, and bounded work while commits
//! fail. Real broker; outcome records counted message by message afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use relais_ingest_worker::config::PipelineConfig;
use relais_resilience::UpstreamPolicy;
use relais_test_support::unique_name;

/// Every transactional call gets 1 ms: commits time out while they complete in the background.
/// Answering such a timeout with an abort (as before) wrote batches twice or lost them; asking
/// again gives each message exactly one outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_that_time_out_are_asked_again_not_aborted() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let topics = Topics::create(&kafka, 3).await;
    let mut config = worker_config(
        &topics,
        &unique_name("it-group"),
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
        None,
    );
    config.kafka.transaction_call_timeout = Duration::from_millis(1);
    let worker = Worker::start_config(&kafka, config);
    let total = 2_000;
    produce(&kafka, &topics.ingress, &valid_events("t", total, 100)).await;
    let audit = audit_records(
        &read_exactly(
            &kafka,
            &topics.audit,
            total,
            Duration::from_secs(120),
            Duration::from_secs(3),
        )
        .await,
    );
    assert_exactly_once(&audit, total);
    let retries = worker
        .metric("relais_worker_transaction_call_retries_total")
        .await;
    assert!(retries > 0.0, "no call timed out: the test proves nothing");
    worker.stop().await;
}

/// While no transaction can commit (here: the audit topic does not exist yet), the worker
/// reads no further than its uncommitted limits, pauses its partitions, and says it is not
/// ready; once commits succeed it catches up, every message with one outcome, and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_commits_pause_consumption_at_the_limit_and_readiness_follows() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let mut topics = Topics::create(&kafka, 3).await;
    topics.audit = unique_name("it-audit-later");
    let pipeline = PipelineConfig {
        max_uncommitted_per_partition: 100,
        max_uncommitted: 250,
        drain_timeout: Duration::from_secs(5),
        ..PipelineConfig::default()
    };
    let mut config = worker_config(
        &topics,
        &unique_name("it-group"),
        sim.api,
        UpstreamPolicy::default(),
        pipeline,
        None,
    );
    // Records for the missing topic time out with the transaction: a failed round every 10 s.
    config.kafka.transaction_timeout = Duration::from_secs(10);
    let worker = Worker::start_config(&kafka, config);
    let total = 3_000;
    produce(&kafka, &topics.ingress, &valid_events("c", total, 300)).await;

    let deadline = Instant::now() + Duration::from_secs(90);
    while worker.readyz().await != 503 {
        assert!(
            Instant::now() < deadline,
            "still ready although nothing commits"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The limits stop the dispatching; what the consumer had fetched before each pause
    // (bounded by its prefetch, kafka.prefetch_kbytes) is held, not delivered.
    let uncommitted = worker.metric("relais_worker_uncommitted_messages").await;
    assert!(
        (250.0..1_000.0).contains(&uncommitted),
        "{uncommitted} of {total} messages read while nothing commits"
    );
    assert_eq!(worker.metric("relais_worker_paused_partitions").await, 3.0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        worker.metric("relais_worker_uncommitted_messages").await,
        uncommitted,
        "the uncommitted work stays flat while commits fail"
    );

    kafka.create_named_topic(&topics.audit, 3, &[]).await;
    let audit = audit_records(
        &read_exactly(
            &kafka,
            &topics.audit,
            total,
            Duration::from_secs(120),
            Duration::from_secs(3),
        )
        .await,
    );
    assert_exactly_once(&audit, total);
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.readyz().await != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after commits resumed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(worker.metric("relais_worker_paused_partitions").await, 0.0);
    worker.stop().await;
}
