//! Auth answers stop the upstream, not the stream: an upstream answering 401 or 403 to everyone
//! is held, its messages wait (no FAILED outcome, nothing in the DLQ), and once it answers again
//! every message is delivered, once. Real broker, real upstream-sim. (A 410 disables the
//! upstream until an operator re-enables it: see the gateway's `upstream_control` test.)
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use prost::Message as _;
use relais_ingest_worker::config::PipelineConfig;
use relais_proto::v1::{OperatorAction, Outcome};
use relais_resilience::UpstreamPolicy;
use relais_test_support::{ScratchDir, unique_name};
use serde_json::json;

async fn held_then_delivered(status: u16, reason: &str) {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    sim.set_faults(json!({"errors": {status.to_string(): 1.0}}))
        .await;
    let (topics, worker) = worker_for(&kafka, &sim, 3, |upstream| {
        upstream.pause_on_unauthorized = Duration::from_secs(2);
    })
    .await;
    let total = 30;
    produce(&kafka, &topics.ingress, &valid_events("h", total, 10)).await;

    let held = format!("relais_worker_upstream_held{{upstream=\"default\",reason=\"{reason}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.metric(&held).await != 1.0 {
        assert!(Instant::now() < deadline, "{held} never became 1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several pauses and trials long: still nothing decided, nothing dead-lettered.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(worker.metric(&held).await, 1.0);
    assert_eq!(
        worker
            .metric("relais_worker_committed_messages_total")
            .await,
        0.0
    );
    assert_eq!(
        worker
            .metric("relais_worker_messages_total{outcome=\"failed\"}")
            .await,
        0.0
    );
    assert!(worker.metric("relais_worker_parked_messages").await > 0.0);

    sim.set_faults(json!({})).await;
    let audit = read_outcomes(&kafka, &topics.audit, total, Duration::from_secs(30)).await;
    assert_exactly_once(&audit, total);
    assert!(
        audit.iter().all(|r| r.outcome == Outcome::Delivered as i32),
        "every held message delivered once the upstream answers"
    );
    assert_eq!(worker.metric(&held).await, 0.0);
    assert_eq!(worker.metric("relais_worker_parked_messages").await, 0.0);

    // The hold and its end are operational events in the audit trail, by this worker.
    let actions: Vec<OperatorAction> = read_exactly_where(
        &kafka,
        &topics.audit,
        2,
        Duration::from_secs(10),
        Duration::from_secs(1),
        is_operator_action,
    )
    .await
    .iter()
    .map(|read| OperatorAction::decode(read.payload.as_slice()).unwrap())
    .collect();
    let names: Vec<&str> = actions.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(names, ["upstream.held", "upstream.released"]);
    assert!(
        actions
            .iter()
            .all(|a| a.subject == "upstream/default" && a.actor.starts_with("worker:"))
    );
    assert!(
        actions[0]
            .detail
            .starts_with(&format!("{status} from http://")),
        "{}",
        actions[0].detail
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_answering_401_is_held_and_its_messages_wait() {
    held_then_delivered(401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_answering_403_is_held_and_its_messages_wait() {
    held_then_delivered(403, "unauthorized").await;
}

/// A worker on new topics (`partitions` for the ingress) delivering to `sim`, its upstream
/// changed by `adjust`.
async fn worker_for(
    kafka: &relais_test_support::KafkaTestEnv,
    sim: &Sim,
    partitions: i32,
    adjust: impl Fn(&mut relais_ingest_worker::config::UpstreamConfig),
) -> (Topics, Worker) {
    let topics = Topics::create(kafka, partitions).await;
    let mut config = worker_config(
        &topics,
        &unique_name("it-group"),
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
        None,
    );
    config.upstreams.values_mut().for_each(adjust);
    let worker = Worker::start_config(kafka, config);
    (topics, worker)
}

/// A key file in `keys`.
fn key_file(keys: &ScratchDir, key: &str) -> std::path::PathBuf {
    keys.write(&unique_name("key"), &format!("{key}\n"))
}

fn random_key(prefix: &str) -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_deliveries_pass_a_verifying_upstream_and_a_wrong_key_is_held_not_failed() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    // The worker signs with the current HMAC secret and the next Ed25519 key; the upstream
    // has already moved to the Ed25519 key only.
    let keys = ScratchDir::new("webhook-keys");
    let current = random_key("whsec_");
    let next = random_key("whsk_");
    let next_public = relais_webhooks::Signer::new([next.as_str()])
        .unwrap()
        .public_keys();
    let verifier =
        relais_webhooks::Verifier::new(next_public.iter().map(String::as_str), 300).unwrap();
    let sim = Sim::start_checking(relais_upstream_sim::auth::AuthChecks {
        verifier: Some(verifier),
        ..Default::default()
    })
    .await;
    let (topics, worker) = worker_for(&kafka, &sim, 2, |upstream| {
        upstream.signing_key_files = vec![key_file(&keys, &current), key_file(&keys, &next)];
    })
    .await;
    let total = 20;
    produce(&kafka, &topics.ingress, &valid_events("signed", total, 5)).await;
    let audit = read_outcomes(&kafka, &topics.audit, total, Duration::from_secs(30)).await;
    assert_exactly_once(&audit, total);
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));
    worker.stop().await;

    // Signed with a key the upstream does not know: 401, the upstream is held, nothing fails.
    let (topics, worker) = worker_for(&kafka, &sim, 1, |upstream| {
        upstream.signing_key_files = vec![key_file(&keys, &random_key("whsec_"))];
        upstream.pause_on_unauthorized = Duration::from_secs(2);
    })
    .await;
    produce(&kafka, &topics.ingress, &valid_events("wrong-key", 5, 5)).await;
    let held = "relais_worker_upstream_held{upstream=\"default\",reason=\"unauthorized\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.metric(held).await != 1.0 {
        assert!(Instant::now() < deadline, "{held} never became 1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        worker
            .metric("relais_worker_messages_total{outcome=\"failed\"}")
            .await,
        0.0
    );
    let refused = reqwest::get(format!("http://{}/metrics", sim.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        refused.lines().any(
            |line| line.starts_with("upstream_sim_signatures_refused_total ")
                && !line.ends_with(" 0")
        ),
        "the upstream counted the refused signatures"
    );
    worker.stop().await;
}

async fn oauth_issued(sim: &Sim) -> u64 {
    let state: serde_json::Value = reqwest::get(format!("http://{}/admin/oauth", sim.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    state["issued"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_key_from_a_file_and_an_oauth2_token_reach_an_upstream_that_checks_them() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;

    // A fixed header whose value is a secret file's content.
    let keys = ScratchDir::new("secrets");
    let api_key = unique_name("api-key");
    let sim = Sim::start_checking(relais_upstream_sim::auth::AuthChecks {
        required_header: Some(("x-api-key".into(), api_key.clone())),
        ..Default::default()
    })
    .await;
    let (topics, worker) = worker_for(&kafka, &sim, 1, |upstream| {
        upstream.auth.header_files = [("x-api-key".to_owned(), key_file(&keys, &api_key))].into();
    })
    .await;
    produce(&kafka, &topics.ingress, &valid_events("keyed", 10, 5)).await;
    let audit = read_outcomes(&kafka, &topics.audit, 10, Duration::from_secs(30)).await;
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));
    worker.stop().await;

    // OAuth2 client credentials: one token for many deliveries; after the upstream revokes
    // it, the next delivery's 401 fetches a new one and the call goes through.
    let secret = unique_name("client-secret");
    let sim = Sim::start_checking(relais_upstream_sim::auth::AuthChecks {
        oauth: Some(relais_upstream_sim::auth::TokenIssuer::new(
            "relais".into(),
            secret.clone(),
            Duration::from_secs(3600),
        )),
        ..Default::default()
    })
    .await;
    let (topics, worker) = worker_for(&kafka, &sim, 1, |upstream| {
        upstream.auth.oauth2 = Some(relais_ingest_worker::config::OAuth2Config {
            token_url: format!("http://{}/oauth/token", sim.api),
            client_id: "relais".into(),
            client_secret_file: key_file(&keys, &secret),
            scope: Some("events:write".into()),
        });
    })
    .await;
    produce(&kafka, &topics.ingress, &valid_events("oauth-a", 10, 5)).await;
    let audit = read_outcomes(&kafka, &topics.audit, 10, Duration::from_secs(30)).await;
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));
    assert_eq!(oauth_issued(&sim).await, 1, "the token is cached");

    let revoked = reqwest::Client::new()
        .post(format!("http://{}/admin/oauth/revoke", sim.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    produce(&kafka, &topics.ingress, &valid_events("oauth-b", 10, 5)).await;
    let audit = read_outcomes(&kafka, &topics.audit, 20, Duration::from_secs(30)).await;
    assert_exactly_once(&audit, 20);
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));
    assert_eq!(oauth_issued(&sim).await, 2, "one new token after the 401");
    assert_eq!(
        worker
            .metric("relais_worker_upstream_held{upstream=\"default\",reason=\"unauthorized\"}")
            .await,
        0.0,
        "a refreshed token is not a held upstream"
    );
    worker.stop().await;
}
