//! The whole outbound stack against a real HTTP server on loopback: what each layer does to
//! real requests, and what the caller gets back.
#![allow(clippy::unwrap_used)] // a panic in a test helper is a failed test with a location

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use prometheus_client::registry::Registry;
use relais_resilience::policy::{CircuitPolicy, RetryBudgetPolicy, RetryPolicyConfig};
use relais_resilience::{
    CallOutcome, CircuitState, Refusal, ResilienceMetrics, RetryStop, TimeoutKind, TransportError,
    UpstreamClient, UpstreamPolicy,
};

/// What the test server answers, request by request (the last entry repeats).
#[derive(Debug, Clone)]
enum Reply {
    Status(u16),
    RetryAfter(u16, &'static str),
    Hang(Duration),
}

#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    idempotency_key: Option<String>,
    traceparent: Option<String>,
}

#[derive(Clone, Default)]
struct Server {
    script: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn handle(State(server): State<Server>, headers: HeaderMap, _body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    server.seen.lock().unwrap().push(Seen {
        at: Instant::now(),
        idempotency_key: header("idempotency-key"),
        traceparent: header("traceparent"),
    });
    let reply = {
        let mut script = server.script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front()
        } else {
            script.front().cloned()
        }
    };
    match reply.unwrap_or(Reply::Status(200)) {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::RetryAfter(code, after) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", after)],
            "slow down",
        )
            .into_response(),
        Reply::Hang(duration) => {
            tokio::time::sleep(duration).await;
            StatusCode::OK.into_response()
        }
    }
}

async fn serve(script: Vec<Reply>) -> (SocketAddr, Server) {
    let server = Server {
        script: Arc::new(Mutex::new(script.into())),
        ..Server::default()
    };
    let app = Router::new()
        .route("/events", post(handle))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, server)
}

fn fast_policy() -> UpstreamPolicy {
    UpstreamPolicy {
        deadline: Duration::from_secs(10),
        attempt_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        retry: RetryPolicyConfig {
            max_attempts: 4,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            budget: RetryBudgetPolicy {
                ratio: 1.0,
                min_retries_per_second: 100,
                window: Duration::from_secs(10),
            },
            ..RetryPolicyConfig::default()
        },
        ..UpstreamPolicy::default()
    }
}

fn client(base: &str, policy: UpstreamPolicy) -> (UpstreamClient, Registry) {
    relais_test_support::install_crypto_provider();
    // The services' tracing stack, so attempts carry the caller's trace in `traceparent` (with
    // no exporter configured, each attempt gets a parent id of its own but no span object).
    static TELEMETRY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let guard = relais_telemetry::init(&relais_telemetry::TelemetryConfig {
            service_name: "resilience-test",
            service_version: "0",
            default_log_filter: "warn",
        })
        .expect("telemetry");
        std::mem::forget(guard);
    });
    let mut registry = Registry::default();
    let metrics = ResilienceMetrics::register(&mut registry);
    let client = UpstreamClient::new("test", base, policy, &metrics).expect("client");
    (client, registry)
}

async fn deliver(client: &UpstreamClient, key: &str) -> relais_resilience::Delivery {
    let endpoint = client.endpoint("/events").expect("endpoint");
    client
        .post_json(&endpoint, Bytes::from_static(b"{}"), key)
        .await
}

