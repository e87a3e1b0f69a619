//! An upstream down for 30 s: the circuit opens, consumption pauses, nothing is dead-lettered,
//! memory stays flat; after recovery the circuit half-opens and closes and the backlog drains.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use relais_ingest_worker::config::{PipelineConfig, UpstreamConfig, WorkerConfig};
use relais_proto::v1::Outcome;
use relais_resilience::UpstreamPolicy;
use relais_resilience::policy::{CircuitPolicy, RetryPolicyConfig};
use relais_test_support::unique_name;
use serde_json::json;

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_pauses_instead_of_dead_lettering_and_the_backlog_drains_after() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    sim.set_faults(json!({"outage": true})).await;
    let topics = Topics::create(&kafka, 6).await;
    let policy = UpstreamPolicy {
        attempt_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(250),
        circuit: CircuitPolicy {
            minimum_calls: 10,
            open_duration: Duration::from_secs(2),
            half_open_calls: 3,
            ..CircuitPolicy::default()
        },
        retry: RetryPolicyConfig {
            max_attempts: 5,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            ..RetryPolicyConfig::default()
        },
        ..UpstreamPolicy::default()
    };
    let pipeline = PipelineConfig::default();
    // One upstream: its queue, and what each of the three partitions holds before it pauses
    // (256), plus what the consumer had fetched before the pause took effect (the rest of a
    // fetch response: up to about a thousand of these small messages).
    let queued = WorkerConfig::default().max_queued(&UpstreamConfig::at("http://unused"));
    let capacity = (queued + 3 * 1024) as f64;
    let worker = Worker::start(
        &kafka,
        &topics,
        &unique_name("it-group"),
        sim.api,
        policy,
        pipeline,
    );
    let total = 5000;
    produce(&kafka, &topics.ingress, &valid_events("o", total, 1000)).await;

    let metrics = relais_test_support::AdminMetrics::new(worker.admin);
    metrics
        .wait_for(
            "relais_circuit_transitions_total{upstream=\"default\",from=\"closed\",to=\"open\"}",
            Duration::from_secs(30),
            |opened| opened == 1.0,
        )
        .await;
    metrics
        .wait_for(
            "relais_worker_paused_partitions",
            Duration::from_secs(30),
            |paused| paused > 0.0,
        )
        .await;
    let depth = worker.metric("relais_worker_queue_depth").await;
    assert!(depth <= capacity, "queue bounded: {depth} of {capacity}");
    let memory_at_start = resident_bytes();

    tokio::time::sleep(Duration::from_secs(25)).await;
    let memory_growth = resident_bytes().saturating_sub(memory_at_start);
    assert!(
        memory_growth < 64 * 1024 * 1024,
        "memory grew {memory_growth} bytes during the outage"
    );
    for outcome in ["delivered", "dead_lettered", "failed"] {
        let count = worker
            .metric(&format!(
                "relais_worker_messages_total{{outcome=\"{outcome}\"}}"
            ))
            .await;
        assert_eq!(count, 0.0, "{outcome} during the outage");
    }
    assert!(
        worker.metric("relais_worker_parked_messages").await > 0.0,
        "messages wait for the circuit"
    );

    sim.set_faults(json!({"outage": false})).await;
    let audit = audit_records(
        &read_exactly(
            &kafka,
            &topics.audit,
            total,
            Duration::from_secs(120),
            Duration::from_secs(2),
        )
        .await,
    );
    assert_exactly_once(&audit, total);
    assert!(
        audit.iter().all(|r| r.outcome == Outcome::Delivered as i32),
        "nothing lost or dead-lettered"
    );
    read_exactly(
        &kafka,
        &topics.dlq,
        0,
        Duration::from_secs(1),
        Duration::from_secs(2),
    )
    .await;
    assert!(worker.metric("relais_circuit_transitions_total{upstream=\"default\",from=\"open\",to=\"half_open\"}").await >= 1.0);
    assert_eq!(worker.metric("relais_circuit_transitions_total{upstream=\"default\",from=\"half_open\",to=\"closed\"}").await, 1.0);
    assert_eq!(
        worker
            .metric("relais_circuit_state{upstream=\"default\",state=\"closed\"}")
            .await,
        1.0
    );
    assert_eq!(
        worker.metric("relais_worker_paused_partitions").await,
        0.0,
        "consumption resumed"
    );
    let upstream = sim.deliveries().await;
    assert_eq!(upstream["distinct_keys"].as_u64().unwrap() as usize, total);
    worker.stop().await;
}
