//! realtime-gateway configuration: a TOML file with defaults for everything, deployment values
//! from flags or `RELAIS_*` variables, and cross-checks at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{TokenError, Tokens};

/// Command line; every flag also reads its `RELAIS_*` environment variable.
#[derive(Debug, clap::Parser)]
#[command(name = "realtime-gateway", version, about)]
pub struct Args {
    /// The configuration file (TOML); defaults apply without one.
    #[arg(long, env = "RELAIS_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "RELAIS_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap: String,
    /// Public endpoint: REST `/api/v1`, WebSocket `/ws`, the dashboard.
    #[arg(long, env = "RELAIS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// gRPC endpoint (`WorkerReport`, health).
    #[arg(long, env = "RELAIS_GRPC_ADDR", default_value = "127.0.0.1:50052")]
    pub grpc_addr: SocketAddr,
    /// Admin endpoint (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "RELAIS_ADMIN_ADDR", default_value = "127.0.0.1:9103")]
    pub admin_addr: SocketAddr,
    /// gRPC URL of the audit-service, for the audit half of `/api/v1/traces/{trace_id}`.
    #[arg(
        long,
        env = "RELAIS_AUDIT_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub audit_url: String,
    /// A file of API tokens (TOML, see docs/realtime-gateway.md).
    #[arg(long, env = "RELAIS_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// API tokens as `role:name:secret` entries separated by commas (role: viewer or admin).
    #[arg(long, env = "RELAIS_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// `production` refuses placeholder and development secrets and tokens shorter than 32
    /// characters (exit 64).
    #[arg(long, env = "RELAIS_PROFILE", value_enum, default_value_t)]
    pub profile: relais_telemetry::secrets::Profile,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub kafka: KafkaConfig,
    pub history: HistoryConfig,
    pub websocket: WebSocketConfig,
    pub http: HttpConfig,
    pub audit: AuditConfig,
    pub workers: WorkersConfig,
    /// How `WorkerReport` callers (the workers) are checked: TLS, client certificates,
    /// bearer tokens, request size.
    pub grpc: relais_grpc::GrpcServerConfig,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub events_topic: String,
    /// The workers' topics, for the admin API: where a replay reads dead letters and writes
    /// them back, the replay ledger, the upstream control topic, and the audit topic that
    /// records every admin action. Set them as the workers have them.
    pub ingress_topic: String,
    pub dlq_topic: String,
    pub replay_ledger_topic: String,
    pub control_topic: String,
    pub audit_topic: String,
    /// The workers' consumer group: a replay started here shares its transactional id with
    /// `ingest-worker replay-dlq` for that group, so two replays never run at once.
    pub worker_group_id: String,
    /// At start-up the gateway reads back this much of the topic, so its windows and history
    /// are full at once instead of empty after every restart.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub warm_up: Duration,
    /// How often the topic's partition count is checked (partitions can be added live).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub metadata_refresh: Duration,
    /// How the gateway reaches the brokers (TLS, SASL, further librdkafka settings), the same
    /// section in every service.
    pub client: relais_kafka::KafkaClientConfig,
}

impl KafkaConfig {
    /// What the gateway reads and writes, for the start-up check (it joins no group).
    pub fn needs(&self) -> relais_kafka::access::Needs {
        relais_kafka::access::Needs {
            topics: vec![
                self.events_topic.clone(),
                self.control_topic.clone(),
                self.audit_topic.clone(),
                self.dlq_topic.clone(),
                self.ingress_topic.clone(),
                self.replay_ledger_topic.clone(),
            ],
            group: None,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            events_topic: "relais.events".into(),
            ingress_topic: "relais.ingress".into(),
            dlq_topic: "relais.dlq".into(),
            replay_ledger_topic: "relais.dlq-replays".into(),
            control_topic: "relais.upstream-control".into(),
            audit_topic: "relais.audit".into(),
            worker_group_id: "relais-ingest".into(),
            warm_up: Duration::from_secs(15 * 60),
            metadata_refresh: Duration::from_secs(30),
            client: relais_kafka::KafkaClientConfig::default(),
        }
    }
}

