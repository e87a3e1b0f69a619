//! The stored line of one audit record, field by field with each name spelled out.

use relais_proto::v1::{self, AuditRecord};

use super::AuditPosition;
use super::json::{JsonObject, Key, key};
use super::view::{AttemptView, PositionView, RecordView};

/// The stored line of one decoded record.
#[derive(Debug, Clone, Copy)]
pub struct RecordLine<'a> {
    pub record: &'a AuditRecord,
    pub position: AuditPosition<'a>,
}

impl RecordLine<'_> {
    /// The line as JSON bytes (without the newline).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// Appends the line (without the newline) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        RecordView::of(self.record).write_line(self.position, out);
    }
}

impl RecordView<'_> {
    /// Appends the record's line (without the newline) to `out`, written straight into its
    /// bytes; `position` is where the record itself was read.
    pub fn write_line(&self, position: AuditPosition<'_>, out: &mut Vec<u8>) {
        let ingress = self.position.unwrap_or_default();
        let mut line = JsonObject::begin(out);
        line.text(key!("message_id"), self.message_id);
        line.text(key!("trace_id"), self.trace_id);
        line.text(key!("span_id"), self.span_id);
        line.raw(key!("outcome"), outcome_name(self.outcome));
        line.text(key!("reason_code"), self.reason_code);
        line.text(key!("reason_detail"), self.reason_detail);
        line.text(key!("event_type"), self.event_type);
        line.text(key!("source"), self.source);
        line.text(key!("upstream"), self.upstream);
        line.time(key!("occurred_at"), self.occurred_at.as_ref());
        line.time(key!("received_at"), self.received_at.as_ref());
        line.time(key!("decided_at"), self.decided_at.as_ref());
        line.text(key!("worker_id"), self.worker_id);
        ingress.write(key!("ingress"), &mut line);
        line.objects(key!("attempts"), &self.attempts, write_attempt);
        line.raw(key!("circuit_state"), circuit_name(self.circuit_state));
        line.int(key!("payload_bytes"), self.payload_bytes);
        position.write(key!("audit"), &mut line);
        line.end();
    }
}

impl PositionView<'_> {
    /// `{"topic", "partition", "offset"}` under `key`: where a record was read (the ingress
    /// position of a record, or where the audit record itself was read).
    pub(crate) fn write(&self, key: Key, line: &mut JsonObject<'_>) {
        line.object(key, |position| {
            position.text(key!("topic"), self.topic);
            position.int(key!("partition"), self.partition);
            position.int(key!("offset"), self.offset);
        });
    }
}

