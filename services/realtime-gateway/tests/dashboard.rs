//! The dashboard in a real headless browser against the running pipeline: live events appear,
//! an upstream outage shows as an open circuit, and the screenshot is kept in
//! `artifacts/dashboard.png`.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::stack::Stack;
use common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_live_events_and_a_circuit_opening() {
    let node_modules = relais_test_support::tool("node/node_modules");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is required by this test: install it with deploy/native/test-tools.sh"
    );
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let stack = Stack::start(&kafka, &rgw).await;
    let screenshot = relais_test_support::artifacts_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.cjs");
    let mut browser = tokio::process::Command::new("node")
        .arg(&script)
        .env("NODE_PATH", &node_modules)
        .env("RELAIS_GATEWAY_URL", stack.gateway.url(""))
        .env("RELAIS_TOKEN", VIEWER_TOKEN)
        .env("RELAIS_SCREENSHOT", &screenshot)
        .env("RELAIS_UPSTREAM", "default")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();

    // Traffic until the page says it shows live events.
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        let mut batch = 0;
        loop {
            stack
                .produce_ingress(&kafka, &Stack::ingress_events(&format!("b{batch}"), 20, 1))
                .await;
            batch += 1;
            tokio::select! {
                line = lines.next_line() => match line.unwrap() {
                    Some(line) if line == "READY" => return true,
                    Some(_) => {}
                    None => return false,
                },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    })
    .await
    .expect("the dashboard showed live events within 2 minutes");
    if !ready {
        let output = browser.wait_with_output().await.unwrap();
        panic!(
            "the browser script ended early:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // The upstream goes away; traffic continues; the page must show the circuit open.
    stack.set_faults(json!({"outage": true})).await;
    let outcome = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            stack
                .produce_ingress(&kafka, &Stack::ingress_events("outage", 20, 0))
                .await;
            tokio::select! {
                line = lines.next_line() => match line.unwrap() {
                    Some(line) if line == "CIRCUIT-OPEN" => return true,
                    Some(_) => {}
                    None => return false,
                },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    })
    .await
    .expect("the dashboard showed the open circuit within 2 minutes");
    let output = browser.wait_with_output().await.unwrap();
    assert!(
        outcome && output.status.success(),
        "browser script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let size = std::fs::metadata(&screenshot).unwrap().len();
    assert!(size > 10_000, "screenshot of {size} bytes");
    stack.set_faults(json!({})).await;
    stack.stop().await;
}
