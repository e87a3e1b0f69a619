//! The native Prometheus scrapes a Relais process's `/metrics` (served by relais-telemetry's
//! admin endpoint) and the series come back from its query API.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use relais_telemetry::admin::{AdminServer, Readiness};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn prometheus_scrapes_the_admin_endpoint() {
    let prometheus = relais_test_support::prometheus().await;

    let mut registry = Registry::default();
    let counter = Counter::<u64>::default();
    registry.register(
        "relais_it_scrape_probe",
        "Counter set by the Prometheus integration test",
        counter.clone(),
    );
    // A value no other run would produce, so the query cannot match stale data.
    let expected = u64::from(std::process::id()) * 1000 + 7;
    counter.inc_by(expected);

    let shutdown = CancellationToken::new();
    let server = AdminServer::start(
        "127.0.0.1:0".parse().expect("address"),
        Arc::new(registry),
        Readiness::default(),
        shutdown.clone(),
    )
    .await
    .expect("admin endpoint");
    let target = prometheus.register_target("relais-it", server.local_addr());

    let query = format!(
        "relais_it_scrape_probe_total{{job=\"relais-it\",instance=\"{}\"}}",
        target.instance
    );
    let samples = prometheus.wait_for(&query, Duration::from_secs(60)).await;
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(samples[0].value.1, expected.to_string());

    // The target is healthy from Prometheus' point of view, too.
    let up = prometheus
        .query(&format!("up{{instance=\"{}\"}}", target.instance))
        .await;
    assert_eq!(up.first().map(|s| s.value.1.as_str()), Some("1"));

    shutdown.cancel();
    server.join().await;
}
