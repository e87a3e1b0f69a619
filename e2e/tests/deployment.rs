//! The deployment files, checked without Docker or a cluster:
//! - compose/ with a real Compose implementation (`docker-compose config`): valid, and the
//!   scalable worker has neither a host port nor a container name;
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
    assert!(
        Command::new("docker-compose")
            .arg("version")
            .output()
            .is_ok(),
        "docker-compose is required by this test: install it with deploy/native/test-tools.sh"
    );
    let root = repository_root();
    let rendered = run(Command::new("docker-compose")
        .args([
            "--project-directory",
            "compose",
            "-f",
            "compose/compose.yaml",
            "config",
        ])
        .current_dir(&root));
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
            .filter(|kind| ["Kafka", "KafkaNodePool", "KafkaTopic"].contains(&kind.as_str()))
            .count();
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

        let file = std::env::temp_dir().join(relais_test_support::unique_name("manifests"));
        std::fs::write(&file, &rendered).unwrap();
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
            .args(["-skip", "Kafka,KafkaNodePool,KafkaTopic"])
            .arg(&file));
        assert!(
            summary.contains("Invalid: 0, Errors: 0"),
            "{overlay}: {summary}"
        );
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
