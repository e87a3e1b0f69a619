//! Any bytes on `relais.audit`: the service's reader and prost both refuse them or both read
//! the same record, whose stored JSON line is valid JSON and reads back without panicking, with
//! the same identity fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use relais_audit_service::encode::{AuditPosition, RecordLine, RecordView, record_from_json};
use relais_proto::v1::AuditRecord;

fuzz_target!(|payload: &[u8]| {
    let mut view = RecordView::default();
    let read = view.read(payload);
    let Ok(record) = AuditRecord::decode(payload) else {
        assert!(read.is_err(), "prost refuses what the reader reads");
        return;
    };
    assert!(read.is_ok(), "the reader refuses what prost reads: {read:?}");
    assert_eq!(view, RecordView::of(&record));
    let position = AuditPosition {
        topic: "relais.audit",
        partition: 0,
        offset: 0,
    };
    let mut line = Vec::new();
    view.write_line(position, &mut line);
    assert_eq!(line, RecordLine { record: &record, position }.to_vec());
    let parsed: serde_json::Value = serde_json::from_slice(&line).expect("the line is JSON");
    let back = record_from_json(&parsed);
    assert_eq!(back.message_id, record.message_id);
    assert_eq!(back.trace_id, record.trace_id);
    assert_eq!(back.attempts.len(), record.attempts.len());
});
