//! The worker's configuration: a TOML file for the pipeline, routing and per-upstream policy,
//! with the deployment-specific values (brokers, identity, ports) from flags or `RELAIS_*`
//! variables. [`WorkerConfig::validate`] checks the settings against each other at start-up.

mod args;
mod upstream;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

pub use args::{Args, Command};
pub use upstream::{Credentials, OAuth2Config, UpstreamAuth, UpstreamConfig, UpstreamTlsConfig};

/// The configuration file.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub kafka: KafkaConfig,
    pub pipeline: PipelineConfig,
    pub ingress: IngressLimits,
    pub routing: RoutingConfig,
    /// Upstreams by name; an event's `route` (or the routing rules) picks one.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub status: StatusConfig,
    pub dlq: DlqConfig,
    pub retry: RetryConfig,
}

/// How much of an original message its dead-letter copy keeps. Every record the worker writes
/// must stay below the broker's size limit whatever it read; what a copy leaves out is said in
/// its `relais-dlq-truncated`, `relais-dlq-original-bytes` and `relais-dlq-original-sha256`
/// headers, and the untruncated original stays in the ingress topic for its retention.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DlqConfig {
    /// Payload bytes kept. At least `ingress.max_payload_bytes`, so that every valid message
    /// that failed delivery is copied whole and can be replayed.
    pub max_payload_bytes: usize,
    /// Bytes of the original headers kept (names and values added up); later headers are
    /// left out.
    pub max_header_bytes: usize,
    /// Key bytes kept.
    pub max_key_bytes: usize,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_header_bytes: 16 * 1024,
            max_key_bytes: 4 * 1024,
        }
    }
}

impl DlqConfig {
    pub fn limits(&self) -> crate::dlq::DlqLimits {
        crate::dlq::DlqLimits {
            max_payload_bytes: self.max_payload_bytes,
            max_header_bytes: self.max_header_bytes,
            max_key_bytes: self.max_key_bytes,
        }
    }
}

/// librdkafka's default `message.max.bytes`, the producer's own limit on a record.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room left in a DLQ record for the worker's own headers (reason, detail, position, ...).
const DLQ_RECORD_OVERHEAD_BYTES: usize = 16 * 1024;

/// Retry tiers (each upstream's schedule is its `retry_tiers`; see ARCHITECTURE.md).
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Each distinct tier delay has the topic `{topic_prefix}.{delay}` (`relais.retry.5m`),
    /// with as many partitions as the ingress topic.
    pub topic_prefix: String,
    /// A message that has waited this long for its turn (rate limit, a short Retry-After, a
    /// full bulkhead) moves to its next retry tier, freeing its partition's commit position; one
    /// whose upstream is down (circuit open, held) moves at once. For upstreams without tiers
    /// it waits on in memory.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub in_memory_wait: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            topic_prefix: "relais.retry".into(),
            in_memory_wait: Duration::from_secs(5),
        }
    }
}

