//! `AuditQuery` with mutual TLS and bearer tokens: only a client with a certificate of the
//! configured CA and an accepted token reads the trail; health checks need the certificate
//! only; a request above the size limit is refused before it is decoded.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use relais_audit_service::config::AuditConfig;
use relais_grpc::{GrpcClientConfig, GrpcServerConfig};
use relais_proto::v1::audit_query_client::AuditQueryClient;
use relais_proto::v1::{TrailRequest, trail_request};
use relais_test_support::{Issued, TestPki, unique_name};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// What a call came to (the texts are read in the assertions' messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Answer {
    Ok,
    Status(tonic::Code, String),
    /// No gRPC answer at all: the TLS handshake or the connection failed.
    Transport(String),
}

fn client(
    ca: &std::path::Path,
    identity: Option<&Issued>,
    token: Option<std::path::PathBuf>,
) -> GrpcClientConfig {
    GrpcClientConfig {
        ca_file: Some(ca.to_owned()),
        certificate_file: identity.map(|issued| issued.certificate.clone()),
        key_file: identity.map(|issued| issued.key.clone()),
        server_name: None,
        token_file: token,
    }
}

async fn get_trail(url: &str, config: &GrpcClientConfig, trace_id: String) -> Answer {
    let (endpoint, token) = config
        .endpoint_with("test", "RELAIS_TEST_UNSET", url, |_| None)
        .unwrap();
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => return Answer::Transport(format!("{error:?}")),
    };
    let request = TrailRequest {
        key: Some(trail_request::Key::TraceId(trace_id)),
        ..Default::default()
    };
    match AuditQueryClient::with_interceptor(channel, token)
        .get_trail(request)
        .await
    {
        Ok(_) => Answer::Ok,
        // A client certificate refused after a TLS 1.3 handshake shows as a broken call.
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
            ) =>
        {
            Answer::Transport(status.message().to_owned())
        }
        Err(status) => Answer::Status(status.code(), status.message().to_owned()),
    }
}

fn trace_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_trusted_certificate_with_an_accepted_token_reads_the_trail() {
    relais_test_support::install_crypto_provider();
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let bucket = rgw.create_bucket("it-audit-grpc").await.name.clone();
    let topic = kafka.create_topic("it-audit-grpc", 1).await;

    let pki = TestPki::new("relais-test-ca");
    let server = pki.server("audit-service");
    let gateway = pki.client("realtime-gateway");
    let stranger = TestPki::new("another-ca").client("realtime-gateway");
    let token = unique_name("token");
    let tokens = pki.write("tokens", &format!("# the gateway's\n{token}\n"));
    let token_file = pki.write("token", &format!("{token}\n"));
    let wrong_token_file = pki.write("wrong-token", &format!("{}\n", "w".repeat(40)));

    let mut config = AuditConfig::default();
    config.kafka.audit_topic = topic;
    config.kafka.group_id = unique_name("it-audit-grpc");
    config.grpc = GrpcServerConfig {
        certificate_file: Some(server.certificate.clone()),
        key_file: Some(server.key.clone()),
        client_ca_file: Some(pki.ca_file()),
        tokens_file: Some(tokens),
        max_request_bytes: 4096,
    };
    let args = common::args(
        &kafka,
        &bucket,
        relais_test_support::Endpoints::from_env().s3_endpoint,
    );
    let instance = common::Instance::start(args, config, Arc::default());
    instance.wait_for_readiness(true).await;
    let url = format!("https://127.0.0.1:{}", instance.grpc.port());
    let ca = pki.ca_file();

    let trusted = client(&ca, Some(&gateway), Some(token_file.clone()));
    assert!(matches!(
        get_trail(&url, &trusted, trace_id()).await,
        Answer::Ok
    ));

    for (case, config) in [
        ("no token", client(&ca, Some(&gateway), None)),
        (
            "a wrong token",
            client(&ca, Some(&gateway), Some(wrong_token_file)),
        ),
    ] {
        let answer = get_trail(&url, &config, trace_id()).await;
        assert!(
            matches!(answer, Answer::Status(tonic::Code::Unauthenticated, _)),
            "{case}: {answer:?}"
        );
    }
    for (case, config) in [
        (
            "no client certificate",
            client(&ca, None, Some(token_file.clone())),
        ),
        (
            "a certificate of another CA",
            client(&ca, Some(&stranger), Some(token_file.clone())),
        ),
    ] {
        let answer = get_trail(&url, &config, trace_id()).await;
        assert!(matches!(answer, Answer::Transport(_)), "{case}: {answer:?}");
    }
    // Plain text to a TLS port: h2 sees garbage (the status varies: Internal, Unknown).
    let plain = GrpcClientConfig::default();
    let answer = get_trail(
        &format!("http://127.0.0.1:{}", instance.grpc.port()),
        &plain,
        trace_id(),
    )
    .await;
    assert!(
        matches!(
            answer,
            Answer::Transport(_) | Answer::Status(tonic::Code::Internal, _)
        ),
        "plain text: {answer:?}"
    );

    // Larger than max_request_bytes: refused before it is decoded.
    let answer = get_trail(&url, &trusted, "f".repeat(8192)).await;
    assert!(
        matches!(&answer, Answer::Status(code, message) if *code != tonic::Code::Ok && message.contains("too large")),
        "oversized: {answer:?}"
    );

    // Health checks need the certificate, not a token.
    let (endpoint, _) = client(&ca, Some(&gateway), None)
        .endpoint_with("test", "RELAIS_TEST_UNSET", &url, |_| None)
        .unwrap();
    let health = HealthClient::new(endpoint.connect().await.unwrap())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    instance.stop().await;
}
