//! A worker, an upstream-sim and their own Kafka topics, all in this test process, against the
//! real broker of the native stack.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // shared by several test binaries, each using a part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use relais_ingest_worker::config::{
    Args, KafkaConfig, PipelineConfig, UpstreamConfig, WorkerConfig,
};
use relais_resilience::UpstreamPolicy;
use relais_telemetry::shutdown::CancellationToken;
use relais_test_support::{KafkaTestEnv, unique_name};
use serde_json::Value;

mod hot_keys;
mod reading;
mod tiers;
#[allow(unused_imports)] // each test binary uses a part
pub use hot_keys::{hot_and_cold, produce_to_partitions};
#[allow(unused_imports)] // each test binary uses a part
pub use reading::{
    Read, all_delivered_once, assert_exactly_once, audit_records, detach, is_operator_action,
    read_exactly, read_exactly_where, read_outcomes, retry_events_until,
};
#[allow(unused_imports)] // each test binary uses a part
pub use tiers::{config_with_tiers, quick_policy, secs};

pub struct Sim {
    pub api: SocketAddr,
    pub admin: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Sim {
    pub async fn start() -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap()).await
    }

    /// A simulator whose API listens on `api` (an address the test kept free until now).
    pub async fn start_at(api: SocketAddr) -> Self {
        Self::start_with(api, relais_upstream_sim::auth::AuthChecks::default()).await
    }

    /// A simulator that answers 401 to deliveries that fail `auth`.
    pub async fn start_checking(auth: relais_upstream_sim::auth::AuthChecks) -> Self {
        Self::start_with("127.0.0.1:0".parse().unwrap(), auth).await
    }

    /// A simulator whose API is HTTPS, with mutual TLS when `tls` names a client CA.
    pub async fn start_tls(tls: relais_upstream_sim::tls::ApiTls) -> Self {
        Self::start_options(
            "127.0.0.1:0".parse().unwrap(),
            relais_upstream_sim::SimOptions {
                key_capacity: 1_000_000,
                tls: Some(tls),
                ..relais_upstream_sim::SimOptions::default()
            },
        )
        .await
    }

    async fn start_with(api: SocketAddr, auth: relais_upstream_sim::auth::AuthChecks) -> Self {
        Self::start_options(
            api,
            relais_upstream_sim::SimOptions {
                key_capacity: 1_000_000,
                auth,
                tls: None,
            },
        )
        .await
    }

    async fn start_options(api: SocketAddr, options: relais_upstream_sim::SimOptions) -> Self {
        let shutdown = CancellationToken::new();
        let any = "127.0.0.1:0".parse().unwrap();
        let running = relais_upstream_sim::start_with(api, any, options, shutdown.clone())
            .await
            .unwrap();
        Self {
            api: running.api,
            admin: running.admin,
            shutdown,
        }
    }

    pub async fn set_faults(&self, faults: Value) {
        let response = reqwest::Client::new()
            .put(format!("http://{}/admin/faults", self.admin))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    pub async fn deliveries(&self) -> Value {
        reqwest::get(format!("http://{}/admin/deliveries", self.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Topics of one test.
#[derive(Clone, Debug)]
pub struct Topics {
    pub ingress: String,
    pub audit: String,
    pub events: String,
    pub dlq: String,
    /// The upstream control topic; each test has its own, so no test sees another's upstreams
    /// disabled.
    pub control: String,
    /// The prefix of this test's retry topics (created by [`create_retry_topics`]).
    pub retry_prefix: String,
    pub ingress_partitions: i32,
}

impl Topics {
    pub async fn create(kafka: &KafkaTestEnv, ingress_partitions: i32) -> Self {
        Self {
            ingress: kafka.create_topic("it-ingress", ingress_partitions).await,
            audit: kafka.create_topic("it-audit", 3).await,
            events: kafka.create_topic("it-events", 3).await,
            dlq: kafka.create_topic("it-dlq", 1).await,
            control: kafka
                .create_topic_with("it-control", 1, &[("cleanup.policy", "compact")])
                .await,
            retry_prefix: unique_name("it-retry"),
            ingress_partitions,
        }
    }
}

/// Creates the retry topics `config` reads, with the ingress topic's partitions.
pub async fn create_retry_topics(kafka: &KafkaTestEnv, topics: &Topics, config: &WorkerConfig) {
    for (_, topic, _) in config.tier_topics().tiers() {
        kafka
            .create_named_topic(topic, topics.ingress_partitions, &[])
            .await;
    }
}

pub use relais_test_support::free_port;

pub fn init_telemetry() {
    relais_test_support::install_crypto_provider();
    static TELEMETRY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let guard = relais_telemetry::init(&relais_telemetry::TelemetryConfig {
            service_name: "ingest-worker-test",
            service_version: "0",
            default_log_filter: "warn",
        })
        .unwrap();
        std::mem::forget(guard);
    });
}

/// A worker running in this process.
pub struct Worker {
    pub admin: SocketAddr,
    /// Its identity: its transactional id is `relais-ingest-{worker_id}`.
    pub worker_id: String,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    pub fn start(
        kafka: &KafkaTestEnv,
        topics: &Topics,
        group: &str,
        upstream: SocketAddr,
        policy: UpstreamPolicy,
        pipeline: PipelineConfig,
    ) -> Self {
        Self::start_with(kafka, topics, group, upstream, policy, pipeline, None)
    }

    pub fn start_with(
        kafka: &KafkaTestEnv,
        topics: &Topics,
        group: &str,
        upstream: SocketAddr,
        policy: UpstreamPolicy,
        pipeline: PipelineConfig,
        gateway: Option<String>,
    ) -> Self {
        let config = worker_config(topics, group, upstream, policy, pipeline, gateway);
        Self::start_config(kafka, config)
    }

    /// Starts a worker with a configuration of the test's own (see [`worker_config`]).
    pub fn start_config(kafka: &KafkaTestEnv, config: WorkerConfig) -> Self {
        let admin = free_port();
        let upstream_url = config
            .upstreams
            .values()
            .next()
            .map(|upstream| upstream.url.clone())
            .unwrap_or_default();
        let worker_id = unique_name("worker");
        let args = Args {
            config: None,
            kafka_bootstrap: kafka.bootstrap().to_owned(),
            worker_id: Some(worker_id.clone()),
            admin_addr: admin,
            upstream_url,
            gateway: None,
            profile: Default::default(),
            command: None,
        };
        config.validate().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relais_ingest_worker::run(args, config, shutdown.clone()));
        Self {
            admin,
            worker_id,
            shutdown,
            task,
        }
    }

    /// The admin endpoint's `/readyz` status code; 0 while it is not up.
    pub async fn readyz(&self) -> u16 {
        reqwest::get(format!("http://{}/readyz", self.admin))
            .await
            .map_or(0, |response| response.status().as_u16())
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// A metric's value (see `AdminMetrics::read`: strict about the endpoint and the name).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        relais_test_support::AdminMetrics::new(self.admin)
            .read(name_and_labels)
            .await
    }

    /// Waits, up to a minute, until a metric reaches `at_least`.
    pub async fn wait_for_metric(&self, name_and_labels: &str, at_least: f64) -> f64 {
        relais_test_support::AdminMetrics::new(self.admin)
            .wait_for_at_least(name_and_labels, at_least, Duration::from_secs(60))
            .await
    }
}

/// A worker configuration for the test's topics and one upstream named `default`.
pub fn worker_config(
    topics: &Topics,
    group: &str,
    upstream: SocketAddr,
    policy: UpstreamPolicy,
    pipeline: PipelineConfig,
    gateway: Option<String>,
) -> WorkerConfig {
    WorkerConfig {
        kafka: KafkaConfig {
            group_id: group.to_owned(),
            ingress_topic: topics.ingress.clone(),
            audit_topic: topics.audit.clone(),
            events_topic: topics.events.clone(),
            dlq_topic: topics.dlq.clone(),
            control_topic: topics.control.clone(),
            ..KafkaConfig::default()
        },
        pipeline,
        // Without tiers unless a test gives them (and creates their topics).
        upstreams: BTreeMap::from([(
            "default".to_owned(),
            UpstreamConfig {
                policy,
                // The upstream-sim of a test is on this machine.
                allowed_networks: vec!["loopback".into()],
                ..UpstreamConfig::at(format!("http://{upstream}"))
            }
            .with_retry_tiers(&[]),
        )]),
        retry: relais_ingest_worker::config::RetryConfig {
            topic_prefix: topics.retry_prefix.clone(),
            ..Default::default()
        },
        status: relais_ingest_worker::config::StatusConfig {
            gateway,
            interval: Duration::from_millis(200),
            ..Default::default()
        },
        ..WorkerConfig::default()
    }
}

/// Every upstream of `config` at `limit` calls in flight, never adapted.
pub fn fixed_in_flight(config: &mut WorkerConfig, limit: usize) {
    for upstream in config.upstreams.values_mut() {
        upstream.max_in_flight = Some(limit);
        upstream.adaptive_concurrency = false;
    }
}

pub async fn produce(kafka: &KafkaTestEnv, topic: &str, messages: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for (key, payload) in messages {
        pending.push(
            producer
                .send_result(FutureRecord::to(topic).key(key).payload(payload))
                .unwrap(),
        );
    }
    for delivery in pending {
        delivery.await.unwrap().unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// `n` valid events of `event_type` with keys spread over `keys` entities, each carrying its
/// key and its sequence within that key in `data` (`order_key`, `seq`) for upstream-sim's
/// order check.
pub fn ordered_events(
    prefix: &str,
    event_type: &str,
    n: usize,
    keys: usize,
) -> Vec<(String, Vec<u8>)> {
    let now = chrono::Utc::now().to_rfc3339();
    (0..n)
        .map(|index| {
            let key = format!("{prefix}-entity-{}", index % keys);
            let payload = format!(
                r#"{{"id":"{prefix}-{index}","type":"{event_type}","occurred_at":"{now}","source":"test","data":{{"order_key":"{key}","seq":{}}}}}"#,
                index / keys
            );
            (key, payload.into_bytes())
        })
        .collect()
}

/// Two for `first`, one for `second`, in turn, until `first` runs out (the rest of `second`
/// is left out).
pub fn interleave(
    first: Vec<(String, Vec<u8>)>,
    second: Vec<(String, Vec<u8>)>,
) -> Vec<(String, Vec<u8>)> {
    let mut messages = Vec::new();
    let mut second = second.into_iter();
    for (index, message) in first.into_iter().enumerate() {
        messages.push(message);
        if index % 2 == 1
            && let Some(next) = second.next()
        {
            messages.push(next);
        }
    }
    messages
}

/// `n` valid events with keys spread over `keys` entities.
pub fn valid_events(prefix: &str, n: usize, keys: usize) -> Vec<(String, Vec<u8>)> {
    let now = chrono::Utc::now().to_rfc3339();
    (0..n)
        .map(|index| {
            let payload = format!(
                r#"{{"id":"{prefix}-{index}","type":"order.created","occurred_at":"{now}","source":"test","data":{{"n":{index}}}}}"#
            );
            (format!("entity-{}", index % keys), payload.into_bytes())
        })
        .collect()
}

pub fn started_at(attempt: &relais_proto::v1::Attempt) -> std::time::SystemTime {
    let timestamp = attempt.started_at.unwrap();
    std::time::UNIX_EPOCH + Duration::new(timestamp.seconds as u64, timestamp.nanos as u32)
}