#[tokio::test]
async fn retries_5xx_then_succeeds_with_one_idempotency_key_and_one_trace() {
    let (address, server) = serve(vec![
        Reply::Status(503),
        Reply::Status(502),
        Reply::Status(200),
    ])
    .await;
    let (client, registry) = client(&format!("http://{address}"), fast_policy());
    // The caller's span (the worker's message span) is the parent of every attempt.
    let delivery = tracing::Instrument::instrument(
        deliver(&client, "order-1"),
        tracing::info_span!("process message"),
    )
    .await;

    assert!(delivery.succeeded(), "{delivery:?}");
    let statuses: Vec<Option<u16>> = delivery.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(503), Some(502), Some(200)]);
    let numbers: Vec<u32> = delivery.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, [0, 1, 2]);
    assert_eq!(delivery.retry_stop, None);

    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|s| s.idempotency_key.as_deref() == Some("order-1"))
    );
    let parents: Vec<String> = seen
        .iter()
        .map(|s| s.traceparent.clone().expect("traceparent sent"))
        .collect();
    let trace_ids: Vec<&str> = parents.iter().map(|p| &p[3..35]).collect();
    assert!(
        trace_ids.windows(2).all(|w| w[0] == w[1]),
        "one trace: {parents:?}"
    );
    let span_ids: std::collections::BTreeSet<&str> = parents.iter().map(|p| &p[36..52]).collect();
    assert_eq!(span_ids.len(), 3, "a client span per attempt");

    // Probe data: the first attempt opened a connection, every attempt has a total.
    assert!(
        delivery.attempts[0].timings.connect > Duration::ZERO,
        "{:?}",
        delivery.attempts[0].timings
    );
    assert!(
        delivery
            .attempts
            .iter()
            .all(|a| a.timings.total > Duration::ZERO)
    );
    assert!(delivery.attempts.iter().all(|a| a.request_bytes == 2));

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("http_client_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("http_response_status_code=\"503\""));
    // No span leaves this process, so no exemplar points at a trace nobody stored (the e2e
    // traces test sees them while spans are exported).
    assert!(!text.contains("# {trace_id=\""), "no exemplar: {text}");
    assert!(
        text.contains(
            "relais_http_client_retries_total{upstream=\"test\",reason=\"status_5xx\"} 2"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (address, server) = serve(vec![Reply::RetryAfter(429, "2"), Reply::Status(200)]).await;
    let (client, _) = client(&format!("http://{address}"), fast_policy());
    let delivery = deliver(&client, "k").await;
    assert!(delivery.succeeded());
    let seen = server.seen.lock().unwrap().clone();
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "second attempt came after {gap:?}"
    );
    assert!(delivery.attempts[0].backoff >= Duration::from_secs(2));
}

#[tokio::test]
async fn retry_after_beyond_the_cap_stops_instead_of_coming_back_early() {
    let (address, server) = serve(vec![Reply::RetryAfter(503, "120")]).await;
    let (client, _) = client(&format!("http://{address}"), fast_policy());
    let delivery = deliver(&client, "k").await;
    assert_eq!(delivery.outcome, CallOutcome::Response { status: 503 });
    assert_eq!(delivery.retry_stop, Some(RetryStop::RetryAfterTooLong));
    assert_eq!(server.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn client_errors_are_final() {
    let (address, server) = serve(vec![Reply::Status(404)]).await;
    let (client, _) = client(&format!("http://{address}"), fast_policy());
    let delivery = deliver(&client, "k").await;
    assert_eq!(delivery.outcome, CallOutcome::Response { status: 404 });
    assert_eq!(delivery.retry_stop, Some(RetryStop::NotRetryable));
    assert_eq!(server.seen.lock().unwrap().len(), 1);
    assert_eq!(delivery.attempts[0].error_type().as_deref(), Some("404"));
}

#[tokio::test]
async fn each_attempt_is_bounded_by_its_own_timeout() {
    let (address, _) = serve(vec![Reply::Hang(Duration::from_secs(5))]).await;
    let mut policy = fast_policy();
    policy.attempt_timeout = Duration::from_millis(200);
    policy.connect_timeout = Duration::from_millis(100);
    policy.retry.max_attempts = 3;
    let (client, _) = client(&format!("http://{address}"), policy);
    let started = Instant::now();
    let delivery = deliver(&client, "k").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        delivery.outcome,
        CallOutcome::Failed(TransportError::Timeout(TimeoutKind::Attempt))
    );
    assert_eq!(delivery.retry_stop, Some(RetryStop::MaxAttempts));
    assert_eq!(delivery.attempts.len(), 3);
    for attempt in &delivery.attempts {
        assert_eq!(attempt.timeout, Some(TimeoutKind::Attempt));
        // The probe's clock starts a little after the attempt timer (the layers in between run
        // first), so an attempt cut at 200 ms can measure a hair under it.
        assert!(
            attempt.timings.total >= Duration::from_millis(150),
            "the attempt ran until its timeout: {:?}",
            attempt.timings.total
        );
        assert!(
            attempt.timings.total < Duration::from_millis(400),
            "no attempt outlives its timeout: {:?}",
            attempt.timings.total
        );
    }
}

#[tokio::test]
async fn the_deadline_ends_the_call_and_records_the_cut_attempt() {
    let (address, _) = serve(vec![Reply::Hang(Duration::from_secs(5))]).await;
    let mut policy = fast_policy();
    policy.deadline = Duration::from_millis(500);
    policy.attempt_timeout = Duration::from_millis(300);
    policy.connect_timeout = Duration::from_millis(100);
    policy.retry.max_attempts = 10;
    let (client, _) = client(&format!("http://{address}"), policy);
    let started = Instant::now();
    let delivery = deliver(&client, "k").await;
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        delivery.outcome,
        CallOutcome::Failed(TransportError::Timeout(TimeoutKind::Deadline))
    );
    assert_eq!(delivery.retry_stop, Some(RetryStop::Deadline));
    let last = delivery.attempts.last().expect("attempts recorded");
    assert_eq!(last.timeout, Some(TimeoutKind::Deadline));
    assert_eq!(delivery.attempts[0].timeout, Some(TimeoutKind::Attempt));
}

