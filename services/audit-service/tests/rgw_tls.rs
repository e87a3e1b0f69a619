//! RGW over HTTPS with a certificate of a private CA: trusted through `SSL_CERT_FILE`, the
//! audit-service stores the trail; without it, the start stops at once naming the certificate.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use relais_proto::v1::AuditRecord;
use relais_test_support::{Endpoints, ScratchDir, unique_name};

/// The audit-service binary storing `topic` into `bucket` through RGW's HTTPS endpoint, with
/// the variables `extra`.
fn spawn(topic: &str, bucket: &str, extra: &[(&str, String)]) -> (std::process::Child, ScratchDir) {
    let endpoints = Endpoints::from_env();
    let group = unique_name("it-audit-tls");
    let files = ScratchDir::new(&group);
    let config = files.file("audit.toml");
    let log = files.file(LOG);
    std::fs::write(
        &config,
        format!("[kafka]\ngroup_id = \"{group}\"\naudit_topic = \"{topic}\"\n[objects]\nidle = \"300ms\"\n"),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .env("RELAIS_AUDIT_CONFIG", &config)
        .env("RELAIS_KAFKA_BOOTSTRAP", &endpoints.kafka_bootstrap)
        .env("RELAIS_S3_ENDPOINT", &endpoints.s3_tls_endpoint)
        .env("RELAIS_S3_ACCESS_KEY", &endpoints.s3_access_key)
        .env("RELAIS_S3_SECRET_KEY", &endpoints.s3_secret_key)
        .env("RELAIS_S3_BUCKET", bucket)
        .env("RELAIS_ADMIN_ADDR", common::free_port().to_string())
        .env("RELAIS_GRPC_ADDR", common::free_port().to_string())
        .env("RUST_LOG", "warn")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .envs(extra.iter().map(|(name, value)| (*name, value.as_str())))
        .stdin(Stdio::null())
        // Logs go to stdout, a start refused to both.
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    (child, files)
}

/// The process's output, in the folder `spawn` returns.
const LOG: &str = "audit.log";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_is_stored_over_https_when_the_private_ca_is_trusted() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let bucket = rgw.create_bucket("it-audit-tls").await.name.clone();
    let topic = kafka.create_topic("it-audit-tls", 1).await;
    let total = 500;
    let producer: FutureProducer = kafka.client_config().create().unwrap();
    for index in 0..total {
        let record = AuditRecord {
            message_id: format!("tls-{index}"),
            trace_id: format!("{:032x}", index + 1),
            occurred_at: Some(relais_proto::Timestamp {
                seconds: 1_795_000_000 + index,
                nanos: 0,
            }),
            ..Default::default()
        };
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&record.message_id)
                    .payload(&record.encode_to_vec()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let ca = Endpoints::from_env().state_dir.join("pki/relais-ca.pem");
    assert!(ca.exists(), "{} is made by make infra-up", ca.display());
    let (mut child, files) = spawn(
        &topic,
        &bucket,
        &[("SSL_CERT_FILE", ca.display().to_string())],
    );
    let log = files.file(LOG);
    let deadline = Instant::now() + Duration::from_secs(90);
    let stored = loop {
        let stored = common::stored_message_ids(&rgw, &bucket).await;
        if stored.len() == total as usize || Instant::now() > deadline {
            break stored;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "audit-service exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(stored.len(), total as usize, "log: {}", log.display());
    assert!(stored.values().all(|count| *count == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_rgw_certificate_stops_the_start_naming_it() {
    let kafka = relais_test_support::kafka().await;
    let _rgw = relais_test_support::rgw().await;
    let topic = kafka.create_topic("it-audit-tls", 1).await;
    let (mut child, files) = spawn(&topic, &unique_name("it-audit-tls"), &[]);
    let log = files.file(LOG);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            panic!(
                "still running after 40 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let printed = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{printed}");
    assert!(
        printed.contains("https://127.0.0.1"),
        "names the endpoint: {printed}"
    );
    assert!(
        printed.to_lowercase().contains("certificate"),
        "names the certificate: {printed}"
    );
}
