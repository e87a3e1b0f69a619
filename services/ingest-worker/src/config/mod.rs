//! The worker's configuration: a TOML file for the pipeline, routing and per-upstream policy,
//! with the deployment-specific values (brokers, identity, ports) from flags or `RELAIS_*`
//! variables. [`WorkerConfig::validate`] checks the settings against each other at start-up.

mod args;
mod sections;
mod upstream;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

pub use args::{Args, Command};
use sections::{DEFAULT_MESSAGE_MAX_BYTES, DLQ_RECORD_OVERHEAD_BYTES};
pub use sections::{
    DlqConfig, IngressLimits, KafkaConfig, PipelineConfig, RetryConfig, RouteRule, RoutingConfig,
    StatusConfig,
};
pub use upstream::{Credentials, OAuth2Config, UpstreamAuth, UpstreamConfig, UpstreamTlsConfig};

/// Longest `pipeline.handover_timeout`: every member of the group waits for it in a rebalance.
const LONGEST_HANDOVER: Duration = Duration::from_secs(60);

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
        if !(1..=2_097_151).contains(&self.kafka.prefetch_kbytes) {
            // librdkafka's range for queued.max.messages.kbytes.
            return invalid("kafka.prefetch_kbytes must be between 1 and 2097151".into());
        }
        let most_metadata = crate::tracker::ahead::MOST_METADATA;
        if self.kafka.offset_metadata_max_bytes > most_metadata {
            return invalid(format!(
                "kafka.offset_metadata_max_bytes must be at most {most_metadata}"
            ));
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
        if pipeline.handover_timeout > LONGEST_HANDOVER {
            return invalid(format!(
                "pipeline.handover_timeout ({:?}) is above {LONGEST_HANDOVER:?}: the whole group's rebalance waits for it",
                pipeline.handover_timeout
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
        config.pipeline.handover_timeout = Duration::from_secs(120);
        let error = config.validate().expect_err("a handover that long");
        assert!(error.to_string().contains("handover_timeout"), "{error}");
        config.pipeline.handover_timeout = Duration::ZERO;
        config.validate().expect("no handover wait");
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
        config.kafka.prefetch_kbytes = 0;
        let error = config.validate().expect_err("no prefetch at all");
        assert!(error.to_string().contains("prefetch_kbytes"), "{error}");
        config.kafka.prefetch_kbytes = 4096;
        config.kafka.offset_metadata_max_bytes = 100_000;
        let error = config
            .validate()
            .expect_err("more metadata than a worker reads");
        assert!(
            error.to_string().contains("offset_metadata_max_bytes"),
            "{error}"
        );
        config.kafka.offset_metadata_max_bytes = 0;
        config.validate().expect("nothing committed ahead");
        assert!(
            config.kafka.delivery_timeout() < config.kafka.transaction_timeout,
            "a round's records fail before its transaction times out on the broker"
        );
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
