//! Any bytes on `relais.audit`: decoding fails cleanly or yields a record whose stored JSON line
//! is valid JSON and reads back without panicking, with the same identity fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use relais_audit_service::encode::{AuditPosition, RecordLine, record_from_json};
use relais_proto::v1::AuditRecord;

fuzz_target!(|payload: &[u8]| {
    let Ok(record) = AuditRecord::decode(payload) else {
        return;
    };
    let position = AuditPosition {
        topic: "relais.audit",
        partition: 0,
        offset: 0,
    };
    let line = RecordLine {
        record: &record,
        position,
    }
    .to_vec();
    let parsed: serde_json::Value = serde_json::from_slice(&line).expect("the line is JSON");
    let back = record_from_json(&parsed);
    assert_eq!(back.message_id, record.message_id);
    assert_eq!(back.trace_id, record.trace_id);
    assert_eq!(back.attempts.len(), record.attempts.len());
});
