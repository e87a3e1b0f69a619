//! One NDJSON line per audit record, with stable field names (see docs/audit-objects.md).
//!
//! The line is built field by field rather than derived, so renaming a Rust field can never
//! silently rename a stored field: these names are a contract with every reader of the trail.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use relais_proto::v1::{self, AuditRecord};
use serde_json::{Map, Value, json};

/// Where the audit record itself was read from (the `relais.audit` position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPosition<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// Converts a protobuf timestamp to UTC (None when absent or out of range).
pub fn timestamp(value: Option<&relais_proto::Timestamp>) -> Option<DateTime<Utc>> {
    let value = value?;
    DateTime::from_timestamp(value.seconds, u32::try_from(value.nanos).ok()?)
}

fn rfc3339(value: Option<&relais_proto::Timestamp>) -> Value {
    timestamp(value).map_or(Value::Null, |time| {
        Value::String(time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    })
}

fn outcome_name(value: i32) -> &'static str {
    match v1::Outcome::try_from(value) {
        Ok(v1::Outcome::Delivered) => "DELIVERED",
        Ok(v1::Outcome::Rejected) => "REJECTED",
        Ok(v1::Outcome::Failed) => "FAILED",
        Ok(v1::Outcome::DeadLettered) => "DEAD_LETTERED",
        _ => "UNSPECIFIED",
    }
}

fn circuit_name(value: i32) -> &'static str {
    match v1::CircuitState::try_from(value) {
        Ok(v1::CircuitState::Closed) => "CLOSED",
        Ok(v1::CircuitState::Open) => "OPEN",
        Ok(v1::CircuitState::HalfOpen) => "HALF_OPEN",
        _ => "UNSPECIFIED",
    }
}

fn timeout_name(value: i32) -> &'static str {
    match v1::TimeoutKind::try_from(value) {
        Ok(v1::TimeoutKind::None) => "NONE",
        Ok(v1::TimeoutKind::Connect) => "CONNECT",
        Ok(v1::TimeoutKind::Attempt) => "ATTEMPT",
        Ok(v1::TimeoutKind::Deadline) => "DEADLINE",
        _ => "UNSPECIFIED",
    }
}

/// The JSON object of one record.
pub fn record_json(record: &AuditRecord, position: AuditPosition<'_>) -> Value {
    let attempts: Vec<Value> = record
        .attempts
        .iter()
        .map(|attempt| {
            let timings = attempt.timings.unwrap_or_default();
            json!({
                "number": attempt.number,
                "started_at": rfc3339(attempt.started_at.as_ref()),
                "status_code": attempt.status_code,
                "error_type": attempt.error_type,
                "timeout": timeout_name(attempt.timeout),
                "dns_us": timings.dns_us,
                "connect_us": timings.connect_us,
                "tls_us": timings.tls_us,
                "time_to_first_byte_us": timings.time_to_first_byte_us,
                "transfer_us": timings.transfer_us,
                "total_us": timings.total_us,
                "request_bytes": attempt.request_bytes,
                "response_bytes": attempt.response_bytes,
                "backoff_ms": attempt.backoff_ms,
            })
        })
        .collect();
    let source = record.position.as_ref();
    let mut line = Map::new();
    line.insert("message_id".into(), record.message_id.clone().into());
    line.insert("trace_id".into(), record.trace_id.clone().into());
    line.insert("span_id".into(), record.span_id.clone().into());
    line.insert("outcome".into(), outcome_name(record.outcome).into());
    line.insert("reason_code".into(), record.reason_code.clone().into());
    line.insert("reason_detail".into(), record.reason_detail.clone().into());
    line.insert("event_type".into(), record.event_type.clone().into());
    line.insert("source".into(), record.source.clone().into());
    line.insert("upstream".into(), record.upstream.clone().into());
    line.insert("occurred_at".into(), rfc3339(record.occurred_at.as_ref()));
    line.insert("received_at".into(), rfc3339(record.received_at.as_ref()));
    line.insert("decided_at".into(), rfc3339(record.decided_at.as_ref()));
    line.insert("worker_id".into(), record.worker_id.clone().into());
    line.insert(
        "ingress".into(),
        json!({
            "topic": source.map(|s| s.topic.as_str()).unwrap_or_default(),
            "partition": source.map_or(0, |s| s.partition),
            "offset": source.map_or(0, |s| s.offset),
        }),
    );
    line.insert("attempts".into(), Value::Array(attempts));
    line.insert(
        "circuit_state".into(),
        circuit_name(record.circuit_state).into(),
    );
    line.insert("payload_bytes".into(), record.payload_bytes.into());
    line.insert(
        "audit".into(),
        json!({ "topic": position.topic, "partition": position.partition, "offset": position.offset }),
    );
    Value::Object(line)
}

fn parse_time(value: &Value) -> Option<relais_proto::Timestamp> {
    let time = DateTime::parse_from_rfc3339(value.as_str()?).ok()?;
    Some(relais_proto::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    })
}

fn enum_value(name: &str, names: &[(&str, i32)]) -> i32 {
    names
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| *v)
}

