//! The deployment files, checked without Docker or a cluster:
//! - compose/ with a real Compose implementation (`docker-compose config`): valid, and the
//!   scalable worker has neither a host port nor a container name;
//! - what Compose mounts into third-party images, by those projects' own parsers where this
//!   machine has them: Prometheus' configuration with `promtool`, the OpenTelemetry collector's
//!   with an OpenTelemetry collector distribution (Jaeger v2, `validate`), Grafana's
//!   provisioning files read as Grafana reads them (the data sources every dashboard names,
//!   the dashboards folder where Compose mounts it);
//! - deploy/k8s/ rendered by kustomize and validated against the Kubernetes schemas and the
//!   operators' CRD schemas (kubeconform, strict; Strimzi through its generated validators).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Command;

use relais_e2e::repository_root;
use serde::Deserialize as _;
use serde_yaml::Value;

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_compose_file_is_valid_and_the_worker_scales() {
    let root = repository_root();
    let rendered = relais_e2e::compose::render_text(&root, &[relais_e2e::compose::COMPOSE_FILE]);
    let config: Value = serde_yaml::from_str(&rendered).unwrap();
    let services = config["services"].as_mapping().unwrap();
    let worker = &config["services"]["ingest-worker"];
    assert!(
        worker.get("ports").is_none(),
        "the worker publishes no host port"
    );
    assert!(
        worker.get("container_name").is_none(),
        "the worker has no fixed name"
    );
    assert!(worker.get("healthcheck").is_some());

    let dockerfile = std::fs::read_to_string(root.join("deploy/docker/Dockerfile")).unwrap();
    let one_shot = ["init-topics", "init-bucket", "loadgen"];
    for (name, service) in services {
        let name = name.as_str().unwrap();
        assert!(
            service.get("container_name").is_none(),
            "{name}: no container_name"
        );
        // The collector's image has no shell or client to probe with; it starts after Jaeger.
        if !one_shot.contains(&name) && name != "otel-collector" {
            assert!(
                service.get("healthcheck").is_some(),
                "{name} has a healthcheck"
            );
        }
        if let Some(target) = service["build"]["target"].as_str() {
            assert!(
                dockerfile.contains(&format!("AS {target}\n")),
                "{name}: the Dockerfile has no stage {target}"
            );
        }
        if let Some(ports) = service.get("ports").and_then(Value::as_sequence) {
            for port in ports {
                let published = serde_yaml::to_string(port).unwrap();
                assert!(
                    published.contains("127.0.0.1"),
                    "{name} publishes on loopback only: {published}"
                );
            }
        }
    }
    // Everything that needs the topics waits for the job that creates them.
    for name in ["ingest-worker", "audit-service", "realtime-gateway"] {
        assert_eq!(
            config["services"][name]["depends_on"]["init-topics"]["condition"],
            "service_completed_successfully",
            "{name}"
        );
    }
    assert_eq!(
        config["services"]["ingest-worker"]["depends_on"]["realtime-gateway"]["condition"],
        "service_healthy"
    );
    let profiles: BTreeSet<_> = config["services"]["loadgen"]["profiles"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert!(profiles.contains("load"));
}

/// Validated by Strimzi's own generated validators rather than kubeconform.
const STRIMZI_KINDS: [&str; 4] = ["Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"];

#[test]
fn the_kubernetes_manifests_validate_against_their_schemas() {
    let kustomize = relais_test_support::tool("go/bin/kustomize");
    let kubeconform = relais_test_support::tool("go/bin/kubeconform");
    let schemas = relais_test_support::tool("k8s-schemas");
    let models = relais_test_support::tool("node-k8s/node_modules");
    let root = repository_root();
    for overlay in ["deploy/k8s/base", "deploy/k8s/overlays/production"] {
        let rendered = run(Command::new(&kustomize)
            .arg("build")
            .arg(root.join(overlay)));
        let documents: Vec<String> = serde_yaml::Deserializer::from_str(&rendered)
            .map(|document| {
                let value = Value::deserialize(document).unwrap();
                value["kind"].as_str().unwrap().to_owned()
            })
            .collect();
        let strimzi_resources = documents
            .iter()
            .filter(|kind| STRIMZI_KINDS.contains(&kind.as_str()))
            .count();
        let kinds_count = documents.len();
        let kinds: BTreeSet<String> = documents.into_iter().collect();
        for kind in [
            "Kafka",
            "KafkaNodePool",
            "KafkaTopic",
            "CephObjectStore",
            "ObjectBucketClaim",
            "ScaledObject",
            "ServiceMonitor",
            "PodDisruptionBudget",
            "StatefulSet",
            "Deployment",
        ] {
            assert!(kinds.contains(kind), "{overlay} renders a {kind}");
        }
        if overlay.ends_with("production") {
            // Secured: one Kafka identity per service, KEDA logging in too.
            for kind in ["KafkaUser", "TriggerAuthentication"] {
                assert!(kinds.contains(kind), "{overlay} renders a {kind}");
            }
        }

        // kubeconform reads only files named .yaml, .yml or .json.
        let folder = relais_test_support::ScratchDir::new("manifests");
        let file = folder.write("manifests.yaml", &rendered);
        let summary = run(Command::new(&kubeconform)
            .args(["-strict", "-summary", "-kubernetes-version", "1.34.0"])
            .arg("-schema-location")
            .arg(format!(
                "{}/core/v1.34.0/{{{{.ResourceKind}}}}{{{{.KindSuffix}}}}.json",
                schemas.display()
            ))
            .arg("-schema-location")
            .arg(format!(
                "{}/crds/{{{{.Group}}}}/{{{{.ResourceKind}}}}_{{{{.ResourceAPIVersion}}}}.json",
                schemas.display()
            ))
            // Strimzi's kinds are checked below.
            .args(["-skip", &STRIMZI_KINDS.join(",")])
            .arg(&file));
        let expected = format!(
            "{} resources found in 1 file - Valid: {}, Invalid: 0, Errors: 0, Skipped: {strimzi_resources}",
            kinds_count,
            kinds_count - strimzi_resources
        );
        assert!(summary.contains(&expected), "{overlay}: {summary}");
        let strimzi = run(Command::new("node")
            .arg(root.join("deploy/k8s/validate-strimzi.mjs"))
            .env("MODELS", &models)
            .stdin(std::fs::File::open(&file).unwrap()));
        assert!(
            strimzi.contains(&format!("{strimzi_resources} Strimzi resources valid")),
            "{overlay}: {strimzi}"
        );
    }
}

#[test]
fn what_compose_mounts_into_third_party_images_passes_their_own_checks() {
    let root = repository_root();
    let compose = relais_e2e::compose::ComposeFile::render(&root);
    // Every bind mount of the Compose file names something in the repository.
    let mounts: Vec<(String, String)> = compose
        .services
        .values()
        .flat_map(|service| service.volumes.iter())
        .filter(|volume| volume.starts_with('/'))
        .map(|volume| {
            let mut parts = volume.split(':');
            (
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().to_owned(),
            )
        })
        .collect();
    for (source, target) in &mounts {
        assert!(
            std::path::Path::new(source).exists(),
            "Compose mounts {source} at {target}, and it does not exist"
        );
    }
    let mounted_at = |target: &str| {
        mounts
            .iter()
            .find(|(_, mounted)| mounted == target)
            .map(|(source, _)| std::path::PathBuf::from(source))
            .unwrap_or_else(|| panic!("Compose mounts nothing at {target}"))
    };

    // Prometheus' own checker.
    let prometheus_config = mounted_at("/etc/prometheus/prometheus.yml");
    let promtool = run(Command::new("promtool")
        .args(["check", "config"])
        .arg(&prometheus_config));
    assert!(promtool.contains("SUCCESS"), "{promtool}");

    // Its alert rules: each rule file has unit tests beside it (`promtool test rules`), and
    // every metric an alert reads is one the services export (the generated reference).
    let config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&prometheus_config).unwrap()).unwrap();
    let rule_files = config["rule_files"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    assert!(
        !rule_files.is_empty(),
        "Compose's Prometheus loads no alert rules"
    );
    let reference = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    let metric_name = regex::Regex::new(r"\brelais_[a-z_]+").unwrap();
    for rule_file in rule_files {
        let rules = prometheus_config
            .parent()
            .unwrap()
            .join(rule_file.as_str().unwrap());
        let tests = rules.with_extension("test.yml");
        assert!(
            tests.exists(),
            "{} has no unit tests at {}",
            rules.display(),
            tests.display()
        );
        let tested = run(Command::new("promtool").args(["test", "rules"]).arg(&tests));
        assert!(tested.contains("SUCCESS"), "{tested}");
        let text = std::fs::read_to_string(&rules).unwrap();
        let mut names = 0;
        for found in metric_name.find_iter(&text) {
            names += 1;
            let name = found.as_str();
            assert!(
                reference.contains(&format!("`{name}`")),
                "{} reads {name}, which no service exports (docs/metrics.md)",
                rules.display()
            );
        }
        assert!(names > 0, "{} reads no Relais metric", rules.display());
    }

    // The collector's configuration, validated by a collector built on the OpenTelemetry
    // Collector (Jaeger v2): unknown components or malformed settings are refused.
    let collector_config = mounted_at("/etc/otelcol/config.yaml");
    let jaeger = relais_test_support::tool("go/bin/jaeger");
    run(Command::new(&jaeger)
        .arg("validate")
        .arg(format!("--config=file:{}", collector_config.display())));
    let folder = relais_test_support::ScratchDir::new("collector");
    let broken = folder.write(
        "collector.yaml",
        &std::fs::read_to_string(&collector_config).unwrap().replace(
            "[memory_limiter, batch]",
            "[memory_limiter, no_such_processor]",
        ),
    );
    let refused = Command::new(&jaeger)
        .arg("validate")
        .arg(format!("--config=file:{}", broken.display()))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&broken);
    assert!(
        !refused.status.success(),
        "the validator accepts a pipeline with an unknown processor, so it proves nothing"
    );

    // Grafana's provisioning: data sources and the dashboards provider.
    let provisioning = mounted_at("/etc/grafana/provisioning");
    let dashboards_dir = mounted_at("/var/lib/grafana/dashboards");
    let read_yaml = |path: std::path::PathBuf| -> Value {
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    };
    let mut datasource_uids = BTreeSet::new();
    for entry in std::fs::read_dir(provisioning.join("datasources")).unwrap() {
        let file = read_yaml(entry.unwrap().path());
        assert_eq!(file["apiVersion"].as_u64(), Some(1));
        for source in file["datasources"].as_sequence().unwrap() {
            datasource_uids.insert(source["uid"].as_str().unwrap().to_owned());
            // Its URL names a Compose service and a port that service serves.
            let url = source["url"].as_str().unwrap();
            let authority = url.split("://").nth(1).unwrap().split('/').next().unwrap();
            let (host, port) = authority.split_once(':').unwrap();
            let service = compose.service(host);
            assert!(
                service.published_ports().contains(&port.parse().unwrap()),
                "data source {url}: {host} does not serve port {port}"
            );
        }
    }
    let mut providers = 0;
    for entry in std::fs::read_dir(provisioning.join("dashboards")).unwrap() {
        let file = read_yaml(entry.unwrap().path());
        assert_eq!(file["apiVersion"].as_u64(), Some(1));
        for provider in file["providers"].as_sequence().unwrap() {
            providers += 1;
            assert_eq!(provider["type"].as_str(), Some("file"));
            assert_eq!(
                provider["options"]["path"].as_str(),
                Some("/var/lib/grafana/dashboards"),
                "the provider reads where Compose mounts the dashboards"
            );
        }
    }
    assert!(providers > 0, "no dashboards provider");
    let datasource_reference =
        regex::Regex::new(r#""datasource":\s*\{[^}]*"uid":\s*"([^"$]+)""#).unwrap();
    let (mut dashboards, mut references) = (0, 0);
    for entry in std::fs::read_dir(&dashboards_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        dashboards += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
        for uid in datasource_reference.captures_iter(&text) {
            references += 1;
            assert!(
                datasource_uids.contains(&uid[1]),
                "{} names data source {} that Grafana is not given",
                path.display(),
                &uid[1]
            );
        }
    }
    assert!(
        dashboards > 0,
        "no dashboards in {}",
        dashboards_dir.display()
    );
    assert!(
        references > 0,
        "no data source reference found in the dashboards"
    );
}

