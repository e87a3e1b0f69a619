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
            // One record decoded into again and again: its strings keep their capacity, so
            // a record costs copies of its text rather than a dozen allocations.
            let mut decoded = AuditRecord::default();
            batch
                .into_iter()
                .map(|record| prepare(&topic, record, &mut decoded))
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
fn prepare(topic: &str, received: Received, decoded: &mut AuditRecord) -> Prepared {
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
        record_line(&payload, headers.as_ref(), position, kafka_time, decoded)
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

/// The line of a message outcome (an `AuditRecord`), decoded into `record`.
fn record_line(
    payload: &[u8],
    headers: Option<&OwnedHeaders>,
    position: AuditPosition<'_>,
    kafka_time: Option<std::time::SystemTime>,
    record: &mut AuditRecord,
) -> Result<Line, prost::DecodeError> {
    record.clear();
    record.merge(payload)?;
    let record = &*record;
    use opentelemetry::trace::TraceContextExt as _;
    let context = relais_telemetry::propagation::extract_kafka(headers);
    let span_context = context.span().span_context().clone();
    if span_context.is_sampled() && relais_telemetry::spans_exported() {
        // The message's own trace reaches the audit trail: one short consumer span per
        // sampled record (the object's span links the batch as a whole).
        record_process_span(&context, &position, &record.message_id);
    }
    let time = encode::record_time(Some(record), kafka_time);
    let json = encode::RecordLine { record, position }.to_vec();
    Ok(Line {
        offset: position.offset,
        time,
        json,
        trace_id: record.trace_id.clone(),
        message_id: record.message_id.clone(),
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

#[cfg(test)]
mod tests {
    use relais_proto::v1;

    use super::*;

    fn received(offset: i64, payload: Vec<u8>) -> Received {
        Received {
            generation: 1,
            partition: 0,
            offset,
            timestamp_millis: Some(1_700_000_000_000),
            key: None,
            payload,
            headers: None,
            arrival: Instant::now(),
        }
    }

    #[test]
    fn a_record_decoded_into_a_used_one_keeps_nothing_of_it() {
        let full = AuditRecord {
            message_id: "m-1".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            reason_detail: "a long detail that the next record does not have".into(),
            position: Some(v1::SourcePosition {
                topic: "relais.ingress".into(),
                partition: 3,
                offset: 9,
            }),
            attempts: vec![v1::Attempt {
                number: 1,
                status_code: 503,
                ..Default::default()
            }],
            ..Default::default()
        };
        let sparse = AuditRecord {
            message_id: "m-2".into(),
            ..Default::default()
        };
        let mut decoded = AuditRecord::default();
        let batch = [
            received(0, full.encode_to_vec()),
            received(1, b"\xff not protobuf".to_vec()),
            received(2, sparse.encode_to_vec()),
        ];
        let prepared: Vec<Prepared> = batch
            .into_iter()
            .map(|record| prepare("relais.audit", record, &mut decoded))
            .collect();
        assert!(prepared[1].content.is_err());
        let line = |prepared: &Prepared| prepared.content.as_ref().unwrap().json.clone();
        let alone = |offset: i64, record: &AuditRecord| {
            let mut fresh = AuditRecord::default();
            line(&prepare(
                "relais.audit",
                received(offset, record.encode_to_vec()),
                &mut fresh,
            ))
        };
        assert_eq!(line(&prepared[0]), alone(0, &full));
        assert_eq!(line(&prepared[2]), alone(2, &sparse));
        let last = prepared[2].content.as_ref().unwrap();
        assert_eq!(
            (last.message_id.as_str(), last.trace_id.as_str()),
            ("m-2", "")
        );
    }
}
