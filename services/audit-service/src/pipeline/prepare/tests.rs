//! Batches cut into runs and encoded as each record would be alone.

use rdkafka::Timestamp;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use relais_proto::v1::{self, AuditRecord};

use super::*;

fn message(offset: i64, payload: Vec<u8>, headers: Option<OwnedHeaders>) -> OwnedMessage {
    message_of(0, offset, payload, headers)
}

fn message_of(
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
) -> OwnedMessage {
    OwnedMessage::new(
        Some(payload),
        Some(format!("key-{offset}").into_bytes()),
        "relais.audit".into(),
        Timestamp::CreateTime(1_700_000_000_000),
        partition,
        offset,
        headers,
    )
}

fn prepared(messages: &[OwnedMessage]) -> PreparedBatch {
    let mut batch = ReceivedBatch::with_capacity(messages.len(), 0);
    for message in messages {
        batch.push(message, 1);
    }
    prepare_batch("relais.audit", batch, &ChunkPool::new(0))
}

fn lines(batch: &PreparedBatch) -> Vec<Option<&[u8]>> {
    let lines = batch.runs.iter().flat_map(|run| {
        run.records.iter().map(|record| {
            let encoded = record.content.as_ref().ok()?;
            Some(&run.json[encoded.json.clone()])
        })
    });
    lines.collect()
}

fn records(batch: &PreparedBatch) -> Vec<&Prepared> {
    batch.runs.iter().flat_map(|run| &run.records).collect()
}

#[test]
fn a_batch_gives_each_record_the_line_it_gets_alone() {
    let full = AuditRecord {
        message_id: "m-1".into(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        reason_detail: "a long detail that the next record does not have".into(),
        position: Some(v1::SourcePosition {
            topic: "relais.ingress".into(),
            partition: 3,
            offset: 9,
        }),
        attempts: vec![v1::Attempt {
            number: 1,
            status_code: 503,
            ..Default::default()
        }],
        ..Default::default()
    };
    let sparse = AuditRecord {
        message_id: "m-2".into(),
        ..Default::default()
    };
    let action = OperatorAction {
        action_id: "a-1".into(),
        subject: "orders".into(),
        ..Default::default()
    };
    let action_headers = OwnedHeaders::new().insert(Header {
        key: relais_operator::actions::SCHEMA_HEADER,
        value: Some(relais_operator::actions::OPERATOR_ACTION_SCHEMA),
    });
    let batch = [
        message(0, full.encode_to_vec(), None),
        message(1, b"\xff not protobuf".to_vec(), None),
        message(2, sparse.encode_to_vec(), None),
        message(3, action.encode_to_vec(), Some(action_headers)),
    ];
    let together = prepared(&batch);
    let alone: Vec<PreparedBatch> = batch
        .iter()
        .map(|message| prepared(std::slice::from_ref(message)))
        .collect();
    let alone: Vec<Option<&[u8]>> = alone.iter().flat_map(lines).collect();
    assert_eq!(lines(&together), alone);
    assert!(alone[1].is_none());
    let action_line = String::from_utf8_lossy(alone[3].unwrap());
    assert!(
        action_line.contains(r#""kind":"operator_action""#),
        "{action_line}"
    );

    assert!(alone.iter().flatten().all(|line| line.ends_with(b"}\n")));
    let together_records = records(&together);
    let undecodable = together_records[1].content.as_ref().unwrap_err();
    assert_eq!(undecodable.payload, b"\xff not protobuf");
    assert_eq!(undecodable.key.as_deref(), Some(&b"key-1"[..]));
    let ids = |record: &Prepared| record.content.as_ref().unwrap().line.ids;
    assert_eq!(
        ids(together_records[2]),
        [IdHash::of(""), IdHash::of("m-2")]
    );
    assert_eq!(
        ids(together_records[3]),
        [IdHash::of(""), IdHash::of("orders")]
    );
}

#[test]
fn a_batch_is_cut_into_runs_of_one_partition_each_with_its_lines() {
    let record = |id: &str| {
        AuditRecord {
            message_id: id.into(),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let batch = prepared(&[
        message_of(0, 10, record("a"), None),
        message_of(0, 11, b"\xff not protobuf".to_vec(), None),
        message_of(0, 12, record("b"), None),
        message_of(1, 20, record("c"), None),
        message_of(0, 13, record("d"), None),
    ]);
    let runs: Vec<(Vec<i32>, Vec<i64>)> = batch
        .runs
        .iter()
        .map(|run| {
            (
                run.records.iter().map(|record| record.partition).collect(),
                run.records.iter().map(|record| record.offset).collect(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        [
            (vec![0, 0, 0], vec![10, 11, 12]),
            (vec![1], vec![20]),
            (vec![0], vec![13]),
        ]
    );
    for run in &batch.runs {
        // A run's buffer is its lines, in order, each with its newline, and nothing else.
        let ranges: Vec<_> = run
            .records
            .iter()
            .filter_map(|record| record.content.as_ref().ok())
            .map(|encoded| encoded.json.clone())
            .collect();
        assert_eq!(ranges.first().map(|range| range.start), Some(0));
        assert!(ranges.windows(2).all(|pair| pair[0].end == pair[1].start));
        assert_eq!(ranges.last().map(|range| range.end), Some(run.json.len()));
        assert!(ranges.iter().all(|range| run.json[range.end - 1] == b'\n'));
    }
}

#[test]
fn a_batch_reserves_for_records_like_its_first_within_a_bound() {
    assert_eq!(batch_reserve(800, 1023), 818_400);
    assert_eq!(batch_reserve(0, 1023), 0);
    assert_eq!(batch_reserve(1024 * 1024, 1023), 4 * 1024 * 1024);
    assert_eq!(batch_reserve(usize::MAX, 2), 4 * 1024 * 1024);
}

#[test]
fn a_record_keeps_the_trace_context_of_its_headers() {
    relais_telemetry::propagation::install_w3c();
    let headers = OwnedHeaders::new().insert(Header {
        key: "traceparent",
        value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    });
    let record = AuditRecord {
        message_id: "m-1".into(),
        ..Default::default()
    };
    let batch = prepared(&[
        message(0, record.encode_to_vec(), Some(headers)),
        message(1, record.encode_to_vec(), None),
    ]);
    let context = |index: usize| {
        records(&batch)[index]
            .content
            .as_ref()
            .unwrap()
            .line
            .context
            .clone()
    };
    let traced = context(0).expect("a valid context");
    assert_eq!(
        traced.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(traced.span_id().to_string(), "00f067aa0ba902b7");
    assert!(traced.is_sampled() && traced.is_remote());
    assert_eq!(context(1), None);
}
