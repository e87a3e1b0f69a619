//! Trail lookups through the index against the real RGW: by trace and message id, bounded in
//! what they read and how long they take, and the operator's `audit-service trail` command.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::records::{produce_records, record, start};
use relais_audit_service::config::AuditConfig;
use relais_proto::v1::AuditRecord;
use relais_test_support::unique_name;
use serde_json::Value;

/// The whole trail of one trace or message id, with the request's defaults otherwise.
async fn trail_of(
    client: &mut relais_proto::v1::audit_query_client::AuditQueryClient<tonic::transport::Channel>,
    key: relais_proto::v1::trail_request::Key,
) -> relais_proto::v1::TrailResponse {
    client
        .get_trail(relais_proto::v1::TrailRequest {
            key: Some(key),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
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
    let trail = trail_of(
        &mut client,
        trail_request::Key::TraceId("feedfacefeedfacefeedfacefeedface".into()),
    )
    .await;
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

    let by_message = trail_of(
        &mut client,
        trail_request::Key::MessageId("msg-4242".into()),
    )
    .await;
    assert_eq!(by_message.records.len(), 1);
    assert_eq!(by_message.records[0].trace_id, records[4242].trace_id);
    let none = trail_of(
        &mut client,
        trail_request::Key::MessageId("no-such-message".into()),
    )
    .await;
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
