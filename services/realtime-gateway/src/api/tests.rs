//! The HTTP surface without infrastructure: the router answered in process (`oneshot`), with
//! Kafka and the audit-service pointed at a closed loopback port. What needs the real broker
//! is in `tests/`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::ws::Utf8Bytes;
use axum::http::{Request, StatusCode, header};
use prometheus_client::registry::Registry;
use relais_telemetry::admin::Readiness;
use relais_telemetry::shutdown::CancellationToken;
use serde_json::Value;
use tower::ServiceExt as _;

use super::{AppState, router};
use crate::audit::AuditClient;
use crate::auth::{RateLimiter, Role, Tokens};
use crate::config::GatewayConfig;
use crate::connections::ConnectionSlots;
use crate::history::History;
use crate::history::tests::event;
use crate::metrics::GatewayMetrics;
use crate::replays::ReplayJobs;
use crate::stats::Stats;
use crate::upstreams::Upstreams;
use crate::workers::WorkerRegistry;

const VIEWER: &str = "viewer-token-for-unit-tests";
const ADMIN: &str = "admin-token-for-unit-tests";
/// Nothing listens here: Kafka clients and the audit client fail fast.
const CLOSED: &str = "127.0.0.1:1";

fn state() -> AppState {
    let config = Arc::new(GatewayConfig::default());
    let metrics = GatewayMetrics::register(&mut Registry::default());
    let mut tokens = Tokens::default();
    tokens
        .add("viewer", Role::Viewer, VIEWER)
        .unwrap_or_else(|error| panic!("{error}"));
    tokens
        .add("admin", Role::Admin, ADMIN)
        .unwrap_or_else(|error| panic!("{error}"));
    let kafka = relais_kafka::KafkaClient::plaintext(CLOSED);
    let upstreams = Upstreams::new(&kafka, "control", "audit").unwrap_or_else(|e| panic!("{e}"));
    let replays = ReplayJobs::new(
        relais_operator::replay::ReplayTarget {
            kafka,
            dlq_topic: "dlq".into(),
            ingress_topic: "ingress".into(),
            ledger_topic: "ledger".into(),
            transactional_id: "unit-tests".into(),
        },
        "audit",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    AppState {
        history: Arc::new(History::new(1000, Duration::from_secs(600), 64)),
        stats: Arc::new(Stats::default()),
        workers: Arc::new(WorkerRegistry::new(
            Duration::from_secs(30),
            Duration::from_secs(600),
            100,
        )),
        audit: AuditClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{CLOSED}"))
                .unwrap_or_else(|e| panic!("{e}")),
            relais_grpc::BearerToken::default(),
            Duration::from_secs(2),
            100,
            metrics.clone(),
        ),
        upstreams: Arc::new(upstreams),
        replays: Arc::new(replays),
        tokens: Arc::new(tokens),
        limiter: RateLimiter::new(1000.0, 1000.0),
        connections: Arc::new(ConnectionSlots::new(10, 2, metrics.ws_connections.clone())),
        metrics,
        config,
        readiness: Readiness::default(),
        shutdown: CancellationToken::new(),
        next_connection: Arc::default(),
        openapi: super::openapi_json().into(),
    }
}

async fn get(state: &AppState, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = router(state.clone())
        .oneshot(
            request
                .body(Body::empty())
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
        .unwrap_or_else(|e| match e {});
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn every_route_needs_a_known_token_and_says_why_not() {
    let state = state();
    let (status, problem) = get(&state, "/api/v1/stats", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem["status"], 401);
    let (status, _) = get(&state, "/api/v1/stats", Some("not-a-token-we-know-of")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(&state, "/api/v1/stats", Some(VIEWER)).await;
    assert_eq!(status, StatusCode::OK);
    // Admin routes refuse a viewer.
    let (status, _) = get(&state, "/api/v1/admin/replays", Some(VIEWER)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get(&state, "/api/v1/admin/replays", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn events_page_newest_first_and_bad_paging_is_a_400() {
    let state = state();
    for offset in 0..5 {
        state.history.insert(
            event(0, offset, "alpha", 1),
            Utf8Bytes::from_static(""),
            SystemTime::now(),
        );
    }
    let (status, page) = get(&state, "/api/v1/events?limit=2", Some(VIEWER)).await;
    assert_eq!(status, StatusCode::OK);
    let events = page["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 2);
    assert!(page["next_cursor"].is_string());
    for bad in ["limit=0", "limit=100000", "cursor=abc", "from=yesterday"] {
        let (status, problem) = get(&state, &format!("/api/v1/events?{bad}"), Some(VIEWER)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
    }
}

#[tokio::test]
async fn a_trace_answers_from_the_buffer_when_the_audit_service_cannot() {
    let state = state();
    state.history.insert(
        event(0, 0, "alpha", 9),
        Utf8Bytes::from_static(""),
        SystemTime::now(),
    );
    let trace = format!("{:032x}", 9);
    let (status, answer) = get(&state, &format!("/api/v1/traces/{trace}"), Some(VIEWER)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(answer["events_truncated"], false);
    assert_eq!(answer["partial"], true, "{answer}");
    let (status, _) = get(&state, "/api/v1/traces/not-a-trace", Some(VIEWER)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let inverted =
        format!("/api/v1/traces/{trace}?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z");
    let (status, _) = get(&state, &inverted, Some(VIEWER)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_message_answers_with_its_events_oldest_first_when_the_audit_service_cannot() {
    let state = state();
    for (offset, message_id) in [(0, "order/1 ü"), (1, "other"), (2, "order/1 ü")] {
        let mut event = event(0, offset, "alpha", 9);
        event.view.message_id = message_id.to_owned();
        state
            .history
            .insert(event, Utf8Bytes::from_static(""), SystemTime::now());
    }
    let encoded = "order%2F1%20%C3%BC";
    let (status, answer) = get(&state, &format!("/api/v1/messages/{encoded}"), Some(VIEWER)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["message_id"], "order/1 ü");
    let ids: Vec<&str> = answer["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["0:0", "0:2"], "{answer}");
    assert_eq!(answer["events_truncated"], false);
    assert_eq!(answer["audit"], serde_json::json!([]));
    assert_eq!(answer["partial"], true, "{answer}");

    let (status, page) = get(
        &state,
        &format!("/api/v1/events?message_id={encoded}"),
        Some(VIEWER),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = page["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["0:2", "0:0"], "newest first: {page}");

    let too_long = "x".repeat(301);
    for bad in [
        "line%0Abreak".to_owned(),
        too_long,
        format!("{encoded}?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"),
        format!("{encoded}?to=tomorrow"),
    ] {
        let (status, problem) = get(&state, &format!("/api/v1/messages/{bad}"), Some(VIEWER)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
    }
    let (status, _) = get(&state, "/api/v1/messages/order-1", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_feed_needs_a_websocket_handshake() {
    let state = state();
    let (status, problem) = get(&state, "/ws", Some(VIEWER)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (status, _) = get(&state, "/ws", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn readiness_and_the_openapi_document_are_served() {
    let state = state();
    let check = state.readiness.register("kafka");
    let (status, _) = get(&state, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    check.set_ready();
    let (status, _) = get(&state, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, document) = get(&state, "/api/v1/openapi.json", Some(VIEWER)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["paths"]["/api/v1/traces/{trace_id}"].is_object());
    assert!(document["paths"]["/api/v1/messages/{message_id}"].is_object());
}
