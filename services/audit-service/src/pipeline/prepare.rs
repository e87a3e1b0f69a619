//! Decoding records and encoding their JSON lines, off the pipeline task: batches copied out
//! of the consumer go to the blocking pool (several at once, on all cores) and come back in
//! the order they were taken, so parallelism never changes which record lands in which object.

use std::collections::VecDeque;
use std::sync::Arc;

use prost::Message as _;
use rdkafka::message::OwnedHeaders;
use relais_proto::v1::{AuditRecord, OperatorAction};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::actions;
use crate::encode::{self, AuditPosition};
use crate::object::Line;

/// Batches being decoded and encoded on the blocking pool, oldest first (they are applied in
/// this order), with the records and payload bytes they carry.
#[derive(Debug, Default)]
pub(super) struct Encoding {
    batches: VecDeque<(JoinHandle<Vec<Prepared>>, usize, usize)>,
    pub(super) records: usize,
    pub(super) bytes: usize,
}

impl Encoding {
    /// Batches on their way.
    pub(super) fn len(&self) -> usize {
        self.batches.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub(super) fn start(&mut self, batch: Vec<Received>, topic: &Arc<str>) {
        let (records, bytes) = (
            batch.len(),
            batch.iter().map(|record| record.payload.len()).sum(),
        );
        let topic = Arc::clone(topic);
        let handle = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|record| prepare(&topic, record))
                .collect()
        });
        self.batches.push_back((handle, records, bytes));
        self.records += records;
        self.bytes += bytes;
    }

    /// The oldest batch once it is encoded; pending while there is none.
    pub(super) async fn oldest(&mut self) -> Vec<Prepared> {
        let Some((handle, _, _)) = self.batches.front_mut() else {
            return std::future::pending().await;
        };
        let result = handle.await;
        if let Some((_, records, bytes)) = self.batches.pop_front() {
            self.records -= records;
            self.bytes -= bytes;
        }
        match result {
            Ok(prepared) => prepared,
            // Encoding does not panic (fuzzed); if it ever did, fail as loudly here.
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Cancelled: only when the runtime shuts down, and nothing is applied then.
                Err(_) => Vec::new(),
            },
        }
    }
}

/// Records taken from the consumer at once, at most: one batch is decoded and encoded on one
/// thread of the blocking pool.
pub(super) const ENCODE_BATCH: usize = 1024;

/// Batches being encoded at once, at most. Several, so that every core encodes while the
/// pipeline task goes on receiving: with one task doing both, or waiting for each batch, the
/// service used about one of two cores in `make bench`.
pub(super) const ENCODING_BATCHES: usize = 4;

/// A record copied out of the consumer, as the encoders take it.
pub(super) struct Received {
    /// The partition's assignment generation when the record was received.
    pub(super) generation: u64,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) timestamp_millis: Option<i64>,
    pub(super) key: Option<Vec<u8>>,
    pub(super) payload: Vec<u8>,
    pub(super) headers: Option<OwnedHeaders>,
    pub(super) arrival: Instant,
}

/// A received record after decoding: its line, or what quarantines it.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) generation: u64,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) arrival: Instant,
    pub(super) content: Result<Line, Undecodable>,
}

/// A record that did not decode, as it came.
#[derive(Debug)]
pub(super) struct Undecodable {
    pub(super) key: Option<Vec<u8>>,
    pub(super) payload: Vec<u8>,
    pub(super) error: String,
}

/// Decodes a record and encodes its JSON line; runs on the blocking pool.
fn prepare(topic: &str, received: Received) -> Prepared {
    let Received {
        generation,
        partition,
        offset,
        timestamp_millis,
        key,
        payload,
        headers,
        arrival,
    } = received;
    let position = AuditPosition {
        topic,
        partition,
        offset,
    };
    let kafka_time = encode::kafka_time(timestamp_millis);
    let content = if relais_operator::actions::is_operator_action(headers.as_ref()) {
        action_line(&payload, position, kafka_time)
    } else {
        record_line(&payload, headers.as_ref(), position, kafka_time)
    }
    .map_err(|error| Undecodable {
        key,
        payload,
        error: error.to_string(),
    });
    Prepared {
        generation,
        partition,
        offset,
        arrival,
        content,
    }
}

/// The line of a message outcome (an `AuditRecord`).
fn record_line(
    payload: &[u8],
    headers: Option<&OwnedHeaders>,
    position: AuditPosition<'_>,
    kafka_time: Option<std::time::SystemTime>,
) -> Result<Line, prost::DecodeError> {
    let record = AuditRecord::decode(payload)?;
    use opentelemetry::trace::TraceContextExt as _;
    let context = relais_telemetry::propagation::extract_kafka(headers);
    let span_context = context.span().span_context().clone();
    if span_context.is_sampled() && relais_telemetry::spans_exported() {
        // The message's own trace reaches the audit trail: one short consumer span per
        // sampled record (the object's span links the batch as a whole).
        record_process_span(&context, &position, &record.message_id);
    }
    let time = encode::record_time(Some(&record), kafka_time);
    let json = encode::RecordLine {
        record: &record,
        position,
    }
    .to_vec();
    Ok(Line {
        offset: position.offset,
        time,
        json,
        trace_id: record.trace_id,
        message_id: record.message_id,
        context: span_context.is_valid().then_some(span_context),
    })
}

/// The line of an operator action, filed under the time it was done and indexed by its
/// subject (as the message id) and trace id.
fn action_line(
    payload: &[u8],
    position: AuditPosition<'_>,
    kafka_time: Option<std::time::SystemTime>,
) -> Result<Line, prost::DecodeError> {
    let action = OperatorAction::decode(payload)?;
    let time = encode::timestamp(action.at.as_ref())
        .or_else(|| kafka_time.map(chrono::DateTime::<chrono::Utc>::from))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
    let json = actions::ActionLine {
        action: &action,
        position,
    }
    .to_vec();
    Ok(Line {
        offset: position.offset,
        time,
        json,
        trace_id: action.trace_id,
        message_id: action.subject,
        context: None,
    })
}

/// `process relais.audit`, a child of the record's trace, per the OpenTelemetry messaging
/// conventions; it ends at once (the object that stores the record has its own span).
fn record_process_span(
    parent: &opentelemetry::Context,
    position: &AuditPosition<'_>,
    message_id: &str,
) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::info_span!(
        "process relais.audit",
        otel.name = format!("process {}", position.topic),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = position.topic,
        messaging.destination.partition.id = position.partition,
        messaging.kafka.offset = position.offset,
        relais.message_id = message_id,
    );
    let _ = span.set_parent(parent.clone());
}
