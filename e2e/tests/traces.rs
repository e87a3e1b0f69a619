//! One message's trace, in a real trace backend (Jaeger, built from the Go module proxy):
//! produced with a W3C `traceparent`, it spans the ingest-worker's processing, the upstream
//! HTTP call it made, and the audit-service storing its outcome.
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
        let services: Vec<String> = trace["processes"]
            .as_object()
            .map(|processes| {
                processes
                    .values()
                    .map(|p| p["serviceName"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
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
    stack.stop();
}
