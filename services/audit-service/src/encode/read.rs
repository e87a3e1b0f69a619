//! Stored lines read back into records: the inverse of [`super::RecordLine`].

use chrono::DateTime;
use relais_proto::v1::{self, AuditRecord};
use serde_json::Value;

fn response_from_json(value: &Value) -> Option<v1::ResponseExcerpt> {
    let response = value.as_object()?;
    Some(v1::ResponseExcerpt {
        headers: response
            .get("headers")
            .and_then(Value::as_object)
            .map(|headers| {
                headers
                    .iter()
                    .map(|(name, value)| v1::HeaderValue {
                        name: name.clone(),
                        value: value.as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        body: response
            .get("body")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        body_truncated: response
            .get("body_truncated")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

pub(crate) fn parse_time(value: &Value) -> Option<relais_proto::Timestamp> {
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

/// Reads a stored line back into an `AuditRecord` (the inverse of [`RecordLine`]).
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
                    response: response_from_json(&a["response"]),
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
