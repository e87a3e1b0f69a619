//! Redirects are never followed silently: against a real HTTP server answering 302, every
//! event is FAILED with `http_302` and the `Location` in its attempt record, and the page the
//! redirect names is never fetched. An upstream that opts in follows 307 within its origin
//! (body and `Idempotency-Key` intact) and still refuses a 307 to another origin.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::*;
use relais_ingest_worker::config::PipelineConfig;
use relais_proto::v1::Outcome;
use relais_resilience::{RedirectPolicy, UpstreamPolicy};
use relais_test_support::unique_name;

/// What the redirecting server saw.
#[derive(Debug, Default)]
struct Hits {
    /// Requests to the page a redirect names (GET or POST).
    landing: AtomicUsize,
    /// POSTs that arrived at the redirect target with a body and an Idempotency-Key.
    landing_with_body_and_key: AtomicUsize,
}

/// An API that answers `status` to POST /events with `Location: {location}`, and 200 on
/// /landing to any method.
async fn redirecting_api(status: StatusCode, location: String) -> (SocketAddr, Arc<Hits>) {
    let hits = Arc::new(Hits::default());
    let landing = {
        let hits = Arc::clone(&hits);
        move |headers: HeaderMap, body: axum::body::Bytes| {
            let hits = Arc::clone(&hits);
            async move {
                hits.landing.fetch_add(1, Ordering::SeqCst);
                if !body.is_empty() && headers.contains_key("idempotency-key") {
                    hits.landing_with_body_and_key
                        .fetch_add(1, Ordering::SeqCst);
                }
                StatusCode::OK
            }
        }
    };
    let app = Router::new()
        .route(
            "/events",
            post(move || {
                let location = location.clone();
                async move {
                    (
                        status,
                        [(header::LOCATION, location)],
                        "moved, see the Location header",
                    )
                        .into_response()
                }
            }),
        )
        .route("/landing", get(landing.clone()).post(landing));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, hits)
}

