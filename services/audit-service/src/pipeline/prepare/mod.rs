//! Decoding records and encoding their JSON lines, off the pipeline task: batches copied out
//! of the consumer go to the blocking pool (several at once, on all cores) and come back in
//! the order they were taken, so parallelism never changes which record lands in which object.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use prost::Message as _;
use rdkafka::Message;
use relais_proto::v1::OperatorAction;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::actions;
use crate::encode::{self, AuditPosition, RecordView};
use crate::index::IdHash;
use crate::object::{ChunkPool, Line};

/// Batches being decoded and encoded on the blocking pool, oldest first (they are applied in
/// this order), with the records and payload bytes they carry.
#[derive(Debug, Default)]
pub(super) struct Encoding {
    batches: VecDeque<(JoinHandle<PreparedBatch>, usize, usize)>,
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

    pub(super) fn start(
        &mut self,
        batch: ReceivedBatch,
        topic: &Arc<str>,
        chunks: &Arc<ChunkPool>,
    ) {
        let (records, bytes) = (batch.records.len(), batch.bytes.len());
        let (topic, chunks) = (Arc::clone(topic), Arc::clone(chunks));
        let handle = tokio::task::spawn_blocking(move || prepare_batch(&topic, batch, &chunks));
        self.batches.push_back((handle, records, bytes));
        self.records += records;
        self.bytes += bytes;
    }

    /// The oldest batch once it is encoded; pending while there is none.
    pub(super) async fn oldest(&mut self) -> PreparedBatch {
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
                Err(_) => PreparedBatch::default(),
            },
        }
    }
}

/// Records taken from the consumer at once, at most: one batch is decoded and encoded on one
/// thread of the blocking pool.
pub(super) const ENCODE_BATCH: usize = 1024;

/// What a batch's buffer reserves for `records` more records the size of its first, so that it
/// rarely grows; bounded, because a large first record (a long error detail) must not make a
/// thousand-record batch reserve a thousand times its size.
pub(super) fn batch_reserve(first_record_bytes: usize, records: usize) -> usize {
    const MAX_RESERVE_BYTES: usize = 4 * 1024 * 1024;
    first_record_bytes
        .saturating_mul(records)
        .min(MAX_RESERVE_BYTES)
}

/// Batches being encoded at once, at most. Several, so that every core encodes while the
/// pipeline task goes on receiving: with one task doing both, or waiting for each batch, the
/// service used about one of two cores in `make bench`.
pub(super) const ENCODING_BATCHES: usize = 4;

/// Records copied out of the consumer for the encoders. Their keys and payloads share one
/// buffer: a batch costs one allocation, not two per record, and the encoder that frees it is
/// not the thread that allocated it.
#[derive(Debug)]
pub(super) struct ReceivedBatch {
    bytes: Vec<u8>,
    records: Vec<Received>,
    /// When the batch was taken: its records were waiting together in the consumer.
    arrival: Instant,
}

/// A record of a [`ReceivedBatch`].
#[derive(Debug)]
struct Received {
    /// The partition's assignment generation when the record was received.
    generation: u64,
    partition: i32,
    offset: i64,
    timestamp_millis: Option<i64>,
    key: Option<Range<usize>>,
    payload: Range<usize>,
    operator_action: bool,
    /// From the record's trace headers; invalid when it has none.
    trace: SpanContext,
}

