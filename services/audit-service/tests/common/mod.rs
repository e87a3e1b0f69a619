//! Helpers shared by the audit-service test binaries.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each binary uses a part

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use relais_audit_service::config::{Args, AuditConfig};
use relais_audit_service::pipeline::CommitFaults;
use relais_telemetry::shutdown::CancellationToken;
use relais_test_support::{AdminMetrics, KafkaTestEnv};
use tokio::task::JoinHandle;

pub mod records;

pub use relais_test_support::free_port;

/// Arguments for one instance: the test's Kafka, RGW at `s3_endpoint`, free local ports.
pub fn args(kafka: &KafkaTestEnv, bucket: &str, s3_endpoint: String) -> Args {
    let endpoints = relais_test_support::Endpoints::from_env();
    Args {
        config: None,
        kafka_bootstrap: kafka.bootstrap().to_owned(),
        s3_endpoint,
        s3_region: endpoints.s3_region,
        s3_access_key: Some(endpoints.s3_access_key),
        s3_secret_key: Some(endpoints.s3_secret_key),
        s3_secret_key_file: None,
        profile: Default::default(),
        bucket: bucket.to_owned(),
        admin_addr: free_port(),
        grpc_addr: free_port(),
        command: None,
    }
}

/// One audit-service, run in this process.
pub struct Instance {
    pub metrics: AdminMetrics,
    admin: std::net::SocketAddr,
    /// Where `AuditQuery` listens.
    pub grpc: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Instance {
    pub fn start(args: Args, config: AuditConfig, commit_faults: Arc<CommitFaults>) -> Self {
        let (admin, grpc) = (args.admin_addr, args.grpc_addr);
        let metrics = AdminMetrics::new(admin);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relais_audit_service::run_with_commit_faults(
            args,
            config,
            shutdown.clone(),
            commit_faults,
        ));
        Self {
            metrics,
            admin,
            grpc,
            shutdown,
            task,
        }
    }

    pub async fn written(&self) -> f64 {
        self.metrics
            .value("relais_audit_records_written_total")
            .await
    }

    /// `/readyz`: whether the service says it is ready, and its checks.
    pub async fn readiness(&self) -> (bool, serde_json::Value) {
        let response = reqwest::get(format!("http://{}/readyz", self.admin))
            .await
            .unwrap();
        let ready = response.status() == 200;
        (ready, response.json().await.unwrap())
    }

    /// Waits until `/readyz` says `ready` (90 s at most); returns its checks.
    pub async fn wait_for_readiness(&self, ready: bool) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(response) = reqwest::get(format!("http://{}/readyz", self.admin)).await
                && (response.status() == 200) == ready
            {
                return response.json().await.unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/readyz never said ready = {ready}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until at least `records` are stored and committed (90 s at most).
    pub async fn wait_written(&self, records: f64) {
        self.metrics
            .wait_for_at_least(
                "relais_audit_records_written_total",
                records,
                Duration::from_secs(90),
            )
            .await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// Ends the instance the way a crash does for what it stores: the pipeline is dropped
    /// where it is, with no drain and no last commit.
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
        self.shutdown.cancel();
    }
}

/// Every key in the bucket.
pub async fn list_keys(rgw: &relais_test_support::RgwTestEnv, bucket: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for page in rgw.bucket(bucket).list(String::new(), None).await.unwrap() {
        keys.extend(page.contents.into_iter().map(|object| object.key));
    }
    keys
}

/// Every data object in the bucket: its key and its lines.
pub async fn data_objects(
    rgw: &relais_test_support::RgwTestEnv,
    bucket: &str,
) -> Vec<(String, Vec<serde_json::Value>)> {
    let bucket = rgw.bucket(bucket);
    let mut objects = Vec::new();
    for page in bucket.list("audit/".to_owned(), None).await.unwrap() {
        for object in page
            .contents
            .iter()
            .filter(|o| o.key.ends_with(".ndjson.gz"))
        {
            let body = bucket
                .get_object(&object.key)
                .await
                .unwrap()
                .bytes()
                .to_vec();
            let mut text = String::new();
            flate2::read::GzDecoder::new(body.as_slice())
                .read_to_string(&mut text)
                .unwrap();
            let lines = text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            objects.push((object.key.clone(), lines));
        }
    }
    objects
}

/// message id → how many times it is stored.
pub async fn stored_message_ids(
    rgw: &relais_test_support::RgwTestEnv,
    bucket: &str,
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for (_, lines) in data_objects(rgw, bucket).await {
        for line in lines {
            *seen
                .entry(line["message_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    seen
}

/// A data object as stored: where its name says it starts, and the audit offsets of its lines.
#[derive(Debug)]
pub struct StoredObject {
    pub key: String,
    pub partition: i32,
    pub start_offset: i64,
    pub offsets: Vec<i64>,
}

/// Every data object in the bucket with the audit offsets of its lines.
pub async fn stored_objects(
    rgw: &relais_test_support::RgwTestEnv,
    bucket: &str,
) -> Vec<StoredObject> {
    let mut objects = Vec::new();
    for (key, lines) in data_objects(rgw, bucket).await {
        let (partition, start_offset) =
            relais_audit_service::object::data_key_position(&key).unwrap();
        let offsets = lines
            .iter()
            .map(|line| {
                assert_eq!(line["audit"]["partition"], partition, "{key}");
                line["audit"]["offset"].as_i64().unwrap()
            })
            .collect();
        objects.push(StoredObject {
            key,
            partition,
            start_offset,
            offsets,
        });
    }
    objects
}

/// Object by object: each partition's objects, in the order of their names, hold the offsets
/// `0..count` consecutively, each exactly once, each object named after its first line.
pub fn assert_exactly_once(objects: &[StoredObject], counts: &BTreeMap<i32, i64>) {
    for (&partition, &count) in counts {
        let mut mine: Vec<&StoredObject> = objects
            .iter()
            .filter(|object| object.partition == partition)
            .collect();
        mine.sort_by_key(|object| object.start_offset);
        let mut next = 0;
        for object in mine {
            assert_eq!(
                object.offsets.first(),
                Some(&object.start_offset),
                "{} is named after its first record",
                object.key
            );
            for &offset in &object.offsets {
                assert_eq!(
                    offset, next,
                    "partition {partition}: {} holds offset {offset} where {next} was due (lost or twice)",
                    object.key
                );
                next += 1;
            }
        }
        assert_eq!(
            next, count,
            "partition {partition}: {next} of {count} records stored"
        );
    }
}
