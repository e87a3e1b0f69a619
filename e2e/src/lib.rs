//! The services as real processes, for system tests.
//!
//! [`ProcessStack`] starts upstream-sim, audit-service, realtime-gateway and ingest-workers
//! from the workspace's built binaries, on free ports, with topics and a bucket of their own
//! on the native stack, registers every admin endpoint with the real Prometheus, and stops
//! (or kills) them on demand. Tests that need a binary that was not built fail with the
//! command that builds it. [`containers`] runs the project's images the way Compose runs them.

pub mod compose;
pub mod containers;
pub mod scenario;
mod secured;
mod service;
pub mod verify;
mod worker_config;

pub use relais_test_support::free_port;
use service::{Launcher, worker_service};
pub use service::{Service, binary, repository_root};
pub use worker_config::RETRY_TIERS;
use worker_config::worker_config_text;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use relais_test_support::{
    Endpoints, KafkaTestEnv, PrometheusTestEnv, RgwTestEnv, SecuredKafka, unique_name,
};

/// Topics of one stack.
#[derive(Debug, Clone)]
pub struct Topics {
    pub ingress: String,
    pub audit: String,
    pub events: String,
    pub dlq: String,
    /// The upstream control topic and the replay ledger, the stack's own.
    pub control: String,
    pub ledger: String,
    /// The prefix of the stack's retry topics (one per delay of [`RETRY_TIERS`]).
    pub retry_prefix: String,
    pub ingress_partitions: i32,
}

/// Partitions of a stack's audit topic.
pub const AUDIT_PARTITIONS: i32 = 6;

impl Topics {
    /// New topics for one stack (the retry tiers' topics are made by [`Self::create_retry_topics`],
    /// once the tiers are known).
    pub async fn create(kafka: &KafkaTestEnv, ingress_partitions: i32) -> Self {
        Self {
            ingress: kafka.create_topic("e2e-ingress", ingress_partitions).await,
            audit: kafka.create_topic("e2e-audit", AUDIT_PARTITIONS).await,
            events: kafka.create_topic("e2e-events", 6).await,
            dlq: kafka.create_topic("e2e-dlq", 1).await,
            control: kafka
                .create_topic_with("e2e-control", 1, &[("cleanup.policy", "compact")])
                .await,
            ledger: kafka
                .create_topic_with("e2e-replays", 1, &[("cleanup.policy", "compact")])
                .await,
            retry_prefix: unique_name("e2e-retry"),
            ingress_partitions,
        }
    }

    /// The retry tiers' topics (`{retry_prefix}.{delay}` each), as partitioned as the ingress.
    pub async fn create_retry_topics(
        &self,
        kafka: &KafkaTestEnv,
        names: impl IntoIterator<Item = String>,
        partitions: i32,
    ) {
        for name in names {
            kafka.create_named_topic(&name, partitions, &[]).await;
        }
    }
}

/// What a stack is started with.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub workers: usize,
    /// OTLP endpoint (such as `http://127.0.0.1:4317`) all services export traces to.
    pub otlp_endpoint: Option<String>,
    pub ingress_partitions: i32,
    /// A second upstream-sim, upstream `billing`, which receives the `billing.*` events.
    pub billing_upstream: bool,
    /// audit-service instances in the one group (partitions move between them).
    pub audit_instances: usize,
    /// Everything secured: every service reaches Kafka through the secured listeners (the
    /// workers with SCRAM-SHA-512, the audit-service with mutual TLS, the gateway with PLAIN
    /// over TLS), and both gRPC services require TLS and a token (`AuditQuery` also a client
    /// certificate).
    pub secured: Option<SecuredKafka>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            otlp_endpoint: None,
            ingress_partitions: 6,
            billing_upstream: false,
            audit_instances: 1,
            secured: None,
        }
    }
}