/// Where this replica streams its status (the realtime-gateway's `WorkerReport` service).
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StatusConfig {
    /// gRPC address of the gateway, such as `http://127.0.0.1:50052`; no reporting when unset.
    pub gateway: Option<String>,
    /// How often a snapshot is sent.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// How the worker reaches the gateway (`https://` for TLS): the CA, a client
    /// certificate, a bearer token; variables `RELAIS_STATUS_*`.
    pub client: relais_grpc::GrpcClientConfig,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            gateway: None,
            interval: Duration::from_secs(2),
            client: relais_grpc::GrpcClientConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Consumer group shared by all worker replicas.
    pub group_id: String,
    pub ingress_topic: String,
    pub audit_topic: String,
    pub events_topic: String,
    pub dlq_topic: String,
    /// The replay ledger (compacted): which DLQ records `replay-dlq` has replayed, so none is
    /// replayed twice whatever filters later runs use.
    pub replay_ledger_topic: String,
    /// Whether each upstream is enabled (compacted, keyed by upstream name): a worker disables
    /// an upstream that answered 410, an operator re-enables it through the gateway.
    pub control_topic: String,
    /// A replica that misses heartbeats this long loses its partitions.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub session_timeout: Duration,
    /// An open transaction of a dead replica is aborted by the broker after this long (unless
    /// the replica comes back first and fences it).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub transaction_timeout: Duration,
    /// Limit of one blocking transactional call (send offsets, commit, abort). A commit that
    /// runs out is not aborted: it may complete in the background, so it is asked again until
    /// its result is known.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub transaction_call_timeout: Duration,
    /// How every Kafka client of the worker reaches the brokers (TLS, SASL, further
    /// librdkafka settings), the same section in every service.
    pub client: relais_kafka::KafkaClientConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            group_id: "relais-ingest".into(),
            ingress_topic: "relais.ingress".into(),
            audit_topic: "relais.audit".into(),
            events_topic: "relais.events".into(),
            dlq_topic: "relais.dlq".into(),
            replay_ledger_topic: "relais.dlq-replays".into(),
            control_topic: "relais.upstream-control".into(),
            session_timeout: Duration::from_secs(10),
            transaction_timeout: Duration::from_secs(30),
            transaction_call_timeout: Duration::from_secs(10),
            client: relais_kafka::KafkaClientConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Messages waiting for each upstream, at most (its deliveries in flight not counted);
    /// beyond, the partition a message came from waits, and pauses if the wait goes on.
    /// Default: 8 × the upstream's `max_in_flight`, at least 256: a queue much shorter than
    /// what the upstream has in flight runs dry while paused partitions are fetched again.
    pub max_queued_per_upstream: Option<usize>,
    /// How often outcomes are committed (one transaction each time).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub commit_interval: Duration,
    /// Outcomes per transaction at most.
    pub max_batch: usize,
    /// While the circuit of an upstream without retry tiers is open: false (default) waits for
    /// it, pausing consumption; true dead-letters at once. (With tiers the message moves to its
    /// next tier at once either way, and is dead-lettered only after the last.)
    pub fail_fast_when_open: bool,
    /// How long shutdown may take: in-flight deliveries finish or are abandoned (and
    /// redelivered later), handled ones are committed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
    /// Messages of one partition read and not yet committed, at most; beyond, the partition
    /// pauses until commits catch up (while the transaction coordinator is away, say).
    pub max_uncommitted_per_partition: usize,
    /// Messages read and not yet committed over all partitions, at most. Each holds its outcome
    /// records until committed (about 1 KiB; a dead-letter copy up to dlq.max_payload_bytes).
    pub max_uncommitted: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_queued_per_upstream: None,
            commit_interval: Duration::from_millis(100),
            max_batch: 1000,
            fail_fast_when_open: false,
            drain_timeout: Duration::from_secs(20),
            max_uncommitted_per_partition: 5_000,
            max_uncommitted: 20_000,
        }
    }
}

/// Ingress limits (see the `relais-ingress` crate).
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IngressLimits {
    pub max_payload_bytes: usize,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_future_skew: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
}

impl Default for IngressLimits {
    fn default() -> Self {
        let limits = relais_ingress::Limits::default();
        Self {
            max_payload_bytes: limits.max_payload_bytes,
            max_future_skew: limits
                .max_future_skew
                .to_std()
                .unwrap_or(Duration::from_secs(86_400)),
            max_age: limits
                .max_age
                .to_std()
                .unwrap_or(Duration::from_secs(365 * 86_400)),
        }
    }
}