#[tokio::test]
async fn an_empty_budget_stops_retries() {
    let (address, server) = serve(vec![Reply::Status(503)]).await;
    let mut policy = fast_policy();
    policy.retry.budget = RetryBudgetPolicy {
        ratio: 0.0,
        min_retries_per_second: 0,
        window: Duration::from_secs(10),
    };
    let (client, _) = client(&format!("http://{address}"), policy);
    let delivery = deliver(&client, "k").await;
    assert_eq!(delivery.retry_stop, Some(RetryStop::BudgetExhausted));
    assert_eq!(server.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_dead_upstream_opens_the_circuit_then_calls_are_refused_without_attempts() {
    // A port with nothing listening: connection refused.
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut policy = fast_policy();
    policy.circuit = CircuitPolicy {
        window_size: 10,
        minimum_calls: 4,
        open_duration: Duration::from_millis(300),
        half_open_calls: 1,
        ..CircuitPolicy::default()
    };
    let (client, registry) = client(&format!("http://{unused}"), policy);

    let first = deliver(&client, "a").await;
    assert_eq!(first.outcome, CallOutcome::Failed(TransportError::Connect));
    assert_eq!(
        first.retry_stop,
        Some(RetryStop::CircuitOpened),
        "opened after 4 attempts"
    );
    assert_eq!(first.attempts.len(), 4);
    assert_eq!(first.circuit_state, CircuitState::Open);

    let refused = deliver(&client, "b").await;
    assert!(
        matches!(
            refused.outcome,
            CallOutcome::Refused(Refusal::CircuitOpen { .. })
        ),
        "{refused:?}"
    );
    assert!(refused.attempts.is_empty(), "nothing sent while open");

    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(client.breaker().state(), CircuitState::HalfOpen);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(
            "relais_circuit_transitions_total{upstream=\"test\",from=\"closed\",to=\"open\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "relais_circuit_transitions_total{upstream=\"test\",from=\"open\",to=\"half_open\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("relais_circuit_state{upstream=\"test\",state=\"half_open\"} 1"));
    assert!(text.contains("relais_circuit_state{upstream=\"test\",state=\"open\"} 0"));
    assert!(text.contains("relais_circuit_rejected_calls_total{upstream=\"test\"} 1"));
}

#[tokio::test]
async fn half_open_trial_success_closes_the_circuit() {
    let (address, _) = serve(vec![
        Reply::Status(503),
        Reply::Status(503),
        Reply::Status(503),
        Reply::Status(503),
        Reply::Status(200),
    ])
    .await;
    let mut policy = fast_policy();
    policy.circuit = CircuitPolicy {
        window_size: 10,
        minimum_calls: 4,
        open_duration: Duration::from_millis(200),
        half_open_calls: 1,
        ..CircuitPolicy::default()
    };
    let (client, _) = client(&format!("http://{address}"), policy);
    let failed = deliver(&client, "a").await;
    assert_eq!(failed.circuit_state, CircuitState::Open);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let trial = deliver(&client, "b").await;
    assert!(trial.succeeded(), "{trial:?}");
    assert_eq!(trial.circuit_state, CircuitState::Closed);
}

#[tokio::test]
async fn dns_is_measured_for_host_names() {
    let (address, _) = serve(vec![Reply::Status(200)]).await;
    let (client, _) = client(
        &format!("http://localhost:{}", address.port()),
        fast_policy(),
    );
    let delivery = deliver(&client, "k").await;
    assert!(delivery.succeeded(), "{delivery:?}");
    assert!(
        delivery.attempts[0].timings.dns > Duration::ZERO,
        "{:?}",
        delivery.attempts[0].timings
    );
}
