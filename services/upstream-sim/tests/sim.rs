//! upstream-sim over real sockets: faults set through the admin API change what clients see.
#![allow(clippy::unwrap_used)] // a panic in a test helper is a failed test with a location

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relais_telemetry::shutdown::CancellationToken;
use serde_json::{Value, json};

/// A running simulator: the API and the admin port, stopped when dropped.
struct Sim {
    api: SocketAddr,
    admin: SocketAddr,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Sim {
    relais_test_support::install_crypto_provider();
    let shutdown = CancellationToken::new();
    let any = "127.0.0.1:0".parse().unwrap();
    let running = relais_upstream_sim::start(any, any, 1000, shutdown.clone())
        .await
        .unwrap();
    Sim {
        api: running.api,
        admin: running.admin,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
        shutdown,
    }
}

impl Sim {
    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    async fn set_faults(&self, faults: Value) {
        let response = self
            .http
            .put(self.admin_url("/admin/faults"))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    async fn deliver(&self, key: &str) -> Result<reqwest::Response, reqwest::Error> {
        // A fresh client per call: pooled connections would hide an outage's refusals.
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .post(format!("http://{}/events", self.api))
            .header("idempotency-key", key)
            .json(&json!({"id": key}))
            .send()
            .await
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn counts_deliveries_and_duplicates_per_key() {
    let sim = start().await;
    for key in ["a", "b", "a"] {
        assert_eq!(sim.deliver(key).await.unwrap().status(), 200);
    }
    let summary = sim.get("/admin/deliveries").await;
    assert_eq!(summary["requests"], 3);
    assert_eq!(summary["distinct_keys"], 2);
    assert_eq!(summary["duplicate_deliveries"], 1);
    assert_eq!(
        sim.get("/admin/deliveries/a").await,
        json!({"received": 2, "accepted": 2})
    );
    let metrics = sim
        .http
        .get(sim.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("upstream_sim_duplicate_deliveries_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("upstream_sim_requests_total{action=\"accepted\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn injects_errors_rate_limits_and_latency() {
    let sim = start().await;
    sim.set_faults(json!({"errors": {"503": 1.0}})).await;
    assert_eq!(sim.deliver("x").await.unwrap().status(), 503);

    sim.set_faults(json!({"rate_limit": {"ratio": 1.0, "retry_after_secs": 2}}))
        .await;
    let limited = sim.deliver("x").await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "2");

    sim.set_faults(json!({"latency": {"kind": "fixed", "ms": 300}}))
        .await;
    let started = Instant::now();
    assert_eq!(sim.deliver("x").await.unwrap().status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let bad = sim
        .http
        .put(sim.admin_url("/admin/faults"))
        .json(&json!({"errors": {"302": 0.5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422, "invalid faults are refused");
}

#[tokio::test]
async fn serving_a_few_at_once_queues_the_rest_without_refusing_them() {
    let sim = start().await;
    sim.set_faults(json!({"latency": {"kind": "fixed", "ms": 200}, "serves_at_once": 1}))
        .await;
    let started = Instant::now();
    let answers = tokio::join!(sim.deliver("q0"), sim.deliver("q1"), sim.deliver("q2"));
    for answer in [answers.0, answers.1, answers.2] {
        assert_eq!(answer.unwrap().status(), 200, "queued, not refused");
    }
    // One at a time, each 200 ms: the last answer comes after three turns.
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(sim.get("/admin/deliveries").await["peak_in_progress"], 3);

    let bad = sim
        .http
        .put(sim.admin_url("/admin/faults"))
        .json(&json!({"serves_at_once": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422, "serving none at once is refused");
}

#[tokio::test]
async fn hangs_outlast_the_client_and_resets_drop_the_connection() {
    let sim = start().await;
    sim.set_faults(json!({"hang": {"ratio": 1.0, "ms": 5000}}))
        .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let hung = client
        .post(format!("http://{}/events", sim.api))
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert!(hung.is_timeout(), "{hung:?}");

    sim.set_faults(json!({"reset_ratio": 1.0})).await;
    let reset = sim.deliver("r").await.unwrap_err();
    assert!(
        !reset.is_timeout() && !reset.is_connect(),
        "closed mid-request: {reset:?}"
    );
}

#[tokio::test]
async fn an_outage_refuses_connections_until_it_ends() {
    let sim = start().await;
    assert_eq!(sim.deliver("before").await.unwrap().status(), 200);
    sim.set_faults(json!({"outage": true})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = sim.deliver("during").await.unwrap_err();
    assert!(refused.is_connect(), "connection refused: {refused:?}");

    sim.set_faults(json!({"outage": false})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        sim.deliver("after").await.unwrap().status(),
        200,
        "same port again"
    );
}

#[tokio::test]
async fn with_a_client_ca_only_callers_with_its_certificates_get_through() {
    relais_test_support::install_crypto_provider();
    let pki = relais_test_support::TestPki::new("sim-tls");
    let server = pki.server("upstream");
    let shutdown = CancellationToken::new();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let running = relais_upstream_sim::start_with(
        any,
        any,
        relais_upstream_sim::SimOptions {
            key_capacity: 1000,
            tls: Some(relais_upstream_sim::tls::ApiTls {
                certificate_file: server.certificate.clone(),
                key_file: server.key.clone(),
                client_ca_file: Some(pki.ca_file()),
            }),
            ..relais_upstream_sim::SimOptions::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let url = format!("https://127.0.0.1:{}/events", running.api.port());
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.ca_file()).unwrap()).unwrap();
    let client = |identity: Option<reqwest::Identity>| {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .add_root_certificate(ca.clone());
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        builder.build().unwrap()
    };
    let issued = pki.client("relais-worker");
    let mut pem = std::fs::read(&issued.certificate).unwrap();
    pem.extend(std::fs::read(&issued.key).unwrap());
    let accepted = client(Some(reqwest::Identity::from_pem(&pem).unwrap()))
        .post(&url)
        .header("Idempotency-Key", "with-certificate")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);

    let refused = client(None)
        .post(&url)
        .header("Idempotency-Key", "without")
        .body("{}")
        .send()
        .await;
    assert!(
        refused.is_err(),
        "no client certificate, no answer: {refused:?}"
    );

    let rogue = relais_test_support::TestPki::new("sim-tls-rogue").client("intruder");
    let mut rogue_pem = std::fs::read(&rogue.certificate).unwrap();
    rogue_pem.extend(std::fs::read(&rogue.key).unwrap());
    let rogue_answer = client(Some(reqwest::Identity::from_pem(&rogue_pem).unwrap()))
        .post(&url)
        .header("Idempotency-Key", "rogue")
        .body("{}")
        .send()
        .await;
    assert!(
        rogue_answer.is_err(),
        "a certificate of another CA: {rogue_answer:?}"
    );

    let plain = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/events", running.api.port()))
        .body("{}")
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP on the TLS port"
    );

    let deliveries: Value = reqwest::get(format!("http://{}/admin/deliveries", running.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        deliveries["requests"], 1,
        "only the caller with a certificate reached the API: {deliveries}"
    );
    shutdown.cancel();
}
