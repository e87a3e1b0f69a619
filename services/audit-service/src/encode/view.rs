//! An audit record as its line is written from it: the strings are borrowed, either from a
//! decoded `AuditRecord` or straight from the protobuf bytes of a Kafka record (see `wire`).

use relais_proto::Timestamp;
use relais_proto::v1::{self, AuditRecord};

/// The bytes of a string field, known to be UTF-8. Most are ASCII, which `is_ascii` shows a
/// word at a time inline; only the others go through full UTF-8 validation, a call that costs
/// more than the whole check for the short strings of a record.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Text<'a>(&'a [u8]);

impl<'a> Text<'a> {
    /// `bytes` as text, or None when they are not UTF-8.
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        (bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()).then_some(Self(bytes))
    }

    pub fn of(text: &'a str) -> Self {
        Self(text.as_bytes())
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The text as a `str` (validated again: for the few places that need one).
    pub fn to_str(&self) -> &'a str {
        std::str::from_utf8(self.0).unwrap_or_default()
    }
}

/// The fields of an `AuditRecord`, its strings borrowed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub message_id: Text<'a>,
    pub trace_id: Text<'a>,
    pub span_id: Text<'a>,
    pub outcome: i32,
    pub reason_code: Text<'a>,
    pub reason_detail: Text<'a>,
    pub event_type: Text<'a>,
    pub source: Text<'a>,
    pub upstream: Text<'a>,
    pub occurred_at: Option<Timestamp>,
    pub received_at: Option<Timestamp>,
    pub decided_at: Option<Timestamp>,
    pub worker_id: Text<'a>,
    pub position: Option<PositionView<'a>>,
    pub attempts: Vec<AttemptView<'a>>,
    pub circuit_state: i32,
    pub payload_bytes: u64,
}

/// A `SourcePosition`, its topic borrowed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PositionView<'a> {
    pub topic: Text<'a>,
    pub partition: i32,
    pub offset: i64,
}

/// An `Attempt`, its strings borrowed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttemptView<'a> {
    pub number: u32,
    pub started_at: Option<Timestamp>,
    pub status_code: u32,
    pub error_type: Text<'a>,
    pub timeout: i32,
    pub timings: Option<v1::ProbeTimings>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub backoff_ms: u64,
    pub response: Option<ResponseView<'a>>,
}

/// A `ResponseExcerpt`, its headers as (name, value) pairs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResponseView<'a> {
    pub headers: Vec<(Text<'a>, Text<'a>)>,
    pub body: Text<'a>,
    pub body_truncated: bool,
}

impl<'a> RecordView<'a> {
    /// The view of a decoded record.
    pub fn of(record: &'a AuditRecord) -> Self {
        Self {
            message_id: Text::of(&record.message_id),
            trace_id: Text::of(&record.trace_id),
            span_id: Text::of(&record.span_id),
            outcome: record.outcome,
            reason_code: Text::of(&record.reason_code),
            reason_detail: Text::of(&record.reason_detail),
            event_type: Text::of(&record.event_type),
            source: Text::of(&record.source),
            upstream: Text::of(&record.upstream),
            occurred_at: record.occurred_at,
            received_at: record.received_at,
            decided_at: record.decided_at,
            worker_id: Text::of(&record.worker_id),
            position: record.position.as_ref().map(|position| PositionView {
                topic: Text::of(&position.topic),
                partition: position.partition,
                offset: position.offset,
            }),
            attempts: record.attempts.iter().map(AttemptView::of).collect(),
            circuit_state: record.circuit_state,
            payload_bytes: record.payload_bytes,
        }
    }

    /// Empties the view for the next record, keeping the room its attempts took.
    pub(crate) fn clear(&mut self) {
        let mut attempts = std::mem::take(&mut self.attempts);
        attempts.clear();
        *self = Self {
            attempts,
            ..Self::default()
        };
    }
}

impl<'a> AttemptView<'a> {
    fn of(attempt: &'a v1::Attempt) -> Self {
        Self {
            number: attempt.number,
            started_at: attempt.started_at,
            status_code: attempt.status_code,
            error_type: Text::of(&attempt.error_type),
            timeout: attempt.timeout,
            timings: attempt.timings,
            request_bytes: attempt.request_bytes,
            response_bytes: attempt.response_bytes,
            backoff_ms: attempt.backoff_ms,
            response: attempt.response.as_ref().map(|response| ResponseView {
                headers: response
                    .headers
                    .iter()
                    .map(|header| (Text::of(&header.name), Text::of(&header.value)))
                    .collect(),
                body: Text::of(&response.body),
                body_truncated: response.body_truncated,
            }),
        }
    }
}
