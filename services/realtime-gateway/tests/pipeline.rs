//! The gateway in the running pipeline: ingest-worker and audit-service on the real broker and
//! the real RGW. Stats agree with what went in, a trace joins the realtime events with the
//! stored audit trail, the worker is listed from its status stream, and an upstream outage
//! shows as an open circuit.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::stack::Stack;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_shows_the_pipeline_as_it_runs() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let stack = Stack::start(&kafka, &rgw).await;
    let gateway = &stack.gateway;
    stack
        .produce_ingress(&kafka, &Stack::ingress_events("e2e", 300, 20))
        .await;

    let stats = eventually(
        Duration::from_secs(60),
        "320 outcomes in /stats",
        || async {
            let stats = gateway.get_json("/api/v1/stats").await;
            (stats["windows"][0]["overall"]["events"] == 320).then_some(stats)
        },
    )
    .await;
    let overall = &stats["windows"][0]["overall"];
    assert_eq!(overall["delivered"], 300);
    assert_eq!(overall["rejected"], 20);
    assert_eq!(overall["failed"], 0);
    assert_eq!(overall["latency_ms"]["samples"], 300);
    assert!(overall["latency_ms"]["p99"].as_f64().unwrap() > 0.0);

    // The worker is listed from its status stream.
    let workers = eventually(Duration::from_secs(20), "the worker listed", || async {
        let workers = gateway.get_json("/api/v1/workers").await;
        (workers["workers"].as_array().unwrap().len() == 1).then_some(workers)
    })
    .await;
    assert_eq!(workers["workers"][0]["connected"], true);
    assert!(
        workers["workers"][0]["worker_id"]
            .as_str()
            .unwrap()
            .starts_with("worker")
    );

    // A trace joins the realtime event with the audit record stored in RGW.
    let page = gateway
        .get_json("/api/v1/events?outcome=delivered&limit=1")
        .await;
    let event = &page["events"][0];
    let trace_id = event["trace_id"].as_str().unwrap();
    let trace = eventually(
        Duration::from_secs(60),
        "the audit half of the trace",
        || async {
            let trace = gateway
                .get_json(&format!("/api/v1/traces/{trace_id}"))
                .await;
            (trace["audit"].as_array().is_some_and(|a| !a.is_empty())).then_some(trace)
        },
    )
    .await;
    assert_eq!(trace["partial"], false);
    assert_eq!(trace["events"][0]["message_id"], event["message_id"]);
    assert_eq!(trace["audit"][0]["message_id"], event["message_id"]);
    assert_eq!(trace["audit"][0]["outcome"], "delivered");
    assert!(!trace["audit"][0]["attempts"].as_array().unwrap().is_empty());
    // The window passes through to the audit-service: a day long ago holds none of it, a
    // window longer than the audit-service allows is refused, and a malformed time too.
    let elsewhere = gateway
        .get_json(&format!(
            "/api/v1/traces/{trace_id}?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z"
        ))
        .await;
    assert_eq!(elsewhere["audit"], json!([]));
    assert_eq!(elsewhere["partial"], false);
    assert_eq!(elsewhere["events"][0]["message_id"], event["message_id"]);
    for window in [
        "from=2020-01-01T00:00:00Z",
        "from=yesterday",
        "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
    ] {
        let response = gateway
            .get(
                &format!("/api/v1/traces/{trace_id}?{window}"),
                Some(VIEWER_TOKEN),
            )
            .await;
        assert_eq!(response.status(), 400, "{window}");
    }

    // A message is looked up by its id: its event and its audit record, delivered; a
    // rejected one by the id the worker gave it (its position), with the reason; an id that
    // nothing carries is not found.
    let message_id = event["message_id"].as_str().unwrap();
    let message = eventually(
        Duration::from_secs(60),
        "the audit half of the message",
        || async {
            let message = gateway
                .get_json(&format!("/api/v1/messages/{message_id}"))
                .await;
            (message["audit"].as_array().is_some_and(|a| !a.is_empty())).then_some(message)
        },
    )
    .await;
    assert_eq!(message["partial"], false, "{message}");
    assert_eq!(message["message_id"], message_id);
    assert_eq!(message["events"][0]["id"], event["id"]);
    assert_eq!(message["audit"].as_array().unwrap().len(), 1, "{message}");
    assert_eq!(message["audit"][0]["outcome"], "delivered");
    assert_eq!(message["audit"][0]["trace_id"], trace_id);
    let rejected = gateway
        .get_json("/api/v1/events?outcome=rejected&limit=1")
        .await;
    let rejected = &rejected["events"][0];
    let rejected_id = rejected["message_id"].as_str().unwrap();
    let message = eventually(
        Duration::from_secs(60),
        "the audit record of a rejected message",
        || async {
            let message = gateway
                .get_json(&format!("/api/v1/messages/{rejected_id}"))
                .await;
            (message["audit"].as_array().is_some_and(|a| !a.is_empty())).then_some(message)
        },
    )
    .await;
    assert_eq!(message["audit"][0]["outcome"], "rejected", "{message}");
    assert_eq!(message["audit"][0]["reason_code"], rejected["reason_code"]);
    assert_eq!(message["events"][0]["id"], rejected["id"]);
    let response = gateway
        .get("/api/v1/messages/no-such-message", Some(VIEWER_TOKEN))
        .await;
    assert_eq!(response.status(), 404);

    // The upstream goes away: the worker's circuit opens and the gateway shows it.
    stack.set_faults(json!({"outage": true})).await;
    stack
        .produce_ingress(&kafka, &Stack::ingress_events("outage", 100, 0))
        .await;
    eventually(
        Duration::from_secs(60),
        "an open circuit in /circuits",
        || async {
            let circuits = gateway.get_json("/api/v1/circuits").await;
            circuits["circuits"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["upstream"] == "default" && c["state"] == "open")
                .then_some(())
        },
    )
    .await;
    stack.set_faults(json!({})).await;
    eventually(Duration::from_secs(60), "all 420 outcomes", || async {
        let stats = gateway.get_json("/api/v1/stats").await;
        (stats["windows"][0]["overall"]["events"] == 420).then_some(())
    })
    .await;
    stack.stop().await;
}
