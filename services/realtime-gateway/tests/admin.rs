//! What admins steer through the gateway, with the whole pipeline running on the real broker
//! and RGW: an upstream that answers 410 is disabled for every worker until an admin
//! re-enables it, and DLQ replays run as jobs; each change is in the audit trail, stored by
//! the audit-service, with the token's name.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::stack::Stack;
use common::*;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use relais_proto::v1::audit_query_client::AuditQueryClient;
use relais_proto::v1::{AuditRecord, OperatorAction, Outcome, TrailRequest, trail_request};
use relais_test_support::KafkaTestEnv;
use serde_json::{Value, json};

/// The audit topic as it stands: message outcomes and operator actions.
#[derive(Debug, Default)]
struct AuditTopic {
    records: Vec<AuditRecord>,
    actions: Vec<OperatorAction>,
}

/// Reads the audit topic from its start until `done` holds for what was read.
async fn read_audit(
    kafka: &KafkaTestEnv,
    topic: &str,
    what: &str,
    done: impl Fn(&AuditTopic) -> bool,
) -> AuditTopic {
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", relais_test_support::unique_name("it-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut read = AuditTopic::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !done(&read) {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: not within 90 s; read {read:?}"))
            .unwrap();
        let payload = message.payload().unwrap_or_default();
        if relais_operator::actions::is_operator_action(message.headers()) {
            read.actions.push(OperatorAction::decode(payload).unwrap());
        } else {
            read.records.push(AuditRecord::decode(payload).unwrap());
        }
    }
    read
}

