//! A transactional producer that librdkafka leaves in a fatal state is replaced, and the
//! transaction it left is settled: every message keeps exactly one outcome. Only a producer
//! fenced again and again (another process with the worker's identity) stops the worker.
//!
//! Real broker. The fatal state is made the way the broker makes it: a producer of the test's
//! own initialises transactions with the worker's transactional id, which fences the worker's
//! producer and aborts the transaction it has open. (A broker away for longer than the
//! delivery timeout ends in the same state; `make e2e` restarts the broker under load.)
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use rdkafka::producer::{BaseProducer, Producer as _};
use relais_ingest_worker::config::PipelineConfig;
use relais_resilience::UpstreamPolicy;
use relais_test_support::{KafkaTestEnv, unique_name};
use serde_json::json;

const REPLACEMENTS: &str = "relais_worker_transactional_producer_replacements_total";
const COMMITTED: &str = "relais_worker_committed_messages_total";

/// Fences `worker`'s producer: another producer initialises transactions with its id.
async fn fence(kafka: &KafkaTestEnv, worker: &Worker) {
    let fencer: BaseProducer = kafka
        .client_config()
        .set(
            "transactional.id",
            format!("relais-ingest-{}", worker.worker_id),
        )
        .create()
        .unwrap();
    tokio::task::spawn_blocking(move || fencer.init_transactions(Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
}

/// The worker's replacements so far; None once its admin endpoint is gone (it stopped).
async fn replacements_now(worker: &Worker) -> Option<f64> {
    relais_test_support::AdminMetrics::new(worker.admin)
        .try_scrape()
        .await
        .ok()
        .and_then(|exposition| exposition.get(REPLACEMENTS))
}

/// A worker that delivers a few hundred messages a second, so that its transactions go on
/// while the test fences it.
async fn slow_worker(kafka: &KafkaTestEnv, sim: &Sim, topics: &Topics, group: &str) -> Worker {
    sim.set_faults(json!({"latency": {"kind": "fixed", "ms": 10}}))
        .await;
    let mut config = worker_config(
        topics,
        group,
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
        None,
    );
    fixed_in_flight(&mut config, 4);
    Worker::start_config(kafka, config)
}

/// Fenced while idle, so that the fence is over before the worker notices it: its next
/// transaction fails, one new producer takes the old one's place, and nothing is lost or
/// written twice. (Fenced while a transaction is open, the fencer's initialisation is retried
/// until that transaction's abort completes, and may fence the replacement too: see the next
/// test, and `make e2e`'s broker outage for the open transaction a broker takes down.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_producer_is_replaced_and_every_message_keeps_one_outcome() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let topics = Topics::create(&kafka, 3).await;
    let worker = slow_worker(&kafka, &sim, &topics, &unique_name("it-group")).await;
    let half = 1_000;
    produce(&kafka, &topics.ingress, &valid_events("f", half, 100)).await;
    worker.wait_for_metric(COMMITTED, half as f64).await;

    fence(&kafka, &worker).await;
    produce(&kafka, &topics.ingress, &valid_events("h", half, 100)).await;
    worker.wait_for_metric(REPLACEMENTS, 1.0).await;

    all_delivered_once(&kafka, &topics, 2 * half).await;
    assert!(
        !worker.task.is_finished(),
        "the worker stopped instead of replacing its producer"
    );
    assert_eq!(worker.readyz().await, 200);
    assert_eq!(
        worker.metric(REPLACEMENTS).await,
        1.0,
        "one fence, one replacement"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_producer_fenced_again_and_again_stops_the_worker_and_loses_nothing() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let topics = Topics::create(&kafka, 3).await;
    let group = unique_name("it-group");
    let worker = slow_worker(&kafka, &sim, &topics, &group).await;
    // Enough to keep transactions going through four fences on a busy machine.
    let total = 6_000;
    produce(&kafka, &topics.ingress, &valid_events("g", total, 100)).await;
    worker.wait_for_metric(COMMITTED, 100.0).await;

    // Three replacements within five minutes are a flapping broker; a fourth fatal error
    // means another process owns this identity (one fence can make several, see above).
    let mut fences = 0;
    while let Some(replaced) = replacements_now(&worker).await {
        assert!(
            fences < 4,
            "the worker kept going under a producer fenced {fences} times"
        );
        fence(&kafka, &worker).await;
        fences += 1;
        // Until the worker replaced its producer once more, or stopped.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while replacements_now(&worker)
            .await
            .is_some_and(|now| now <= replaced)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a fence went unnoticed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(60), worker.task)
        .await
        .expect("the worker closed its admin endpoint but did not stop")
        .unwrap();
    let error = format!(
        "{:#}",
        ended.expect_err("the worker ended without an error")
    );
    assert!(error.contains("fatal"), "{error}");

    // What it committed stays committed once; a successor decides the rest, once each.
    let successor = Worker::start_config(
        &kafka,
        worker_config(
            &topics,
            &group,
            sim.api,
            UpstreamPolicy::default(),
            PipelineConfig::default(),
            None,
        ),
    );
    all_delivered_once(&kafka, &topics, total).await;
    successor.stop().await;
}