fn write_attempt(line: &mut JsonObject<'_>, attempt: &AttemptView<'_>) {
    let timings = attempt.timings.unwrap_or_default();
    line.int(key!("number"), attempt.number);
    line.time(key!("started_at"), attempt.started_at.as_ref());
    line.int(key!("status_code"), attempt.status_code);
    line.text(key!("error_type"), attempt.error_type);
    line.raw(key!("timeout"), timeout_name(attempt.timeout));
    line.int(key!("dns_us"), timings.dns_us);
    line.int(key!("connect_us"), timings.connect_us);
    line.int(key!("tls_us"), timings.tls_us);
    line.int(key!("time_to_first_byte_us"), timings.time_to_first_byte_us);
    line.int(key!("transfer_us"), timings.transfer_us);
    line.int(key!("total_us"), timings.total_us);
    line.int(key!("request_bytes"), attempt.request_bytes);
    line.int(key!("response_bytes"), attempt.response_bytes);
    line.int(key!("backoff_ms"), attempt.backoff_ms);
    // `{"headers": {"location": "..."}, "body": "...", "body_truncated": false}`; written only
    // for attempts that kept an excerpt.
    if let Some(response) = &attempt.response {
        line.object(key!("response"), |excerpt| {
            excerpt.map(key!("headers"), response.headers.iter().copied());
            excerpt.text(key!("body"), response.body);
            excerpt.bool(key!("body_truncated"), response.body_truncated);
        });
    }
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message as _;

    use serde_json::Value;

    use super::*;
    use crate::encode::{AuditPosition, kafka_time, record_from_json, record_time};

    // The stable, in-`make test` part of fuzzing what the audit-service decodes (the long runs
    // are `make fuzz`): any bytes either fail to decode or give a record whose line is JSON and
    // reads back with the same identity, never a panic.
    proptest! {
        #[test]
        fn any_decodable_bytes_make_a_line_that_reads_back(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(record) = AuditRecord::decode(bytes.as_slice()) {
                let position = AuditPosition { topic: "t", partition: 0, offset: 0 };
                let line = RecordLine { record: &record, position }.to_vec();
                let parsed: Value = serde_json::from_slice(&line).unwrap();
                let back = record_from_json(&parsed);
                prop_assert_eq!(&back.message_id, &record.message_id);
                prop_assert_eq!(&back.trace_id, &record.trace_id);
                prop_assert_eq!(&back.reason_detail, &record.reason_detail);
                prop_assert_eq!(back.attempts.len(), record.attempts.len());
                // Read back and written again, the line is the same bytes (unless a response
                // repeats a header name: a JSON object keeps one of them).
                let repeated_header = record.attempts.iter().filter_map(|a| a.response.as_ref()).any(|r| {
                    let names: std::collections::HashSet<&str> = r.headers.iter().map(|h| h.name.as_str()).collect();
                    names.len() < r.headers.len()
                });
                if !repeated_header {
                    prop_assert_eq!(RecordLine { record: &back, position }.to_vec(), line);
                }
            }
        }
    }

    /// A record with every field set, strings that need escaping among them.
    fn every_field_set() -> AuditRecord {
        AuditRecord {
            message_id: "m-\u{e9}t\u{e9}-\u{1f680}".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            outcome: v1::Outcome::Failed as i32,
            reason_code: "upstream_4xx".into(),
            reason_detail:
                "quote \" backslash \\ slash / newline \n tab \t nul \u{0} bell \u{7} del \u{7f}"
                    .into(),
            event_type: "order.created".into(),
            source: "shop".into(),
            upstream: "billing".into(),
            occurred_at: Some(relais_proto::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_789,
            }),
            received_at: Some(relais_proto::Timestamp {
                seconds: 1_700_000_001,
                nanos: 0,
            }),
            decided_at: None,
            worker_id: "worker-1".into(),
            position: Some(v1::SourcePosition {
                topic: "relais.ingress".into(),
                partition: 7,
                offset: 9_007_199_254_740_993,
            }),
            attempts: vec![v1::Attempt {
                number: 1,
                started_at: Some(relais_proto::Timestamp {
                    seconds: -1,
                    nanos: 999_999_999,
                }),
                status_code: 422,
                error_type: "status".into(),
                timeout: v1::TimeoutKind::Attempt as i32,
                timings: Some(v1::ProbeTimings {
                    dns_us: 1,
                    connect_us: 2,
                    tls_us: 3,
                    time_to_first_byte_us: 4,
                    transfer_us: 5,
                    total_us: u64::MAX,
                }),
                request_bytes: 100,
                response_bytes: 200,
                backoff_ms: 300,
                response: Some(v1::ResponseExcerpt {
                    headers: vec![
                        v1::HeaderValue {
                            name: "content-type".into(),
                            value: "application/json".into(),
                        },
                        v1::HeaderValue {
                            name: "x-\"odd\"".into(),
                            value: "\r\u{1f}".into(),
                        },
                    ],
                    body: "{\"error\":\"bad\"}".into(),
                    body_truncated: true,
                }),
            }],
            circuit_state: v1::CircuitState::HalfOpen as i32,
            payload_bytes: 512,
        }
    }

    #[test]
    fn the_stored_line_never_changes() {
        let line = RecordLine {
            record: &every_field_set(),
            position: AuditPosition {
                topic: "relais.audit",
                partition: -1,
                offset: i64::MIN,
            },
        }
        .to_vec();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            concat!(
                "{\"message_id\":\"m-\u{e9}t\u{e9}-\u{1f680}\",",
                "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"span_id\":\"00f067aa0ba902b7\",",
                "\"outcome\":\"FAILED\",\"reason_code\":\"upstream_4xx\",",
                "\"reason_detail\":\"quote \\\" backslash \\\\ slash / newline \\n tab \\t nul \\u0000 bell \\u0007 del \u{7f}\",",
                "\"event_type\":\"order.created\",\"source\":\"shop\",\"upstream\":\"billing\",",
                "\"occurred_at\":\"2023-11-14T22:13:20.123456Z\",",
                "\"received_at\":\"2023-11-14T22:13:21.000000Z\",\"decided_at\":null,",
                "\"worker_id\":\"worker-1\",\"ingress\":{\"topic\":\"relais.ingress\",\"partition\":7,",
                "\"offset\":9007199254740993},\"attempts\":[{\"number\":1,",
                "\"started_at\":\"1969-12-31T23:59:59.999999Z\",\"status_code\":422,",
                "\"error_type\":\"status\",\"timeout\":\"ATTEMPT\",\"dns_us\":1,\"connect_us\":2,",
                "\"tls_us\":3,\"time_to_first_byte_us\":4,\"transfer_us\":5,",
                "\"total_us\":18446744073709551615,\"request_bytes\":100,\"response_bytes\":200,",
                "\"backoff_ms\":300,\"response\":{\"headers\":{\"content-type\":\"application/json\",",
                "\"x-\\\"odd\\\"\":\"\\r\\u001f\"},\"body\":\"{\\\"error\\\":\\\"bad\\\"}\",",
                "\"body_truncated\":true}}],\"circuit_state\":\"HALF_OPEN\",\"payload_bytes\":512,",
                "\"audit\":{\"topic\":\"relais.audit\",\"partition\":-1,\"offset\":-9223372036854775808}}",
            )
        );
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
            attempts: vec![
                v1::Attempt {
                    number: 0,
                    status_code: 503,
                    response: Some(v1::ResponseExcerpt {
                        headers: vec![v1::HeaderValue {
                            name: "retry-after".into(),
                            value: "120".into(),
                        }],
                        body: "{\"error\":\"maintenance\"}".into(),
                        body_truncated: false,
                    }),
                    ..Default::default()
                },
                v1::Attempt {
                    number: 1,
                    status_code: 200,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let bytes = RecordLine {
            record: &record,
            position: AuditPosition {
                topic: "relais.audit",
                partition: 2,
                offset: 42,
            },
        }
        .to_vec();
        let line: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(line["outcome"], "DEAD_LETTERED");
        assert_eq!(line["occurred_at"], "2023-11-14T22:13:20.000005Z");
        assert_eq!(line["attempts"][0]["status_code"], 503);
        assert_eq!(
            line["attempts"][0]["response"]["headers"]["retry-after"],
            "120"
        );
        assert_eq!(
            line["attempts"][0]["response"]["body"],
            "{\"error\":\"maintenance\"}"
        );
        assert!(line["attempts"][1].get("response").is_none());
        let back = record_from_json(&line);
        assert_eq!(back.attempts[0].response, record.attempts[0].response);
        assert_eq!(back.attempts[1].response, None);
        assert_eq!(line["audit"]["offset"], 42);
        assert_eq!(
            record_time(record.occurred_at.as_ref(), None).timestamp(),
            1_700_000_000
        );
        assert_eq!(
            record_time(None, kafka_time(Some(86_400_000))).timestamp(),
            86_400
        );
    }
}
