//! The audit trail in the real RGW: every record exactly once, under the right hour, and
//! undecodable records quarantined without stopping the partition.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::time::{Duration, Instant};

use common::Instance;
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use relais_audit_service::config::{AuditConfig, BufferConfig, KafkaConfig, ObjectsConfig};
use relais_proto::v1::{AuditRecord, Outcome};
use relais_test_support::{KafkaTestEnv, RgwTestEnv, unique_name};
use serde_json::Value;

/// Starts an instance with small objects under `prefix`.
fn start(kafka: &KafkaTestEnv, bucket: &str, topic: &str, prefix: &str) -> Instance {
    let objects = ObjectsConfig {
        prefix: prefix.to_owned(),
        max_records: 5000,
        idle: Duration::from_secs(1),
        ..ObjectsConfig::default()
    };
    start_with(kafka, bucket, topic, objects, BufferConfig::default())
}

fn start_with(
    kafka: &KafkaTestEnv,
    bucket: &str,
    topic: &str,
    objects: ObjectsConfig,
    buffer: BufferConfig,
) -> Instance {
    let endpoints = relais_test_support::Endpoints::from_env();
    let config = AuditConfig {
        kafka: KafkaConfig {
            group_id: unique_name("it-audit"),
            audit_topic: topic.to_owned(),
            ..KafkaConfig::default()
        },
        objects,
        buffer,
        ..AuditConfig::default()
    };
    config.validate().unwrap();
    Instance::start(
        common::args(kafka, bucket, endpoints.s3_endpoint),
        config,
        Default::default(),
    )
}

/// Record `index` of `total`, with event times running forward over three hours (as a
/// partition's records do, give or take some late ones).
fn record(index: usize, total: usize, base: i64) -> AuditRecord {
    AuditRecord {
        message_id: format!("msg-{index}"),
        trace_id: format!("{:032x}", index + 1),
        span_id: format!("{:016x}", index + 1),
        outcome: if index.is_multiple_of(10) {
            Outcome::Rejected
        } else {
            Outcome::Delivered
        } as i32,
        event_type: "order.created".into(),
        occurred_at: Some(relais_proto::Timestamp {
            seconds: base + (index * 3 * 3600 / total) as i64,
            nanos: 0,
        }),
        worker_id: "w".into(),
        ..Default::default()
    }
}