/// Reads a stored line back into an `AuditRecord` (the inverse of [`record_json`]).
pub fn record_from_json(line: &Value) -> AuditRecord {
    let text = |field: &str| line[field].as_str().unwrap_or_default().to_owned();
    let number = |value: &Value| value.as_u64().unwrap_or(0);
    let outcome = enum_value(
        line["outcome"].as_str().unwrap_or_default(),
        &[
            ("DELIVERED", 1),
            ("REJECTED", 2),
            ("FAILED", 3),
            ("DEAD_LETTERED", 4),
        ],
    );
    let circuit = enum_value(
        line["circuit_state"].as_str().unwrap_or_default(),
        &[("CLOSED", 1), ("OPEN", 2), ("HALF_OPEN", 3)],
    );
    let attempts = line["attempts"]
        .as_array()
        .map(|attempts| {
            attempts
                .iter()
                .map(|a| v1::Attempt {
                    number: number(&a["number"]) as u32,
                    started_at: parse_time(&a["started_at"]),
                    status_code: number(&a["status_code"]) as u32,
                    error_type: a["error_type"].as_str().unwrap_or_default().to_owned(),
                    timeout: enum_value(
                        a["timeout"].as_str().unwrap_or_default(),
                        &[("NONE", 1), ("CONNECT", 2), ("ATTEMPT", 3), ("DEADLINE", 4)],
                    ),
                    timings: Some(v1::ProbeTimings {
                        dns_us: number(&a["dns_us"]),
                        connect_us: number(&a["connect_us"]),
                        tls_us: number(&a["tls_us"]),
                        time_to_first_byte_us: number(&a["time_to_first_byte_us"]),
                        transfer_us: number(&a["transfer_us"]),
                        total_us: number(&a["total_us"]),
                    }),
                    request_bytes: number(&a["request_bytes"]),
                    response_bytes: number(&a["response_bytes"]),
                    backoff_ms: number(&a["backoff_ms"]),
                })
                .collect()
        })
        .unwrap_or_default();
    AuditRecord {
        message_id: text("message_id"),
        trace_id: text("trace_id"),
        span_id: text("span_id"),
        outcome,
        reason_code: text("reason_code"),
        reason_detail: text("reason_detail"),
        event_type: text("event_type"),
        source: text("source"),
        upstream: text("upstream"),
        occurred_at: parse_time(&line["occurred_at"]),
        received_at: parse_time(&line["received_at"]),
        decided_at: parse_time(&line["decided_at"]),
        worker_id: text("worker_id"),
        position: Some(v1::SourcePosition {
            topic: line["ingress"]["topic"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            partition: line["ingress"]["partition"].as_i64().unwrap_or(0) as i32,
            offset: line["ingress"]["offset"].as_i64().unwrap_or(0),
        }),
        attempts,
        circuit_state: circuit,
        payload_bytes: number(&line["payload_bytes"]),
    }
}

/// The time a record is filed under: its event time, else the Kafka record's timestamp.
/// Never the wall clock, so the same input always lands under the same key.
pub fn record_time(
    record: Option<&AuditRecord>,
    kafka_timestamp: Option<SystemTime>,
) -> DateTime<Utc> {
    record
        .and_then(|record| timestamp(record.occurred_at.as_ref()))
        .or_else(|| kafka_timestamp.map(DateTime::<Utc>::from))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Kafka's millisecond timestamp as a `SystemTime`.
pub fn kafka_time(millis: Option<i64>) -> Option<SystemTime> {
    let millis = u64::try_from(millis?).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;

    // The stable, in-`make test` part of fuzzing what the audit-service decodes (the long runs
    // are `make fuzz`): any bytes either fail to decode or give a record whose line is JSON and
    // reads back with the same identity, never a panic.
    proptest! {
        #[test]
        fn any_decodable_bytes_make_a_line_that_reads_back(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(record) = AuditRecord::decode(bytes.as_slice()) {
                let position = AuditPosition { topic: "t", partition: 0, offset: 0 };
                let line = serde_json::to_vec(&record_json(&record, position)).unwrap();
                let parsed: Value = serde_json::from_slice(&line).unwrap();
                let back = record_from_json(&parsed);
                prop_assert_eq!(back.message_id, record.message_id);
                prop_assert_eq!(back.trace_id, record.trace_id);
                prop_assert_eq!(back.attempts.len(), record.attempts.len());
            }
        }
    }

    #[test]
    fn lines_have_the_documented_names() {
        let record = AuditRecord {
            message_id: "m-1".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            outcome: v1::Outcome::DeadLettered as i32,
            reason_code: "retries_exhausted".into(),
            occurred_at: Some(relais_proto::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5000,
            }),
            attempts: vec![v1::Attempt {
                number: 0,
                status_code: 503,
                ..Default::default()
            }],
            ..Default::default()
        };
        let line = record_json(
            &record,
            AuditPosition {
                topic: "relais.audit",
                partition: 2,
                offset: 42,
            },
        );
        assert_eq!(line["outcome"], "DEAD_LETTERED");
        assert_eq!(line["occurred_at"], "2023-11-14T22:13:20.000005Z");
        assert_eq!(line["attempts"][0]["status_code"], 503);
        assert_eq!(line["audit"]["offset"], 42);
        assert_eq!(record_time(Some(&record), None).timestamp(), 1_700_000_000);
        assert_eq!(
            record_time(None, kafka_time(Some(86_400_000))).timestamp(),
            86_400
        );
    }
}
