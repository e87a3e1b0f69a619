//! The REST API against the real broker: answers agree exactly with the events produced,
//! paging walks every event once, and authentication, roles and the rate limit hold.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use relais_proto::v1::{self, WorkerStatus};
use serde_json::Value;

fn spec(index: u64) -> EventSpec<'static> {
    let outcome = match index % 20 {
        0 | 1 => v1::Outcome::Failed,
        2 => v1::Outcome::DeadLettered,
        3 => v1::Outcome::Rejected,
        _ => v1::Outcome::Delivered,
    };
    let rejected = outcome == v1::Outcome::Rejected;
    EventSpec {
        index,
        upstream: if rejected {
            ""
        } else if index.is_multiple_of(3) {
            "beta"
        } else {
            "alpha"
        },
        outcome,
        attempts: if rejected { 0 } else { 1 + (index % 3) as u32 },
        // 0.5 ms to about 60 ms, spread so every quantile lands in a different place.
        latency_us: if rejected {
            0
        } else {
            500 + (index * 7919) % 60_000
        },
        timed_out: index.is_multiple_of(25),
        circuit: v1::CircuitState::Closed,
    }
}

/// Nearest-rank quantile of `values`, in milliseconds.
fn exact_quantile_ms(values: &mut [u64], q: f64) -> f64 {
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).max(1);
    values[rank - 1] as f64 / 1000.0
}