/// Runs `count` events through a worker against `upstream` and returns their audit records.
async fn deliver(
    upstream: SocketAddr,
    policy: UpstreamPolicy,
    count: usize,
) -> Vec<relais_proto::v1::AuditRecord> {
    let kafka = relais_test_support::kafka().await;
    let topics = Topics::create(&kafka, 2).await;
    let worker = Worker::start(
        &kafka,
        &topics,
        &unique_name("it-group"),
        upstream,
        policy,
        PipelineConfig::default(),
    );
    produce(&kafka, &topics.ingress, &valid_events("r", count, 5)).await;
    let records = read_outcomes(&kafka, &topics.audit, count, Duration::from_secs(60)).await;
    worker.stop().await;
    assert_exactly_once(&records, count);
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_302_fails_the_event_with_its_location_and_is_not_followed() {
    init_telemetry();
    let (api, hits) = redirecting_api(StatusCode::FOUND, "/landing".into()).await;
    let records = deliver(api, UpstreamPolicy::default(), 20).await;
    for record in &records {
        assert_eq!(record.outcome, Outcome::Failed as i32, "{record:?}");
        assert_eq!(record.reason_code, "http_302");
        assert!(
            record.reason_detail.contains("/landing"),
            "{}",
            record.reason_detail
        );
        let attempt = record.attempts.last().unwrap();
        assert_eq!(attempt.status_code, 302);
        let response = attempt.response.as_ref().expect("the answer is kept");
        let location = response
            .headers
            .iter()
            .find(|header| header.name == "location")
            .map(|header| header.value.as_str());
        assert_eq!(location, Some("/landing"));
        assert_eq!(response.body, "moved, see the Location header");
    }
    assert_eq!(
        hits.landing.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_opted_in_upstream_follows_307_within_its_origin_only() {
    init_telemetry();
    let policy = UpstreamPolicy {
        redirects: RedirectPolicy::SameOrigin,
        ..UpstreamPolicy::default()
    };

    let (api, hits) = redirecting_api(StatusCode::TEMPORARY_REDIRECT, "/landing".into()).await;
    let records = deliver(api, policy.clone(), 10).await;
    assert!(
        records
            .iter()
            .all(|r| r.outcome == Outcome::Delivered as i32),
        "{records:?}"
    );
    assert_eq!(hits.landing_with_body_and_key.load(Ordering::SeqCst), 10);

    // The same answer naming another origin (another port of this host) is not followed.
    let (elsewhere, elsewhere_hits) =
        redirecting_api(StatusCode::TEMPORARY_REDIRECT, "/unused".into()).await;
    let (api, _) = redirecting_api(
        StatusCode::TEMPORARY_REDIRECT,
        format!("http://{elsewhere}/landing"),
    )
    .await;
    let records = deliver(api, policy, 10).await;
    for record in &records {
        assert_eq!(record.outcome, Outcome::Failed as i32, "{record:?}");
        assert_eq!(record.reason_code, "http_307");
    }
    assert_eq!(elsewhere_hits.landing.load(Ordering::SeqCst), 0);
}

/// A plain listener that counts the connections it accepts (none may come).
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (address, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_name_resolving_to_loopback_is_refused_before_any_connection() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let (address, accepted) = counting_listener().await;
    let topics = Topics::create(&kafka, 1).await;
    let mut config = worker_config(
        &topics,
        &unique_name("it-group"),
        address,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
        None,
    );
    for upstream in config.upstreams.values_mut() {
        // `localhost` resolves to 127.0.0.1, which this upstream's configuration no longer
        // allows: the resolution is refused, so nothing may connect.
        upstream.url = format!("http://localhost:{}", address.port());
        upstream.allowed_networks.clear();
    }
    let worker = Worker::start_config(&kafka, config);
    produce(&kafka, &topics.ingress, &valid_events("ssrf", 5, 5)).await;
    // Attempts are made (and end in errors) without a connection. Until the worker's admin
    // endpoint is up (it starts after the Kafka clients), there are none to count.
    let attempts = || async {
        let scraped = match reqwest::get(format!("http://{}/metrics", worker.admin)).await {
            Ok(response) => response.text().await,
            Err(_) => return 0.0,
        };
        let text = scraped.unwrap();
        text.lines()
            .filter(|line| line.starts_with("http_client_request_duration_seconds_count{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while attempts().await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no attempt was made");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a connection reached the listener"
    );
    assert_eq!(
        worker
            .metric("relais_worker_messages_total{outcome=\"delivered\"}")
            .await,
        0.0
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_that_requires_a_client_certificate_gets_the_configured_one() {
    init_telemetry();
    relais_test_support::install_crypto_provider();
    let kafka = relais_test_support::kafka().await;
    let pki = relais_test_support::TestPki::new("upstream-ca");
    let client = pki.client("relais-worker");
    let server = pki.server("upstream");
    // upstream-sim over HTTPS, requiring a client certificate of the test CA.
    let sim = Sim::start_tls(relais_upstream_sim::tls::ApiTls {
        certificate_file: server.certificate.clone(),
        key_file: server.key.clone(),
        client_ca_file: Some(pki.ca_file()),
    })
    .await;
    let address = sim.api;
    let topics = Topics::create(&kafka, 1).await;
    let mut config = worker_config(
        &topics,
        &unique_name("it-group"),
        address,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
        None,
    );
    for upstream in config.upstreams.values_mut() {
        upstream.url = format!("https://127.0.0.1:{}", address.port());
        upstream.tls = relais_ingest_worker::config::UpstreamTlsConfig {
            ca_file: Some(pki.ca_file()),
            certificate_file: Some(client.certificate.clone()),
            key_file: Some(client.key.clone()),
        };
    }
    let worker = Worker::start_config(&kafka, config);
    produce(&kafka, &topics.ingress, &valid_events("mtls", 10, 5)).await;
    let audit = read_outcomes(&kafka, &topics.audit, 10, Duration::from_secs(30)).await;
    assert!(
        audit.iter().all(|r| r.outcome == Outcome::Delivered as i32),
        "{audit:?}"
    );
    assert_eq!(sim.deliveries().await["accepted"], 10);
    worker.stop().await;
}
