//! The whole pipeline in this test process: upstream-sim, an ingest-worker streaming its status
//! to the gateway, the audit-service writing to the real RGW, and the gateway, each on its own
//! topics of the real broker.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use relais_resilience::UpstreamPolicy;
use relais_resilience::policy::{CircuitPolicy, RetryPolicyConfig};
use relais_telemetry::shutdown::CancellationToken;
use relais_test_support::{Endpoints, KafkaTestEnv, RgwTestEnv, free_port, unique_name};
use serde_json::Value;

use super::{Gateway, test_config};

pub struct Topics {
    pub ingress: String,
    pub audit: String,
    pub events: String,
    pub dlq: String,
    pub control: String,
    pub ledger: String,
}

pub struct Stack {
    pub gateway: Gateway,
    /// The audit-service's gRPC address (`AuditQuery`).
    pub audit_grpc: SocketAddr,
    pub topics: Topics,
    pub sim_admin: SocketAddr,
    stop: CancellationToken,
    /// Stops everything if a test fails before `stop`.
    _stop_on_drop: tokio_util::sync::DropGuard,
    worker: tokio::task::JoinHandle<anyhow::Result<()>>,
    audit: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Stack {
    pub async fn start(kafka: &KafkaTestEnv, rgw: &RgwTestEnv) -> Self {
        super::init_telemetry();
        let stop = CancellationToken::new();
        let topics = Topics {
            ingress: kafka.create_topic("it-ingress", 3).await,
            audit: kafka.create_topic("it-audit", 3).await,
            events: kafka.create_topic("it-events", 3).await,
            dlq: kafka.create_topic("it-dlq", 1).await,
            control: kafka
                .create_topic_with("it-control", 1, &[("cleanup.policy", "compact")])
                .await,
            ledger: kafka
                .create_topic_with("it-replays", 1, &[("cleanup.policy", "compact")])
                .await,
        };
        let worker_group = unique_name("it-group");
        let any = "127.0.0.1:0".parse().unwrap();
        let sim = relais_upstream_sim::start(any, any, 1_000_000, stop.clone())
            .await
            .unwrap();

        let bucket = rgw.create_bucket("it-gateway").await;
        let endpoints = Endpoints::from_env();
        let audit_grpc = free_port();
        let audit_args = relais_audit_service::config::Args {
            config: None,
            kafka_bootstrap: kafka.bootstrap().to_owned(),
            s3_endpoint: endpoints.s3_endpoint,
            s3_region: endpoints.s3_region,
            s3_access_key: Some(endpoints.s3_access_key),
            s3_secret_key: Some(endpoints.s3_secret_key),
            s3_secret_key_file: None,
            profile: Default::default(),
            bucket: bucket.name.clone(),
            admin_addr: free_port(),
            grpc_addr: audit_grpc,
            command: None,
        };
        let mut audit_config = relais_audit_service::config::AuditConfig::default();
        audit_config.kafka.group_id = unique_name("it-audit");
        audit_config.kafka.audit_topic = topics.audit.clone();
        audit_config.objects.idle = Duration::from_millis(500);
        let audit = tokio::spawn(relais_audit_service::run(
            audit_args,
            audit_config,
            stop.clone(),
        ));

        let mut gateway_config = test_config(&topics.events);
        gateway_config.kafka.ingress_topic = topics.ingress.clone();
        gateway_config.kafka.audit_topic = topics.audit.clone();
        gateway_config.kafka.dlq_topic = topics.dlq.clone();
        gateway_config.kafka.control_topic = topics.control.clone();
        gateway_config.kafka.replay_ledger_topic = topics.ledger.clone();
        gateway_config.kafka.worker_group_id = worker_group.clone();
        let gateway = Gateway::start(kafka, gateway_config, &format!("http://{audit_grpc}")).await;

        let policy = UpstreamPolicy {
            attempt_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(250),
            circuit: CircuitPolicy {
                minimum_calls: 10,
                open_duration: Duration::from_secs(2),
                half_open_calls: 3,
                ..CircuitPolicy::default()
            },
            retry: RetryPolicyConfig {
                max_attempts: 3,
                base_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
                ..RetryPolicyConfig::default()
            },
            ..UpstreamPolicy::default()
        };
        let worker_args = relais_ingest_worker::config::Args {
            config: None,
            kafka_bootstrap: kafka.bootstrap().to_owned(),
            worker_id: Some(unique_name("worker")),
            admin_addr: free_port(),
            upstream_url: format!("http://{}", sim.api),
            gateway: None,
            profile: Default::default(),
            command: None,
        };
        let worker_config = relais_ingest_worker::config::WorkerConfig {
            kafka: relais_ingest_worker::config::KafkaConfig {
                group_id: worker_group,
                ingress_topic: topics.ingress.clone(),
                audit_topic: topics.audit.clone(),
                events_topic: topics.events.clone(),
                dlq_topic: topics.dlq.clone(),
                control_topic: topics.control.clone(),
                replay_ledger_topic: topics.ledger.clone(),
                ..relais_ingest_worker::config::KafkaConfig::default()
            },
            upstreams: BTreeMap::from([(
                "default".to_owned(),
                relais_ingest_worker::config::UpstreamConfig {
                    policy,
                    allowed_networks: vec!["loopback".into()],
                    ..relais_ingest_worker::config::UpstreamConfig::at(format!(
                        "http://{}",
                        sim.api
                    ))
                }
                .with_retry_tiers(&[]),
            )]),
            status: relais_ingest_worker::config::StatusConfig {
                gateway: Some(format!("http://{}", gateway.grpc)),
                interval: Duration::from_millis(200),
                ..Default::default()
            },
            ..relais_ingest_worker::config::WorkerConfig::default()
        };
        worker_config.validate().unwrap();
        let worker = tokio::spawn(relais_ingest_worker::run(
            worker_args,
            worker_config,
            stop.clone(),
        ));
        Self {
            gateway,
            audit_grpc,
            topics,
            sim_admin: sim.admin,
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            worker,
            audit,
        }
    }

    pub async fn set_faults(&self, faults: Value) {
        let response = reqwest::Client::new()
            .put(format!("http://{}/admin/faults", self.sim_admin))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    /// Ingress events as producers write them: `valid` good ones, then `invalid` bad ones.
    pub fn ingress_events(prefix: &str, valid: usize, invalid: usize) -> Vec<(String, Vec<u8>)> {
        let now = chrono::Utc::now().to_rfc3339();
        let mut events: Vec<(String, Vec<u8>)> = (0..valid)
            .map(|index| {
                let payload = format!(
                    r#"{{"id":"{prefix}-{index}","type":"order.created","occurred_at":"{now}","source":"test","data":{{"n":{index}}}}}"#
                );
                (format!("entity-{}", index % 50), payload.into_bytes())
            })
            .collect();
        events.extend((0..invalid).map(|index| {
            (
                format!("bad-{index}"),
                format!(r#"{{"id":"{prefix}-bad-{index}","type":"#).into_bytes(),
            )
        }));
        events
    }

    pub async fn produce_ingress(&self, kafka: &KafkaTestEnv, events: &[(String, Vec<u8>)]) {
        use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
        let producer: FutureProducer = kafka.client_config().create().unwrap();
        let mut pending = Vec::new();
        for (key, payload) in events {
            pending.push(
                producer
                    .send_result(
                        FutureRecord::to(&self.topics.ingress)
                            .key(key)
                            .payload(payload),
                    )
                    .unwrap(),
            );
        }
        for delivery in pending {
            delivery.await.unwrap().unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let Self {
            gateway,
            worker,
            audit,
            ..
        } = self;
        let _ = tokio::time::timeout(Duration::from_secs(60), worker).await;
        let _ = tokio::time::timeout(Duration::from_secs(60), audit).await;
        gateway.stop().await;
    }
}
