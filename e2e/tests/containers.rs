//! `make up`, proven by running it: the project's images (built by `make images` from the
//! Dockerfiles users build) run as containers the way `compose/compose.yaml` runs them, against
//! the native Kafka and Prometheus.
//!
//! The Ceph image starts on ports of its own and gets its bucket from Compose's `init-bucket`
//! job; upstream-sim, audit-service, realtime-gateway and two ingest-worker replicas start on
//! ports of their own, each waited for through its Compose health check; one loadgen container
//! pushes a few thousand messages. Then every message has exactly one outcome in the
//! containerised RGW, the gateway's REST API answers with the Compose token (and refuses
//! without it), both workers report to it over gRPC, the native Prometheus scrapes every
//! container, and each Relais container runs as the image's unprivileged user on a read-only
//! root file system, as Compose says.
//!
//! The second test runs the same with `compose/secure.yaml` over it: every Relais service on
//! the broker's TLS and SCRAM listener (the native one), gRPC over TLS with tokens and the
//! gateway's client certificate, the audit-service writing to RGW over HTTPS; the certificates
//! come from `deploy/compose-secure.sh`, issued by the native broker's CA.
//!
//! What differs from Compose, and why (see `relais_e2e::compose`): every container is on the
//! host network, so ports move to free ones; the pipeline's topics and groups are this run's
//! own (the native Kafka is shared with other suites), given to each service as a mounted
//! configuration file; the Ceph monitor gets a port of its own beside the native one.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use relais_e2e::compose::{ComposeFile, Placement};
use relais_e2e::containers::{Container, ContainerSpec, ImageConfig, Podman};
use relais_e2e::verify::{read_audit_trail, verify};
use relais_e2e::{Topics, free_port, repository_root};
use relais_test_support::{Endpoints, unique_name};

/// The Relais services, in the order Compose's `depends_on` starts them.
const SERVICES: [&str; 3] = ["upstream-sim", "audit-service", "realtime-gateway"];
const WORKERS: usize = 2;
const LOAD_SECONDS: u64 = 15;

struct Run {
    compose: ComposeFile,
    podman: Podman,
    placement: Placement,
    images: BTreeMap<String, ImageConfig>,
    dir: PathBuf,
    config_dir: PathBuf,
    volume_dirs: BTreeMap<String, PathBuf>,
    containers: Vec<Container>,
}

impl Run {
    /// The container for `instance` of Compose service `service`, with `extra` settings.
    fn spec(&self, instance: &str, service: &str, extra: &[(&str, String)]) -> ContainerSpec {
        let compose = self.compose.service(service);
        let image = &self.images[compose.image.as_deref().unwrap_or_default()];
        let mut spec = ContainerSpec::from_compose(
            instance,
            compose,
            image,
            &self.placement,
            &self.volume_dirs,
        );
        spec.name = format!("relais-test-{instance}-{}", self.suffix());
        spec.environment.extend(
            extra
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone())),
        );
        spec
    }

    fn suffix(&self) -> String {
        self.dir
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.rsplit('-').next())
            .unwrap_or("run")
            .chars()
            .take(8)
            .collect()
    }

    fn start(&mut self, spec: &ContainerSpec) -> usize {
        self.containers.push(self.podman.start(spec));
        self.containers.len() - 1
    }

    /// Where `instance` serves `/metrics`: its image's admin port (RELAIS_ADMIN_ADDR).
    fn admin(&self, instance: &str, service: &str) -> SocketAddr {
        let image = &self.images[self
            .compose
            .service(service)
            .image
            .as_deref()
            .unwrap_or_default()];
        let port = image
            .environment
            .iter()
            .find(|(name, _)| name == "RELAIS_ADMIN_ADDR")
            .and_then(|(_, address)| address.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(|| panic!("the {service} image sets no RELAIS_ADMIN_ADDR"));
        self.placement.address(instance, port)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for container in &self.containers {
            container.save_log(&self.dir);
        }
        // Newest first, like `docker compose down`; the Ceph container last.
        while self.containers.pop().is_some() {}
    }
}

