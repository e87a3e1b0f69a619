//! The records a message's outcome (or its move to a retry tier) writes in the transaction.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use prost::Message;
use relais_proto::v1;
use relais_resilience::{AttemptRecord, CircuitState, prost_timestamp};

use super::{
    Decided, Inbound, OutHeader, OutRecord, Outcome, OutputTopics, Scheduled, copied_header,
    header, headers,
};

/// Longest reason detail kept in records (details are short by design; this is a backstop).
const MAX_DETAIL_CHARS: usize = 512;

/// Builds the outcome records of a decided message. The audit record is encoded first and
/// hands the fields it shares with the realtime event over to it, so each is written once.
///
/// The audit record and the event have no key (the message id is in each): nothing reads
/// them by partition, and without a key the producer puts a commit round's records into one
/// or two partitions of each topic instead of every one, so a transaction sends two produce
/// requests and writes two commit markers rather than one of each per partition. A
/// dead-letter copy keeps the message's own key, which a replay writes back to the ingress topic.
pub fn build(
    inbound: &Inbound,
    mut decided: Decided,
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
    let trace = header(
        headers::TRACEPARENT,
        std::mem::take(&mut decided.traceparent),
    );
    let dlq = (decided.outcome != Outcome::Delivered).then(|| {
        dlq_copy(
            inbound, &decided, &detail, &position, &trace, topics, dlq_limits,
        )
    });
    let summary = AttemptSummary::of(&decided.attempts, decided.decided_at);
    let audit = v1::AuditRecord {
        message_id: decided.message_id,
        trace_id: decided.trace_id,
        span_id: decided.span_id,
        outcome: decided.outcome.proto() as i32,
        reason_code: decided.outcome.reason().to_owned(),
        reason_detail: detail,
        event_type: decided.event_type,
        source: decided.source,
        upstream: decided.upstream,
        occurred_at: Some(prost_timestamp(decided.occurred_at)),
        received_at: Some(prost_timestamp(inbound.first_seen())),
        decided_at: Some(prost_timestamp(decided.decided_at)),
        worker_id: decided.worker_id,
        position: Some(position),
        attempts: decided
            .attempts
            .iter()
            .map(AttemptRecord::to_proto)
            .collect(),
        circuit_state: circuit_state(decided.circuit_state),
        payload_bytes: inbound.payload.len() as u64,
    };
    let audit_payload = audit.encode_to_vec();
    let event = v1::PipelineEvent {
        message_id: audit.message_id,
        trace_id: audit.trace_id,
        span_id: audit.span_id,
        outcome: audit.outcome,
        reason_code: audit.reason_code,
        event_type: audit.event_type,
        upstream: audit.upstream,
        worker_id: audit.worker_id,
        position: audit.position,
        occurred_at: audit.occurred_at,
        decided_at: audit.decided_at,
        circuit_state: audit.circuit_state,
        retry_scheduled: None,
        ..summary.event()
    };
    let mut records = vec![
        OutRecord {
            topic: Arc::clone(&topics.audit),
            partition: None,
            key: None,
            payload: audit_payload,
            headers: vec![
                trace.clone(),
                schema_header(relais_proto::schema::AUDIT_RECORD),
            ],
        },
        OutRecord {
            topic: Arc::clone(&topics.events),
            partition: None,
            key: None,
            payload: event.encode_to_vec(),
            headers: vec![trace, schema_header(relais_proto::schema::PIPELINE_EVENT)],
        },
    ];
    records.extend(dlq);
    records
}

/// The header that names a record's protobuf message.
fn schema_header(schema: &'static str) -> OutHeader {
    (
        Cow::Borrowed(relais_proto::schema::HEADER),
        Cow::Borrowed(schema.as_bytes()),
    )
}