fn problem_type(response: &reqwest::Response) -> String {
    response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rest_answers_agree_with_the_events_produced() {
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-events", 3).await;
    let gateway = Gateway::for_topic(&kafka, &topic).await;
    let producer = producer(&kafka);
    let specs: Vec<EventSpec<'static>> = (0..600).map(spec).collect();
    let events: Vec<_> = specs.iter().map(pipeline_event).collect();
    produce(&producer, &topic, &events).await;

    let stats = eventually(Duration::from_secs(30), "600 events in /stats", || async {
        let stats = gateway.get_json("/api/v1/stats").await;
        (stats["windows"][0]["overall"]["events"] == 600).then_some(stats)
    })
    .await;
    let minute = &stats["windows"][0];
    assert_eq!(minute["window"], "1m");
    let overall = &minute["overall"];
    let count = |f: &dyn Fn(&EventSpec<'_>) -> bool| specs.iter().filter(|s| f(s)).count() as u64;
    let delivered = count(&|s| s.outcome == v1::Outcome::Delivered);
    let failed = count(&|s| s.outcome == v1::Outcome::Failed);
    let dead = count(&|s| s.outcome == v1::Outcome::DeadLettered);
    assert_eq!(overall["delivered"], delivered);
    assert_eq!(overall["failed"], failed);
    assert_eq!(overall["dead_lettered"], dead);
    assert_eq!(
        overall["rejected"],
        count(&|s| s.outcome == v1::Outcome::Rejected)
    );
    assert_eq!(overall["timeouts"], count(&|s| s.timed_out));
    let retries: u64 = specs
        .iter()
        .map(|s| u64::from(s.attempts.saturating_sub(1)))
        .sum();
    assert_eq!(overall["retries"], retries);
    let ratio = (failed + dead) as f64 / (delivered + failed + dead) as f64;
    assert!((overall["error_ratio"].as_f64().unwrap() - ratio).abs() < 1e-9);
    assert_eq!(
        minute["upstreams"]["beta"]["events"],
        count(&|s| s.upstream == "beta")
    );
    assert_eq!(
        minute["upstreams"]["(none)"]["events"],
        count(&|s| s.upstream.is_empty())
    );
    // The same events are in the 5 and 15 minute windows.
    assert_eq!(stats["windows"][1]["overall"]["events"], 600);
    assert_eq!(stats["windows"][2]["overall"]["events"], 600);

    // Quantiles: within one histogram bucket (≤ 9.05 %) above the exact value.
    let mut latencies: Vec<u64> = specs
        .iter()
        .filter(|s| s.attempts > 0)
        .map(|s| s.latency_us)
        .collect();
    assert_eq!(overall["latency_ms"]["samples"], latencies.len() as u64);
    for (q, name) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
        let exact = exact_quantile_ms(&mut latencies, q);
        let reported = overall["latency_ms"][name].as_f64().unwrap();
        assert!(
            reported >= exact && reported <= exact * 1.0906,
            "{name}: exact {exact} ms, reported {reported} ms"
        );
    }

    // Paging walks every event exactly once, newest first within a partition.
    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/events?limit=250&cursor={cursor}"),
            None => "/api/v1/events?limit=250".to_owned(),
        };
        let page = gateway.get_json(&path).await;
        for event in page["events"].as_array().unwrap() {
            assert!(seen.insert(event["message_id"].as_str().unwrap().to_owned()));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 600);
    let failed_page = gateway
        .get_json("/api/v1/events?outcome=failed&limit=1000")
        .await;
    assert_eq!(
        failed_page["events"].as_array().unwrap().len() as u64,
        failed
    );
    let beta = gateway
        .get_json("/api/v1/events?upstream=beta&type=order.created&limit=1000")
        .await;
    assert_eq!(
        beta["events"].as_array().unwrap().len() as u64,
        count(&|s| s.upstream == "beta")
    );

    // A trace: the realtime half is here; the audit-service is unreachable, so it says partial.
    let trace = gateway
        .get_json(&format!("/api/v1/traces/{}", trace_id(7)))
        .await;
    assert_eq!(trace["events"].as_array().unwrap().len(), 1);
    assert_eq!(trace["events"][0]["message_id"], "m-7");
    assert_eq!(trace["partial"], true);
    assert!(
        trace["partial_reason"]
            .as_str()
            .unwrap()
            .contains("audit-service")
    );

    // Bad input: problem details, never a 5xx.
    for path in [
        "/api/v1/traces/not-a-trace",
        "/api/v1/events?limit=0",
        "/api/v1/events?limit=-3",
        "/api/v1/events?outcome=sideways",
        "/api/v1/events?from=yesterday",
        "/api/v1/events?cursor=abc",
    ] {
        let response = gateway.get(path, Some(VIEWER_TOKEN)).await;
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(
            problem_type(&response),
            "application/problem+json",
            "{path}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 400);
    }
    let missing = gateway
        .get("/api/v1/nothing-here", Some(VIEWER_TOKEN))
        .await;
    assert_eq!(missing.status(), 404);
    assert_eq!(problem_type(&missing), "application/problem+json");

    // A circuit change shows in /circuits as soon as an event carries it.
    let mut open = spec(10_000);
    open.upstream = "beta";
    open.outcome = v1::Outcome::Failed;
    open.circuit = v1::CircuitState::Open;
    produce(&producer, &topic, &[pipeline_event(&open)]).await;
    eventually(
        Duration::from_secs(20),
        "beta open in /circuits",
        || async {
            let circuits = gateway.get_json("/api/v1/circuits").await;
            circuits["circuits"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["upstream"] == "beta" && c["state"] == "open")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        gateway.metric("relais_gateway_events_consumed_total").await,
        601.0
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_roles_and_the_rate_limit_are_enforced() {
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-events", 1).await;
    let mut config = test_config(&topic);
    config.http.rate_limit_per_second = 1.0;
    config.http.rate_limit_burst = 3.0;
    let gateway = Gateway::start(&kafka, config, "http://127.0.0.1:1").await;
    let client = reqwest::Client::new();

    let anonymous = gateway.get("/api/v1/stats", None).await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.headers()["www-authenticate"],
        "Bearer realm=\"relais\""
    );
    assert_eq!(problem_type(&anonymous), "application/problem+json");
    let wrong = gateway
        .get("/api/v1/stats", Some("not-the-token-at-all"))
        .await;
    assert_eq!(wrong.status(), 401);
    let ws_anonymous = tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.http)).await;
    match ws_anonymous {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("an anonymous WebSocket must be refused, got {other:?}"),
    }
    // Health needs no token.
    assert_eq!(gateway.get("/healthz", None).await.status(), 200);

    let forget = |token: &'static str| {
        client
            .delete(gateway.url("/api/v1/workers/nobody"))
            .bearer_auth(token)
            .send()
    };
    let as_viewer = forget(VIEWER_TOKEN).await.unwrap();
    assert_eq!(as_viewer.status(), 403);
    assert_eq!(problem_type(&as_viewer), "application/problem+json");
    assert_eq!(forget(ADMIN_TOKEN).await.unwrap().status(), 404);

    // The viewer has used one request of its burst of three: two more, then 429.
    assert_eq!(
        gateway
            .get("/api/v1/stats", Some(VIEWER_TOKEN))
            .await
            .status(),
        200
    );
    assert_eq!(
        gateway
            .get("/api/v1/stats", Some(VIEWER_TOKEN))
            .await
            .status(),
        200
    );
    let limited = gateway.get("/api/v1/stats", Some(VIEWER_TOKEN)).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    // The limit is per token: the admin still has its own.
    assert_eq!(
        gateway
            .get("/api/v1/stats", Some(ADMIN_TOKEN))
            .await
            .status(),
        200
    );
    assert!(
        gateway
            .metric("relais_gateway_auth_failures_total{reason=\"forbidden\"}")
            .await
            >= 1.0
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_report_over_grpc_and_an_admin_can_forget_them() {
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-events", 1).await;
    let gateway = Gateway::for_topic(&kafka, &topic).await;
    let url = format!("http://{}", gateway.grpc);

    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "relais.v1.WorkerReport".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let mut client = v1::worker_report_client::WorkerReportClient::new(channel);
    let call = tokio::spawn(async move {
        client
            .report(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
    });
    sender
        .send(WorkerStatus {
            worker_id: "worker-a".into(),
            version: "9.9.9".into(),
            in_flight: 7,
            total_lag: 42,
            circuits: vec![v1::UpstreamCircuit {
                upstream: "alpha".into(),
                state: v1::CircuitState::HalfOpen as i32,
                since: None,
                held: "unauthorized".into(),
                queued: 120,
                in_flight: 16,
                concurrency_limit: 16,
            }],
            ..WorkerStatus::default()
        })
        .await
        .unwrap();
    let listed = eventually(Duration::from_secs(10), "worker-a listed", || async {
        let workers = gateway.get_json("/api/v1/workers").await;
        let worker = workers["workers"][0].clone();
        (worker["worker_id"] == "worker-a").then_some(worker)
    })
    .await;
    assert_eq!(listed["connected"], true);
    assert_eq!(listed["in_flight"], 7);
    assert_eq!(listed["total_lag"], 42);
    let circuits = gateway.get_json("/api/v1/circuits").await;
    assert_eq!(circuits["circuits"][0]["upstream"], "alpha");
    assert_eq!(circuits["circuits"][0]["state"], "half_open");
    assert_eq!(
        circuits["circuits"][0]["workers"][0]["held"], "unauthorized",
        "a held upstream shows on the gateway"
    );
    assert_eq!(listed["circuits"][0]["held"], "unauthorized");
    assert_eq!(
        (
            &circuits["circuits"][0]["queued"],
            &circuits["circuits"][0]["in_flight"],
            &circuits["circuits"][0]["workers"][0]["concurrency_limit"],
        ),
        (
            &serde_json::json!(120),
            &serde_json::json!(16),
            &serde_json::json!(16)
        ),
        "the work waiting for an upstream shows on the gateway"
    );

    // The stream ends: still listed, no longer connected.
    drop(sender);
    let ack = call.await.unwrap().unwrap().into_inner();
    assert_eq!(ack.received, 1);
    eventually(Duration::from_secs(10), "worker-a disconnected", || async {
        let workers = gateway.get_json("/api/v1/workers").await;
        (workers["workers"][0]["connected"] == false).then_some(())
    })
    .await;
    let forgotten = reqwest::Client::new()
        .delete(gateway.url("/api/v1/workers/worker-a"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(forgotten.status(), 204);
    let workers = gateway.get_json("/api/v1/workers").await;
    assert_eq!(workers["workers"].as_array().unwrap().len(), 0);
    gateway.stop().await;
}

/// Sends one status on a new `Report` stream and returns how the call ended.
async fn report_once(
    config: &relais_grpc::GrpcClientConfig,
    url: &str,
    status: WorkerStatus,
) -> Result<u64, tonic::Status> {
    let (endpoint, token) = config
        .endpoint_with("status.client", "RELAIS_TEST_UNSET", url, |_| None)
        .unwrap();
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(format!("{error:?}")))?;
    let mut client = v1::worker_report_client::WorkerReportClient::with_interceptor(channel, token);
    let stream = tokio_stream::iter([status]);
    client
        .report(stream)
        .await
        .map(|answer| answer.into_inner().received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_reports_over_tls_need_an_accepted_token_and_stay_small() {
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-events", 1).await;
    let pki = relais_test_support::TestPki::new("gateway-test-ca");
    let server = pki.server("realtime-gateway");
    let token = relais_test_support::unique_name("worker-token");
    let mut config = test_config(&topic);
    config.grpc = relais_grpc::GrpcServerConfig {
        certificate_file: Some(server.certificate),
        key_file: Some(server.key),
        client_ca_file: None,
        tokens_file: Some(pki.write("tokens", &format!("{token}\n"))),
        max_request_bytes: 64 * 1024,
    };
    let gateway = Gateway::start(&kafka, config, "http://127.0.0.1:1").await;
    let url = format!("https://127.0.0.1:{}", gateway.grpc.port());
    let with_token = relais_grpc::GrpcClientConfig {
        ca_file: Some(pki.ca_file()),
        token_file: Some(pki.write("token", &token)),
        ..Default::default()
    };
    let status = |worker_id: &str| WorkerStatus {
        worker_id: worker_id.into(),
        ..WorkerStatus::default()
    };

    assert_eq!(
        report_once(&with_token, &url, status("worker-tls"))
            .await
            .unwrap(),
        1
    );
    eventually(Duration::from_secs(10), "worker-tls listed", || async {
        let workers = gateway.get_json("/api/v1/workers").await;
        (workers["workers"][0]["worker_id"] == "worker-tls").then_some(())
    })
    .await;

    let without_token = relais_grpc::GrpcClientConfig {
        token_file: None,
        ..with_token.clone()
    };
    let refused = report_once(&without_token, &url, status("impostor"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // A status above grpc.max_request_bytes is refused whole, before it is decoded.
    let huge = WorkerStatus {
        partitions: (0..20_000)
            .map(|partition| v1::PartitionStatus {
                partition,
                committed_offset: 1 << 40,
                high_watermark: 1 << 41,
                lag: 1 << 40,
                paused: true,
            })
            .collect(),
        ..status("worker-huge")
    };
    let refused = report_once(&with_token, &url, huge).await.unwrap_err();
    assert!(refused.message().contains("too large"), "{refused:?}");

    let workers = gateway.get_json("/api/v1/workers").await;
    let listed: Vec<&str> = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|worker| worker["worker_id"].as_str())
        .collect();
    assert_eq!(listed, ["worker-tls"], "nothing else was admitted");
    gateway.stop().await;
}
