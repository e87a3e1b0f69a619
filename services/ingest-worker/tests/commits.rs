//! Transaction errors answered as librdkafka classifies them, bounded work while commits fail,
//! and commit metadata the broker refuses. Real broker; outcome records counted message by
//! message afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use relais_ingest_worker::config::{PipelineConfig, RouteRule, UpstreamConfig};
use relais_ingest_worker::tracker::ahead;
use relais_resilience::UpstreamPolicy;
use relais_test_support::{KafkaTestEnv, unique_name};

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

/// The group's committed offset of partition 0 of `topic` and the offsets its metadata names
/// ahead of it, with the metadata's length.
fn committed_with_names(
    kafka: &KafkaTestEnv,
    group: &str,
    topic: &str,
) -> (i64, std::collections::BTreeSet<i64>, usize) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut asked = rdkafka::TopicPartitionList::new();
    asked.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(asked, Duration::from_secs(20))
        .unwrap();
    let element = committed.find_partition(topic, 0).unwrap();
    let offset = element.offset().to_raw().unwrap();
    let metadata = element.metadata();
    (offset, ahead::decode(offset, metadata), metadata.len())
}

/// Every other message waits for an upstream that refuses connections while the ones between
/// them finish, so the offsets committed ahead scatter over tens of thousands of offsets. The
/// worker may write 16 KiB of commit metadata; the broker takes 4 KiB (its default
/// `offset.metadata.max.bytes`) and fails each transaction that carries more. The worker halves
/// its limit until the broker takes it, and goes on committing; once the upstream is back
/// every message has one outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_metadata_the_broker_refuses_is_halved_until_it_is_taken() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let down = free_port();
    let topics = Topics::create(&kafka, 1).await;
    let group = unique_name("it-group");
    let total = 40_000;
    let pipeline = PipelineConfig {
        max_queued_per_upstream: Some(total),
        max_uncommitted_per_partition: total,
        max_uncommitted: total,
        ..PipelineConfig::default()
    };
    let mut config = worker_config(
        &topics,
        &group,
        sim.api,
        UpstreamPolicy::default(),
        pipeline,
        None,
    );
    config.upstreams.insert(
        "down".to_owned(),
        UpstreamConfig {
            policy: quick_policy(),
            allowed_networks: vec!["loopback".into()],
            ..UpstreamConfig::at(format!("http://{down}"))
        }
        .with_retry_tiers(&[]),
    );
    config.routing.rules = vec![RouteRule {
        type_prefix: "waits.".into(),
        upstream: "down".into(),
    }];
    config.kafka.offset_metadata_max_bytes = 16_384;
    let worker = Worker::start_config(&kafka, config);
    let now = chrono::Utc::now().to_rfc3339();
    let messages: Vec<(String, Vec<u8>)> = (0..total)
        .map(|index| {
            let event_type = if index % 2 == 0 { "waits.created" } else { "order.created" };
            let payload = format!(
                r#"{{"id":"m-{index}","type":"{event_type}","occurred_at":"{now}","source":"test","data":{{}}}}"#
            );
            (format!("key-{index}"), payload.into_bytes())
        })
        .collect();
    produce(&kafka, &topics.ingress, &messages).await;

    let limit = "relais_worker_offset_metadata_limit_bytes";
    assert_eq!(worker.metric(limit).await, 16_384.0);
    let deadline = Instant::now() + Duration::from_secs(180);
    while worker.metric(limit).await > 4_096.0 {
        assert!(
            Instant::now() < deadline,
            "the broker never refused the metadata: the test proves nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        worker.metric(limit).await,
        4_096.0,
        "halved twice, then taken"
    );
    // Commits go on under the smaller limit: the names reach as far as 4 KiB can.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (offset, named, length) = loop {
        let (offset, named, length) = committed_with_names(&kafka, &group, &topics.ingress);
        if named.len() > 10_000 {
            break (offset, named, length);
        }
        assert!(
            Instant::now() < deadline,
            "{} offsets named ahead of {offset}",
            named.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(offset, 0, "the first message waits for its upstream");
    assert!(length <= 4_096, "{length} bytes of metadata");
    assert!(
        named.iter().all(|offset| offset % 2 == 1),
        "only the finished ones"
    );

    let _back = Sim::start_at(down).await;
    let audit = read_outcomes(&kafka, &topics.audit, total, Duration::from_secs(300)).await;
    assert_exactly_once(&audit, total);
    assert_eq!(sim.deliveries().await["duplicate_deliveries"], 0);
    worker.stop().await;
}