/// The recent-event buffer: what `/api/v1/events`, trace lookups and WebSocket resume read.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    pub max_events: usize,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_events: 200_000,
            max_age: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// How many events a client may fall behind the feed before it is told it lagged and is
    /// disconnected (the bound of every client's queue).
    pub client_queue: usize,
    /// Largest frame or message a client may send.
    pub max_frame_bytes: usize,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ping_interval: Duration,
    /// A client that has not answered a ping within this long is disconnected.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub pong_timeout: Duration,
    /// Limit of one socket write; a client that cannot take a frame this fast is slow.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub write_timeout: Duration,
    /// How often a client is sent its position (keeps filtered clients' resume points fresh).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub position_interval: Duration,
    pub max_connections: usize,
    /// Connections one token may hold; a share of `max_connections`, so one client cannot take
    /// them all.
    pub max_connections_per_token: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            client_queue: 4096,
            max_frame_bytes: 64 * 1024,
            ping_interval: Duration::from_secs(15),
            pong_timeout: Duration::from_secs(45),
            write_timeout: Duration::from_secs(5),
            position_interval: Duration::from_secs(5),
            max_connections: 10_000,
            max_connections_per_token: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Origins allowed to call the API from a browser (CORS); empty allows none.
    pub cors_origins: Vec<String>,
    pub max_body_bytes: usize,
    /// Requests per second per token (sustained), and the burst above it.
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: f64,
    /// Largest page of `/api/v1/events`.
    pub max_page: usize,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            cors_origins: Vec::new(),
            max_body_bytes: 64 * 1024,
            rate_limit_per_second: 50.0,
            rate_limit_burst: 200.0,
            max_page: 1000,
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Limit of one `GetTrail` call; past it the trace answer is marked partial.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    pub max_records: u32,
    /// How the gateway reaches the audit-service (`--audit-url`, `https://` for TLS): the CA,
    /// a client certificate, a bearer token; variables `RELAIS_AUDIT_*`.
    pub client: relais_grpc::GrpcClientConfig,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
            max_records: 1000,
            client: relais_grpc::GrpcClientConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// A worker not heard from for this long is shown as stale.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stale_after: Duration,
    /// ... and forgotten after this long.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub forget_after: Duration,
    pub max_workers: usize,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(15),
            forget_after: Duration::from_secs(3600),
            max_workers: 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] relais_telemetry::process::ConfigFileError),
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Grpc(#[from] relais_grpc::GrpcSecurityError),
}

/// The variables the audit-service client falls back to: `RELAIS_AUDIT_TLS_CA_FILE`, ...
pub const AUDIT_CLIENT_ENV_PREFIX: &str = "RELAIS_AUDIT";

impl GatewayConfig {
    /// Reads the file named by `args` (defaults without one) and checks the result.
    pub fn load(args: &Args) -> Result<Self, ConfigError> {
        let config: Self = relais_telemetry::process::load_toml(args.config.as_deref())?;
        config.validate()?;
        use relais_telemetry::secrets::{SecretKind, rule};
        config
            .grpc
            .resolve()?
            .check_tokens(rule("grpc.tokens_file", SecretKind::Token, args.profile))
            .map_err(ConfigError::Invalid)?;
        let (_, audit_token) = config.audit.client.endpoint(
            "audit.client",
            AUDIT_CLIENT_ENV_PREFIX,
            &args.audit_url,
        )?;
        audit_token
            .check(rule(
                "audit.client.token_file",
                SecretKind::Token,
                args.profile,
            ))
            .map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: &str| Err(ConfigError::Invalid(message.to_owned()));
        if self.history.max_events == 0 {
            return invalid("history.max_events must be at least 1");
        }
        if self.websocket.client_queue < 16 {
            return invalid("websocket.client_queue must be at least 16");
        }
        if self.websocket.pong_timeout <= self.websocket.ping_interval {
            return invalid("websocket.pong_timeout must be longer than websocket.ping_interval");
        }
        if !(self.http.rate_limit_per_second > 0.0 && self.http.rate_limit_burst >= 1.0) {
            return invalid("http.rate_limit_per_second must be > 0 and rate_limit_burst >= 1");
        }
        if self.http.max_page == 0 {
            return invalid("http.max_page must be at least 1");
        }
        for origin in &self.http.cors_origins {
            if origin.parse::<http::HeaderValue>().is_err() || !origin.contains("://") {
                return Err(ConfigError::Invalid(format!(
                    "http.cors_origins: {origin:?} is not an origin such as https://ops.example.org"
                )));
            }
        }
        Ok(())
    }
}

/// The tokens from the file and the environment together; at least one is required, so the
/// gateway never starts open by accident.
pub fn load_tokens(args: &Args) -> Result<Tokens, ConfigError> {
    let mut tokens = Tokens::default();
    if let Some(path) = &args.tokens_file {
        tokens.extend(Tokens::from_file(path, args.profile)?);
    }
    if let Some(list) = &args.tokens {
        tokens.extend(Tokens::from_list(list, args.profile)?);
    }
    if tokens.is_empty() {
        return Err(TokenError::None.into());
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        GatewayConfig::default().validate().expect("valid defaults");
    }

    #[test]
    fn a_pong_timeout_shorter_than_the_ping_interval_is_refused() {
        let mut config = GatewayConfig::default();
        config.websocket.pong_timeout = Duration::from_secs(1);
        assert!(config.validate().is_err());
    }

    #[test]
    fn a_malformed_origin_is_refused() {
        let mut config = GatewayConfig::default();
        config.http.cors_origins = vec!["not an origin".into()];
        assert!(config.validate().is_err());
    }
}