async fn produce(kafka: &KafkaTestEnv, topic: &str, payloads: Vec<(String, Vec<u8>)>) {
    let producer: FutureProducer = kafka
        .client_config()
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut pending = Vec::with_capacity(payloads.len());
    for (key, payload) in &payloads {
        pending.push(
            producer
                .send_result(FutureRecord::to(topic).key(key).payload(payload))
                .unwrap(),
        );
    }
    for delivery in pending {
        delivery.await.unwrap().unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Produces audit records keyed by their message id.
async fn produce_records(kafka: &KafkaTestEnv, topic: &str, records: &[AuditRecord]) {
    let payloads = records
        .iter()
        .map(|r| (r.message_id.clone(), r.encode_to_vec()))
        .collect();
    produce(kafka, topic, payloads).await;
}

/// Every object under `prefix`: key → decompressed lines.
async fn read_all(rgw: &RgwTestEnv, bucket: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let bucket = rgw.bucket(bucket);
    let mut objects = BTreeMap::new();
    for page in bucket.list(format!("{prefix}/"), None).await.unwrap() {
        // The lookup index objects beside the data objects are not part of the trail.
        for object in page
            .contents
            .into_iter()
            .filter(|o| !o.key.ends_with(".idx"))
        {
            let data = bucket.get_object(&object.key).await.unwrap();
            objects.insert(object.key, data.bytes().to_vec());
        }
    }
    objects
}

fn gunzip(bytes: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_thousand_records_are_stored_exactly_once_under_their_hour() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let bucket = unique_name("it-audit");
    let topic = kafka.create_topic("it-audit", 6).await;
    let total = 100_000;
    let base = 1_795_000_000 / 3600 * 3600; // an hour boundary
    let records: Vec<AuditRecord> = (0..total).map(|i| record(i, total, base)).collect();
    produce_records(&kafka, &topic, &records).await;

    let service = start(&kafka, &bucket, &topic, "audit");
    service
        .metrics
        .wait_for_at_least(
            "relais_audit_records_written_total",
            total as f64,
            Duration::from_secs(240),
        )
        .await;
    service.stop().await;

    let objects = read_all(&rgw, &bucket, "audit").await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (key, body) in &objects {
        assert!(key.ends_with(".ndjson.gz"), "{key}");
        let partition_hour: Vec<&str> = key.split('/').collect();
        let (dt, hour) = (partition_hour[1], partition_hour[2]);
        for line in gunzip(body).lines() {
            let value: Value = serde_json::from_str(line).unwrap();
            let occurred = value["occurred_at"].as_str().unwrap();
            assert_eq!(format!("dt={}", &occurred[..10]), dt, "{key}: {occurred}");
            assert_eq!(
                format!("hour={}", &occurred[11..13]),
                hour,
                "{key}: {occurred}"
            );
            *seen
                .entry(value["message_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
            let index: usize = value["message_id"].as_str().unwrap()[4..].parse().unwrap();
            let expected = &records[index];
            assert_eq!(value["trace_id"], expected.trace_id.as_str());
            let outcome = if index.is_multiple_of(10) {
                "REJECTED"
            } else {
                "DELIVERED"
            };
            assert_eq!(value["outcome"], outcome);
        }
    }
    assert_eq!(seen.len(), total, "every record stored");
    assert!(seen.values().all(|count| *count == 1), "no record twice");
    let hours: std::collections::BTreeSet<&str> = objects
        .keys()
        .map(|k| k.split('/').nth(2).unwrap())
        .collect();
    assert_eq!(hours.len(), 3, "three hours of event time: {hours:?}");
}

/// Six partitions whose open objects (up to 10,000 records each, one event hour, no idle close
/// for ten minutes) can hold three times the buffer: the service closes the largest early
/// instead of pausing until the idle rule, and still stores every record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_objects_that_fill_the_buffer_are_closed_and_stored() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let bucket = unique_name("it-audit-pressure");
    let topic = kafka.create_topic("it-audit-pressure", 6).await;
    let total = 30_000;
    let base = 1_795_000_000 / 3600 * 3600;
    // Event times within the first seconds of one hour: no hour boundary closes an object.
    let records: Vec<AuditRecord> = (0..total).map(|i| record(i, total * 1000, base)).collect();
    produce_records(&kafka, &topic, &records).await;

    let service = start_with(
        &kafka,
        &bucket,
        &topic,
        ObjectsConfig {
            prefix: "pressure".to_owned(),
            max_records: 10_000,
            idle: Duration::from_secs(600),
            ..ObjectsConfig::default()
        },
        BufferConfig {
            max_records: 10_000,
            ..BufferConfig::default()
        },
    );
    // Without closing under pressure nothing is stored for ten minutes.
    service
        .metrics
        .wait_for_at_least(
            "relais_audit_records_written_total",
            20_000.0,
            Duration::from_secs(60),
        )
        .await;
    assert!(
        service
            .metrics
            .value("relais_audit_pressure_closes_total")
            .await
            > 0.0
    );
    // Records received while the pause takes effect may come on top of the bound.
    assert!(service.metrics.value("relais_audit_buffer_records").await <= 11_000.0);
    // Everything read, shutdown stores what is still open.
    service
        .metrics
        .wait_for_at_least(
            "relais_audit_records_consumed_total",
            total as f64,
            Duration::from_secs(60),
        )
        .await;
    service.stop().await;

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for body in read_all(&rgw, &bucket, "pressure").await.values() {
        for line in gunzip(body).lines() {
            let value: Value = serde_json::from_str(line).unwrap();
            *seen
                .entry(value["message_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(seen.len(), total, "every record stored");
    assert!(seen.values().all(|count| *count == 1), "no record twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_records_are_quarantined_and_the_partition_moves_on() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let bucket = unique_name("it-audit");
    let topic = kafka.create_topic("it-audit", 1).await;
    let base = 1_795_000_000 / 3600 * 3600;
    let mut payloads = Vec::new();
    for index in 0..300 {
        if index % 50 == 7 {
            payloads.push((
                format!("bad-{index}"),
                vec![0xff, 0xff, 0xff, 0xff, 0x0f, index as u8],
            ));
        } else {
            payloads.push((
                format!("msg-{index}"),
                record(index, 300, base).encode_to_vec(),
            ));
        }
    }
    produce(&kafka, &topic, payloads).await;
    let service = start(&kafka, &bucket, &topic, "audit");
    service
        .metrics
        .wait_for_at_least(
            "relais_audit_records_quarantined_total",
            6.0,
            Duration::from_secs(60),
        )
        .await;
    service
        .metrics
        .wait_for_at_least(
            "relais_audit_records_written_total",
            294.0,
            Duration::from_secs(60),
        )
        .await;
    service.stop().await;

    let objects = read_all(&rgw, &bucket, "audit").await;
    let quarantined: Vec<&String> = objects
        .keys()
        .filter(|k| k.starts_with("audit/quarantine/"))
        .collect();
    assert_eq!(quarantined.len(), 6, "{quarantined:?}");
    assert!(
        quarantined
            .iter()
            .any(|k| k.ends_with(&format!("+0+{:020}.bin", 7))),
        "keyed by partition and offset"
    );
    assert_eq!(
        objects[quarantined[0]][..4],
        [0xff, 0xff, 0xff, 0xff],
        "the bytes as they came"
    );
    let lines: usize = objects
        .iter()
        .filter(|(k, _)| k.ends_with(".ndjson.gz"))
        .map(|(_, body)| gunzip(body).lines().count())
        .sum();
    assert_eq!(
        lines, 294,
        "every good record stored, the partition kept moving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_trail_of_a_trace_or_message_id_is_found_through_the_index() {
    use relais_proto::v1::audit_query_client::AuditQueryClient;
    use relais_proto::v1::{StatsRequest, TrailRequest, trail_request};

    let kafka = relais_test_support::kafka().await;
    let bucket = unique_name("it-audit-query");
    let topic = kafka.create_topic("it-audit-query", 3).await;
    let total = 20_000;
    // Event times in the last hours, so the default 24-hour window covers them.
    let base = chrono::Utc::now().timestamp() / 3600 * 3600 - 4 * 3600;
    let mut records: Vec<AuditRecord> = (0..total).map(|i| record(i, total, base)).collect();
    // One trace with three records (a message retried through the DLQ, say).
    for index in [100, 9_000, 19_999] {
        records[index].trace_id = "feedfacefeedfacefeedfacefeedface".into();
    }
    produce_records(&kafka, &topic, &records).await;
    let service = start(&kafka, &bucket, &topic, "audit");
    service
        .metrics
        .wait_for_at_least(
            "relais_audit_records_written_total",
            total as f64,
            Duration::from_secs(120),
        )
        .await;

    let mut client = AuditQueryClient::connect(format!("http://{}", service.grpc))
        .await
        .unwrap();
    let started = Instant::now();
    let trail = client
        .get_trail(TrailRequest {
            key: Some(trail_request::Key::TraceId(
                "feedfacefeedfacefeedfacefeedface".into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let elapsed = started.elapsed();
    let ids: Vec<&str> = trail
        .records
        .iter()
        .map(|r| r.message_id.as_str())
        .collect();
    assert_eq!(ids, ["msg-100", "msg-9000", "msg-19999"], "oldest first");
    assert!(
        trail.objects_scanned <= 6,
        "the index narrowed the search: {} objects read",
        trail.objects_scanned
    );
    eprintln!(
        "trail by trace id over {total} records: {elapsed:?}, {} objects read",
        trail.objects_scanned
    );

    let by_message = client
        .get_trail(TrailRequest {
            key: Some(trail_request::Key::MessageId("msg-4242".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_message.records.len(), 1);
    assert_eq!(by_message.records[0].trace_id, records[4242].trace_id);
    let none = client
        .get_trail(TrailRequest {
            key: Some(trail_request::Key::MessageId("no-such-message".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.records.is_empty());
    let invalid = client.get_trail(TrailRequest::default()).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);

    let stats = client
        .get_stats(StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.records_written, total as u64);
    assert!(stats.objects_written > 0 && stats.bytes_written > 0);

    // The operator's command asks the running service the same, from an environment without
    // any of the service's own settings (no S3 keys, no configuration file).
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_audit-service"));
    for name in [
        "RELAIS_S3_ACCESS_KEY",
        "RELAIS_S3_SECRET_KEY",
        "RELAIS_S3_SECRET_KEY_FILE",
        "RELAIS_AUDIT_CONFIG",
    ] {
        command.env_remove(name);
    }
    let output = command
        .args(["trail", "--url", &format!("http://{}", service.grpc)])
        .args(["--trace-id", "feedfacefeedfacefeedfacefeedface"])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "audit-service trail failed: {stderr}"
    );
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let (summary, found) = lines.split_last().unwrap();
    let ids: Vec<&str> = found
        .iter()
        .map(|line| line["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["msg-100", "msg-9000", "msg-19999"]);
    assert_eq!(summary["records"], 3);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trail_lookups_stop_at_the_limit_reach_past_the_index_and_are_bounded_in_time() {
    use relais_audit_service::config::QueryConfig;
    use relais_audit_service::index::Index;
    use relais_audit_service::query::{QueryService, refresh};
    use relais_proto::v1::audit_query_client::AuditQueryClient;
    use relais_proto::v1::audit_query_server::AuditQuery as _;
    use relais_proto::v1::{TrailRequest, trail_request};

    let kafka = relais_test_support::kafka().await;
    let bucket = unique_name("it-audit-bounded");
    let topic = kafka.create_topic("it-audit-bounded", 3).await;
    let trace = "cafe".repeat(8);
    let hour = chrono::Utc::now().timestamp() / 3600 * 3600;
    // 3,000 records over the last three hours and 300 three days ago; every hundredth recent
    // one and every tenth old one belongs to the trace: 30 + 30 records in several objects.
    let mut records: Vec<AuditRecord> = (0..3000)
        .map(|i| record(i, 3000, hour - 3 * 3600))
        .collect();
    records.extend((0..300).map(|i| {
        let mut old = record(i, 300, hour - 72 * 3600);
        old.message_id = format!("old-{i}");
        old
    }));
    for (index, record) in records.iter_mut().enumerate() {
        if (index < 3000 && index % 100 == 0) || (index >= 3000 && index % 10 == 0) {
            record.trace_id = trace.clone();
        }
    }
    produce_records(&kafka, &topic, &records).await;
    let service = start(&kafka, &bucket, &topic, "audit");
    service
        .metrics
        .wait_for_at_least(
            "relais_audit_records_written_total",
            records.len() as f64,
            Duration::from_secs(120),
        )
        .await;
    let mut client = AuditQueryClient::connect(format!("http://{}", service.grpc))
        .await
        .unwrap();
    let timestamp = |seconds| Some(relais_proto::Timestamp { seconds, nanos: 0 });
    let request = |limit, from, to| TrailRequest {
        key: Some(trail_request::Key::TraceId(trace.clone())),
        from,
        to,
        limit,
    };

    // The default window (the last 24 hours): the 30 recent records.
    let all = client
        .get_trail(request(0, None, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.records.len(), 30);
    assert!(!all.truncated && !all.partial);
    // A limit of 5: the oldest five, and only the first hour's objects read.
    let few = client
        .get_trail(request(5, None, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(few.records, all.records[..5]);
    assert!(few.truncated);
    assert!(
        few.objects_scanned < all.objects_scanned,
        "reading stopped at the limit: {} of {} objects",
        few.objects_scanned,
        all.objects_scanned
    );
    // Three days ago is older than the in-memory index: looked up in RGW's index objects.
    let old = client
        .get_trail(request(
            0,
            timestamp(hour - 73 * 3600),
            timestamp(hour - 60 * 3600),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.records.len(), 30);
    assert!(old.records.iter().all(|r| r.message_id.starts_with("old-")));
    let both = client
        .get_trail(request(0, timestamp(hour - 73 * 3600), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(both.records.len(), 60);
    let too_long = client
        .get_trail(request(0, timestamp(hour - 40 * 86_400), None))
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument);
    assert!(
        service
            .metrics
            .value("relais_audit_trail_lookups_total{result=\"complete\"}")
            .await
            >= 4.0
    );
    service.stop().await;

    // The same bucket, through a service with a 1 ms deadline: partial, not an error.
    let endpoints = relais_test_support::Endpoints::from_env();
    let args = common::args(&kafka, &bucket, endpoints.s3_endpoint);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = relais_audit_service::metrics::AuditMetrics::register(&mut registry);
    let store = std::sync::Arc::new(
        relais_audit_service::store::Store::connect(
            &args,
            &AuditConfig::default(),
            metrics.clone(),
        )
        .await
        .unwrap(),
    );
    let index = std::sync::Arc::new(Index::default());
    let now = chrono::Utc::now();
    refresh::load_index(
        &store,
        &index,
        &mut refresh::Known::new(),
        now - chrono::Duration::hours(24),
        now,
    )
    .await;
    let hurried = QueryService::new(
        std::sync::Arc::clone(&store),
        std::sync::Arc::clone(&index),
        metrics.clone(),
        QueryConfig {
            deadline: Duration::from_millis(1),
            ..QueryConfig::default()
        },
    );
    let answer = hurried
        .get_trail(tonic::Request::new(request(0, None, None)))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.partial, "stopped at the deadline and said so");
    assert!(answer.records.len() < 30);
    // No lookup slot free before the deadline: refused, not queued for ever.
    let busy = QueryService {
        lookups: std::sync::Arc::new(tokio::sync::Semaphore::new(0)),
        ..QueryService::new(
            store,
            index,
            metrics,
            QueryConfig {
                deadline: Duration::from_millis(200),
                ..QueryConfig::default()
            },
        )
    };
    let refused = busy
        .get_trail(tonic::Request::new(request(0, None, None)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
}