/// GET on the gateway's REST API with `token`; a refusal fails the test.
async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> serde_json::Value {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|error| panic!("GET {url}: {error}"))
        .json()
        .await
        .unwrap_or_else(|error| panic!("GET {url} answered non-JSON: {error}"))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
}

/// Each service's configuration file: only this run's topics and groups, the rest default.
fn write_configs(dir: &Path, topics: &Topics, group: &str) {
    write(
        &dir.join("ingest-worker.toml"),
        &format!(
            "[kafka]\ngroup_id = \"{group}\"\ningress_topic = \"{}\"\naudit_topic = \"{}\"\nevents_topic = \"{}\"\ndlq_topic = \"{}\"\ncontrol_topic = \"{}\"\nreplay_ledger_topic = \"{}\"\n\n[retry]\ntopic_prefix = \"{}\"\n",
            topics.ingress,
            topics.audit,
            topics.events,
            topics.dlq,
            topics.control,
            topics.ledger,
            topics.retry_prefix
        ),
    );
    write(
        &dir.join("audit-service.toml"),
        &format!(
            "[kafka]\ngroup_id = \"{}\"\naudit_topic = \"{}\"\n",
            unique_name("containers-audit"),
            topics.audit
        ),
    );
    write(
        &dir.join("realtime-gateway.toml"),
        &format!(
            "[kafka]\nevents_topic = \"{}\"\ningress_topic = \"{}\"\naudit_topic = \"{}\"\ndlq_topic = \"{}\"\ncontrol_topic = \"{}\"\nreplay_ledger_topic = \"{}\"\nworker_group_id = \"{group}\"\n",
            topics.events, topics.ingress, topics.audit, topics.dlq, topics.control, topics.ledger
        ),
    );
}

/// The retry topics the workers read: those of the default upstream's default tiers.
fn retry_topic_names(config_dir: &Path) -> Vec<String> {
    use relais_ingest_worker::config::{UpstreamConfig, WorkerConfig};
    let text = std::fs::read_to_string(config_dir.join("ingest-worker.toml")).unwrap();
    let mut config: WorkerConfig = toml::from_str(&text).unwrap();
    config
        .upstreams
        .insert("default".into(), UpstreamConfig::at("http://upstream-sim"));
    config
        .tier_topics()
        .tiers()
        .map(|(_, name, _)| name.to_owned())
        .collect()
}

