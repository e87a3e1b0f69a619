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
use relais_test_support::unique_name;

fn spawn(
    topic: &str,
    bucket: &str,
    group: &str,
    config: &std::path::Path,
    log: &std::path::Path,
) -> std::process::Child {
    let endpoints = relais_test_support::Endpoints::from_env();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
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
        .env("RELAIS_S3_BUCKET", bucket)
        .env("RELAIS_ADMIN_ADDR", admin.to_string())
        .env(
            "RELAIS_GRPC_ADDR",
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .to_string(),
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_minus_nine_at_random_points_keeps_the_trail_exact() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let bucket = unique_name("it-audit-crash");
    let topic = kafka.create_topic("it-audit-crash", 3).await;
    let group = unique_name("it-audit-crash");
    let config = std::env::temp_dir().join(format!("{group}.toml"));
    let log = std::env::temp_dir().join(format!("{group}.log"));

    let total = 40_000usize;
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
                    FutureRecord::to(&topic)
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

    let mut killed_mid_write = 0;
    // Five rounds, and more (up to ten) until one kill has landed mid-write: on a loaded
    // machine a process may not have started writing within the random run time.
    for round in 0..10 {
        if round >= 5 && killed_mid_write > 0 {
            break;
        }
        let mut child = spawn(&topic, &bucket, &group, &config, &log);
        let run_for = Duration::from_millis(rand::rng().random_range(1200..2500));
        tokio::time::sleep(run_for).await;
        child.kill().unwrap(); // SIGKILL, mid-write
        child.wait().unwrap();
        let so_far = common::stored_message_ids(&rgw, &bucket).await.len();
        if so_far > 0 && so_far < total {
            killed_mid_write += 1;
        }
        eprintln!(
            "round {round}: killed after {run_for:?} with {so_far} of {total} records stored"
        );
    }
    assert!(
        killed_mid_write > 0,
        "no kill landed while objects were being written"
    );

    // A last instance runs to the end.
    let mut last = spawn(&topic, &bucket, &group, &config, &log);
    let deadline = Instant::now() + Duration::from_secs(180);
    let seen = loop {
        let seen = common::stored_message_ids(&rgw, &bucket).await;
        if seen.len() == total || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let _ = last.kill();
    let _ = last.wait();
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
