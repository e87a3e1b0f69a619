//! The records one outcome produces: an `AuditRecord` on the audit topic, a `PipelineEvent`
//! on the events topic, and for anything but DELIVERED the original message on the DLQ.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use relais_proto::v1;
use relais_resilience::{AttemptRecord, CircuitState};

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
    pub topic: Arc<str>,
    /// `None`: the producer's partitioner chooses (by key).
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<OutHeader>,
}

/// A header of a record the worker writes. Its name, and often its value, is a constant that
/// every record shares rather than a copy of its own.
pub type OutHeader = (Cow<'static, str>, Cow<'static, [u8]>);

/// A header whose name is a constant and whose value was made for this record.
pub fn header(name: &'static str, value: impl Into<Vec<u8>>) -> OutHeader {
    (Cow::Borrowed(name), Cow::Owned(value.into()))
}

/// A header as it came with a message read from Kafka.
pub fn copied_header((name, value): (String, Vec<u8>)) -> OutHeader {
    (Cow::Owned(name), Cow::Owned(value))
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
    /// Every outcome's label, in [`Outcome::index`] order.
    pub const LABELS: [&'static str; 4] = ["delivered", "rejected", "failed", "dead_lettered"];

    /// The outcome's place in [`Outcome::LABELS`].
    pub fn index(&self) -> usize {
        match self {
            Self::Delivered => 0,
            Self::Rejected { .. } => 1,
            Self::Failed { .. } => 2,
            Self::DeadLettered { .. } => 3,
        }
    }

    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
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

/// Topic names for the outputs, shared by every record written to them.
#[derive(Debug, Clone)]
pub struct OutputTopics {
    pub audit: Arc<str>,
    pub events: Arc<str>,
    pub dlq: Arc<str>,
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

mod build;
#[cfg(test)]
pub(crate) mod fixtures;

pub use build::{build, build_move};
