//! A message's trace goes on through the worker while spans are not exported (no OTLP
//! endpoint, the usual case in tests and for many deployments): its records carry the
//! producer's trace with a span id of the worker's own, and the upstream is called in the same
//! trace with a parent id of the call's own. A message without a trace, or with a malformed
//! `traceparent`, starts one. Real broker, a real HTTP upstream that records what it was sent.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use relais_ingest_worker::config::PipelineConfig;
use relais_proto::v1::Outcome;
use relais_resilience::UpstreamPolicy;
use relais_test_support::unique_name;

/// The `traceparent` the producer of the first message sent (sampled).
const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

/// An upstream that answers 200 and keeps each delivery's `traceparent` by message id.
async fn recording_upstream() -> (std::net::SocketAddr, Arc<Mutex<BTreeMap<String, String>>>) {
    let seen: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let kept = Arc::clone(&seen);
    let app = axum::Router::new().fallback(axum::routing::post(
        move |headers: HeaderMap, body: String| {
            let kept = Arc::clone(&kept);
            async move {
                let event: serde_json::Value = serde_json::from_str(&body).unwrap();
                let traceparent = headers
                    .get("traceparent")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                kept.lock()
                    .unwrap()
                    .insert(event["id"].as_str().unwrap().to_owned(), traceparent);
                axum::http::StatusCode::OK
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, seen)
}

fn event(id: &str) -> Vec<u8> {
    let now = chrono::Utc::now().to_rfc3339();
    format!(r#"{{"id":"{id}","type":"order.created","occurred_at":"{now}","source":"shop"}}"#)
        .into_bytes()
}

/// `traceparent`'s parts: (trace id, parent id, flags).
fn parts(traceparent: &str) -> (&str, &str, &str) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00", "{traceparent}");
    (parts[1], parts[2], parts[3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messages_trace_continues_to_its_records_and_its_upstream_call_without_export() {
    init_telemetry();
    assert!(!relais_telemetry::spans_exported());
    let kafka = relais_test_support::kafka().await;
    let (upstream, seen) = recording_upstream().await;
    let topics = Topics::create(&kafka, 1).await;

    let producer: FutureProducer = kafka.client_config().create().unwrap();
    let traced = OwnedHeaders::new().insert(Header {
        key: "traceparent",
        value: Some(format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01").as_bytes()),
    });
    let malformed = OwnedHeaders::new().insert(Header {
        key: "traceparent",
        value: Some(&b"00-zzzz-not-a-trace-01"[..]),
    });
    for (id, headers) in [
        ("traced", Some(traced)),
        ("untraced", None),
        ("malformed", Some(malformed)),
    ] {
        let payload = event(id);
        let mut record = FutureRecord::to(&topics.ingress).key(id).payload(&payload);
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }

    let worker = Worker::start(
        &kafka,
        &topics,
        &unique_name("traces"),
        upstream,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
    );
    let outcomes = read_outcomes(&kafka, &topics.audit, 3, Duration::from_secs(60)).await;
    let events = read_exactly(
        &kafka,
        &topics.events,
        3,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    worker.stop().await;

    let sent = seen.lock().unwrap().clone();
    for record in &outcomes {
        assert_eq!(record.outcome, Outcome::Delivered as i32);
        let (trace_id, parent_id, flags) = parts(&sent[&record.message_id]);
        assert_eq!(
            trace_id, record.trace_id,
            "the upstream call is in the record's trace"
        );
        assert_ne!(
            parent_id, record.span_id,
            "the call has a parent id of its own"
        );
        assert_eq!(flags, "01");
        if record.message_id == "traced" {
            assert_eq!(
                record.trace_id, PRODUCER_TRACE,
                "the producer's trace goes on"
            );
            assert_ne!(record.span_id, PRODUCER_SPAN);
            assert_ne!(parent_id, PRODUCER_SPAN);
        } else {
            assert_ne!(
                record.trace_id, PRODUCER_TRACE,
                "a message without one starts a trace"
            );
        }
        assert_eq!(record.span_id.len(), 16);
        assert_ne!(record.span_id, "0".repeat(16));
    }
    // Both records of a message carry its `traceparent` (same trace, the worker's span).
    let by_trace: BTreeMap<&str, &str> = outcomes
        .iter()
        .map(|record| (record.trace_id.as_str(), record.span_id.as_str()))
        .collect();
    for read in &events {
        let (trace_id, span_id, _) = parts(&read.headers["traceparent"]);
        assert_eq!(by_trace.get(trace_id), Some(&span_id), "{:?}", read.headers);
    }
}
