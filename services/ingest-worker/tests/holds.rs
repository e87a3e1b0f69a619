//! Auth answers stop the upstream, not the stream: an upstream answering 401 or 403 to everyone
//! is held, its messages wait (no FAILED outcome, nothing in the DLQ), and once it answers again
//! every message is delivered, once. Real broker, real upstream-sim. (A 410 disables the
//! upstream until an operator re-enables it: see the gateway's `upstream_control` test.)
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use prost::Message as _;
use relais_ingest_worker::config::PipelineConfig;
use relais_proto::v1::{OperatorAction, Outcome};
use relais_resilience::UpstreamPolicy;
use relais_test_support::unique_name;
use serde_json::json;

async fn held_then_delivered(status: u16, reason: &str) {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    sim.set_faults(json!({"errors": {status.to_string(): 1.0}}))
        .await;
    let topics = Topics::create(&kafka, 3).await;
    let mut config = worker_config(
        &topics,
        &unique_name("it-group"),
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
        None,
    );
    for upstream in config.upstreams.values_mut() {
        upstream.pause_on_unauthorized = Duration::from_secs(2);
    }
    let worker = Worker::start_config(&kafka, config);
    let total = 30;
    produce(&kafka, &topics.ingress, &valid_events("h", total, 10)).await;

    let held = format!("relais_worker_upstream_held{{upstream=\"default\",reason=\"{reason}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.metric(&held).await != 1.0 {
        assert!(Instant::now() < deadline, "{held} never became 1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several pauses and trials long: still nothing decided, nothing dead-lettered.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(worker.metric(&held).await, 1.0);
    assert_eq!(
        worker
            .metric("relais_worker_committed_messages_total")
            .await,
        0.0
    );
    assert_eq!(
        worker
            .metric("relais_worker_messages_total{outcome=\"failed\"}")
            .await,
        0.0
    );
    assert!(worker.metric("relais_worker_parked_messages").await > 0.0);

    sim.set_faults(json!({})).await;
    let audit = read_outcomes(&kafka, &topics.audit, total, Duration::from_secs(30)).await;
    assert_exactly_once(&audit, total);
    assert!(
        audit.iter().all(|r| r.outcome == Outcome::Delivered as i32),
        "every held message delivered once the upstream answers"
    );
    assert_eq!(worker.metric(&held).await, 0.0);
    assert_eq!(worker.metric("relais_worker_parked_messages").await, 0.0);

    // The hold and its end are operational events in the audit trail, by this worker.
    let actions: Vec<OperatorAction> = read_exactly_where(
        &kafka,
        &topics.audit,
        2,
        Duration::from_secs(10),
        Duration::from_secs(1),
        is_operator_action,
    )
    .await
    .iter()
    .map(|read| OperatorAction::decode(read.payload.as_slice()).unwrap())
    .collect();
    let names: Vec<&str> = actions.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(names, ["upstream.held", "upstream.released"]);
    assert!(
        actions
            .iter()
            .all(|a| a.subject == "upstream/default" && a.actor.starts_with("worker:"))
    );
    assert!(
        actions[0]
            .detail
            .starts_with(&format!("{status} from http://")),
        "{}",
        actions[0].detail
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_answering_401_is_held_and_its_messages_wait() {
    held_then_delivered(401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_answering_403_is_held_and_its_messages_wait() {
    held_then_delivered(403, "unauthorized").await;
}
