//! `ordering = "key"` against `"none"`, seen from the upstream: with few keys, key order allows
//! one call per key at a time and upstream-sim sees every key in order; without order the same
//! messages go out as far as the in-flight limit allows. Real broker, real upstream-sim.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use relais_ingest_worker::config::PipelineConfig;
use relais_ingest_worker::schedule::Ordering;
use relais_proto::v1::Outcome;
use relais_resilience::UpstreamPolicy;
use relais_test_support::unique_name;
use serde_json::json;

/// Delivers 120 messages over `keys` keys with the given ordering; upstream-sim's view.
async fn deliver_with(ordering: Ordering, keys: usize) -> serde_json::Value {
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    sim.set_faults(json!({"latency": {"kind": "fixed", "ms": 20}}))
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
    for upstream in config.upstreams.values_mut() {
        upstream.ordering = ordering;
        upstream.adaptive_concurrency = false;
        upstream.max_in_flight = Some(16);
    }
    let worker = Worker::start_config(&kafka, config);
    produce(
        &kafka,
        &topics.ingress,
        &ordered_events("ord", "order.created", 120, keys),
    )
    .await;
    let audit = read_outcomes(&kafka, &topics.audit, 120, Duration::from_secs(60)).await;
    assert_exactly_once(&audit, 120);
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));
    worker.stop().await;
    sim.deliveries().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_order_holds_one_call_per_key_and_none_uses_the_whole_limit() {
    init_telemetry();
    let keyed = deliver_with(Ordering::Key, 3).await;
    assert_eq!(keyed["order_violations"], 0, "{keyed}");
    assert_eq!(keyed["ordered_events"], 120, "{keyed}");
    assert!(
        keyed["peak_in_progress"].as_u64().unwrap() <= 3,
        "one call per key at a time: {keyed}"
    );

    let unordered = deliver_with(Ordering::None, 3).await;
    assert!(
        unordered["peak_in_progress"].as_u64().unwrap() > 3,
        "without order, the keys' messages go out together: {unordered}"
    );
    assert_eq!(unordered["distinct_keys"], 120, "{unordered}");
}
