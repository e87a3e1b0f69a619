//! The records one outcome produces: an `AuditRecord` on the audit topic, a `PipelineEvent`
//! on the events topic, and for anything but DELIVERED the original message on the DLQ.

use std::time::SystemTime;

use prost::Message;
use relais_proto::v1;
use relais_resilience::{AttemptRecord, CircuitState, prost_timestamp};

use crate::retry::RetryState;
use crate::tracker::{OffsetTracker, SourcePartition, TopicIndex};

/// The worker's offset tracker: each finished message carries the records its outcome writes.
pub type Tracker = OffsetTracker<Vec<OutRecord>>;

/// A message read from the ingress topic or a retry tier, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Where it was read (what its commit covers).
    pub topic: String,
    pub topic_index: TopicIndex,
    pub partition: i32,
    pub offset: i64,
    /// Assignment generation of the partition when the message was read.
    pub generation: u64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's Kafka timestamp, used as the event time when the payload has none.
    pub timestamp: Option<SystemTime>,
    pub received_at: SystemTime,
    /// `None` for an ingress record; for a tier record, what its `relais-retry-*` headers say,
    /// or why they cannot be read.
    pub retry: Option<Result<RetryState, String>>,
}

impl Inbound {
    pub fn source(&self) -> SourcePartition {
        SourcePartition {
            topic: self.topic_index,
            partition: self.partition,
        }
    }

    /// What the tier record says, if this is a readable one.
    pub fn retry_state(&self) -> Option<&RetryState> {
        self.retry.as_ref().and_then(|state| state.as_ref().ok())
    }

    /// The position the message's one outcome is recorded against: where it was first read.
    pub fn origin(&self) -> v1::SourcePosition {
        match self.retry_state() {
            Some(state) => v1::SourcePosition {
                topic: state.origin_topic.clone(),
                partition: state.origin_partition,
                offset: state.origin_offset,
            },
            None => v1::SourcePosition {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: self.offset,
            },
        }
    }

    /// The headers the message was sent with (a tier record's own headers left out).
    pub fn original_headers(&self) -> Vec<(String, Vec<u8>)> {
        match self.retry {
            Some(_) => crate::retry::original_headers(&self.headers),
            None => self.headers.clone(),
        }
    }

    /// When a worker first read the message.
    pub fn first_seen(&self) -> SystemTime {
        self.retry_state()
            .map_or(self.received_at, |state| state.first_seen)
    }

    /// The ingress record's timestamp.
    pub fn ingress_time(&self) -> Option<SystemTime> {
        match self.retry_state() {
            Some(state) => state.ingress_time,
            None => self.timestamp,
        }
    }
}

/// A record to write in the outcome transaction.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    /// `None`: the producer's partitioner chooses (by key).
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The final outcome of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Invalid input (reason from the normaliser).
    Rejected {
        reason: &'static str,
        detail: String,
    },
    /// A final, non-retryable answer from the upstream.
    Failed {
        reason: String,
        detail: String,
    },
    /// Retries, budget or deadline ran out.
    DeadLettered {
        reason: String,
        detail: String,
    },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Rejected { .. } => "rejected",
            Self::Failed { .. } => "failed",
            Self::DeadLettered { .. } => "dead_lettered",
        }
    }

    fn proto(&self) -> v1::Outcome {
        match self {
            Self::Delivered => v1::Outcome::Delivered,
            Self::Rejected { .. } => v1::Outcome::Rejected,
            Self::Failed { .. } => v1::Outcome::Failed,
            Self::DeadLettered { .. } => v1::Outcome::DeadLettered,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Delivered => "",
            Self::Rejected { reason, .. } => reason,
            Self::Failed { reason, .. } | Self::DeadLettered { reason, .. } => reason,
        }
    }

    fn detail(&self) -> &str {
        match self {
            Self::Delivered => "",
            Self::Rejected { detail, .. }
            | Self::Failed { detail, .. }
            | Self::DeadLettered { detail, .. } => detail,
        }
    }
}

/// Everything known about a decided message.
#[derive(Debug, Clone)]
pub struct Decided {
    pub message_id: String,
    pub trace_id: String,
    pub span_id: String,
    /// The `traceparent` of the worker's processing span, written on every record.
    pub traceparent: String,
    pub outcome: Outcome,
    pub event_type: String,
    pub source: String,
    pub upstream: String,
    pub occurred_at: SystemTime,
    pub decided_at: SystemTime,
    pub worker_id: String,
    pub attempts: Vec<AttemptRecord>,
    pub circuit_state: Option<CircuitState>,
}

