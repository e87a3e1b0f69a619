//! An upstream's pace: its rate limit holds for every call, and a `Retry-After` on a 429 pauses
//! the whole upstream, not just the message that was told. Messages wait; none is dead-lettered
//! for it. Real broker, real upstream-sim.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use relais_ingest_worker::config::PipelineConfig;
use relais_proto::v1::Outcome;
use relais_resilience::{RateLimitPolicy, UpstreamPolicy};
use relais_test_support::unique_name;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_limit_holds_and_nothing_is_dead_lettered_for_it() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let topics = Topics::create(&kafka, 3).await;
    let policy = UpstreamPolicy {
        rate_limit: Some(RateLimitPolicy {
            per_second: 50.0,
            burst: 5,
        }),
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
    let total = 150;
    let started = Instant::now();
    produce(&kafka, &topics.ingress, &valid_events("r", total, 30)).await;
    let audit = read_outcomes(&kafka, &topics.audit, total, Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert_exactly_once(&audit, total);
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));
    // 5 at once, then 50 a second: the last cannot be accepted before (150 - 5) / 50 s.
    assert!(
        took >= Duration::from_millis(2900),
        "{total} deliveries in {took:?}: faster than 50/s"
    );
    assert_eq!(sim.deliveries().await["requests"], total, "no extra calls");
    assert!(
        worker
            .metric("relais_throttled_calls_total{upstream=\"default\",reason=\"rate_limit\"}")
            .await
            > 0.0
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_pauses_the_whole_upstream() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let topics = Topics::create(&kafka, 3).await;
    sim.set_faults(json!({"rate_limit": {"ratio": 1.0, "retry_after_secs": 3}}))
        .await;
    let worker = Worker::start(
        &kafka,
        &topics,
        &unique_name("it-group"),
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
    );
    let total = 200;
    produce(&kafka, &topics.ingress, &valid_events("p", total, 100)).await;

    // The first 429s arrive; from then on, for the pause, new calls wait instead of going out:
    // the upstream sees at most what was already on its way (the in-flight limit).
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker
        .metric("relais_throttled_calls_total{upstream=\"default\",reason=\"retry_after\"}")
        .await
        == 0.0
    {
        assert!(Instant::now() < deadline, "no call was paused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_pause = sim.deliveries().await["requests"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let during_pause = sim.deliveries().await["requests"].as_u64().unwrap() - at_pause;
    let in_flight_limit = UpstreamPolicy::default().bulkhead.max_concurrent as u64;
    assert!(
        during_pause <= in_flight_limit,
        "{during_pause} requests during a 3 s pause"
    );

    sim.set_faults(json!({})).await;
    let audit = read_outcomes(&kafka, &topics.audit, total, Duration::from_secs(60)).await;
    assert_exactly_once(&audit, total);
    assert!(
        audit.iter().all(|r| r.outcome == Outcome::Delivered as i32),
        "waiting for the pause dead-letters nothing"
    );
    worker.stop().await;
}
