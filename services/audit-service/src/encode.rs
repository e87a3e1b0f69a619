//! One NDJSON line per audit record, with stable field names (see docs/audit-objects.md).
//!
//! The line is built field by field rather than derived, so renaming a Rust field can never
//! silently rename a stored field: these names are a contract with every reader of the trail.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use relais_proto::v1::{self, AuditRecord};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

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

/// A timestamp as RFC 3339 in UTC with microseconds (chrono's spelling), or null when absent;
/// written without building a `String`: a line has a few timestamps and the service writes
/// hundreds of thousands of lines a second.
pub(crate) struct Rfc3339<'a>(pub Option<&'a relais_proto::Timestamp>);

impl Serialize for Rfc3339<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(time) = timestamp(self.0) else {
            return serializer.serialize_none();
        };
        match micros_utc(&time) {
            Some(text) => serializer.serialize_str(text.as_str()),
            // Years beyond four digits and leap seconds: chrono's own spelling.
            None => {
                serializer.serialize_str(&time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            }
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` in a buffer, for years 0 to 9999 outside leap seconds.
fn micros_utc(time: &DateTime<Utc>) -> Option<MicrosText> {
    use chrono::{Datelike as _, Timelike as _};
    let year = u32::try_from(time.year())
        .ok()
        .filter(|year| *year <= 9999)?;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut text = MicrosText(*b"0000-00-00T00:00:00.000000Z");
    let mut put = |at: usize, width: usize, mut value: u32| {
        for index in (at..at + width).rev() {
            text.0[index] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, time.month());
    put(8, 2, time.day());
    put(11, 2, time.hour());
    put(14, 2, time.minute());
    put(17, 2, time.second());
    put(20, 6, nanos / 1_000);
    Some(text)
}

struct MicrosText([u8; 27]);

impl MicrosText {
    fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
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

/// Room for a typical line (a record with one attempt takes about 800 bytes), so that most
/// lines are written without the buffer growing and being copied on the way.
const LINE_CAPACITY: usize = 1024;

/// The stored line of one record: serialised straight into the output, field by field with
/// each name spelled out (building a `serde_json::Value` first cost the service a fifth of its
/// CPU in `make bench`).
#[derive(Debug, Clone, Copy)]
pub struct RecordLine<'a> {
    pub record: &'a AuditRecord,
    pub position: AuditPosition<'a>,
}

impl RecordLine<'_> {
    /// The line as JSON bytes (without the newline).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        // Serialising plain strings, numbers and maps into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut line, self);
        line
    }
}

impl Serialize for RecordLine<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (record, position) = (self.record, self.position);
        let source = record.position.as_ref();
        let mut line = serializer.serialize_map(Some(19))?;
        line.serialize_entry("message_id", &record.message_id)?;
        line.serialize_entry("trace_id", &record.trace_id)?;
        line.serialize_entry("span_id", &record.span_id)?;
        line.serialize_entry("outcome", outcome_name(record.outcome))?;
        line.serialize_entry("reason_code", &record.reason_code)?;
        line.serialize_entry("reason_detail", &record.reason_detail)?;
        line.serialize_entry("event_type", &record.event_type)?;
        line.serialize_entry("source", &record.source)?;
        line.serialize_entry("upstream", &record.upstream)?;
        line.serialize_entry("occurred_at", &Rfc3339(record.occurred_at.as_ref()))?;
        line.serialize_entry("received_at", &Rfc3339(record.received_at.as_ref()))?;
        line.serialize_entry("decided_at", &Rfc3339(record.decided_at.as_ref()))?;
        line.serialize_entry("worker_id", &record.worker_id)?;
        line.serialize_entry(
            "ingress",
            &Position {
                topic: source.map(|s| s.topic.as_str()).unwrap_or_default(),
                partition: source.map_or(0, |s| s.partition),
                offset: source.map_or(0, |s| s.offset),
            },
        )?;
        line.serialize_entry("attempts", &Attempts(&record.attempts))?;
        line.serialize_entry("circuit_state", circuit_name(record.circuit_state))?;
        line.serialize_entry("payload_bytes", &record.payload_bytes)?;
        line.serialize_entry(
            "audit",
            &Position {
                topic: position.topic,
                partition: position.partition,
                offset: position.offset,
            },
        )?;
        line.end()
    }
}

impl Serialize for AuditPosition<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Position {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
        }
        .serialize(serializer)
    }
}

/// `{"topic", "partition", "offset"}`: where a record was read (ingress or audit topic).
struct Position<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

impl Serialize for Position<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("topic", self.topic)?;
        map.serialize_entry("partition", &self.partition)?;
        map.serialize_entry("offset", &self.offset)?;
        map.end()
    }
}

struct Attempts<'a>(&'a [v1::Attempt]);

impl Serialize for Attempts<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut list = serializer.serialize_seq(Some(self.0.len()))?;
        for attempt in self.0 {
            list.serialize_element(&AttemptLine(attempt))?;
        }
        list.end()
    }
}

struct AttemptLine<'a>(&'a v1::Attempt);

impl Serialize for AttemptLine<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let attempt = self.0;
        let timings = attempt.timings.unwrap_or_default();
        let mut map = serializer.serialize_map(Some(14))?;
        map.serialize_entry("number", &attempt.number)?;
        map.serialize_entry("started_at", &Rfc3339(attempt.started_at.as_ref()))?;
        map.serialize_entry("status_code", &attempt.status_code)?;
        map.serialize_entry("error_type", &attempt.error_type)?;
        map.serialize_entry("timeout", timeout_name(attempt.timeout))?;
        map.serialize_entry("dns_us", &timings.dns_us)?;
        map.serialize_entry("connect_us", &timings.connect_us)?;
        map.serialize_entry("tls_us", &timings.tls_us)?;
        map.serialize_entry("time_to_first_byte_us", &timings.time_to_first_byte_us)?;
        map.serialize_entry("transfer_us", &timings.transfer_us)?;
        map.serialize_entry("total_us", &timings.total_us)?;
        map.serialize_entry("request_bytes", &attempt.request_bytes)?;
        map.serialize_entry("response_bytes", &attempt.response_bytes)?;
        map.serialize_entry("backoff_ms", &attempt.backoff_ms)?;
        if let Some(response) = &attempt.response {
            map.serialize_entry("response", &ResponseLine(response))?;
        }
        map.end()
    }
}

/// `{"headers": {"location": "..."}, "body": "...", "body_truncated": false}`; written only for
/// attempts that kept an excerpt.
struct ResponseLine<'a>(&'a v1::ResponseExcerpt);

impl Serialize for ResponseLine<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Headers<'a>(&'a [v1::HeaderValue]);
        impl Serialize for Headers<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for header in self.0 {
                    map.serialize_entry(&header.name, &header.value)?;
                }
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("headers", &Headers(&self.0.headers))?;
        map.serialize_entry("body", &self.0.body)?;
        map.serialize_entry("body_truncated", &self.0.body_truncated)?;
        map.end()
    }
}

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
                let line = RecordLine { record: &record, position }.to_vec();
                let parsed: Value = serde_json::from_slice(&line).unwrap();
                let back = record_from_json(&parsed);
                prop_assert_eq!(back.message_id, record.message_id);
                prop_assert_eq!(back.trace_id, record.trace_id);
                prop_assert_eq!(back.attempts.len(), record.attempts.len());
            }
        }
    }

    #[test]
    fn timestamps_are_written_as_chrono_spells_them() {
        let seconds = [
            -62_167_219_200, // 0000-01-01
            -1,
            0,
            951_782_400, // 2000-02-29
            1_764_720_000,
            4_102_444_799,
            253_402_300_799, // 9999-12-31T23:59:59
            253_402_300_800, // 10000-01-01: chrono's spelling
            -62_167_219_201, // before year 0
            1_483_228_799,   // a leap second's second, with nanos beyond a second below
        ];
        let nanos = [0, 1, 999, 1_000, 123_456_789, 999_999_999, 1_500_000_000];
        for seconds in seconds {
            for nanos in nanos {
                let value = relais_proto::Timestamp { seconds, nanos };
                let expected = serde_json::to_string(
                    &timestamp(Some(&value))
                        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                )
                .unwrap();
                let written = serde_json::to_string(&Rfc3339(Some(&value))).unwrap();
                assert_eq!(written, expected, "{seconds} s {nanos} ns");
            }
        }
        assert_eq!(serde_json::to_string(&Rfc3339(None)).unwrap(), "null");
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
        assert_eq!(record_time(Some(&record), None).timestamp(), 1_700_000_000);
        assert_eq!(
            record_time(None, kafka_time(Some(86_400_000))).timestamp(),
            86_400
        );
    }
}
