//! One message's trace, in a real trace backend (Jaeger, built from the Go module proxy):
//! produced with a W3C `traceparent`, it spans the ingest-worker's processing, the upstream
//! HTTP call it made, and the audit-service storing its outcome. And a trace lookup through
//! the gateway continues into the audit-service's gRPC server.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use relais_e2e::{ProcessStack, StackOptions, free_port, repository_root};
use serde_json::Value;

/// A Jaeger of this test's own, on free ports.
struct Jaeger {
    child: std::process::Child,
    otlp: String,
    query: String,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_jaeger() -> Jaeger {
    let binary = relais_test_support::tool("go/bin/jaeger");
    let (otlp, query) = (free_port(), free_port());
    let child = Command::new(binary)
        .arg("--config")
        .arg(repository_root().join("deploy/native/jaeger.yaml"))
        .env("JAEGER_OTLP_GRPC", otlp.to_string())
        .env("JAEGER_OTLP_HTTP", free_port().to_string())
        .env("JAEGER_QUERY_HTTP", query.to_string())
        .env("JAEGER_QUERY_GRPC", free_port().to_string())
        .env("OTEL_TRACES_EXPORTER", "none")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let jaeger = Jaeger {
        child,
        otlp: format!("http://{otlp}"),
        query: format!("http://{query}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{}/api/services", jaeger.query))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "Jaeger did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    jaeger
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|tag| tag["key"] == key)
        .map(|tag| &tag["value"])
}

/// The names of the services that sent spans of a Jaeger trace.
fn services_of(trace: &Value) -> Vec<String> {
    trace["processes"]
        .as_object()
        .map(|processes| {
            processes
                .values()
                .map(|p| p["serviceName"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_traces_through_the_worker_the_upstream_call_and_the_audit_service() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let jaeger = start_jaeger().await;
    let stack = ProcessStack::start(
        &kafka,
        &rgw,
        None,
        StackOptions {
            otlp_endpoint: Some(jaeger.otlp.clone()),
            ..StackOptions::default()
        },
    )
    .await;

    let trace_id = format!(
        "{:032x}",
        0x007e_1a15_u128 << 64 | u128::from(std::process::id())
    );
    let producer: FutureProducer = kafka.client_config().create().unwrap();
    // The event time is now: the normaliser refuses events older than a year, and the
    // audit-service's trail lookup looks at recent event hours.
    let payload = format!(
        r#"{{"id":"trace-{}","type":"order.created","occurred_at":"{}","source":"e2e","data":{{}}}}"#,
        std::process::id(),
        chrono::Utc::now().to_rfc3339()
    );
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    producer
        .send(
            FutureRecord::to(&stack.topics.ingress)
                .key("k")
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some(traceparent.as_bytes()),
                })),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    // Spans arrive in batches from three processes; wait until all three parts are there.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (services, spans) = loop {
        let answer: Value = reqwest::get(format!("{}/api/traces/{trace_id}", jaeger.query))
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        let trace = &answer["data"][0];
        let services = services_of(trace);
        let spans = trace["spans"].as_array().cloned().unwrap_or_default();
        let upstream_call = spans.iter().any(|span| {
            tag(span, "span.kind").is_some_and(|kind| kind == "client")
                && tag(span, "http.response.status_code").is_some()
        });
        if services.iter().any(|s| s == "ingest-worker")
            && services.iter().any(|s| s == "audit-service")
            && upstream_call
        {
            break (services, spans);
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} incomplete after 90 s: services {services:?}, {} spans; logs in {}",
            spans.len(),
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let names: Vec<&str> = spans
        .iter()
        .map(|span| span["operationName"].as_str().unwrap_or_default())
        .collect();
    assert!(
        names.iter().any(|name| name.starts_with("process ")),
        "the audit-service's consumer span is in the trace: {names:?} ({services:?})"
    );

    // A trace lookup through the gateway, in a trace of its own: the gateway's request span,
    // its AuditQuery call and the audit-service's server span of that call share the trace.
    let lookup_trace = format!(
        "{:032x}",
        0x1007_c0de_u128 << 64 | u128::from(std::process::id())
    );
    let answer = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/traces/{trace_id}",
            stack.gateway_http
        ))
        .bearer_auth(&stack.viewer_token)
        .header(
            "traceparent",
            format!("00-{lookup_trace}-00f067aa0ba902b7-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer: Value = reqwest::get(format!("{}/api/traces/{lookup_trace}", jaeger.query))
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        let trace = &answer["data"][0];
        let spans = trace["spans"].as_array().cloned().unwrap_or_default();
        let server_call = spans.iter().any(|span| {
            span["operationName"] == "relais.v1.AuditQuery/GetTrail"
                && tag(span, "span.kind").is_some_and(|kind| kind == "server")
        });
        let services = services_of(trace);
        if server_call
            && services.iter().any(|s| s == "realtime-gateway")
            && services.iter().any(|s| s == "audit-service")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lookup's trace {lookup_trace} has no audit-service server span after 90 s: services {services:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // While spans are exported, each service's latency histograms point at traces.
    for (service, histograms) in [
        (
            &stack.workers[0],
            &[
                "relais_worker_processing_duration_seconds_bucket",
                "relais_worker_ingress_to_outcome_seconds_bucket",
                "relais_worker_transaction_duration_seconds_bucket",
                "http_client_request_duration_seconds_bucket",
            ][..],
        ),
        (
            &stack.audit,
            &["relais_audit_put_duration_seconds_bucket"][..],
        ),
        (
            &stack.gateway,
            &["http_server_request_duration_seconds_bucket"][..],
        ),
    ] {
        let text = service.metrics_text().await;
        for histogram in histograms {
            assert!(
                text.lines()
                    .any(|line| line.starts_with(histogram) && line.contains("# {trace_id=\"")),
                "{histogram} has no exemplar"
            );
        }
    }
    stack.stop();
}