/// The services as processes; see the crate docs.
#[derive(Debug)]
pub struct ProcessStack {
    pub topics: Topics,
    pub bucket: String,
    pub sim: Service,
    pub sim_api: SocketAddr,
    /// The `billing` upstream's simulator (see [`StackOptions::billing_upstream`]).
    pub billing_sim: Option<Service>,
    pub audit: Service,
    pub audit_grpc: SocketAddr,
    /// audit-service instances beyond the first, in the same group.
    pub audit_replicas: Vec<Service>,
    pub gateway: Service,
    pub gateway_http: SocketAddr,
    pub gateway_grpc: SocketAddr,
    pub workers: Vec<Service>,
    pub viewer_token: String,
    pub dir: PathBuf,
    launcher: Launcher,
    worker_config: PathBuf,
    next_worker: usize,
    /// What a secured stack's variables name, kept while its services run.
    _secured_files: Option<relais_test_support::TestPki>,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text)
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
}

impl ProcessStack {
    pub async fn start(
        kafka: &KafkaTestEnv,
        rgw: &RgwTestEnv,
        prometheus: Option<&PrometheusTestEnv>,
        options: StackOptions,
    ) -> Self {
        let dir = repository_root()
            .join("artifacts")
            .join("e2e")
            .join(unique_name("stack"));
        std::fs::create_dir_all(&dir).expect("stack directory");
        let topics = Topics::create(kafka, options.ingress_partitions).await;
        topics
            .create_retry_topics(
                kafka,
                RETRY_TIERS.map(|delay| format!("{}.{delay}", topics.retry_prefix)),
                options.ingress_partitions,
            )
            .await;
        let bucket = rgw.create_bucket("e2e").await.name.clone();
        let endpoints = Endpoints::from_env();
        let mut common = vec![(
            "RELAIS_KAFKA_BOOTSTRAP".to_owned(),
            kafka.bootstrap().to_owned(),
        )];
        let audit_grpc = free_port();
        let gateway_grpc = free_port();
        let mut audit_secured = Vec::new();
        let mut gateway_secured = Vec::new();
        let mut secured_files = None;
        if let Some(kafka) = &options.secured {
            let secured = secured::SecuredEnvironments::new(kafka, audit_grpc, gateway_grpc);
            common.extend(secured.workers);
            audit_secured = secured.audit;
            gateway_secured = secured.gateway;
            secured_files = Some(secured.files);
        }
        if let Some(endpoint) = &options.otlp_endpoint {
            common.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
            common.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()));
        }
        let launcher = Launcher {
            common,
            dir: dir.clone(),
            prometheus: prometheus.cloned(),
        };
        let service = |name: &str, binary_name: &str, admin: SocketAddr, extra| {
            launcher.service(name, binary_name, admin, extra)
        };

        let sim_api = free_port();
        let mut sim = service(
            "upstream-sim",
            "upstream-sim",
            free_port(),
            vec![("RELAIS_SIM_LISTEN", sim_api.to_string())],
        );
        sim.spawn();
        let billing = options.billing_upstream.then(|| {
            let api = free_port();
            let mut billing = service(
                "upstream-sim-billing",
                "upstream-sim",
                free_port(),
                vec![("RELAIS_SIM_LISTEN", api.to_string())],
            );
            billing.spawn();
            (billing, api)
        });

        let audit_config = dir.join("audit-service.toml");
        write(
            &audit_config,
            &format!(
                "[kafka]\ngroup_id = \"{}\"\naudit_topic = \"{}\"\n[objects]\nidle = \"1s\"\n",
                unique_name("e2e-audit"),
                topics.audit
            ),
        );
        let audit_service = |name: &str, grpc: SocketAddr| {
            let mut environment = vec![
                ("RELAIS_AUDIT_CONFIG", audit_config.display().to_string()),
                ("RELAIS_GRPC_ADDR", grpc.to_string()),
                ("RELAIS_S3_ENDPOINT", endpoints.s3_endpoint.clone()),
                ("RELAIS_S3_REGION", endpoints.s3_region.clone()),
                ("RELAIS_S3_ACCESS_KEY", endpoints.s3_access_key.clone()),
                ("RELAIS_S3_SECRET_KEY", endpoints.s3_secret_key.clone()),
                ("RELAIS_S3_BUCKET", bucket.clone()),
            ];
            environment.extend(audit_secured.iter().map(|(k, v)| (k.as_str(), v.clone())));
            service(name, "audit-service", free_port(), environment)
        };
        let mut audit = audit_service("audit-service", audit_grpc);
        audit.spawn();
        let mut audit_replicas: Vec<Service> = (1..options.audit_instances.max(1))
            .map(|index| audit_service(&format!("audit-service-{index}"), free_port()))
            .collect();
        for replica in &mut audit_replicas {
            replica.spawn();
        }

        let gateway_http = free_port();
        let viewer_token = format!("e2e-viewer-{}", unique_name("t"));
        let group = unique_name("e2e-ingest");
        let gateway_config = dir.join("realtime-gateway.toml");
        write(
            &gateway_config,
            &format!(
                "[kafka]\nevents_topic = \"{}\"\ningress_topic = \"{}\"\naudit_topic = \"{}\"\ndlq_topic = \"{}\"\ncontrol_topic = \"{}\"\nreplay_ledger_topic = \"{}\"\nworker_group_id = \"{group}\"\n[http]\nrate_limit_per_second = 1000.0\nrate_limit_burst = 1000.0\n",
                topics.events,
                topics.ingress,
                topics.audit,
                topics.dlq,
                topics.control,
                topics.ledger
            ),
        );
        let mut gateway_environment = vec![
            (
                "RELAIS_GATEWAY_CONFIG",
                gateway_config.display().to_string(),
            ),
            ("RELAIS_HTTP_ADDR", gateway_http.to_string()),
            ("RELAIS_GRPC_ADDR", gateway_grpc.to_string()),
            ("RELAIS_AUDIT_URL", format!("http://{audit_grpc}")),
            ("RELAIS_TOKENS", format!("viewer:e2e:{viewer_token}")),
        ];
        gateway_environment.extend(gateway_secured.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let mut gateway = service(
            "realtime-gateway",
            "realtime-gateway",
            free_port(),
            gateway_environment,
        );
        gateway.spawn();

        let worker_config = dir.join("ingest-worker.toml");
        write(
            &worker_config,
            &worker_config_text(
                &topics,
                &group,
                sim_api,
                billing.as_ref().map(|(_, api)| *api),
                gateway_grpc,
            ),
        );
        let mut workers = Vec::new();
        for index in 0..options.workers {
            let mut worker = worker_service(&launcher, &worker_config, index);
            worker.spawn();
            workers.push(worker);
        }
        let within = Duration::from_secs(60);
        sim.wait_ready(within).await;
        if let Some((billing, _)) = &billing {
            billing.wait_ready(within).await;
        }
        audit.wait_ready(within).await;
        for replica in &audit_replicas {
            replica.wait_ready(within).await;
        }
        gateway.wait_ready(within).await;
        for worker in &workers {
            worker.wait_ready(within).await;
        }
        Self {
            topics,
            bucket,
            sim,
            sim_api,
            billing_sim: billing.map(|(billing, _)| billing),
            audit,
            audit_grpc,
            audit_replicas,
            gateway,
            gateway_http,
            gateway_grpc,
            workers,
            viewer_token,
            dir,
            launcher,
            worker_config,
            next_worker: options.workers,
            _secured_files: secured_files,
        }
    }

    /// Starts one more worker replica and waits until it is ready.
    pub async fn add_worker(&mut self) {
        let mut worker = worker_service(&self.launcher, &self.worker_config, self.next_worker);
        self.next_worker += 1;
        worker.spawn();
        worker.wait_ready(Duration::from_secs(60)).await;
        self.workers.push(worker);
    }

    /// Stops the newest worker replica gracefully (it commits what it handled).
    pub fn remove_worker(&mut self) {
        if let Some(mut worker) = self.workers.pop() {
            worker.stop(Duration::from_secs(60));
        }
    }

    /// A metric summed over every audit-service instance.
    pub async fn audit_metric_sum(&self, name: &str) -> f64 {
        let mut sum = self.audit.metric_sum(name).await;
        for replica in &self.audit_replicas {
            sum += replica.metric_sum(name).await;
        }
        sum
    }

    /// What is still to do, or None while that cannot be known: a service that does not answer,
    /// or partitions no instance holds (a group rejoining after a broker outage has revoked
    /// them, and with them their lag and uncommitted figures). Messages behind the end
    /// of the ingress, waiting in retry tiers, read and not committed; audit records not read
    /// or not stored.
    pub async fn backlog(&self) -> Option<f64> {
        let mut backlog = 0.0;
        let mut audit_assigned = 0.0;
        for audit in std::iter::once(&self.audit).chain(&self.audit_replicas) {
            backlog += audit.read_metric_sum("relais_audit_consumer_lag").await?
                + audit.read_metric_sum("relais_audit_buffer_records").await?;
            audit_assigned += audit
                .read_metric_sum("relais_audit_assigned_partitions")
                .await?;
        }
        let mut assigned = 0.0;
        for worker in &self.workers {
            backlog += worker.read_metric_sum("relais_worker_consumer_lag").await?
                + worker
                    .read_metric_sum("relais_worker_retry_waiting_messages")
                    .await?
                + worker
                    .read_metric_sum("relais_worker_uncommitted_messages")
                    .await?;
            assigned += worker
                .read_metric_sum("relais_worker_assigned_partitions")
                .await?;
        }
        let all_held = assigned == f64::from(self.topics.ingress_partitions)
            && audit_assigned == f64::from(AUDIT_PARTITIONS);
        all_held.then_some(backlog)
    }

    /// Whether every audit-service instance says it is ready.
    pub async fn audit_ready(&self) -> bool {
        for instance in std::iter::once(&self.audit).chain(&self.audit_replicas) {
            let ready = reqwest::get(format!("http://{}/readyz", instance.admin))
                .await
                .is_ok_and(|response| response.status() == 200);
            if !ready {
                return false;
            }
        }
        true
    }

    /// upstream-sim's admin URL (faults).
    pub fn sim_admin(&self) -> String {
        format!("http://{}", self.sim.admin)
    }

    /// Runs `loadgen ingress` with `scenario` against this stack's topic and simulator, and
    /// returns its JSON summary.
    pub fn load(&self, kafka: &KafkaTestEnv, scenario: &Path, extra: &[&str]) -> serde_json::Value {
        let output = Command::new(binary("loadgen"))
            .args([
                "--kafka-bootstrap",
                kafka.bootstrap(),
                "ingress",
                "--scenario",
            ])
            .arg(scenario)
            .args([
                "--topic",
                &self.topics.ingress,
                "--sim-admin",
                &self.sim_admin(),
            ])
            .args(["--admin-addr", &free_port().to_string()])
            .args(extra)
            .output()
            .expect("loadgen runs");
        assert!(
            output.status.success(),
            "loadgen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("loadgen summary JSON")
    }

    /// GET on the gateway's REST API with the viewer token.
    pub async fn gateway_get(&self, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("http://{}{path}", self.gateway_http))
            .bearer_auth(&self.viewer_token)
            .send()
            .await
            .expect("gateway answers")
    }

    /// Every service, by the job name it is scraped under.
    pub fn services(&self) -> BTreeMap<&'static str, Vec<&Service>> {
        BTreeMap::from([
            (
                "upstream-sim",
                std::iter::once(&self.sim)
                    .chain(self.billing_sim.as_ref())
                    .collect(),
            ),
            (
                "audit-service",
                std::iter::once(&self.audit)
                    .chain(&self.audit_replicas)
                    .collect(),
            ),
            ("realtime-gateway", vec![&self.gateway]),
            ("ingest-worker", self.workers.iter().collect()),
        ])
    }

    /// Stops everything gracefully, workers first.
    pub fn stop(mut self) {
        for worker in &mut self.workers {
            worker.stop(Duration::from_secs(60));
        }
        self.gateway.stop(Duration::from_secs(20));
        self.audit.stop(Duration::from_secs(60));
        for replica in &mut self.audit_replicas {
            replica.stop(Duration::from_secs(60));
        }
        self.sim.stop(Duration::from_secs(10));
        if let Some(billing) = &mut self.billing_sim {
            billing.stop(Duration::from_secs(10));
        }
    }
}
