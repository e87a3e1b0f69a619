//! The records one outcome produces: an `AuditRecord` on the audit topic, a `PipelineEvent`
//! on the events topic, and for anything but DELIVERED the original message on the DLQ.

use std::time::SystemTime;

use prost::Message;
use relais_proto::v1;
use relais_resilience::{AttemptRecord, CircuitState, prost_timestamp};

/// A message read from the ingress topic, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: String,
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
}

/// A record to write in the outcome transaction.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
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
    let position = v1::SourcePosition {
        topic: inbound.topic.clone(),
        partition: inbound.partition,
        offset: inbound.offset,
    };
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
        received_at: Some(prost_timestamp(inbound.received_at)),
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
    let first_start = decided.attempts.first().map(|attempt| attempt.started_at);
    let event = v1::PipelineEvent {
        message_id: decided.message_id.clone(),
        trace_id: decided.trace_id.clone(),
        span_id: decided.span_id.clone(),
        outcome: decided.outcome.proto() as i32,
        reason_code: decided.outcome.reason().to_owned(),
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
        circuit_state: circuit,
    };
    let trace = (
        headers::TRACEPARENT.to_owned(),
        decided.traceparent.clone().into_bytes(),
    );
    let key = Some(decided.message_id.clone().into_bytes());
    let mut records = vec![
        OutRecord {
            topic: topics.audit.clone(),
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
            (headers::DLQ_SOURCE_TOPIC, inbound.topic.clone()),
            (headers::DLQ_SOURCE_PARTITION, inbound.partition.to_string()),
            (headers::DLQ_SOURCE_OFFSET, inbound.offset.to_string()),
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
            key: copy.key,
            payload: copy.payload,
            headers: dlq_headers,
        });
    }
    records
}
