//! One sick upstream does not hold back another: with upstream `a` healthy and `b` refusing
//! connections, every message for `a` is delivered while `b`'s wait in `b`'s own queue, in
//! order per key; when `b` comes back every message has exactly one outcome, and neither
//! upstream saw a key's events out of order (upstream-sim's own check). Real broker, real
//! upstream-sim.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use relais_ingest_worker::config::{PipelineConfig, RouteRule, UpstreamConfig};
use relais_proto::v1::Outcome;
use relais_resilience::UpstreamPolicy;
use relais_resilience::policy::{CircuitPolicy, RetryPolicyConfig};
use relais_test_support::unique_name;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_upstream_is_delivered_while_another_refuses_connections() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let healthy = Sim::start().await;
    // Nothing listens here until the test starts b's simulator: connections are refused.
    let sick_address = free_port();
    let topics = Topics::create(&kafka, 3).await;
    let policy = UpstreamPolicy {
        attempt_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(250),
        circuit: CircuitPolicy {
            minimum_calls: 5,
            open_duration: Duration::from_secs(1),
            half_open_calls: 2,
            ..CircuitPolicy::default()
        },
        retry: RetryPolicyConfig {
            max_attempts: 3,
            base_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..RetryPolicyConfig::default()
        },
        ..UpstreamPolicy::default()
    };
    let mut config = worker_config(
        &topics,
        &unique_name("it-group"),
        healthy.api,
        policy.clone(),
        PipelineConfig::default(),
        None,
    );
    let mut upstreams = BTreeMap::new();
    upstreams.insert(
        "a".to_owned(),
        UpstreamConfig {
            policy: policy.clone(),
            allowed_networks: vec!["loopback".into()],
            ..UpstreamConfig::at(format!("http://{}", healthy.api))
        }
        .with_retry_tiers(&[]),
    );
    upstreams.insert(
        "b".to_owned(),
        UpstreamConfig {
            policy,
            allowed_networks: vec!["loopback".into()],
            ..UpstreamConfig::at(format!("http://{sick_address}"))
        }
        .with_retry_tiers(&[]),
    );
    config.upstreams = upstreams;
    config.routing.default_upstream = "a".into();
    config.routing.rules = vec![RouteRule {
        type_prefix: "b.".into(),
        upstream: "b".into(),
    }];
    let worker = Worker::start_config(&kafka, config);

    // Interleaved: two for a, one for b, over 50 keys each, across three partitions.
    let for_a = ordered_events("a", "order.created", 400, 50);
    let for_b = ordered_events("b", "b.created", 200, 50);
    let messages = interleave(for_a, for_b);
    produce(&kafka, &topics.ingress, &messages).await;

    // a's 400 reach a while b refuses every connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let accepted = healthy.deliveries().await["accepted"].as_u64().unwrap();
        if accepted >= 400 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {accepted} of a's 400 delivered while b was down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let waiting_b = worker
        .metric("relais_worker_upstream_in_flight_deliveries{upstream=\"b\"}")
        .await
        + worker
            .metric("relais_worker_upstream_queued_messages{upstream=\"b\"}")
            .await;
    assert!(waiting_b > 0.0, "b's messages wait in b's queue");
    assert_eq!(
        worker
            .metric("relais_worker_upstream_in_flight_deliveries{upstream=\"a\"}")
            .await,
        0.0,
        "nothing of a is held up"
    );
    assert!(
        worker
            .metric("relais_worker_upstream_in_flight_deliveries{upstream=\"b\"}")
            .await
            <= 64.0
    );

    // b comes back: every message has exactly one outcome, all delivered, in order per key.
    let sick = Sim::start_at(sick_address).await;
    let audit = read_outcomes(&kafka, &topics.audit, 600, Duration::from_secs(90)).await;
    assert_exactly_once(&audit, 600);
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));
    for (name, sim, count) in [("a", &healthy, 400), ("b", &sick, 200)] {
        let seen = sim.deliveries().await;
        assert_eq!(seen["distinct_keys"], count, "{name}: {seen}");
        assert_eq!(seen["ordered_events"], count, "{name}: {seen}");
        assert_eq!(seen["order_violations"], 0, "{name}: {seen}");
    }
    worker.stop().await;
}
