//! The OpenAPI document is valid OpenAPI, and schemathesis, generating requests from it
//! against a running gateway with real events, finds no server error.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use relais_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openapi_document_validates_and_fuzzing_it_finds_no_server_error() {
    let validator = relais_test_support::tool("venv/bin/openapi-spec-validator");
    let schemathesis = relais_test_support::tool("venv/bin/schemathesis");
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-events", 2).await;
    let gateway = Gateway::for_topic(&kafka, &topic).await;
    let events: Vec<_> = (0..50)
        .map(|index| {
            pipeline_event(&EventSpec {
                index,
                upstream: "alpha",
                outcome: v1::Outcome::Delivered,
                attempts: 1,
                latency_us: 900,
                timed_out: false,
                circuit: v1::CircuitState::Closed,
            })
        })
        .collect();
    produce(&producer(&kafka), &topic, &events).await;

    let document = gateway
        .get("/api/v1/openapi.json", Some(VIEWER_TOKEN))
        .await;
    assert_eq!(document.status(), 200);
    let document = document.text().await.unwrap();
    let folder = relais_test_support::ScratchDir::new("openapi");
    let dir = folder.path().to_owned();
    let file = folder.write("openapi.json", &document);
    // A lookup's window is schema-valid whatever its ends; one whose `from` is after its `to`,
    // or longer than the audit-service allows, is refused with a 400 on purpose, and so is a
    // message id no worker could have written (control characters, too long).
    let lookup = |path: &str| {
        format!(
            "[[operations]]\n\
             include-path = \"{path}\"\n\
             checks.positive_data_acceptance.expected-statuses = \
             [\"2xx\", 400, 401, 403, 404, 429, \"5xx\"]\n"
        )
    };
    std::fs::write(
        dir.join("schemathesis.toml"),
        lookup("/api/v1/traces/{trace_id}") + &lookup("/api/v1/messages/{message_id}"),
    )
    .unwrap();

    let validated = Command::new(&validator).arg(&file).output().unwrap();
    assert!(
        validated.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    let base_url = gateway.url("");
    let fuzzed = tokio::task::spawn_blocking(move || {
        Command::new(&schemathesis)
            .arg("run")
            .arg(&file)
            .args(["--url", &base_url])
            .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .args(["--checks", "all"])
            .args(["--max-examples", "40"])
            // A WebSocket handshake is not something an HTTP fuzzer can generate; the feed
            // has its own tests.
            .args(["--exclude-path", "/ws"])
            .args(["--seed", "7"])
            .env("SCHEMATHESIS_HOOKS", "")
            .current_dir(&dir)
            .output()
            .unwrap()
    });
    let fuzzed = tokio::time::timeout(Duration::from_secs(600), fuzzed)
        .await
        .expect("schemathesis within 10 minutes")
        .unwrap();
    let report = String::from_utf8_lossy(&fuzzed.stdout);
    assert!(
        fuzzed.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&fuzzed.stderr)
    );
    gateway.stop().await;
}