pub use relais_operator::headers;

/// Topic names for the outputs.
#[derive(Debug, Clone)]
pub struct OutputTopics {
    pub audit: String,
    pub events: String,
    pub dlq: String,
}

/// Longest reason detail kept in records (details are short by design; this is a backstop).
const MAX_DETAIL_CHARS: usize = 512;

/// Builds the outcome records of a decided message.
pub fn build(
    inbound: &Inbound,
    decided: &Decided,
    topics: &OutputTopics,
    dlq_limits: crate::dlq::DlqLimits,
) -> Vec<OutRecord> {
    let detail: String = decided
        .outcome
        .detail()
        .chars()
        .take(MAX_DETAIL_CHARS)
        .collect();
    let position = inbound.origin();
    let circuit = decided
        .circuit_state
        .map_or(v1::CircuitState::Unspecified, CircuitState::to_proto) as i32;
    let audit = v1::AuditRecord {
        message_id: decided.message_id.clone(),
        trace_id: decided.trace_id.clone(),
        span_id: decided.span_id.clone(),
        outcome: decided.outcome.proto() as i32,
        reason_code: decided.outcome.reason().to_owned(),
        reason_detail: detail.clone(),
        event_type: decided.event_type.clone(),
        source: decided.source.clone(),
        upstream: decided.upstream.clone(),
        occurred_at: Some(prost_timestamp(decided.occurred_at)),
        received_at: Some(prost_timestamp(inbound.first_seen())),
        decided_at: Some(prost_timestamp(decided.decided_at)),
        worker_id: decided.worker_id.clone(),
        position: Some(position.clone()),
        attempts: decided
            .attempts
            .iter()
            .map(AttemptRecord::to_proto)
            .collect(),
        circuit_state: circuit,
        payload_bytes: inbound.payload.len() as u64,
    };
    let event = v1::PipelineEvent {
        outcome: decided.outcome.proto() as i32,
        reason_code: decided.outcome.reason().to_owned(),
        ..pipeline_event(decided, position.clone())
    };
    let trace = (
        headers::TRACEPARENT.to_owned(),
        decided.traceparent.clone().into_bytes(),
    );
    let key = Some(decided.message_id.clone().into_bytes());
    let mut records = vec![
        OutRecord {
            topic: topics.audit.clone(),
            partition: None,
            key: key.clone(),
            payload: audit.encode_to_vec(),
            headers: vec![
                trace.clone(),
                (
                    relais_proto::schema::HEADER.to_owned(),
                    relais_proto::schema::AUDIT_RECORD.as_bytes().to_vec(),
                ),
            ],
        },
        OutRecord {
            topic: topics.events.clone(),
            partition: None,
            key,
            payload: event.encode_to_vec(),
            headers: vec![
                trace.clone(),
                (
                    relais_proto::schema::HEADER.to_owned(),
                    relais_proto::schema::PIPELINE_EVENT.as_bytes().to_vec(),
                ),
            ],
        },
    ];
    if decided.outcome != Outcome::Delivered {
        // The original bytes and headers, so a replay is the same message, within the limits
        // (what was cut is said in headers); the producer's traceparent gives way to the
        // worker's (same trace, one hop later).
        let copy = crate::dlq::DlqCopy::of(inbound, dlq_limits);
        let mut dlq_headers = copy.headers;
        dlq_headers.push(trace);
        for (name, value) in [
            (headers::DLQ_REASON, decided.outcome.reason().to_owned()),
            (headers::DLQ_DETAIL, detail),
            (headers::DLQ_OUTCOME, decided.outcome.label().to_owned()),
            (headers::DLQ_SOURCE_TOPIC, position.topic.clone()),
            (
                headers::DLQ_SOURCE_PARTITION,
                position.partition.to_string(),
            ),
            (headers::DLQ_SOURCE_OFFSET, position.offset.to_string()),
            (headers::DLQ_WORKER, decided.worker_id.clone()),
            (headers::DLQ_MESSAGE_ID, decided.message_id.clone()),
            (headers::DLQ_UPSTREAM, decided.upstream.clone()),
        ] {
            dlq_headers.push((name.to_owned(), value.into_bytes()));
        }
        for (name, value) in copy.truncation {
            dlq_headers.push((name.to_owned(), value.into_bytes()));
        }
        records.push(OutRecord {
            topic: topics.dlq.clone(),
            partition: None,
            key: copy.key,
            payload: copy.payload,
            headers: dlq_headers,
        });
    }
    records
}

