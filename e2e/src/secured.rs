//! A stack with everything secured: Kafka through the broker's secured listeners, gRPC with
//! TLS, client certificates and bearer tokens. Each service gets its settings as variables,
//! the way an operator would give them.

use std::net::SocketAddr;

use relais_kafka::SaslMechanism;
use relais_test_support::{SecuredKafka, TestPki, unique_name};

type Environment = Vec<(String, String)>;

/// The variables of each service of a secured stack.
#[derive(Debug)]
pub(crate) struct SecuredEnvironments {
    /// The workers' (and what every process inherits): SCRAM-SHA-512 to Kafka, TLS and a
    /// token to the gateway's `WorkerReport`.
    pub(crate) workers: Environment,
    /// mutual TLS to Kafka; `AuditQuery` served with mutual TLS and a token.
    pub(crate) audit: Environment,
    /// PLAIN over TLS to Kafka; `WorkerReport` served with TLS and tokens; `AuditQuery`
    /// called with a client certificate and a token.
    pub(crate) gateway: Environment,
    /// The certificates, keys and tokens the variables name; removed when dropped.
    pub(crate) files: TestPki,
}

impl SecuredEnvironments {
    pub(crate) fn new(
        kafka: &SecuredKafka,
        audit_grpc: SocketAddr,
        gateway_grpc: SocketAddr,
    ) -> Self {
        let pki = TestPki::new("relais-e2e-ca");
        let ca = pki.ca_file().display().to_string();
        let audit_server = pki.server("audit-service");
        let gateway_server = pki.server("realtime-gateway");
        let gateway_client = pki.client("realtime-gateway");
        let worker_token = unique_name("worker-token");
        let gateway_token = unique_name("gateway-token");
        let file = |path: &std::path::Path| path.display().to_string();
        let pairs = |pairs: &[(&str, String)]| -> Environment {
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone()))
                .collect()
        };

        let mut workers = kafka.environment(
            &kafka.sasl_ssl_bootstrap,
            &kafka.sasl(SaslMechanism::ScramSha512, "relais"),
        );
        workers.extend(pairs(&[
            ("RELAIS_GATEWAY_GRPC", format!("https://{gateway_grpc}")),
            ("RELAIS_STATUS_TLS_CA_FILE", ca.clone()),
            (
                "RELAIS_STATUS_TOKEN_FILE",
                file(&pki.write("worker.token", &worker_token)),
            ),
        ]));

        let mut audit = kafka.environment(&kafka.mtls_bootstrap, &kafka.mtls());
        audit.extend(pairs(&[
            (
                "RELAIS_GRPC_TLS_CERTIFICATE_FILE",
                file(&audit_server.certificate),
            ),
            ("RELAIS_GRPC_TLS_KEY_FILE", file(&audit_server.key)),
            ("RELAIS_GRPC_CLIENT_CA_FILE", ca.clone()),
            (
                "RELAIS_GRPC_TOKENS_FILE",
                file(&pki.write("audit.tokens", &format!("{gateway_token}\n"))),
            ),
        ]));

        let mut gateway = kafka.environment(
            &kafka.sasl_ssl_bootstrap,
            &kafka.sasl(SaslMechanism::Plain, "relais"),
        );
        gateway.extend(pairs(&[
            (
                "RELAIS_GRPC_TLS_CERTIFICATE_FILE",
                file(&gateway_server.certificate),
            ),
            ("RELAIS_GRPC_TLS_KEY_FILE", file(&gateway_server.key)),
            ("RELAIS_GRPC_CLIENT_CA_FILE", String::new()),
            (
                "RELAIS_GRPC_TOKENS_FILE",
                file(&pki.write("gateway.tokens", &format!("{worker_token}\n"))),
            ),
            ("RELAIS_AUDIT_URL", format!("https://{audit_grpc}")),
            ("RELAIS_AUDIT_TLS_CA_FILE", ca),
            (
                "RELAIS_AUDIT_TLS_CERTIFICATE_FILE",
                file(&gateway_client.certificate),
            ),
            ("RELAIS_AUDIT_TLS_KEY_FILE", file(&gateway_client.key)),
            (
                "RELAIS_AUDIT_TOKEN_FILE",
                file(&pki.write("gateway.token", &gateway_token)),
            ),
        ]));
        Self {
            workers,
            audit,
            gateway,
            files: pki,
        }
    }
}