/// The dead-letter copy of a message not delivered: the original bytes and headers, so a
/// replay is the same message, within the limits (what was cut is said in headers); the
/// producer's traceparent gives way to the worker's (same trace, one hop later).
fn dlq_copy(
    inbound: &Inbound,
    decided: &Decided,
    detail: &str,
    position: &v1::SourcePosition,
    trace: &OutHeader,
    topics: &OutputTopics,
    dlq_limits: crate::dlq::DlqLimits,
) -> OutRecord {
    let copy = crate::dlq::DlqCopy::of(inbound, dlq_limits);
    let mut dlq_headers = copy.headers;
    dlq_headers.push(trace.clone());
    for (name, value) in [
        (headers::DLQ_REASON, decided.outcome.reason().to_owned()),
        (headers::DLQ_DETAIL, detail.to_owned()),
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
        dlq_headers.push(header(name, value));
    }
    for (name, value) in copy.truncation {
        dlq_headers.push(header(name, value));
    }
    OutRecord {
        topic: Arc::clone(&topics.dlq),
        partition: None,
        key: copy.key,
        payload: copy.payload,
        headers: dlq_headers,
    }
}

fn circuit_state(state: Option<CircuitState>) -> i32 {
    state.map_or(v1::CircuitState::Unspecified, CircuitState::to_proto) as i32
}

/// What a realtime event says about a message's attempts.
struct AttemptSummary {
    attempts: u32,
    last_status_code: u32,
    delivery_latency_us: u64,
    timed_out: bool,
}

impl AttemptSummary {
    fn of(attempts: &[AttemptRecord], decided_at: SystemTime) -> Self {
        let first_start = attempts.first().map(|attempt| attempt.started_at);
        Self {
            attempts: attempts.len() as u32,
            last_status_code: attempts
                .last()
                .and_then(|attempt| attempt.status)
                .map_or(0, u32::from),
            delivery_latency_us: first_start
                .and_then(|start| decided_at.duration_since(start).ok())
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            timed_out: attempts.iter().any(|attempt| attempt.timeout.is_some()),
        }
    }

    /// A realtime event with these fields set and the rest left to the caller.
    fn event(self) -> v1::PipelineEvent {
        v1::PipelineEvent {
            attempts: self.attempts,
            last_status_code: self.last_status_code,
            delivery_latency_us: self.delivery_latency_us,
            timed_out: self.timed_out,
            ..Default::default()
        }
    }
}

/// The realtime event of a message's move (the caller sets what the move says).
fn pipeline_event(decided: &Decided, position: v1::SourcePosition) -> v1::PipelineEvent {
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
        circuit_state: circuit_state(decided.circuit_state),
        retry_scheduled: None,
        ..AttemptSummary::of(&decided.attempts, decided.decided_at).event()
    }
}

