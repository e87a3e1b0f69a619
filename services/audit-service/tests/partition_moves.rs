//! Partitions that move while an object of theirs is not committed: during an RGW outage seen
//! by one instance only, and after a commit the broker refused. Verified object by object.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::Instance;
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use relais_audit_service::config::{AuditConfig, KafkaConfig, ObjectsConfig, StorageConfig};
use relais_audit_service::pipeline::CommitFaults;
use relais_proto::v1::AuditRecord;
use relais_test_support::{KafkaTestEnv, RgwTestEnv, TcpProxy, unique_name};

const IDLE: Duration = Duration::from_millis(300);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a step may take on a loaded machine.
const WITHIN: Duration = Duration::from_secs(90);

/// A topic, a group and a bucket, and the records produced so far per partition.
struct Scenario {
    kafka: KafkaTestEnv,
    rgw: RgwTestEnv,
    topic: String,
    group: String,
    bucket: String,
    producer: FutureProducer,
    counts: BTreeMap<i32, i64>,
}

impl Scenario {
    async fn new(name: &str, partitions: i32) -> Self {
        let kafka = relais_test_support::kafka().await;
        let topic = kafka.create_topic(name, partitions).await;
        let producer = kafka.client_config().create().unwrap();
        Self {
            rgw: relais_test_support::rgw().await,
            topic,
            group: unique_name(name),
            bucket: unique_name(name),
            producer,
            counts: (0..partitions).map(|p| (p, 0)).collect(),
            kafka,
        }
    }

    /// An instance of the service reaching RGW at `s3_endpoint`: small objects, quick
    /// retries.
    fn start(&self, s3_endpoint: String, commit_faults: Arc<CommitFaults>) -> Instance {
        let config = AuditConfig {
            kafka: KafkaConfig {
                group_id: self.group.clone(),
                audit_topic: self.topic.clone(),
                session_timeout: Duration::from_secs(6),
                ..KafkaConfig::default()
            },
            objects: ObjectsConfig {
                max_records: 1000,
                idle: IDLE,
                ..ObjectsConfig::default()
            },
            storage: StorageConfig {
                put_timeout: Duration::from_secs(2),
                base_backoff: Duration::from_millis(100),
                max_backoff: MAX_BACKOFF,
                ..StorageConfig::default()
            },
            ..AuditConfig::default()
        };
        Instance::start(
            common::args(&self.kafka, &self.bucket, s3_endpoint),
            config,
            commit_faults,
        )
    }

    /// `per_partition` more records to each partition.
    async fn produce(&mut self, per_partition: i64) {
        let mut pending = Vec::new();
        for (&partition, count) in &mut self.counts {
            for index in *count..*count + per_partition {
                let record = AuditRecord {
                    message_id: format!("p{partition}-{index}"),
                    trace_id: format!("{:016x}{index:016x}", partition + 1),
                    // One event hour: the cuts come from the rotation rules alone.
                    occurred_at: Some(relais_proto::Timestamp {
                        seconds: 1_795_000_000,
                        nanos: 0,
                    }),
                    ..Default::default()
                };
                pending.push(
                    self.producer
                        .send_result(
                            FutureRecord::to(&self.topic)
                                .partition(partition)
                                .key(&record.message_id)
                                .payload(&record.encode_to_vec()),
                        )
                        .unwrap(),
                );
            }
            *count += per_partition;
        }
        for delivery in pending {
            delivery.await.unwrap().unwrap();
        }
        self.producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// Rounds of records, each followed by a pause longer than the idle rule: the instance
    /// reading them cuts one small object per round and partition.
    async fn trickle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.produce(10).await;
            tokio::time::sleep(IDLE * 3).await;
        }
    }

    /// Object by object, every record produced is stored exactly once.
    async fn assert_exactly_once(&self) -> Vec<common::StoredObject> {
        let objects = common::stored_objects(&self.rgw, &self.bucket).await;
        common::assert_exactly_once(&objects, &self.counts);
        objects
    }
}

fn rgw_address(endpoint: &str) -> std::net::SocketAddr {
    endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_partitions_upload_never_replaces_its_next_owners_object() {
    let mut scenario = Scenario::new("it-audit-moves", 4).await;
    let direct = relais_test_support::Endpoints::from_env().s3_endpoint;

    // Instance `a` reaches RGW through a proxy that the test cuts; `b` reaches it directly.
    let proxy = TcpProxy::start(rgw_address(&direct)).await;
    let a = scenario.start(proxy.http_url(), Arc::default());
    scenario.produce(20).await;
    a.wait_written(80.0).await;

    // RGW out of `a`'s reach: each round closes small objects that `a` keeps retrying.
    proxy.cut();
    scenario.trickle(3).await;
    a.metrics
        .wait_for_at_least("relais_audit_put_retries_total", 4.0, WITHIN)
        .await;

    // `b` joins; two partitions move to it with their uncommitted records, which it stores
    // at once, cut differently (one object each) under the keys `a` is retrying.
    let b = scenario.start(direct, Arc::default());
    b.wait_written(60.0).await;
    assert_eq!(
        b.written().await,
        60.0,
        "two partitions of 30 records moved"
    );

    // RGW back for `a`: its own partitions' objects are stored; a revoked partition's upload
    // would land now too, within a backoff.
    proxy.restore();
    a.wait_written(140.0).await;
    // Proving an absence: leave a stale upload several backoffs to land.
    tokio::time::sleep(MAX_BACKOFF * 4).await;
    a.stop().await;
    b.stop().await;
    scenario.assert_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_commit_holds_back_the_next_object_and_a_crash_rewrites_the_same_key() {
    let mut scenario = Scenario::new("it-audit-commit", 2).await;
    let direct = relais_test_support::Endpoints::from_env().s3_endpoint;

    let faults = Arc::new(CommitFaults::default());
    faults.refuse_next(u32::MAX);
    let a = scenario.start(direct.clone(), Arc::clone(&faults));
    scenario.trickle(6).await;
    a.metrics
        .wait_for_at_least("relais_audit_commit_failures_total", 3.0, WITHIN)
        .await;
    let objects = common::stored_objects(&scenario.rgw, &scenario.bucket).await;
    for partition in 0..2 {
        let stored: Vec<&str> = objects
            .iter()
            .filter(|object| object.partition == partition)
            .map(|object| object.key.as_str())
            .collect();
        assert_eq!(
            stored.len(),
            1,
            "partition {partition}: one object stored while its commit is refused, not {stored:?}"
        );
    }
    assert_eq!(
        a.written().await,
        0.0,
        "nothing counted as written before a commit"
    );
    let ready = a.wait_for_readiness(false).await;
    assert_eq!(ready["checks"]["commits"]["ready"], false, "{ready}");

    a.crash().await;
    let b = scenario.start(direct, Arc::default());
    b.wait_written(120.0).await;
    b.stop().await;
    let objects = scenario.assert_exactly_once().await;
    // The object stored before the crash was rewritten under its own key, whole.
    assert_eq!(objects.len(), 2, "one object per partition: {objects:?}");
}