/// Which upstream an event goes to when it does not name one.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    pub default_upstream: String,
    /// First match wins: events whose type starts with `type_prefix` go to `upstream`.
    pub rules: Vec<RouteRule>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            default_upstream: "default".into(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    pub type_prefix: String,
    pub upstream: String,
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] relais_telemetry::process::ConfigFileError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Kafka(#[from] relais_kafka::KafkaConfigError),
    #[error(transparent)]
    Grpc(#[from] relais_grpc::GrpcSecurityError),
    #[error("upstream {name}")]
    Policy {
        name: String,
        #[source]
        source: relais_resilience::policy::PolicyError,
    },
}

impl WorkerConfig {
    /// How the worker's Kafka clients reach the brokers: `kafka.client` resolved, its secret
    /// files read.
    pub fn kafka_client(
        &self,
        bootstrap: &str,
    ) -> Result<relais_kafka::KafkaClient, relais_kafka::KafkaConfigError> {
        self.kafka.client.resolve(bootstrap)
    }

    /// Where status reports go, with their TLS settings and token read; none when
    /// `status.gateway` is unset.
    pub fn status_gateway(
        &self,
    ) -> Result<Option<crate::status::GatewayAddress>, relais_grpc::GrpcSecurityError> {
        let Some(url) = &self.status.gateway else {
            return Ok(None);
        };
        let (endpoint, token) =
            self.status
                .client
                .endpoint("status.client", "RELAIS_STATUS", url)?;
        Ok(Some(crate::status::GatewayAddress {
            url: url.clone(),
            endpoint,
            token,
        }))
    }

    /// What the worker must be allowed to use, for the start-up check.
    pub fn kafka_needs(&self) -> relais_kafka::access::Needs {
        let kafka = &self.kafka;
        let mut topics = vec![
            kafka.ingress_topic.clone(),
            kafka.audit_topic.clone(),
            kafka.events_topic.clone(),
            kafka.dlq_topic.clone(),
            kafka.control_topic.clone(),
            kafka.replay_ledger_topic.clone(),
        ];
        topics.extend(
            self.tier_topics()
                .tiers()
                .map(|(_, topic, _)| topic.to_owned()),
        );
        relais_kafka::access::Needs {
            topics,
            group: Some(kafka.group_id.clone()),
        }
    }

    /// Messages queued for `upstream` at most (see `pipeline.max_queued_per_upstream`).
    pub fn max_queued(&self, upstream: &UpstreamConfig) -> usize {
        self.pipeline
            .max_queued_per_upstream
            .unwrap_or_else(|| (8 * upstream.max_in_flight()).max(256))
    }

    /// The topics the worker reads: the ingress topic and the retry tiers of every upstream.
    pub fn tier_topics(&self) -> crate::retry::TierTopics {
        let schedules: Vec<Vec<Duration>> = self
            .upstreams
            .values()
            .map(UpstreamConfig::retry_tiers)
            .collect();
        crate::retry::TierTopics::new(
            &self.kafka.ingress_topic,
            &self.retry.topic_prefix,
            schedules.iter().map(Vec::as_slice),
        )
    }

    /// Where `replay-dlq` reads and writes.
    pub fn replay_target(
        &self,
        kafka: relais_kafka::KafkaClient,
    ) -> relais_operator::replay::ReplayTarget {
        relais_operator::replay::ReplayTarget {
            kafka,
            dlq_topic: self.kafka.dlq_topic.clone(),
            ingress_topic: self.kafka.ingress_topic.clone(),
            ledger_topic: self.kafka.replay_ledger_topic.clone(),
            transactional_id: relais_operator::replay::ReplayTarget::transactional_id_of(
                &self.kafka.group_id,
            ),
        }
    }

    /// Loads the file (or the defaults) and fills in what the command line provides.
    pub fn load(args: &Args) -> Result<Self, ConfigError> {
        let mut config: Self = relais_telemetry::process::load_toml(args.config.as_deref())?;
        if config.upstreams.is_empty() {
            // The flag is the development path (the native stack, Compose): its upstream may
            // be on this machine or the deployment's own network. A configured upstream is
            // public unless its allowed_networks says otherwise.
            let mut upstream = UpstreamConfig::at(&args.upstream_url);
            upstream.allowed_networks = vec!["loopback".into(), "private".into()];
            config.upstreams.insert("default".into(), upstream);
        }
        if args.gateway.is_some() {
            config.status.gateway = args.gateway.clone();
        }
        config.validate()?;
        for (name, upstream) in &config.upstreams {
            upstream
                .signer()
                .map_err(|reason| ConfigError::Invalid(format!("upstream {name}: {reason}")))?;
            upstream
                .credentials(args.profile)
                .map_err(|reason| ConfigError::Invalid(format!("upstream {name}: {reason}")))?;
            upstream
                .client_options()
                .map_err(|reason| ConfigError::Invalid(format!("upstream {name}: {reason}")))?;
        }
        if let Some(gateway) = config.status_gateway()? {
            use relais_telemetry::secrets::{SecretKind, rule};
            gateway
                .token
                .check(rule(
                    "status.client.token_file",
                    SecretKind::Token,
                    args.profile,
                ))
                .map_err(ConfigError::Invalid)?;
        }
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if !self.upstreams.contains_key(&self.routing.default_upstream) {
            return invalid(format!(
                "routing.default_upstream {:?} is not among the upstreams ({})",
                self.routing.default_upstream,
                self.upstreams
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(rule) = self
            .routing
            .rules
            .iter()
            .find(|rule| !self.upstreams.contains_key(&rule.upstream))
        {
            return invalid(format!(
                "routing rule for {:?} names unknown upstream {:?}",
                rule.type_prefix, rule.upstream
            ));
        }
        for (name, upstream) in &self.upstreams {
            upstream
                .policy
                .validate()
                .map_err(|source| ConfigError::Policy {
                    name: name.clone(),
                    source,
                })?;
            if upstream.max_in_flight == Some(0) {
                return invalid(format!("upstream {name}: max_in_flight must be at least 1"));
            }
            upstream
                .check_destination(name)
                .map_err(ConfigError::Invalid)?;
            if let Err(reason) = crate::retry::validate_schedule(&upstream.retry_tiers()) {
                return invalid(format!("upstream {name}: retry_tiers: {reason}"));
            }
        }
        let pipeline = &self.pipeline;
        if pipeline.max_queued_per_upstream == Some(0) || pipeline.max_batch == 0 {
            return invalid(
                "pipeline.max_queued_per_upstream and max_batch must be at least 1".into(),
            );
        }
        if pipeline.max_uncommitted_per_partition == 0
            || pipeline.max_uncommitted < pipeline.max_uncommitted_per_partition
        {
            return invalid(format!(
                "pipeline.max_uncommitted_per_partition ({}) must be at least 1 and at most pipeline.max_uncommitted ({})",
                pipeline.max_uncommitted_per_partition, pipeline.max_uncommitted
            ));
        }
        if self.retry.in_memory_wait.is_zero() {
            return invalid("retry.in_memory_wait must be positive".into());
        }
        if self.retry.topic_prefix.is_empty()
            || !self
                .retry
                .topic_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return invalid(format!(
                "retry.topic_prefix {:?} is not a Kafka topic name (letters, digits, '.', '_', '-')",
                self.retry.topic_prefix
            ));
        }
        if self.kafka.transaction_call_timeout.is_zero() {
            return invalid("kafka.transaction_call_timeout must be positive".into());
        }
        // A transaction must be able to outlive the slowest commit cycle, and a replica must
        // heartbeat well within the session timeout while draining.
        if self.kafka.transaction_timeout <= pipeline.commit_interval * 10 {
            return invalid(
                "kafka.transaction_timeout must be well above pipeline.commit_interval".into(),
            );
        }
        let dlq = &self.dlq;
        if dlq.max_payload_bytes < self.ingress.max_payload_bytes {
            return invalid(format!(
                "dlq.max_payload_bytes ({}) is below ingress.max_payload_bytes ({}): valid messages that fail delivery would be dead-lettered cut and could not be replayed",
                dlq.max_payload_bytes, self.ingress.max_payload_bytes
            ));
        }
        let message_max_bytes = match self.kafka.client.settings.get("message.max.bytes") {
            Some(value) => value.parse::<usize>().map_err(|_| {
                ConfigError::Invalid(format!(
                    "kafka.client.settings.\"message.max.bytes\" must be a number of bytes, not {value:?}"
                ))
            })?,
            None => DEFAULT_MESSAGE_MAX_BYTES,
        };
        let largest_dlq_record = dlq.max_payload_bytes
            + dlq.max_header_bytes
            + dlq.max_key_bytes
            + DLQ_RECORD_OVERHEAD_BYTES;
        if largest_dlq_record > message_max_bytes {
            return invalid(format!(
                "a DLQ copy may reach {largest_dlq_record} bytes (dlq.max_payload_bytes + max_header_bytes + max_key_bytes + {DLQ_RECORD_OVERHEAD_BYTES} for the worker's headers), above the producer's message.max.bytes ({message_max_bytes}): lower the dlq limits"
            ));
        }
        if pipeline.drain_timeout >= self.kafka.transaction_timeout {
            return invalid(format!(
                "pipeline.drain_timeout ({:?}) must be shorter than kafka.transaction_timeout ({:?}), or a drain could outlive its own transaction",
                pipeline.drain_timeout, self.kafka.transaction_timeout
            ));
        }
        Ok(())
    }

    pub fn normaliser_limits(&self) -> relais_ingress::Limits {
        relais_ingress::Limits {
            max_payload_bytes: self.ingress.max_payload_bytes,
            max_future_skew: chrono::Duration::from_std(self.ingress.max_future_skew)
                .unwrap_or(chrono::Duration::hours(24)),
            max_age: chrono::Duration::from_std(self.ingress.max_age)
                .unwrap_or(chrono::Duration::days(365)),
            ..relais_ingress::Limits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_and_validates() {
        let config: WorkerConfig = toml::from_str(
            r#"
            [pipeline]
            max_queued_per_upstream = 16
            commit_interval = "50ms"
            [routing]
            default_upstream = "orders"
            rules = [{ type_prefix = "billing.", upstream = "billing" }]
            [upstreams.orders]
            url = "https://orders.example.com"
            [upstreams.billing]
            url = "http://127.0.0.1:8091"
            allowed_networks = ["loopback"]
            path = "/ingest"
            [upstreams.billing.policy]
            attempt_timeout = "1s"
            connect_timeout = "250ms"
            [upstreams.billing.policy.retry]
            max_attempts = 3
            "#,
        )
        .expect("parses");
        config.validate().expect("valid");
        assert_eq!(
            config.upstreams["orders"].retry_tiers(),
            crate::retry::DEFAULT_TIERS,
            "the default schedule"
        );
        assert_eq!(config.max_queued(&config.upstreams["orders"]), 16);
        let mut wide = config.clone();
        wide.pipeline.max_queued_per_upstream = None;
        let mut upstream = config.upstreams["orders"].clone();
        upstream.max_in_flight = Some(1000);
        assert_eq!(
            wide.max_queued(&upstream),
            8000,
            "8 x max_in_flight by default"
        );
        upstream.max_in_flight = Some(4);
        assert_eq!(wide.max_queued(&upstream), 256, "and at least 256");
        assert_eq!(config.upstreams["billing"].policy.retry.max_attempts, 3);
        assert_eq!(config.upstreams["orders"].path, "/events");
    }

    #[test]
    fn internal_addresses_need_their_range_allowed() {
        let config = |url: &str, allowed: &str| -> WorkerConfig {
            toml::from_str(&format!(
                "[routing]\ndefault_upstream = \"a\"\n[upstreams.a]\nurl = \"{url}\"\nallowed_networks = [{allowed}]\n"
            ))
            .expect("parses")
        };
        let error = config("http://127.0.0.1:8090", "")
            .validate()
            .expect_err("loopback");
        assert!(
            error
                .to_string()
                .contains("127.0.0.1 is a loopback address"),
            "{error}"
        );
        let error = config("http://169.254.169.254/latest", "\"private\"")
            .validate()
            .expect_err("metadata service");
        assert!(error.to_string().contains("link-local"), "{error}");
        config("http://127.0.0.1:8090", "\"loopback\"")
            .validate()
            .expect("allowed");
        config("http://10.1.2.3", "\"10.1.0.0/16\"")
            .validate()
            .expect("allowed by CIDR");
        // Host names are checked when they are resolved, not here.
        config("http://upstream.internal", "")
            .validate()
            .expect("resolved later");
        let error = config("http://127.0.0.1", "\"intranet\"")
            .validate()
            .expect_err("unknown range");
        assert!(error.to_string().contains("intranet"), "{error}");
    }

    #[test]
    fn contradictions_are_reported() {
        let mut config: WorkerConfig = toml::from_str(
            r#"
            [upstreams.a]
            url = "http://127.0.0.1:1"
            allowed_networks = ["loopback"]
            "#,
        )
        .expect("parses");
        assert!(
            config.validate().is_err(),
            "default upstream 'default' does not exist"
        );
        config.routing.default_upstream = "a".into();
        config.validate().expect("valid now");
        config.pipeline.drain_timeout = Duration::from_secs(60);
        let error = config
            .validate()
            .expect_err("drain longer than transaction timeout");
        assert!(error.to_string().contains("drain_timeout"), "{error}");
        assert!(
            toml::from_str::<WorkerConfig>("[pipeline]\nlane = 3").is_err(),
            "typos are caught"
        );
        config.pipeline.drain_timeout = Duration::from_secs(5);
        config.dlq.max_payload_bytes = 1024;
        let error = config
            .validate()
            .expect_err("DLQ copies below the ingress limit");
        assert!(
            error.to_string().contains("dlq.max_payload_bytes"),
            "{error}"
        );
        config.dlq.max_payload_bytes = 2 * 1024 * 1024;
        let error = config
            .validate()
            .expect_err("DLQ copies above the producer's limit");
        assert!(error.to_string().contains("message.max.bytes"), "{error}");
        config
            .kafka
            .client
            .settings
            .insert("message.max.bytes".into(), "4000000".into());
        config.validate().expect("a producer limit that fits");
        let mut bad: WorkerConfig = toml::from_str(
            r#"
            [routing]
            default_upstream = "a"
            [upstreams.a]
            url = "https://a.example.com"
            retry_tiers = ["5m", "5s"]
            "#,
        )
        .expect("parses");
        let error = bad.validate().expect_err("a decreasing schedule");
        assert!(error.to_string().contains("retry_tiers"), "{error}");
        bad.upstreams.get_mut("a").unwrap().retry_tiers.clear();
        bad.validate().expect("no tiers is valid");
        bad.retry.topic_prefix = "retry topics".into();
        let error = bad.validate().expect_err("a space in a topic name");
        assert!(error.to_string().contains("topic_prefix"), "{error}");
        assert!(
            toml::from_str::<WorkerConfig>("[upstreams.a]\nurl = \"x\"\nretry_tiers = [\"soon\"]")
                .is_err(),
            "an unreadable delay"
        );
    }
}
