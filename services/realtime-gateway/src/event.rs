//! The gateway's view of one `relais.v1.PipelineEvent`, as every API shows it.
//!
//! An event's id is where it sits in `relais.events`: `{partition}:{offset}`. It is unique,
//! stable across gateway restarts and replicas, and ordered within a partition, which is what
//! lets a WebSocket client say exactly what it has already seen.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use relais_proto::v1::{self, PipelineEvent};
use serde::Serialize;
use utoipa::ToSchema;

/// Position of an event in `relais.events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an event id is partition:offset, such as 3:1042")]
pub struct BadEventId;

impl FromStr for EventId {
    type Err = BadEventId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (partition, offset) = text.split_once(':').ok_or(BadEventId)?;
        let partition: i32 = partition.parse().map_err(|_| BadEventId)?;
        let offset: i64 = offset.parse().map_err(|_| BadEventId)?;
        if partition < 0 || offset < 0 {
            return Err(BadEventId);
        }
        Ok(Self { partition, offset })
    }
}

/// What happened to a message, in the API's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    Rejected,
    Failed,
    DeadLettered,
    /// Not an outcome: the message moved to a retry tier and waits there.
    RetryScheduled,
    Unspecified,
}

impl Outcome {
    pub fn from_proto(value: i32) -> Self {
        match v1::Outcome::try_from(value) {
            Ok(v1::Outcome::Delivered) => Self::Delivered,
            Ok(v1::Outcome::Rejected) => Self::Rejected,
            Ok(v1::Outcome::Failed) => Self::Failed,
            Ok(v1::Outcome::DeadLettered) => Self::DeadLettered,
            _ => Self::Unspecified,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::DeadLettered => "dead_lettered",
            Self::RetryScheduled => "retry_scheduled",
            Self::Unspecified => "unspecified",
        }
    }
}

/// A circuit breaker's state, in the API's spelling.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Unknown,
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    pub fn from_proto(value: i32) -> Self {
        match v1::CircuitState::try_from(value) {
            Ok(v1::CircuitState::Closed) => Self::Closed,
            Ok(v1::CircuitState::Open) => Self::Open,
            Ok(v1::CircuitState::HalfOpen) => Self::HalfOpen,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

/// One pipeline event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// Position in `relais.events`, `partition:offset`.
    #[schema(example = "3:1042")]
    pub id: String,
    pub message_id: String,
    /// W3C trace id, 32 lower-case hex digits.
    pub trace_id: String,
    pub span_id: String,
    pub outcome: Outcome,
    /// Stable reason code when the message was not delivered; empty otherwise.
    pub reason_code: String,
    pub event_type: String,
    /// Upstream the message was routed to; empty for rejected input.
    pub upstream: String,
    pub worker_id: String,
    /// When the event occurred at its source (RFC 3339).
    pub occurred_at: Option<String>,
    /// When the worker decided the outcome (RFC 3339).
    pub decided_at: String,
    /// HTTP attempts made (0 for rejected input).
    pub attempts: u32,
    /// Status of the last response; 0 when none arrived.
    pub last_status_code: u32,
    /// From the first attempt to the decision, in milliseconds.
    pub delivery_latency_ms: f64,
    pub timed_out: bool,
    /// The upstream's circuit state when the outcome was decided.
    pub circuit_state: CircuitState,
    /// Set when `outcome` is `retry_scheduled`: where and until when the message waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryView>,
}

/// A message's move to a retry tier.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RetryView {
    /// Index of the tier in the upstream's schedule (0 is the first) and how many it has.
    pub tier: u32,
    pub tiers: u32,
    /// The tier's delay, in milliseconds.
    pub delay_ms: u64,
    /// When the message is due (RFC 3339).
    pub due_at: Option<String>,
    /// The retry topic it waits in.
    pub topic: String,
}

/// An event as the gateway holds it: the view plus what aggregation and filtering need.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: EventId,
    pub view: EventView,
    pub outcome: Outcome,
    pub circuit_state: CircuitState,
    pub decided_at: SystemTime,
    pub delivery_latency: Duration,
}

/// Why an event on the topic was not taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventRejection {
    #[error("the record is not a relais.v1.PipelineEvent")]
    Undecodable,
    #[error("the event has no valid trace id (the trace id is mandatory from the worker on)")]
    MissingTraceId,
    #[error("the event has no decision time")]
    MissingDecisionTime,
}

impl EventRejection {
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::MissingTraceId => "missing_trace_id",
            Self::MissingDecisionTime => "missing_decided_at",
        }
    }
}

fn is_trace_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && text.bytes().any(|b| b != b'0')
}