#[test]
fn the_secured_compose_override_is_valid_and_secures_every_relais_service() {
    let root = repository_root();
    let compose = relais_e2e::compose::ComposeFile::render_with(&root, &["compose/secure.yaml"]);
    for name in [
        "audit-service",
        "realtime-gateway",
        "ingest-worker",
        "loadgen",
    ] {
        let service = compose.service(name);
        assert_eq!(
            service.environment["RELAIS_KAFKA_BOOTSTRAP"], "kafka:19094",
            "{name} uses the secured listener"
        );
        assert_eq!(
            service.environment["RELAIS_KAFKA_SECURITY_PROTOCOL"],
            "sasl_ssl"
        );
        assert!(
            service
                .volumes
                .iter()
                .any(|volume| volume.ends_with("/compose/secure:/run/relais:ro")),
            "{name} mounts the secrets read-only: {:?}",
            service.volumes
        );
    }
    let gateway = compose.service("realtime-gateway");
    assert!(gateway.environment["RELAIS_AUDIT_URL"].starts_with("https://"));
    let worker = compose.service("ingest-worker");
    assert!(worker.environment["RELAIS_GATEWAY_GRPC"].starts_with("https://"));
    let kafka = compose.service("kafka");
    assert!(
        kafka.environment["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].contains("SECURE:SASL_SSL"),
        "{:?}",
        kafka.environment
    );
    assert!(
        !kafka.environment["KAFKA_ADVERTISED_LISTENERS"].contains("SSL://"),
        "the Kafka image's start script wants JKS keystores for a listener named *SSL"
    );
    assert!(compose.services.contains_key("init-users"));
}
