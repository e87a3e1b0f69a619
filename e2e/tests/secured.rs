//! The whole pipeline with everything secured (Kafka through the broker's TLS, SASL and
//! mutual TLS listeners; gRPC with TLS, client certificates and tokens), and each service's
//! start refused, with its reason, when Kafka refuses its credentials or it lacks ACLs.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use relais_e2e::{ProcessStack, StackOptions, binary, free_port, verify};
use relais_kafka::SaslMechanism;
use relais_test_support::{ScratchDir, SecuredKafka};

const MESSAGES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_with_kafka_and_grpc_secured() {
    let kafka = relais_test_support::kafka().await;
    let secured = relais_test_support::secured_kafka().await;
    let rgw = relais_test_support::rgw().await;
    let stack = ProcessStack::start(
        &kafka,
        &rgw,
        None,
        StackOptions {
            secured: Some(secured.clone()),
            ..StackOptions::default()
        },
    )
    .await;

    // Produced over plain text: the services are what is under test.
    let producer: FutureProducer = kafka.client_config().create().unwrap();
    let trace_id = format!("{:032x}", u128::from(std::process::id()) << 64 | 0x5ecu128);
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    for index in 0..MESSAGES {
        let payload = format!(
            r#"{{"id":"secured-{index}","type":"order.created","occurred_at":"{}","source":"e2e","data":{{}}}}"#,
            chrono::Utc::now().to_rfc3339()
        );
        let key = format!("k{}", index % 17);
        let mut record = FutureRecord::to(&stack.topics.ingress)
            .key(&key)
            .payload(&payload);
        if index == 0 {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(traceparent.as_bytes()),
            }));
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }

    // The workers (SCRAM-SHA-512) delivered and recorded every outcome, the audit-service
    // (mutual TLS) stored each, the gateway (PLAIN over TLS) read each event.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stored = verify::read_audit_trail(&rgw, &stack.bucket).await.len();
        let seen = stack
            .gateway
            .metric_sum("relais_gateway_events_consumed_total")
            .await;
        if stored >= MESSAGES && seen >= MESSAGES as f64 {
            assert_eq!(stored, MESSAGES, "each outcome stored once");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 120 s: {stored} audit records stored, {seen} events seen by the gateway, of {MESSAGES}; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let delivered = stack
        .workers
        .first()
        .unwrap()
        .metric_sum("relais_worker_committed_messages_total")
        .await;
    assert_eq!(delivered, MESSAGES as f64, "one outcome per message");

    // The worker reports to the gateway over TLS with its token ...
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let workers: serde_json::Value = stack
            .gateway_get("/api/v1/workers")
            .await
            .json()
            .await
            .unwrap();
        if workers["workers"][0]["connected"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no worker status stream after 30 s: {workers}; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // ... and the gateway reads the audit trail over mutual TLS with its token.
    let trace: serde_json::Value = stack
        .gateway_get(&format!("/api/v1/traces/{trace_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(trace["partial"], false, "{trace}");
    assert_eq!(
        trace["audit"].as_array().map(Vec::len),
        Some(1),
        "the first message's audit record through AuditQuery: {trace}"
    );
    stack.stop();
}

/// Starts `service` with `environment` and returns its exit code and what it printed, or
/// panics if it does not stop within 40 s.
fn refused_start(service: &str, environment: Vec<(String, String)>) -> (i32, String) {
    let folder = ScratchDir::new(&format!("{service}-refused"));
    let log = folder.file("service.log");
    let endpoints = relais_test_support::Endpoints::from_env();
    // Defaults first, so that `environment` overrides them.
    let mut child = Command::new(binary(service))
        .env("RELAIS_S3_ACCESS_KEY", endpoints.s3_access_key)
        .env("RELAIS_S3_SECRET_KEY", endpoints.s3_secret_key)
        .env("RELAIS_ADMIN_ADDR", free_port().to_string())
        .env("RELAIS_GRPC_ADDR", free_port().to_string())
        .env("RELAIS_HTTP_ADDR", free_port().to_string())
        .env(
            "RELAIS_TOKENS",
            "viewer:e2e:a-viewer-token-long-enough-for-the-check",
        )
        .env("RUST_LOG", "warn")
        .envs(environment)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            panic!(
                "{service} did not stop within 40 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    (status.code().unwrap_or(-1), printed)
}

fn wrong_password(secured: &SecuredKafka, folder: &ScratchDir) -> Vec<(String, String)> {
    let wrong = folder.write("wrong-password", "certainly-not-the-password\n");
    let mut config = secured.sasl(SaslMechanism::ScramSha512, "relais");
    config.sasl.password_file = Some(wrong);
    secured.environment(&secured.sasl_ssl_bootstrap, &config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_stops_at_start_with_the_reason_when_kafka_refuses_it() {
    let secured = relais_test_support::secured_kafka().await;
    let no_acl = secured.environment(
        &secured.sasl_ssl_bootstrap,
        &secured.sasl(SaslMechanism::ScramSha512, "relais-noacl"),
    );
    let rogue = secured.environment(&secured.mtls_bootstrap, &secured.rogue_mtls());
    let files = ScratchDir::new("wrong-password");
    for service in ["ingest-worker", "audit-service", "realtime-gateway"] {
        let (code, printed) = refused_start(service, wrong_password(&secured, &files));
        assert_eq!(code, 77, "{service}, wrong password: {printed}");
        assert!(
            printed.contains("Authentication failed"),
            "{service}, wrong password: {printed}"
        );
        assert!(!printed.contains("certainly-not-the-password"), "{printed}");

        let (code, printed) = refused_start(service, no_acl.clone());
        assert_eq!(code, 77, "{service}, no ACL: {printed}");
        assert!(
            printed.contains("\"relais-noacl\" may not describe topic"),
            "{service}, no ACL: {printed}"
        );

        let (code, printed) = refused_start(service, rogue.clone());
        assert_eq!(code, 77, "{service}, untrusted certificate: {printed}");
        assert!(printed.contains("certificate"), "{service}: {printed}");
    }
}

type Environment = Vec<(String, String)>;

fn variables(pairs: &[(&str, &str)]) -> Environment {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

#[test]
fn the_production_profile_refuses_placeholder_and_development_secrets() {
    let production = ("RELAIS_PROFILE", "production");
    let cases: Vec<(&str, Environment, &str)> = vec![
        (
            "realtime-gateway",
            variables(&[
                production,
                (
                    "RELAIS_TOKENS",
                    "viewer:dashboard:replace-with-a-long-random-secret",
                ),
            ]),
            "placeholder",
        ),
        (
            "realtime-gateway",
            variables(&[
                production,
                ("RELAIS_TOKENS", "viewer:dashboard:only-twenty-chars-xx"),
            ]),
            "shorter than 32",
        ),
        (
            "audit-service",
            variables(&[
                production,
                ("RELAIS_S3_ACCESS_KEY", "relais-dev"),
                ("RELAIS_S3_SECRET_KEY", "relais-dev-secret"),
            ]),
            "development value",
        ),
        (
            "audit-service",
            variables(&[("RELAIS_S3_ACCESS_KEY", ""), ("RELAIS_S3_SECRET_KEY", "")]),
            "S3 credentials are required",
        ),
        (
            "ingest-worker",
            variables(&[
                production,
                ("RELAIS_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("RELAIS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
                ("RELAIS_KAFKA_SASL_USERNAME", "relais"),
                ("RELAIS_KAFKA_SASL_PASSWORD", "change-me-before-deploying"),
            ]),
            "placeholder",
        ),
    ];
    for (service, environment, reason) in cases {
        let (code, printed) = refused_start(service, environment);
        assert_eq!(code, 64, "{service}: {printed}");
        assert!(printed.contains(reason), "{service}, {reason}: {printed}");
        assert!(!printed.contains("change-me-before"), "{printed}");
    }
}
