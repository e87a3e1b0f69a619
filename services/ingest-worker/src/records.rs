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

/// Kafka header names written by the worker.
pub mod headers {
    pub const TRACEPARENT: &str = "traceparent";
    pub const DLQ_REASON: &str = "relais-dlq-reason";
    pub const DLQ_DETAIL: &str = "relais-dlq-detail";
    pub const DLQ_OUTCOME: &str = "relais-dlq-outcome";
    pub const DLQ_SOURCE_TOPIC: &str = "relais-dlq-source-topic";
    pub const DLQ_SOURCE_PARTITION: &str = "relais-dlq-source-partition";
    pub const DLQ_SOURCE_OFFSET: &str = "relais-dlq-source-offset";
    pub const DLQ_WORKER: &str = "relais-dlq-worker";
    /// The message id (the event's `id`, or the source position for unparseable input).
    pub const DLQ_MESSAGE_ID: &str = "relais-dlq-message-id";
    /// The upstream the message was routed to; empty for rejected input.
    pub const DLQ_UPSTREAM: &str = "relais-dlq-upstream";
    /// What the DLQ copy left out, comma-separated: `payload`, `headers`, `key`. Absent when
    /// the copy is whole; a truncated copy is never replayed (the original is in the source
    /// topic at the source partition and offset, for its retention).
    pub const DLQ_TRUNCATED: &str = "relais-dlq-truncated";
    /// Size of the original payload in bytes (on a truncated copy).
    pub const DLQ_ORIGINAL_BYTES: &str = "relais-dlq-original-bytes";
    /// SHA-256 of the original payload, lower-case hex (on a truncated copy).
    pub const DLQ_ORIGINAL_SHA256: &str = "relais-dlq-original-sha256";
    /// How many of the original headers were left out (on a copy whose headers were cut).
    pub const DLQ_HEADERS_DROPPED: &str = "relais-dlq-headers-dropped";
    /// On a replayed ingress record: the DLQ record it came from, `{topic}/{partition}/{offset}`.
    pub const REPLAY_OF: &str = "relais-replay-of";
    /// On a replayed ingress record: the replay run that moved it.
    pub const REPLAY_JOB: &str = "relais-replay-job";
    /// Every header the worker adds to a DLQ record (removed again on replay).
    pub const DLQ_ALL: [&str; 13] = [
        DLQ_REASON,
        DLQ_DETAIL,
        DLQ_OUTCOME,
        DLQ_SOURCE_TOPIC,
        DLQ_SOURCE_PARTITION,
        DLQ_SOURCE_OFFSET,
        DLQ_WORKER,
        DLQ_MESSAGE_ID,
        DLQ_UPSTREAM,
        DLQ_TRUNCATED,
        DLQ_ORIGINAL_BYTES,
        DLQ_ORIGINAL_SHA256,
        DLQ_HEADERS_DROPPED,
    ];
}

/// How much of the original message a DLQ copy keeps, so that every record the worker writes
/// stays below the broker's size limit whatever it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DlqLimits {
    pub max_payload_bytes: usize,
    /// Names and values of the original headers, added up.
    pub max_header_bytes: usize,
    pub max_key_bytes: usize,
}

/// The part of an original message that goes into its DLQ copy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DlqCopy {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// The original headers kept (the producer's `traceparent` and any `relais-dlq-*` left out).
    headers: Vec<(String, Vec<u8>)>,
    /// Headers describing what was left out; empty when the copy is whole.
    truncation: Vec<(&'static str, String)>,
}

impl DlqCopy {
    fn of(inbound: &Inbound, limits: DlqLimits) -> Self {
        let mut cut = Vec::new();
        let payload = if inbound.payload.len() > limits.max_payload_bytes {
            cut.push("payload");
            inbound.payload[..limits.max_payload_bytes].to_vec()
        } else {
            inbound.payload.clone()
        };
        let key = inbound.key.as_ref().map(|key| {
            if key.len() > limits.max_key_bytes {
                cut.push("key");
                key[..limits.max_key_bytes].to_vec()
            } else {
                key.clone()
            }
        });
        let mut headers = Vec::new();
        let (mut header_bytes, mut dropped) = (0, 0usize);
        for (name, value) in &inbound.headers {
            if name == headers::TRACEPARENT || headers::DLQ_ALL.contains(&name.as_str()) {
                continue;
            }
            let size = name.len() + value.len();
            if header_bytes + size > limits.max_header_bytes {
                dropped += 1;
                continue;
            }
            header_bytes += size;
            headers.push((name.clone(), value.clone()));
        }
        if dropped > 0 {
            cut.push("headers");
        }
        let mut truncation = Vec::new();
        if !cut.is_empty() {
            truncation.push((headers::DLQ_TRUNCATED, cut.join(",")));
            if cut.contains(&"payload") {
                truncation.push((
                    headers::DLQ_ORIGINAL_BYTES,
                    inbound.payload.len().to_string(),
                ));
                truncation.push((headers::DLQ_ORIGINAL_SHA256, sha256_hex(&inbound.payload)));
            }
            if dropped > 0 {
                truncation.push((headers::DLQ_HEADERS_DROPPED, dropped.to_string()));
            }
        }
        Self {
            key,
            payload,
            headers,
            truncation,
        }
    }
}

