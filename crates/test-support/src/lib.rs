//! Reaches the real components of the native stack from tests.
//!
//! Relais' integration tests talk to a real Kafka broker, a real Ceph RGW and a real Prometheus
//! (`make infra-up` starts them; `make test` does it first). Each accessor here checks that its
//! component answers and **panics with instructions** when it does not: a test that needs Kafka
//! must fail loudly on a machine without Kafka, never skip silently.
//!
//! Endpoints come from the same variables the services read, with the native stack's defaults:
//!
//! | variable | default |
//! | --- | --- |
//! | `RELAIS_KAFKA_BOOTSTRAP` | `127.0.0.1:9092` |
//! | `RELAIS_KAFKA_SASL_SSL_BOOTSTRAP` | `127.0.0.1:9094` (TLS + SASL) |
//! | `RELAIS_KAFKA_MTLS_BOOTSTRAP` | `127.0.0.1:9095` (mutual TLS) |
//! | `RELAIS_S3_ENDPOINT` | `http://127.0.0.1:7480` |
//! | `RELAIS_S3_TLS_ENDPOINT` | `https://127.0.0.1:7443` (the native CA's certificate) |
//! | `RELAIS_S3_REGION` | `default` |
//! | `RELAIS_S3_ACCESS_KEY` / `RELAIS_S3_SECRET_KEY` | the native stack's development user |
//! | `RELAIS_S3_BUCKET` | `relais-audit` |
//! | `RELAIS_PROMETHEUS_URL` | `http://127.0.0.1:9090` |
//! | `RELAIS_STATE_DIR` | `.state` at the repository root |

mod https;
mod kafka;
mod metrics;
mod pki;
mod ports;
mod prometheus;
mod proxy;
mod rgw;
mod scratch;
mod secured_kafka;

use std::path::PathBuf;

pub use https::serve_https;
pub use kafka::KafkaTestEnv;
pub use metrics::{AdminMetrics, Exposition, wait_until};
pub use pki::{Issued, TestPki};
pub use ports::free_port;
pub use prometheus::{PrometheusTestEnv, RuleState, ScrapeTarget};
pub use proxy::TcpProxy;
pub use rgw::{GatewayOutage, RgwTestEnv, install_crypto_provider};
pub use scratch::ScratchDir;
pub use secured_kafka::SecuredKafka;

/// Returns the Kafka broker of the native stack, or panics saying how to start it.
pub async fn kafka() -> KafkaTestEnv {
    KafkaTestEnv::connect(&Endpoints::from_env())
        .await
        .unwrap_or_else(|error| unavailable("Kafka", &error))
}

/// Returns the native Kafka's secured listeners (TLS + SASL, mutual TLS), or panics saying
/// how to start them.
pub async fn secured_kafka() -> SecuredKafka {
    SecuredKafka::connect(&Endpoints::from_env())
        .await
        .unwrap_or_else(|error| unavailable("Kafka's secured listeners", &error))
}

/// Returns Ceph RGW of the native stack, or panics saying how to start it.
pub async fn rgw() -> RgwTestEnv {
    RgwTestEnv::connect(&Endpoints::from_env())
        .await
        .unwrap_or_else(|error| unavailable("Ceph RGW", &error))
}

/// Returns the RGW at `endpoints` (one the test started itself, in a container), or panics.
pub async fn rgw_at(endpoints: &Endpoints) -> RgwTestEnv {
    RgwTestEnv::connect(endpoints)
        .await
        .unwrap_or_else(|error| unavailable("Ceph RGW", &error))
}

/// Returns Prometheus of the native stack, or panics saying how to start it.
pub async fn prometheus() -> PrometheusTestEnv {
    PrometheusTestEnv::connect(&Endpoints::from_env())
        .await
        .unwrap_or_else(|error| unavailable("Prometheus", &error))
}

fn unavailable(component: &str, error: &UnavailableError) -> ! {
    panic!(
        "\n{component} is required by this integration test and is not usable: {error}\n\
         Integration tests run against the real component, never a mock. Start the native \
         stack with `make infra-up` (or run `make test`, which starts it first); \
         `make infra-status` shows what is running and where its logs are.\n"
    )
}

/// Why a component cannot be used; the message names the address that was tried.
#[derive(Debug, thiserror::Error)]
pub enum UnavailableError {
    #[error("{endpoint} did not answer: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("{endpoint} answered, but {detail}")]
    Unhealthy { endpoint: String, detail: String },
}

/// Where the components are, from the environment with the native stack's defaults.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub kafka_bootstrap: String,
    pub kafka_sasl_ssl_bootstrap: String,
    pub kafka_mtls_bootstrap: String,
    pub s3_endpoint: String,
    /// RGW over HTTPS, with a certificate of the native CA (`state_dir/pki/relais-ca.pem`).
    pub s3_tls_endpoint: String,
    pub s3_region: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
    pub audit_bucket: String,
    pub prometheus_url: String,
    pub state_dir: PathBuf,
}

impl Endpoints {
    /// Reads the `RELAIS_*` variables (see the crate docs for the defaults).
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let repository_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let state_dir = std::env::var_os("RELAIS_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repository_root.join(".state"));
        Self {
            kafka_bootstrap: var("RELAIS_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            kafka_sasl_ssl_bootstrap: var("RELAIS_KAFKA_SASL_SSL_BOOTSTRAP", "127.0.0.1:9094"),
            kafka_mtls_bootstrap: var("RELAIS_KAFKA_MTLS_BOOTSTRAP", "127.0.0.1:9095"),
            s3_endpoint: var("RELAIS_S3_ENDPOINT", "http://127.0.0.1:7480"),
            s3_tls_endpoint: var("RELAIS_S3_TLS_ENDPOINT", "https://127.0.0.1:7443"),
            s3_region: var("RELAIS_S3_REGION", "default"),
            s3_access_key: var("RELAIS_S3_ACCESS_KEY", "relais-dev"),
            s3_secret_key: var("RELAIS_S3_SECRET_KEY", "relais-dev-secret"),
            audit_bucket: var("RELAIS_S3_BUCKET", "relais-audit"),
            prometheus_url: var("RELAIS_PROMETHEUS_URL", "http://127.0.0.1:9090"),
            state_dir,
        }
    }
}

/// A name no other test run has used: `{prefix}-{uuid}` (valid for topics, groups and buckets).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Waits for a child process to end, at most `within` (the test fails after that): how it
/// ended.
pub async fn wait_for_exit(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("cannot wait for the child process") {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {} still runs after {within:?}",
            child.id()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A tool installed by `deploy/native/test-tools.sh` (chromium's driver, schemathesis, ...),
/// by its path under `$RELAIS_STATE_DIR/tools`. Panics with the fix when it is missing: a test
/// that needs a tool never skips silently.
pub fn tool(relative: &str) -> PathBuf {
    let path = Endpoints::from_env().state_dir.join("tools").join(relative);
    assert!(
        path.exists(),
        "{} is required by this test and is missing. Install the test tools with \
         deploy/native/test-tools.sh (make test does it first).",
        path.display()
    );
    path
}

/// Where tests keep what they produce for people to look at (screenshots, reports):
/// `artifacts/` at the repository root, created on demand.
pub fn artifacts_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../artifacts");
    std::fs::create_dir_all(&dir).expect("cannot create artifacts/");
    dir
}