pub fn rfc3339(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub fn system_time(timestamp: &relais_proto::Timestamp) -> Option<SystemTime> {
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    DateTime::from_timestamp(timestamp.seconds, nanos).map(SystemTime::from)
}

impl Event {
    /// Decodes the record at `id` and checks what the gateway relies on.
    pub fn decode(id: EventId, payload: &[u8]) -> Result<Self, EventRejection> {
        let event = <PipelineEvent as prost::Message>::decode(payload)
            .map_err(|_| EventRejection::Undecodable)?;
        Self::from_proto(id, event)
    }

    pub fn from_proto(id: EventId, event: PipelineEvent) -> Result<Self, EventRejection> {
        if !is_trace_id(&event.trace_id) {
            return Err(EventRejection::MissingTraceId);
        }
        let decided_at = event
            .decided_at
            .as_ref()
            .and_then(system_time)
            .ok_or(EventRejection::MissingDecisionTime)?;
        let outcome = match &event.retry_scheduled {
            Some(_) => Outcome::RetryScheduled,
            None => Outcome::from_proto(event.outcome),
        };
        let retry = event.retry_scheduled.map(|retry| RetryView {
            tier: retry.tier,
            tiers: retry.tiers,
            delay_ms: retry.delay_ms,
            due_at: retry.due_at.as_ref().and_then(system_time).map(rfc3339),
            topic: retry.topic,
        });
        let circuit_state = CircuitState::from_proto(event.circuit_state);
        let delivery_latency = Duration::from_micros(event.delivery_latency_us);
        let view = EventView {
            id: id.to_string(),
            occurred_at: event
                .occurred_at
                .as_ref()
                .and_then(system_time)
                .map(rfc3339),
            decided_at: rfc3339(decided_at),
            message_id: event.message_id,
            trace_id: event.trace_id,
            span_id: event.span_id,
            outcome,
            reason_code: event.reason_code,
            event_type: event.event_type,
            upstream: event.upstream,
            worker_id: event.worker_id,
            attempts: event.attempts,
            last_status_code: event.last_status_code,
            delivery_latency_ms: event.delivery_latency_us as f64 / 1000.0,
            timed_out: event.timed_out,
            circuit_state,
            retry,
        };
        Ok(Self {
            id,
            view,
            outcome,
            circuit_state,
            decided_at,
            delivery_latency,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn valid_encoding() -> Vec<u8> {
        prost::Message::encode_to_vec(&PipelineEvent {
            message_id: "m-1".into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            upstream: "alpha".into(),
            outcome: v1::Outcome::Delivered as i32,
            attempts: 2,
            decided_at: Some(relais_proto::Timestamp {
                seconds: 1_800_000_000,
                nanos: 5,
            }),
            ..PipelineEvent::default()
        })
    }

    // The stable, in-`make test` part of fuzzing the decoder (the long runs are `make fuzz`):
    // arbitrary bytes and corrupted valid records are refused or taken whole, never a panic,
    // and whatever is taken encodes to a valid frame.
    proptest! {
        #[test]
        fn any_bytes_are_refused_or_taken_whole(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let id = EventId { partition: 1, offset: 7 };
            if let Ok(event) = Event::decode(id, &bytes) {
                let frame = crate::protocol::event_frame(&event.view);
                let parsed: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
                prop_assert_eq!(&parsed["id"], "1:7");
            }
        }

        #[test]
        fn corrupted_records_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = valid_encoding();
            for (index, value) in flips {
                let at = index % bytes.len();
                bytes[at] ^= value;
            }
            let _ = Event::decode(EventId { partition: 0, offset: 0 }, &bytes);
        }
    }

    #[test]
    fn ids_round_trip_and_bad_ones_are_refused() {
        let id: EventId = "3:1042".parse().unwrap();
        assert_eq!(
            id,
            EventId {
                partition: 3,
                offset: 1042
            }
        );
        assert_eq!(id.to_string(), "3:1042");
        for bad in ["", "3", "3:", ":4", "a:1", "-1:4", "1:-4", "1:2:3"] {
            assert_eq!(bad.parse::<EventId>(), Err(BadEventId), "{bad}");
        }
    }

    #[test]
    fn events_without_a_trace_id_are_refused() {
        let id = EventId {
            partition: 0,
            offset: 0,
        };
        let mut event = PipelineEvent {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            decided_at: Some(relais_proto::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            outcome: v1::Outcome::Delivered as i32,
            ..PipelineEvent::default()
        };
        let taken = Event::from_proto(id, event.clone()).unwrap();
        assert_eq!(taken.outcome, Outcome::Delivered);
        for bad in [
            "",
            "00000000000000000000000000000000",
            "0AF7651916CD43DD8448EB211C80319C",
        ] {
            event.trace_id = bad.into();
            assert_eq!(
                Event::from_proto(id, event.clone()).unwrap_err(),
                EventRejection::MissingTraceId
            );
        }
        assert_eq!(
            Event::decode(id, b"\xff\xff\xff").unwrap_err(),
            EventRejection::Undecodable
        );
    }
}