/// True for a DLQ copy that left part of its original out.
pub fn is_truncated_dlq_copy(record: &OutRecord) -> bool {
    record
        .headers
        .iter()
        .any(|(name, _)| name == headers::DLQ_TRUNCATED)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Key bytes a shrunk DLQ copy keeps.
const BARE_KEY_BYTES: usize = 256;

impl OutRecord {
    /// Bytes of key, payload and headers.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.payload.len()
            + self
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }

    fn is_dlq_copy(&self) -> bool {
        self.headers
            .iter()
            .any(|(name, _)| name == headers::DLQ_REASON)
    }

    /// How many of the original message's headers a DLQ copy carries.
    fn original_headers(&self) -> usize {
        self.headers
            .iter()
            .filter(|(name, _)| {
                name != headers::TRACEPARENT && !headers::DLQ_ALL.contains(&name.as_str())
            })
            .count()
    }
}

/// True for a DLQ copy that [`shrink_refused`] can still make smaller.
pub fn can_shrink(record: &OutRecord) -> bool {
    record.is_dlq_copy()
        && (!record.payload.is_empty()
            || record.original_headers() > 0
            || record
                .key
                .as_ref()
                .is_some_and(|key| key.len() > BARE_KEY_BYTES))
}

/// Reduces a DLQ copy the broker refused to what cannot be refused for its size: no payload,
/// none of the original headers, a short key. False when the record is not a DLQ copy or is
/// already as small as it gets (the outcome records are bounded by construction).
pub fn shrink_refused(record: &mut OutRecord) -> bool {
    if !can_shrink(record) {
        return false;
    }
    let originals = record.original_headers();
    let original_bytes = record
        .headers
        .iter()
        .find(|(name, _)| name == headers::DLQ_ORIGINAL_BYTES)
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned());
    let original_sha = record
        .headers
        .iter()
        .find(|(name, _)| name == headers::DLQ_ORIGINAL_SHA256)
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned());
    let (original_bytes, original_sha) = match (original_bytes, original_sha) {
        (Some(bytes), Some(sha)) => (bytes, sha),
        _ => (
            record.payload.len().to_string(),
            sha256_hex(&record.payload),
        ),
    };
    record.headers.retain(|(name, _)| {
        (name == headers::TRACEPARENT || headers::DLQ_ALL.contains(&name.as_str()))
            && ![
                headers::DLQ_TRUNCATED,
                headers::DLQ_ORIGINAL_BYTES,
                headers::DLQ_ORIGINAL_SHA256,
                headers::DLQ_HEADERS_DROPPED,
            ]
            .contains(&name.as_str())
    });
    let mut cut = vec!["payload"];
    if originals > 0 {
        cut.push("headers");
    }
    if let Some(key) = &mut record.key
        && key.len() > BARE_KEY_BYTES
    {
        key.truncate(BARE_KEY_BYTES);
        cut.push("key");
    }
    for (name, value) in [
        (headers::DLQ_TRUNCATED, cut.join(",")),
        (headers::DLQ_ORIGINAL_BYTES, original_bytes),
        (headers::DLQ_ORIGINAL_SHA256, original_sha),
        (headers::DLQ_HEADERS_DROPPED, originals.to_string()),
    ] {
        record.headers.push((name.to_owned(), value.into_bytes()));
    }
    record.payload.clear();
    true
}

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
    dlq_limits: DlqLimits,
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
        let copy = DlqCopy::of(inbound, dlq_limits);
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DlqLimits = DlqLimits {
        max_payload_bytes: 100,
        max_header_bytes: 48,
        max_key_bytes: 8,
    };

    fn inbound(payload: Vec<u8>, key: &[u8], headers: &[(&str, &[u8])]) -> Inbound {
        Inbound {
            topic: "relais.ingress".into(),
            partition: 3,
            offset: 7,
            generation: 1,
            key: Some(key.to_vec()),
            payload,
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.to_vec()))
                .collect(),
            timestamp: None,
            received_at: SystemTime::now(),
        }
    }

    fn header<'a>(
        headers: &'a [(impl AsRef<str>, impl AsRef<[u8]>)],
        name: &str,
    ) -> Option<&'a [u8]> {
        headers
            .iter()
            .find(|(kept, _)| kept.as_ref() == name)
            .map(|(_, value)| value.as_ref())
    }

    #[test]
    fn a_message_within_the_limits_is_copied_whole() {
        let message = inbound(
            b"{}".to_vec(),
            b"k",
            &[
                ("tenant", b"a"),
                (headers::TRACEPARENT, b"00-x"),
                (headers::DLQ_REASON, b"old"),
            ],
        );
        let copy = DlqCopy::of(&message, LIMITS);
        assert_eq!(copy.payload, b"{}");
        assert_eq!(copy.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(copy.headers, vec![("tenant".to_owned(), b"a".to_vec())]);
        assert!(copy.truncation.is_empty());
    }

    #[test]
    fn an_oversized_message_is_cut_and_says_what_it_was() {
        let payload = vec![b'x'; 1000];
        let long_value = [b'v'; 30];
        let message = inbound(
            payload.clone(),
            b"a-very-long-key",
            &[
                ("first", &long_value),
                ("second", &long_value),
                ("third", b"1"),
            ],
        );
        let copy = DlqCopy::of(&message, LIMITS);
        assert_eq!(copy.payload.len(), 100);
        assert_eq!(copy.key.as_deref(), Some(&b"a-very-l"[..]));
        assert_eq!(
            copy.headers
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>(),
            ["first", "third"]
        );
        assert_eq!(
            header(&copy.truncation, headers::DLQ_TRUNCATED),
            Some(&b"payload,key,headers"[..])
        );
        assert_eq!(
            header(&copy.truncation, headers::DLQ_ORIGINAL_BYTES),
            Some(&b"1000"[..])
        );
        assert_eq!(
            header(&copy.truncation, headers::DLQ_HEADERS_DROPPED),
            Some(&b"1"[..])
        );
        assert_eq!(
            header(&copy.truncation, headers::DLQ_ORIGINAL_SHA256).map(<[u8]>::len),
            Some(64)
        );
        assert_eq!(
            header(&copy.truncation, headers::DLQ_ORIGINAL_SHA256),
            Some(sha256_hex(&payload).as_bytes())
        );
    }

    #[test]
    fn a_refused_dlq_copy_shrinks_once_and_outcome_records_never() {
        let mut record = OutRecord {
            topic: "relais.dlq".into(),
            key: Some(vec![b'k'; 1000]),
            payload: vec![b'x'; 5000],
            headers: vec![
                ("tenant".into(), b"a".to_vec()),
                (headers::TRACEPARENT.into(), b"00-x".to_vec()),
                (headers::DLQ_REASON.into(), b"payload_too_large".to_vec()),
            ],
        };
        let sha = sha256_hex(&record.payload);
        assert!(shrink_refused(&mut record));
        assert!(record.payload.is_empty());
        assert_eq!(record.key.as_ref().map(Vec::len), Some(256));
        assert_eq!(header(&record.headers, "tenant"), None);
        assert_eq!(
            header(&record.headers, headers::DLQ_REASON),
            Some(&b"payload_too_large"[..])
        );
        assert_eq!(
            header(&record.headers, headers::DLQ_TRUNCATED),
            Some(&b"payload,headers,key"[..])
        );
        assert_eq!(
            header(&record.headers, headers::DLQ_ORIGINAL_BYTES),
            Some(&b"5000"[..])
        );
        assert_eq!(
            header(&record.headers, headers::DLQ_ORIGINAL_SHA256),
            Some(sha.as_bytes())
        );
        assert!(!shrink_refused(&mut record), "nothing left to cut");

        let mut audit = OutRecord {
            topic: "relais.audit".into(),
            key: None,
            payload: vec![1; 10],
            headers: vec![(headers::TRACEPARENT.into(), b"00-x".to_vec())],
        };
        assert!(!shrink_refused(&mut audit));
    }
}
