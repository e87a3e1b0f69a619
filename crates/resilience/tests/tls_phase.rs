//! The probe against real HTTPS upstreams: TCP connect and the TLS handshake are measured as
//! separate phases, a pooled connection has neither, and the client's TLS (the upstream's CA,
//! its client certificate) works as configured.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use prometheus_client::registry::Registry;
use relais_resilience::{
    ClientOptions, ResilienceMetrics, UpstreamClient, UpstreamPolicy, UpstreamTls,
};
use relais_test_support::TestPki;

/// An HTTPS server answering 200 to POST /events, with a certificate of `pki`.
async fn https_upstream(pki: &TestPki, require_client_certificate: bool) -> SocketAddr {
    let app = Router::new().route("/events", post(|| async { (StatusCode::OK, "{}") }));
    relais_test_support::serve_https(pki, app, require_client_certificate).await
}

fn client(address: SocketAddr, tls: UpstreamTls) -> (UpstreamClient, Registry) {
    relais_test_support::install_crypto_provider();
    let mut registry = Registry::default();
    let metrics = ResilienceMetrics::register(&mut registry);
    let policy = UpstreamPolicy {
        attempt_timeout: Duration::from_secs(5),
        ..UpstreamPolicy::default()
    };
    let options = ClientOptions { allowed: None, tls };
    let client = UpstreamClient::with_options(
        "tls",
        &format!("https://127.0.0.1:{}", address.port()),
        policy,
        &metrics,
        options,
    )
    .unwrap();
    (client, registry)
}

async fn deliver(client: &UpstreamClient, key: &str) -> relais_resilience::Delivery {
    let endpoint = client.endpoint("/events").unwrap();
    client
        .post_json(&endpoint, Bytes::from_static(b"{}"), key)
        .await
}

fn exposition(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[tokio::test]
async fn the_handshake_is_a_phase_of_its_own_and_a_pooled_connection_has_none() {
    let pki = TestPki::new("tls-phase");
    let address = https_upstream(&pki, false).await;
    let tls = UpstreamTls {
        ca_pem: Some(std::fs::read(pki.ca_file()).unwrap()),
        identity_pem: None,
    };
    let (client, registry) = client(address, tls);

    let first = deliver(&client, "first").await;
    assert!(first.succeeded(), "{first:?}");
    let timings = first.attempts[0].timings;
    assert!(timings.connect > Duration::ZERO, "{timings:?}");
    assert!(timings.tls > Duration::ZERO, "{timings:?}");
    // A handshake with key exchange and certificate checks takes longer than a loopback SYN.
    assert!(timings.tls > timings.connect, "{timings:?}");
    assert!(
        timings.connect + timings.tls <= timings.time_to_first_byte,
        "{timings:?}"
    );

    let pooled = deliver(&client, "second").await;
    assert!(pooled.succeeded(), "{pooled:?}");
    let timings = pooled.attempts[0].timings;
    assert_eq!(timings.connect, Duration::ZERO, "{timings:?}");
    assert_eq!(timings.tls, Duration::ZERO, "{timings:?}");

    let text = exposition(&registry);
    let tls_observations = text
        .lines()
        .find(|line| {
            line.starts_with("relais_http_client_phase_duration_seconds_count")
                && line.contains("phase=\"tls\"")
        })
        .unwrap_or_else(|| panic!("no TLS phase observed:\n{text}"));
    assert!(tls_observations.ends_with(" 1"), "{tls_observations}");
}

#[tokio::test]
async fn the_upstream_s_ca_and_client_certificate_are_the_ones_used() {
    let pki = TestPki::new("tls-identity");
    let address = https_upstream(&pki, true).await;
    let ca = std::fs::read(pki.ca_file()).unwrap();
    let issued = pki.client("relais-worker");
    let mut identity = std::fs::read(&issued.certificate).unwrap();
    identity.extend(std::fs::read(&issued.key).unwrap());

    let (with_certificate, _) = client(
        address,
        UpstreamTls {
            ca_pem: Some(ca.clone()),
            identity_pem: Some(identity),
        },
    );
    let delivery = deliver(&with_certificate, "a").await;
    assert!(delivery.succeeded(), "{delivery:?}");

    let (without_certificate, _) = client(
        address,
        UpstreamTls {
            ca_pem: Some(ca),
            identity_pem: None,
        },
    );
    let refused = deliver(&without_certificate, "b").await;
    assert!(
        !refused.succeeded(),
        "the server requires a client certificate"
    );

    // The system's roots alone do not trust the test CA.
    let (untrusting, _) = client(address, UpstreamTls::default());
    let untrusted = deliver(&untrusting, "c").await;
    assert!(
        !untrusted.succeeded(),
        "a certificate of an unknown CA is refused"
    );
    // Refused in the handshake, after the connection was up.
    let timings = untrusted.attempts[0].timings;
    assert!(timings.tls > Duration::ZERO, "{untrusted:?}");
}