/// The upstream as the gateway lists it; `None` while it is not listed, or while the gateway
/// has not read the control topic yet (503, on a slow start).
async fn upstream(gateway: &Gateway, name: &str) -> Option<Value> {
    let response = gateway.get("/api/v1/upstreams", Some(VIEWER_TOKEN)).await;
    if response.status() == 503 {
        return None;
    }
    assert_eq!(response.status(), 200, "GET /api/v1/upstreams");
    let listed: Value = response.json().await.unwrap();
    listed["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|upstream| upstream["name"] == name)
        .cloned()
}

/// The operator actions the audit-service has stored for `subject`.
async fn stored_actions(stack: &Stack, subject: &str, count: usize) -> Vec<OperatorAction> {
    let client = AuditQueryClient::connect(format!("http://{}", stack.audit_grpc))
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "the actions stored in RGW", || {
        let mut client = client.clone();
        async move {
            let trail = client
                .get_trail(TrailRequest {
                    key: Some(trail_request::Key::MessageId(subject.to_owned())),
                    ..TrailRequest::default()
                })
                .await
                .ok()?
                .into_inner();
            (trail.actions.len() >= count).then_some(trail.actions)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_answering_410_waits_disabled_until_an_admin_re_enables_it() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let stack = Stack::start(&kafka, &rgw).await;
    stack.set_faults(json!({"errors": {"410": 1.0}})).await;
    let total = 20;
    stack
        .produce_ingress(&kafka, &Stack::ingress_events("gone", total, 0))
        .await;

    // The worker disables it: the control topic says why and who, the worker reports it held.
    let disabled = eventually(Duration::from_secs(30), "upstream disabled", || async {
        upstream(&stack.gateway, "default")
            .await
            .filter(|u| u["enabled"] == false && !u["held_by"].as_array().unwrap().is_empty())
    })
    .await;
    assert_eq!(disabled["reason"], "http_410");
    assert!(
        disabled["changed_by"]
            .as_str()
            .unwrap()
            .starts_with("worker:")
    );
    assert!(
        disabled["detail"]
            .as_str()
            .unwrap()
            .starts_with("410 from http://")
    );
    assert_eq!(disabled["held_by"][0]["reason"], "disabled");

    // Long after any pause would have ended, nothing is decided: no message is dead-lettered
    // for an endpoint that is gone.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = read_audit(&kafka, &stack.topics.audit, "the worker's action", |read| {
        !read.actions.is_empty()
    })
    .await;
    assert_eq!(before.records.len(), 0, "no outcome while disabled");
    assert_eq!(before.actions[0].action, "upstream.disabled");
    assert_eq!(before.actions[0].subject, "upstream/default");

    // Only an admin re-enables it.
    let path = "/api/v1/admin/upstreams/default/enable";
    let note = json!({"note": "endpoint restored, ticket OPS-7"});
    assert_eq!(
        post_json(&stack.gateway, path, VIEWER_TOKEN, &note)
            .await
            .status(),
        403
    );
    assert_eq!(
        post_json(
            &stack.gateway,
            "/api/v1/admin/upstreams/nobody/enable",
            ADMIN_TOKEN,
            &note
        )
        .await
        .status(),
        404
    );
    stack.set_faults(json!({})).await;
    let enabled = post_json(&stack.gateway, path, ADMIN_TOKEN, &note).await;
    assert_eq!(enabled.status(), 200);
    let enabled: Value = enabled.json().await.unwrap();
    assert_eq!(enabled["enabled"], true);
    assert_eq!(enabled["changed_by"], "token:test-admin");

    // Every waiting message is delivered, once; the trail holds both actions.
    let after = read_audit(&kafka, &stack.topics.audit, "every outcome", |read| {
        read.records.len() >= total && read.actions.len() >= 2
    })
    .await;
    let mut outcomes = BTreeMap::new();
    for record in &after.records {
        *outcomes.entry(record.message_id.clone()).or_insert(0) += 1;
        assert_eq!(record.outcome, Outcome::Delivered as i32, "{record:?}");
    }
    assert_eq!(outcomes.len(), total);
    assert!(outcomes.values().all(|count| *count == 1), "{outcomes:?}");
    let stored = stored_actions(&stack, "upstream/default", 2).await;
    let summary: Vec<(&str, &str)> = stored
        .iter()
        .map(|a| (a.action.as_str(), a.actor.split(':').next().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("upstream.disabled", "worker"),
            ("upstream.enabled", "token")
        ]
    );
    assert_eq!(stored[1].actor, "token:test-admin");
    assert_eq!(stored[1].detail, "endpoint restored, ticket OPS-7");
    eventually(
        Duration::from_secs(10),
        "the worker's hold released",
        || async {
            upstream(&stack.gateway, "default")
                .await
                .filter(|u| u["held_by"].as_array().unwrap().is_empty())
        },
    )
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_job_started_over_the_admin_api_reports_progress_and_is_audited() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let stack = Stack::start(&kafka, &rgw).await;
    stack.set_faults(json!({"errors": {"404": 1.0}})).await;
    let total = 12;
    stack
        .produce_ingress(&kafka, &Stack::ingress_events("lost", total, 0))
        .await;
    read_audit(&kafka, &stack.topics.audit, "the FAILED outcomes", |read| {
        read.records.len() >= total
    })
    .await;
    stack.set_faults(json!({})).await;

    let selection = json!({"reasons": ["http_404"]});
    assert_eq!(
        post_json(
            &stack.gateway,
            "/api/v1/admin/replays",
            VIEWER_TOKEN,
            &selection
        )
        .await
        .status(),
        403
    );
    assert_eq!(
        post_json(
            &stack.gateway,
            "/api/v1/admin/replays",
            ADMIN_TOKEN,
            &json!({"from": "soon"})
        )
        .await
        .status(),
        400
    );
    let started = post_json(
        &stack.gateway,
        "/api/v1/admin/replays",
        ADMIN_TOKEN,
        &selection,
    )
    .await;
    assert_eq!(started.status(), 202);
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = started.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/v1/admin/replays/{}", job["id"].as_str().unwrap())
    );
    assert_eq!(job["requested_by"], "token:test-admin");

    let done = eventually(Duration::from_secs(60), "the job done", || async {
        let job: Value = stack
            .gateway
            .get(&location, Some(ADMIN_TOKEN))
            .await
            .json()
            .await
            .unwrap();
        (job["state"] != "running").then_some(job)
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["replayed"], total);
    assert_eq!(done["by_reason"]["http_404"], total);
    let listed: Value = stack
        .gateway
        .get("/api/v1/admin/replays", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["id"], done["id"]);

    // Each message now has its FAILED outcome and the new one; the job's start and end are
    // in the stored trail with the token's name.
    let after = read_audit(
        &kafka,
        &stack.topics.audit,
        "the replayed outcomes",
        |read| read.records.len() >= 2 * total && read.actions.len() >= 2,
    )
    .await;
    let delivered = after
        .records
        .iter()
        .filter(|r| r.outcome == Outcome::Delivered as i32)
        .count();
    assert_eq!((after.records.len(), delivered), (2 * total, total));
    let subject = format!("replay/{}", done["id"].as_str().unwrap());
    let stored = stored_actions(&stack, &subject, 2).await;
    assert_eq!(stored[0].action, "replay.started");
    assert_eq!(stored[1].action, "replay.finished");
    assert!(stored.iter().all(|a| a.actor == "token:test-admin"));
    assert!(
        stored[1].detail.contains("replayed 12"),
        "{}",
        stored[1].detail
    );
    stack.stop().await;
}
