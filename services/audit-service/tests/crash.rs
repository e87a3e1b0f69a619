//! kill -9 of the audit-service at random points while it writes, then restarts: the records in
//! RGW are exactly the records produced, none missing, none twice.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message as _;
use rand::Rng;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use relais_proto::v1::AuditRecord;
use relais_test_support::{ScratchDir, unique_name};

fn spawn(
    topic: &str,
    bucket: &str,
    group: &str,
    config: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, std::net::SocketAddr) {
    let endpoints = relais_test_support::Endpoints::from_env();
    let admin = relais_test_support::free_port();
    std::fs::write(
        config,
        format!("[kafka]\ngroup_id = \"{group}\"\naudit_topic = \"{topic}\"\n[objects]\nmax_records = 500\nidle = \"300ms\"\n"),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .env("RELAIS_AUDIT_CONFIG", config)
        .env("RELAIS_KAFKA_BOOTSTRAP", endpoints.kafka_bootstrap)
        .env("RELAIS_S3_ENDPOINT", endpoints.s3_endpoint)
        .env("RELAIS_S3_ACCESS_KEY", endpoints.s3_access_key)
        .env("RELAIS_S3_SECRET_KEY", endpoints.s3_secret_key)
        .env("RELAIS_S3_BUCKET", bucket)
        .env("RELAIS_ADMIN_ADDR", admin.to_string())
        .env(
            "RELAIS_GRPC_ADDR",
            relais_test_support::free_port().to_string(),
        )
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(|child| (child, admin))
        .unwrap()
}

/// Objects this process has written so far (0 while it is not serving metrics yet).
async fn objects_written(admin: std::net::SocketAddr) -> f64 {
    let Ok(response) = reqwest::get(format!("http://{admin}/metrics")).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("relais_audit_objects_written_total "))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `total` audit records, `msg-0` onwards, on `topic`.
async fn produce_records(kafka: &relais_test_support::KafkaTestEnv, topic: &str, total: usize) {
    let producer: FutureProducer = kafka
        .client_config()
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for index in 0..total {
        let record = AuditRecord {
            message_id: format!("msg-{index}"),
            trace_id: format!("{:032x}", index + 1),
            occurred_at: Some(relais_proto::Timestamp {
                seconds: 1_795_000_000 + index as i64 / 10,
                nanos: 0,
            }),
            ..Default::default()
        };
        let payload = record.encode_to_vec();
        pending.push(
            producer
                .send_result(
                    FutureRecord::to(topic)
                        .key(&record.message_id)
                        .payload(&payload),
                )
                .unwrap(),
        );
    }
    for delivery in pending {
        delivery.await.unwrap().unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Waits until every one of `total` records is in `bucket`, at most `within`; the ids seen.
async fn wait_for_trail(
    rgw: &relais_test_support::RgwTestEnv,
    bucket: &str,
    total: usize,
    within: Duration,
) -> std::collections::BTreeMap<String, usize> {
    let deadline = Instant::now() + within;
    loop {
        let seen = common::stored_message_ids(rgw, bucket).await;
        if seen.len() == total || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Exactly the `total` records, none twice.
fn assert_trail_exact(
    seen: &std::collections::BTreeMap<String, usize>,
    total: usize,
    log: &std::path::Path,
) {
    assert_eq!(
        seen.len(),
        total,
        "every record stored (log: {})",
        log.display()
    );
    let twice: Vec<_> = seen
        .iter()
        .filter(|(_, count)| **count > 1)
        .take(5)
        .collect();
    assert!(twice.is_empty(), "records stored twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_minus_nine_at_random_points_keeps_the_trail_exact() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let bucket = unique_name("it-audit-crash");
    let topic = kafka.create_topic("it-audit-crash", 3).await;
    let group = unique_name("it-audit-crash");
    let files = ScratchDir::new(&group);
    let config = files.file("audit.toml");
    let log = files.file("audit.log");

    let total = 40_000usize;
    produce_records(&kafka, &topic, total).await;

    let mut killed_mid_write = 0;
    // Each round waits until its process has written an object (a restarted one first waits
    // for the killed member's session to expire), then kills it a random moment later.
    for round in 0..5 {
        let (mut child, admin) = spawn(&topic, &bucket, &group, &config, &log, &[]);
        let started = Instant::now();
        while objects_written(admin).await < 1.0 && started.elapsed() < Duration::from_secs(40) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after_first_object = Duration::from_millis(rand::rng().random_range(0..600));
        tokio::time::sleep(after_first_object).await;
        child.kill().unwrap(); // SIGKILL, mid-write
        child.wait().unwrap();
        let so_far = common::stored_message_ids(&rgw, &bucket).await.len();
        if so_far > 0 && so_far < total {
            killed_mid_write += 1;
        }
        eprintln!(
            "round {round}: killed {after_first_object:?} after its first object, {:?} after start, with {so_far} of {total} records stored",
            started.elapsed()
        );
        if so_far == total {
            break;
        }
    }
    assert!(
        killed_mid_write > 0,
        "no kill landed while objects were being written"
    );

    // A last instance runs to the end.
    let (mut last, _) = spawn(&topic, &bucket, &group, &config, &log, &[]);
    let seen = wait_for_trail(&rgw, &bucket, total, Duration::from_secs(180)).await;
    let _ = last.kill();
    let _ = last.wait();
    assert_trail_exact(&seen, total, &log);
}

/// The pipeline task dies (a debug build's injected panic): the service exits non-zero with the
/// reason instead of lingering, and a restarted one completes the trail exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_pipeline_task_stops_the_service_non_zero_and_the_trail_stays_exact() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let bucket = unique_name("it-audit-dying");
    let topic = kafka.create_topic("it-audit-dying", 3).await;
    let group = unique_name("it-audit-dying");
    let files = ScratchDir::new(&group);
    let config = files.file("audit.toml");
    let log = files.file("audit.log");
    let total = 40_000usize;
    produce_records(&kafka, &topic, total).await;

    let kill = (relais_telemetry::tasks::KILL_TASK_ENV, "pipeline@1000");
    let (mut dying, _) = spawn(&topic, &bucket, &group, &config, &log, &[kill]);
    let status = relais_test_support::wait_for_exit(&mut dying, Duration::from_secs(60)).await;
    assert!(!status.success(), "exit status {status}");
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(
        written.contains("task pipeline stopped before shutdown"),
        "the reason is logged: {written}"
    );
    let stored = common::stored_message_ids(&rgw, &bucket).await.len();
    eprintln!("the pipeline died with {stored} of {total} records stored");

    let (mut next, _) = spawn(&topic, &bucket, &group, &config, &log, &[]);
    let seen = wait_for_trail(&rgw, &bucket, total, Duration::from_secs(180)).await;
    let _ = next.kill();
    let _ = next.wait();
    assert_trail_exact(&seen, total, &log);
}