/// The realtime event of a decided message (its outcome, or its move, set by the caller).
fn pipeline_event(decided: &Decided, position: v1::SourcePosition) -> v1::PipelineEvent {
    let first_start = decided.attempts.first().map(|attempt| attempt.started_at);
    v1::PipelineEvent {
        message_id: decided.message_id.clone(),
        trace_id: decided.trace_id.clone(),
        span_id: decided.span_id.clone(),
        outcome: v1::Outcome::Unspecified as i32,
        reason_code: String::new(),
        event_type: decided.event_type.clone(),
        upstream: decided.upstream.clone(),
        worker_id: decided.worker_id.clone(),
        position: Some(position),
        occurred_at: Some(prost_timestamp(decided.occurred_at)),
        decided_at: Some(prost_timestamp(decided.decided_at)),
        attempts: decided.attempts.len() as u32,
        last_status_code: decided
            .attempts
            .last()
            .and_then(|attempt| attempt.status)
            .map_or(0, u32::from),
        delivery_latency_us: first_start
            .and_then(|start| decided.decided_at.duration_since(start).ok())
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        timed_out: decided
            .attempts
            .iter()
            .any(|attempt| attempt.timeout.is_some()),
        circuit_state: decided
            .circuit_state
            .map_or(v1::CircuitState::Unspecified, CircuitState::to_proto)
            as i32,
        retry_scheduled: None,
    }
}

/// A message's move to a retry tier (not an outcome).
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// What the tier record's headers will say.
    pub state: RetryState,
    /// Tiers in the upstream's schedule.
    pub tiers: usize,
    pub delay: std::time::Duration,
    pub topic: String,
    pub reason: String,
}

/// The records of a move to a retry tier: the message itself (its original bytes, key and
/// headers, the `relais-retry-*` headers beside them) on the tier's topic, in the partition it
/// was read from, and a `PipelineEvent` with `retry_scheduled` set. No audit record and no DLQ
/// copy: those come with the message's one outcome.
pub fn build_move(
    inbound: &Inbound,
    decided: &Decided,
    scheduled: &Scheduled,
    events_topic: &str,
) -> Vec<OutRecord> {
    let trace = (
        headers::TRACEPARENT.to_owned(),
        decided.traceparent.clone().into_bytes(),
    );
    // The worker's traceparent in place of the producer's: the message's later tries join the
    // same trace.
    let mut tier_headers: Vec<(String, Vec<u8>)> = inbound
        .original_headers()
        .into_iter()
        .filter(|(name, _)| name != headers::TRACEPARENT)
        .collect();
    tier_headers.push(trace.clone());
    tier_headers.extend(scheduled.state.to_headers());
    let position = inbound.origin();
    let event = v1::PipelineEvent {
        outcome: v1::Outcome::Unspecified as i32,
        reason_code: scheduled.reason.clone(),
        delivery_latency_us: 0,
        retry_scheduled: Some(v1::RetryScheduled {
            tier: scheduled.state.tier as u32,
            tiers: scheduled.tiers as u32,
            delay_ms: u64::try_from(scheduled.delay.as_millis()).unwrap_or(u64::MAX),
            due_at: Some(prost_timestamp(scheduled.state.due)),
            topic: scheduled.topic.clone(),
        }),
        ..pipeline_event(decided, position.clone())
    };
    vec![
        OutRecord {
            topic: scheduled.topic.clone(),
            partition: Some(position.partition),
            key: inbound.key.clone(),
            payload: inbound.payload.clone(),
            headers: tier_headers,
        },
        OutRecord {
            topic: events_topic.to_owned(),
            partition: None,
            key: Some(decided.message_id.clone().into_bytes()),
            payload: event.encode_to_vec(),
            headers: vec![
                trace,
                (
                    relais_proto::schema::HEADER.to_owned(),
                    relais_proto::schema::PIPELINE_EVENT.as_bytes().to_vec(),
                ),
            ],
        },
    ]
}
