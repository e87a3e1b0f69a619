//! The gateway binary when one of its essential tasks dies (a debug build's injected panic):
//! it was ready, and then it stops with a non-zero exit and the reason, instead of serving a
//! feed that no longer moves.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use relais_test_support::{free_port, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_intake_task_stops_the_gateway_non_zero() {
    relais_test_support::install_crypto_provider();
    let kafka = relais_test_support::kafka().await;
    let compacted = [("cleanup.policy", "compact")];
    let config = format!(
        "[kafka]\nevents_topic = \"{}\"\ningress_topic = \"{}\"\ndlq_topic = \"{}\"\naudit_topic = \"{}\"\ncontrol_topic = \"{}\"\nreplay_ledger_topic = \"{}\"\nwarm_up = \"0s\"\n",
        kafka.create_topic("it-events", 2).await,
        kafka.create_topic("it-ingress", 1).await,
        kafka.create_topic("it-dlq", 1).await,
        kafka.create_topic("it-audit", 1).await,
        kafka.create_topic_with("it-control", 1, &compacted).await,
        kafka.create_topic_with("it-replays", 1, &compacted).await,
    );
    let name = unique_name("dying-gateway");
    let files = relais_test_support::ScratchDir::new(&name);
    let config_file = files.write("gateway.toml", &config);
    let log = files.file("gateway.log");
    let output = std::fs::File::create(&log).unwrap();
    let admin = free_port();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_realtime-gateway"))
        .env("RELAIS_GATEWAY_CONFIG", &config_file)
        .env("RELAIS_KAFKA_BOOTSTRAP", kafka.bootstrap())
        .env("RELAIS_HTTP_ADDR", free_port().to_string())
        .env("RELAIS_GRPC_ADDR", free_port().to_string())
        .env("RELAIS_ADMIN_ADDR", admin.to_string())
        .env("RELAIS_TOKENS", "viewer:viewer:viewer-token-0123456789")
        .env("RUST_LOG", "warn")
        .env(relais_telemetry::tasks::KILL_TASK_ENV, "intake@4000")
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .unwrap();

    let readyz = format!("http://{admin}/readyz");
    // Ready once it has read the topic; the intake dies four seconds after it started.
    let mut was_ready = false;
    let ready_or_gone = async {
        loop {
            if let Ok(response) = reqwest::get(&readyz).await {
                was_ready |= response.status() == reqwest::StatusCode::OK;
            }
            if was_ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), ready_or_gone).await;
    let status = relais_test_support::wait_for_exit(&mut gateway, Duration::from_secs(60)).await;
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(was_ready, "it was ready before the task died: {written}");
    assert!(!status.success(), "exit status {status}");
    assert!(
        written.contains("task intake stopped before shutdown"),
        "the reason is logged: {written}"
    );
}