/// The records of a move to a retry tier: the message itself (its original bytes, key and
/// headers, the `relais-retry-*` headers beside them) on the tier's topic, in the partition it
/// was read from, and a `PipelineEvent` with `retry_scheduled` set. No audit record and no DLQ
/// copy: those come with the message's one outcome.
pub fn build_move(
    inbound: &Inbound,
    decided: &Decided,
    scheduled: &Scheduled,
    events_topic: &Arc<str>,
) -> Vec<OutRecord> {
    let trace = header(headers::TRACEPARENT, decided.traceparent.as_str());
    // The worker's traceparent in place of the producer's: the message's later tries join the
    // same trace.
    let mut tier_headers: Vec<OutHeader> = inbound
        .original_headers()
        .into_iter()
        .filter(|(name, _)| name != headers::TRACEPARENT)
        .map(copied_header)
        .collect();
    tier_headers.push(trace.clone());
    tier_headers.extend(scheduled.state.to_headers().into_iter().map(copied_header));
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
            topic: Arc::from(scheduled.topic.as_str()),
            partition: Some(position.partition),
            key: inbound.key.clone(),
            payload: inbound.payload.clone(),
            headers: tier_headers,
        },
        OutRecord {
            topic: Arc::clone(events_topic),
            partition: None,
            key: None,
            payload: event.encode_to_vec(),
            headers: vec![trace, schema_header(relais_proto::schema::PIPELINE_EVENT)],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound() -> Inbound {
        crate::records::fixtures::inbound(
            br#"{"id":"m-1"}"#.to_vec(),
            b"k",
            &[("traceparent", b"00-producer")],
        )
    }

    fn decided(outcome: Outcome) -> Decided {
        Decided {
            message_id: "m-1".into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            outcome,
            event_type: "order.created".into(),
            source: "shop".into(),
            upstream: "orders".into(),
            occurred_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(90),
            decided_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(101),
            worker_id: "worker-1".into(),
            attempts: Vec::new(),
            circuit_state: Some(CircuitState::Closed),
        }
    }

    fn topics() -> OutputTopics {
        OutputTopics {
            audit: "audit".into(),
            events: "events".into(),
            dlq: "dlq".into(),
        }
    }

    const LIMITS: crate::dlq::DlqLimits = crate::dlq::DlqLimits {
        max_payload_bytes: 1024,
        max_header_bytes: 1024,
        max_key_bytes: 64,
    };

    fn header<'a>(record: &'a OutRecord, name: &str) -> Option<&'a [u8]> {
        record
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_ref())
    }

    #[test]
    fn the_event_says_what_the_audit_record_says_about_the_message() {
        let records = build(&inbound(), decided(Outcome::Delivered), &topics(), LIMITS);
        assert_eq!(records.len(), 2, "no dead-letter copy for a delivery");
        let audit = v1::AuditRecord::decode(records[0].payload.as_slice()).unwrap();
        let event = v1::PipelineEvent::decode(records[1].payload.as_slice()).unwrap();
        assert_eq!(
            (&*records[0].topic, &*records[1].topic),
            ("audit", "events")
        );
        for record in &records {
            assert_eq!(
                record.key, None,
                "the message id is in the record, not its key"
            );
            assert_eq!(
                header(record, headers::TRACEPARENT),
                Some(&b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..])
            );
        }
        assert_eq!(audit.message_id, "m-1");
        assert_eq!(audit.source, "shop");
        assert_eq!(audit.payload_bytes, 12);
        assert_eq!(
            (
                &event.message_id,
                &event.trace_id,
                &event.span_id,
                &event.event_type,
                &event.upstream,
                &event.worker_id,
                &event.reason_code,
            ),
            (
                &audit.message_id,
                &audit.trace_id,
                &audit.span_id,
                &audit.event_type,
                &audit.upstream,
                &audit.worker_id,
                &audit.reason_code,
            )
        );
        assert_eq!(event.outcome, audit.outcome);
        assert_eq!(event.position, audit.position);
        assert_eq!(event.occurred_at, audit.occurred_at);
        assert_eq!(event.decided_at, audit.decided_at);
        assert_eq!(event.circuit_state, audit.circuit_state);
        assert_eq!(event.retry_scheduled, None);
    }

    #[test]
    fn a_message_not_delivered_gets_its_dead_letter_copy_with_the_reason() {
        let failed = Outcome::Failed {
            reason: "status_422".into(),
            detail: "unprocessable".into(),
        };
        let records = build(&inbound(), decided(failed), &topics(), LIMITS);
        assert_eq!(records.len(), 3);
        let copy = &records[2];
        assert_eq!(&*copy.topic, "dlq");
        assert_eq!(copy.payload, br#"{"id":"m-1"}"#);
        assert_eq!(header(copy, headers::DLQ_REASON), Some(&b"status_422"[..]));
        assert_eq!(
            header(copy, headers::DLQ_DETAIL),
            Some(&b"unprocessable"[..])
        );
        assert_eq!(header(copy, headers::DLQ_MESSAGE_ID), Some(&b"m-1"[..]));
        assert_eq!(header(copy, headers::DLQ_WORKER), Some(&b"worker-1"[..]));
        assert_eq!(header(copy, headers::DLQ_SOURCE_OFFSET), Some(&b"7"[..]));
        // The worker's traceparent replaces the producer's.
        let parents: Vec<_> = copy
            .headers
            .iter()
            .filter(|(name, _)| name == headers::TRACEPARENT)
            .collect();
        assert_eq!(parents.len(), 1);
        assert_ne!(&*parents[0].1, b"00-producer");
        let audit = v1::AuditRecord::decode(records[0].payload.as_slice()).unwrap();
        assert_eq!(audit.reason_code, "status_422");
        assert_eq!(audit.reason_detail, "unprocessable");
    }
}