impl ReceivedBatch {
    pub(super) fn with_capacity(records: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            records: Vec::with_capacity(records),
            arrival: Instant::now(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// Copies a record out of the consumer.
    pub(super) fn push(&mut self, message: &impl Message, generation: u64) {
        let key = message.key().map(|key| self.append(key));
        let payload = self.append(message.payload().unwrap_or_default());
        let headers = message.headers();
        self.records.push(Received {
            generation,
            partition: message.partition(),
            offset: message.offset(),
            timestamp_millis: message.timestamp().to_millis(),
            key,
            payload,
            operator_action: relais_operator::actions::is_operator_action(headers),
            trace: relais_telemetry::propagation::extract_kafka(headers)
                .span()
                .span_context()
                .clone(),
        });
    }

    fn append(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }
}

/// A batch after decoding: its records in the order received, in runs of one partition.
#[derive(Debug, Default)]
pub(super) struct PreparedBatch {
    pub(super) runs: Vec<PreparedRun>,
}

/// Consecutive records of one partition, and their lines in one buffer: a run whose lines all
/// go to one object becomes part of it without being copied.
#[derive(Debug, Default)]
pub(super) struct PreparedRun {
    /// The run's lines in order, each followed by its newline.
    pub(super) json: Vec<u8>,
    pub(super) records: Vec<Prepared>,
}

/// A received record after decoding: its line, or what quarantines it.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) generation: u64,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) arrival: Instant,
    pub(super) content: Result<Encoded, Undecodable>,
}

/// A record's line (a range of its run's `json`, newline included) and what its object needs
/// besides.
#[derive(Debug)]
pub(super) struct Encoded {
    pub(super) line: Line,
    pub(super) json: Range<usize>,
}

/// A record that did not decode, as it came.
#[derive(Debug)]
pub(super) struct Undecodable {
    pub(super) key: Option<Vec<u8>>,
    pub(super) payload: Vec<u8>,
    pub(super) error: String,
}

/// Decodes a batch and encodes its lines, a buffer per run (from `chunks` when the run is
/// about the size of one); runs on the blocking pool.
fn prepare_batch(topic: &str, batch: ReceivedBatch, chunks: &ChunkPool) -> PreparedBatch {
    let ReceivedBatch {
        bytes,
        records,
        arrival,
    } = batch;
    let mut run_lengths: Vec<(i32, usize)> = Vec::new();
    for received in &records {
        match run_lengths.last_mut() {
            Some((partition, count)) if *partition == received.partition => *count += 1,
            _ => run_lengths.push((received.partition, 1)),
        }
    }
    // One view read into again and again: its strings borrow from the batch's bytes and its
    // attempts keep their room, so a record costs no allocation and no copy of its text.
    let mut decoded = RecordView::default();
    let mut records = records.into_iter();
    let runs = run_lengths
        .into_iter()
        .map(|(_, count)| {
            let mut json = Vec::new();
            let mut prepared = Vec::with_capacity(count);
            let mut run = records.by_ref().take(count);
            prepared.extend(
                run.next()
                    .map(|first| prepare(topic, first, &bytes, &mut json, &mut decoded, arrival)),
            );
            // Lines differ in size a little (ids, numbers): a little more than the first's
            // per line.
            let rest = batch_reserve(json.len() + json.len() / 8, count.saturating_sub(1));
            json = chunks.buffer_for(json.len() + rest, &json);
            prepared.extend(run.map(|received| {
                prepare(topic, received, &bytes, &mut json, &mut decoded, arrival)
            }));
            PreparedRun {
                json,
                records: prepared,
            }
        })
        .collect();
    PreparedBatch { runs }
}

/// Decodes a record and appends its JSON line and newline to `json`.
fn prepare<'a>(
    topic: &str,
    received: Received,
    bytes: &'a [u8],
    json: &mut Vec<u8>,
    decoded: &mut RecordView<'a>,
    arrival: Instant,
) -> Prepared {
    let payload = &bytes[received.payload.clone()];
    let position = AuditPosition {
        topic,
        partition: received.partition,
        offset: received.offset,
    };
    let kafka_time = encode::kafka_time(received.timestamp_millis);
    let content = if received.operator_action {
        action_line(payload, position, kafka_time, json).map_err(|error| error.to_string())
    } else {
        record_line(payload, received.trace, position, kafka_time, json, decoded)
            .map_err(|error| error.to_string())
    }
    .map_err(|error| Undecodable {
        key: received.key.map(|key| bytes[key].to_vec()),
        payload: payload.to_vec(),
        error,
    });
    Prepared {
        generation: received.generation,
        partition: received.partition,
        offset: received.offset,
        arrival,
        content,
    }
}

/// The line of a message outcome (an `AuditRecord`), read into `record`.
fn record_line<'a>(
    payload: &'a [u8],
    trace: SpanContext,
    position: AuditPosition<'_>,
    kafka_time: Option<std::time::SystemTime>,
    json: &mut Vec<u8>,
    record: &mut RecordView<'a>,
) -> Result<Encoded, encode::WireError> {
    record.read(payload)?;
    let record = &*record;
    if trace.is_sampled() && relais_telemetry::spans_exported() {
        // The message's own trace reaches the audit trail: one short consumer span per
        // sampled record (the object's span links the batch as a whole).
        let parent = opentelemetry::Context::new().with_remote_span_context(trace.clone());
        record_process_span(&parent, &position, record.message_id.to_str());
    }
    let start = json.len();
    record.write_line(position, json);
    json.push(b'\n');
    Ok(Encoded {
        line: Line {
            offset: position.offset,
            time: encode::record_time(record.occurred_at.as_ref(), kafka_time),
            ids: [
                IdHash::of_bytes(record.trace_id.as_bytes()),
                IdHash::of_bytes(record.message_id.as_bytes()),
            ],
            context: trace.is_valid().then_some(trace),
        },
        json: start..json.len(),
    })
}

/// The line of an operator action, filed under the time it was done and indexed by its
/// subject (as the message id) and trace id.
fn action_line(
    payload: &[u8],
    position: AuditPosition<'_>,
    kafka_time: Option<std::time::SystemTime>,
    json: &mut Vec<u8>,
) -> Result<Encoded, prost::DecodeError> {
    let action = OperatorAction::decode(payload)?;
    let time = encode::timestamp(action.at.as_ref())
        .or_else(|| kafka_time.map(chrono::DateTime::<chrono::Utc>::from))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
    let start = json.len();
    actions::ActionLine {
        action: &action,
        position,
    }
    .write_to(json);
    json.push(b'\n');
    Ok(Encoded {
        line: Line {
            offset: position.offset,
            time,
            ids: [IdHash::of(&action.trace_id), IdHash::of(&action.subject)],
            context: None,
        },
        json: start..json.len(),
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
mod tests;
