//! Adaptive concurrency: against an upstream that takes at most N requests at once and answers
//! 429 beyond, the worker's in-flight limit settles near N with few calls refused, and every
//! message is delivered once. Real broker, real upstream-sim.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use relais_ingest_worker::config::PipelineConfig;
use relais_proto::v1::Outcome;
use relais_resilience::UpstreamPolicy;
use relais_test_support::unique_name;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_in_flight_limit_settles_near_what_the_upstream_takes() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let takes = 20;
    sim.set_faults(json!({
        "latency": {"kind": "fixed", "ms": 20},
        "concurrency_limit": {"max": takes, "retry_after_secs": 1},
    }))
    .await;
    let topics = Topics::create(&kafka, 3).await;
    let worker = Worker::start(
        &kafka,
        &topics,
        &unique_name("it-group"),
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
    );
    // Long enough that the start (slow start overshoots once, then halves) is a small share.
    let total = 4000;
    produce(&kafka, &topics.ingress, &valid_events("c", total, 1000)).await;
    // The limit saws around what the upstream takes (up by one a window until refusals, then
    // down to 90 %): one reading can fall anywhere on the saw, so it is sampled through the
    // run, with the upstream's counts, and the second half is judged: the slow start's one
    // overshoot is refused by design, the settled limit must cost few refusals.
    let delivered = std::sync::atomic::AtomicBool::new(false);
    let outcomes = async {
        let audit = read_outcomes(&kafka, &topics.audit, total, Duration::from_secs(120)).await;
        delivered.store(true, std::sync::atomic::Ordering::Relaxed);
        audit
    };
    let sampling = async {
        let mut samples = Vec::new();
        while !delivered.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let limit = worker
                .metric("relais_worker_upstream_concurrency_limit{upstream=\"default\"}")
                .await;
            let seen = sim.deliveries().await;
            let requests = seen["requests"].as_u64().unwrap();
            let refused = requests - seen["accepted"].as_u64().unwrap();
            samples.push((limit, requests, refused));
        }
        samples
    };
    let (audit, samples) = tokio::join!(outcomes, sampling);
    assert_exactly_once(&audit, total);
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));

    let second_half = &samples[samples.len() / 2..];
    let mut settled: Vec<f64> = second_half.iter().map(|(limit, ..)| *limit).collect();
    settled.sort_by(f64::total_cmp);
    let limit = settled[settled.len() / 2];
    assert!(
        (f64::from(takes) / 2.0..=f64::from(takes) * 1.2).contains(&limit),
        "median limit {limit} for an upstream that takes {takes} (samples {samples:?})"
    );
    let (_, requests_before, refused_before) = second_half[0];
    let seen = sim.deliveries().await;
    let requests = seen["requests"].as_u64().unwrap() - requests_before;
    let refused = requests + requests_before - seen["accepted"].as_u64().unwrap() - refused_before;
    // Each tooth of the saw is refused for a window or so: a few per cent by design, with room
    // for a busy host stretching the windows.
    assert!(
        refused * 100 <= requests * 8,
        "{refused} of {requests} calls refused in the second half (samples {samples:?})"
    );
    eprintln!("adaptive limit {limit}; {refused} of {requests} calls refused in the second half");
    worker.stop().await;
}