/// Which Compose files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// `compose/compose.yaml`.
    Plain,
    /// With `compose/secure.yaml` over it.
    Secured,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_run_the_pipeline_as_compose_runs_them() {
    run_as_compose(Variant::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_run_the_pipeline_secured_as_compose_secure_says() {
    run_as_compose(Variant::Secured).await;
}

/// The certificates and secrets `compose/secure.yaml` mounts, for the native broker: its CA
/// and the password of its SCRAM user relais, then the rest issued by `deploy/compose-secure.sh`
/// with that CA.
fn secure_dir(dir: &Path) -> PathBuf {
    let native = Endpoints::from_env().state_dir.join("pki");
    let secure = dir.join("secure");
    std::fs::create_dir_all(&secure).unwrap();
    for file in ["relais-ca.pem", "relais-ca.key", "kafka-relais.secret"] {
        std::fs::copy(native.join(file), secure.join(file)).unwrap_or_else(|error| {
            panic!(
                "{} is missing ({error}): the native Kafka makes it (make infra-up)",
                native.join(file).display()
            )
        });
    }
    let output = std::process::Command::new(repository_root().join("deploy/compose-secure.sh"))
        .arg(&secure)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "deploy/compose-secure.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    secure
}

/// One container stack at a time: two Ceph clusters and two pipelines at once would leave too
/// little of two cores to each.
static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_as_compose(variant: Variant) {
    let _turn = ONE_STACK_AT_A_TIME.lock().await;
    let kafka = relais_test_support::kafka().await;
    let prometheus = relais_test_support::prometheus().await;
    let podman = Podman::connect();
    let compose = match variant {
        Variant::Plain => ComposeFile::render(&repository_root()),
        Variant::Secured => {
            // Fails loudly unless the broker's TLS and SCRAM listener serves.
            let _ = relais_test_support::secured_kafka().await;
            ComposeFile::render_with(&repository_root(), &["compose/secure.yaml"])
        }
    };

    let dir = repository_root()
        .join("artifacts")
        .join("e2e")
        .join(unique_name("containers"));
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let mut volume_dirs = BTreeMap::new();
    let ceph_data = dir.join("ceph-data");
    std::fs::create_dir_all(&ceph_data).unwrap();
    volume_dirs.insert("ceph-data".to_owned(), ceph_data);
    if variant == Variant::Secured {
        let compose_secure = repository_root().join("compose/secure");
        volume_dirs.insert(compose_secure.display().to_string(), secure_dir(&dir));
    }

    // Every port a container listens on (published in the Compose file or exposed by its
    // image) moves to a free one; Kafka is the native broker.
    let mut images = BTreeMap::new();
    let mut placement = Placement::default();
    placement.outside("kafka:19092", kafka.bootstrap());
    placement.outside(
        "kafka:19094",
        &Endpoints::from_env().kafka_sasl_ssl_bootstrap,
    );
    let instances: Vec<(String, &str)> = std::iter::once(("ceph".to_owned(), "ceph"))
        .chain(
            SERVICES
                .iter()
                .map(|service| ((*service).to_owned(), *service)),
        )
        .chain((1..=WORKERS).map(|n| (format!("ingest-worker-{n}"), "ingest-worker")))
        .chain(std::iter::once(("loadgen".to_owned(), "loadgen")))
        .collect();
    for (instance, service) in &instances {
        let compose_service = compose.service(service);
        let image_name = compose_service
            .image
            .clone()
            .unwrap_or_else(|| panic!("Compose service {service} names no image"));
        let image = images
            .entry(image_name.clone())
            .or_insert_with(|| podman.image(&image_name))
            .clone();
        let mut ports = compose_service.published_ports();
        ports.extend(image.exposed_ports.iter().copied());
        ports.sort_unstable();
        ports.dedup();
        for port in ports {
            placement.place(instance, port, free_port());
        }
    }
    // The collector is not part of this run: spans go nowhere, as with a collector down.
    placement.outside("otel-collector:4317", &free_port().to_string());

    let topics = Topics::create(&kafka, 3).await;
    let group = unique_name("containers-ingest");
    write_configs(&config_dir, &topics, &group);
    topics
        .create_retry_topics(&kafka, retry_topic_names(&config_dir), 3)
        .await;

    let mut run = Run {
        compose,
        podman,
        placement,
        images,
        dir,
        config_dir,
        volume_dirs,
        containers: Vec::new(),
    };
    let started = Instant::now();

    // Ceph, then the bucket, as Compose orders them.
    let ceph_spec = run.spec(
        "ceph",
        "ceph",
        &[("RELAIS_CEPH_MON_PORT", free_port().port().to_string())],
    );
    let ceph = run.start(&ceph_spec);
    run.containers[ceph].wait_healthy(Duration::from_secs(240));
    let ceph_ready = started.elapsed();
    let bucket_spec = run.spec("init-bucket", "init-bucket", &[]);
    let bucket_job = run.start(&bucket_spec);
    let exit = run.containers[bucket_job].wait_exit(Duration::from_secs(60));
    let bucket_log = run.containers[bucket_job].log();
    assert_eq!(exit, 0, "init-bucket failed: {bucket_log}");
    assert!(
        bucket_log.contains("HTTP 200"),
        "init-bucket did not create the bucket: {bucket_log}"
    );

    // The services, each with its configuration file mounted read-only.
    let mount = format!("{}:/etc/relais:ro", run.config_dir.display());
    let config_variable = |service: &str| match service {
        "audit-service" => Some("RELAIS_AUDIT_CONFIG"),
        "realtime-gateway" => Some("RELAIS_GATEWAY_CONFIG"),
        "ingest-worker" => Some("RELAIS_WORKER_CONFIG"),
        _ => None,
    };
    let mut service_containers = Vec::new();
    for (instance, service) in instances
        .iter()
        .filter(|(_, service)| *service != "ceph" && *service != "loadgen")
    {
        let extra: Vec<(&str, String)> = config_variable(service)
            .map(|variable| (variable, format!("/etc/relais/{service}.toml")))
            .into_iter()
            .collect();
        let mut spec = run.spec(instance, service, &extra);
        spec.volumes.push(mount.clone());
        let index = run.start(&spec);
        // depends_on: service_healthy, in the order above.
        run.containers[index].wait_healthy(Duration::from_secs(120));
        service_containers.push((instance.clone(), *service, index));
    }
    let services_ready = started.elapsed();

    // Prometheus scrapes every container, loadgen included.
    let mut targets = Vec::new();
    for (instance, service) in &instances {
        if *service != "ceph" {
            let admin = run.admin(instance, service);
            targets.push((
                instance.clone(),
                prometheus.register_target(&format!("containers-{service}"), admin),
            ));
        }
    }

    // One loadgen run: Compose's command, shortened, on this run's topic.
    let mut load_spec = run.spec("loadgen", "loadgen", &[]);
    load_spec.command.extend([
        "--seconds".to_owned(),
        LOAD_SECONDS.to_string(),
        "--topic".to_owned(),
        topics.ingress.clone(),
    ]);
    let load = run.start(&load_spec);
    let exit = run.containers[load].wait_exit(Duration::from_secs(LOAD_SECONDS + 90));
    let load_log = run.containers[load].log();
    assert_eq!(exit, 0, "loadgen failed: {load_log}");
    let summary: serde_json::Value = load_log
        .lines()
        .rev()
        .find_map(|line| {
            serde_json::from_str(line)
                .ok()
                .filter(|v: &serde_json::Value| v.get("sent").is_some())
        })
        .unwrap_or_else(|| panic!("no loadgen summary in its log: {load_log}"));
    let sent = summary["sent"].as_u64().expect("a count of messages sent");
    assert!(sent >= 2000, "loadgen sent only {sent} messages: {summary}");

    // Every message: one outcome, stored once in the containerised RGW.
    let ceph_port = run.placement.address("ceph", 7480).port();
    let endpoints = Endpoints {
        s3_endpoint: format!("http://127.0.0.1:{ceph_port}"),
        s3_access_key: run.compose.service("ceph").environment["RELAIS_S3_ACCESS_KEY"].clone(),
        s3_secret_key: run.compose.service("ceph").environment["RELAIS_S3_SECRET_KEY"].clone(),
        audit_bucket: run.compose.service("ceph").environment["RELAIS_S3_BUCKET"].clone(),
        ..Endpoints::from_env()
    };
    let rgw = relais_test_support::rgw_at(&endpoints).await;
    let drained = Instant::now();
    loop {
        let stored: std::collections::BTreeSet<_> = read_audit_trail(&rgw, &endpoints.audit_bucket)
            .await
            .into_iter()
            .map(|(position, _)| position)
            .collect();
        if stored.len() as u64 >= sent {
            break;
        }
        assert!(
            drained.elapsed() < Duration::from_secs(180),
            "after 180 s only {} of {sent} messages have an outcome in RGW",
            stored.len()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let verdict = verify(&kafka, &rgw, &topics, &endpoints.audit_bucket).await;
    assert_eq!(verdict.messages, sent, "{verdict:?}");
    assert!(verdict.is_exact(), "{verdict:?}");
    assert!(
        verdict.dead_lettered > 0,
        "the scenario's invalid input reached the DLQ: {verdict:?}"
    );

    // The gateway's REST API, with Compose's viewer token and without.
    let gateway_http = run.placement.address("realtime-gateway", 8080);
    let tokens = &run.compose.service("realtime-gateway").environment["RELAIS_TOKENS"];
    let viewer = tokens
        .split(',')
        .find_map(|entry| {
            entry
                .strip_prefix("viewer:")?
                .split_once(':')
                .map(|(_, secret)| secret.to_owned())
        })
        .expect("a viewer token in Compose's RELAIS_TOKENS");
    let http = reqwest::Client::new();
    let stats = http
        .get(format!("http://{gateway_http}/api/v1/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 401, "the REST API answers without a token");
    let workers_seen = Instant::now();
    loop {
        let workers = get_json(
            &http,
            &format!("http://{gateway_http}/api/v1/workers"),
            &viewer,
        )
        .await;
        let reported = workers["workers"].as_array().map_or(0, Vec::len);
        if reported >= WORKERS {
            break;
        }
        assert!(
            workers_seen.elapsed() < Duration::from_secs(30),
            "both workers report to the gateway over gRPC: {workers}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // One message's trace through the gateway: its event, and its audit record found by the
    // audit-service in RGW over AuditQuery (gRPC; TLS, a client certificate and a token when
    // secured).
    let events = get_json(
        &http,
        &format!("http://{gateway_http}/api/v1/events?limit=20"),
        &viewer,
    )
    .await;
    let trace_id = events["events"][0]["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("the gateway saw no event: {events}"))
        .to_owned();
    let trace = get_json(
        &http,
        &format!("http://{gateway_http}/api/v1/traces/{trace_id}"),
        &viewer,
    )
    .await;
    assert_eq!(trace["partial"], false, "the audit lookup failed: {trace}");
    assert!(
        trace["audit"]
            .as_array()
            .is_some_and(|records| !records.is_empty()),
        "no audit record for trace {trace_id}: {trace}"
    );

    if variant == Variant::Secured {
        for (instance, _, index) in &service_containers {
            if instance == "upstream-sim" {
                continue;
            }
            let log = run.containers[*index].log();
            assert!(
                log.contains("\"security_protocol\":\"sasl_ssl\"")
                    && log.contains("\"sasl_user\":\"relais\""),
                "{instance} did not reach Kafka through TLS and SCRAM: {}",
                run.containers[*index].log_tail(20)
            );
        }
    }

    // Prometheus has scraped every container; the workers' counters add up to the run.
    for (_, target) in &targets {
        prometheus
            .wait_for(
                &format!(
                    "max_over_time(up{{instance=\"{}\"}}[10m]) == 1",
                    target.instance
                ),
                Duration::from_secs(30),
            )
            .await;
    }
    let worker_instances: Vec<&str> = targets
        .iter()
        .filter(|(instance, _)| instance.starts_with("ingest-worker"))
        .map(|(_, target)| target.instance.as_str())
        .collect();
    prometheus
        .wait_for(
            &format!(
                "sum(relais_worker_committed_messages_total{{instance=~\"{}\"}}) >= {sent}",
                worker_instances.join("|")
            ),
            Duration::from_secs(30),
        )
        .await;

    // Each Relais container as Compose runs it: the image's user, a read-only root.
    for (instance, service, index) in &service_containers {
        let container = &run.containers[*index];
        let compose = run.compose.service(service);
        let image = &run.images[compose.image.as_deref().unwrap_or_default()];
        let (_, uid) = container.exec(&["id", "-u"]);
        assert_eq!(
            uid.trim(),
            image.user.split(':').next().unwrap_or_default(),
            "{instance} runs as its image's user"
        );
        assert_ne!(uid.trim(), "0", "{instance} runs as root");
        let (wrote, message) = container.exec(&["touch", "/written-by-test"]);
        assert_eq!(
            !wrote,
            compose.read_only,
            "{instance}: read_only is {} in Compose, and writing / {}: {message}",
            compose.read_only,
            if wrote { "worked" } else { "failed" }
        );
    }
    eprintln!(
        "containers ({variant:?}): Ceph healthy after {:.0?}, every service after {:.0?}, {sent} messages with one outcome each after {:.0?}",
        ceph_ready,
        services_ready,
        started.elapsed()
    );
}
