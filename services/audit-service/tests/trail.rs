//! The audit trail in the real RGW: every record exactly once, under the right hour, and
//! undecodable records quarantined without stopping the partition.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::time::Duration;

use common::records::{produce, produce_records, record, start, start_with};
use prost::Message as _;
use relais_audit_service::config::{BufferConfig, ObjectsConfig};
use relais_proto::v1::AuditRecord;
use relais_test_support::{RgwTestEnv, unique_name};
use serde_json::Value;

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
