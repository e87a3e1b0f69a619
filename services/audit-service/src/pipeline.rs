//! The running service: one task owns the partitions' open objects and upload queues; uploads
//! run concurrently across partitions, one at a time within a partition; each stored item
//! commits the offset after it. The records waiting in the consumer are taken in batches whose
//! decoding and JSON encoding run on all cores; the task then applies them in offset order.
//!
//! ```text
//! relais.audit ─▶ decode ─┬─▶ PartitionWriter (open object) ─▶ queue ─▶ Store::write ─▶ commit
//!                         └─▶ (undecodable) quarantine item ──▶ queue ┘   (one in flight per partition)
//! ```
//!
//! Memory is bounded by the buffer limits: when the records or bytes held exceed them, every
//! assigned partition is paused (the consumer keeps polling); below 80 % they resume.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt as _;
use prost::Message as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use relais_proto::v1::AuditRecord;
use relais_telemetry::shutdown::CancellationToken;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::AuditConfig;
use crate::encode::{self, AuditPosition};
use crate::metrics::AuditMetrics;
use crate::object::{Line, PartitionWriter, Pending, QuarantinedRecord, RotationPolicy};
use crate::store::Store;

/// Assignment generations, kept by the rebalance callbacks.
#[derive(Debug, Default)]
pub struct Assignment {
    generations: Mutex<HashMap<i32, u64>>,
    next: Mutex<u64>,
}

impl Assignment {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, u64>> {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn generation(&self, partition: i32) -> Option<u64> {
        self.lock().get(&partition).copied()
    }
}

#[derive(Debug)]
pub struct AuditContext {
    pub assignment: Arc<Assignment>,
}

impl ClientContext for AuditContext {}

impl ConsumerContext for AuditContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let mut generations = self.assignment.lock();
            for element in partitions.elements() {
                generations.remove(&element.partition());
                tracing::info!(partition = element.partition(), "partition revoked");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            for element in partitions.elements() {
                let generation = {
                    let mut next = self
                        .assignment
                        .next
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    *next += 1;
                    *next
                };
                self.assignment
                    .lock()
                    .insert(element.partition(), generation);
                tracing::info!(partition = element.partition(), "partition assigned");
            }
        }
    }
}

pub type AuditConsumer = StreamConsumer<AuditContext>;

/// Per-partition state owned by the pipeline task.
#[derive(Debug)]
struct PartitionState {
    generation: u64,
    writer: PartitionWriter,
    queue: VecDeque<Arc<Pending>>,
    uploading: bool,
    /// Stored items whose offsets are not committed yet, counted in the written metrics only
    /// once a commit covers them: an object whose commit is lost is stored again later (same
    /// key) and must not be counted twice.
    uncounted: Vec<StoredItem>,
}

/// A stored item waiting for the commit that covers it.
#[derive(Debug, Clone, Copy)]
struct StoredItem {
    end_offset: i64,
    records: usize,
    quarantined: bool,
}

/// What one stored item held.
#[derive(Debug, Clone, Copy)]
struct StoredSize {
    records: usize,
    compressed: usize,
    uncompressed: usize,
}

/// An upload that finished.
#[derive(Debug)]
struct Uploaded {
    partition: i32,
    generation: u64,
    /// None when cancelled by shutdown (not stored, not committed).
    stored: Option<StoredSize>,
    index: Option<crate::index::IndexEntry>,
    end_offset: i64,
}

pub struct Pipeline {
    pub consumer: Arc<AuditConsumer>,
    pub assignment: Arc<Assignment>,
    pub store: Arc<Store>,
    pub config: AuditConfig,
    pub metrics: AuditMetrics,
    pub index: Arc<crate::index::Index>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Runs until `shutdown`, then writes what it holds (within the drain timeout) and commits
    /// what was stored.
    pub async fn run(self, shutdown: CancellationToken) {
        let (done_sender, mut done) = mpsc::channel::<Uploaded>(256);
        let uploads_cancel = CancellationToken::new();
        let mut partitions: BTreeMap<i32, PartitionState> = BTreeMap::new();
        let mut paused = false;
        let mut accepted: u64 = 0;
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        let policy = RotationPolicy {
            max_records: self.config.objects.max_records,
            max_bytes: self.config.objects.max_bytes,
            idle: self.config.objects.idle,
        };
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(uploaded) = done.recv() => self.finish_upload(&mut partitions, uploaded).await,
                // Before `recv`: with a backlog, `recv` is always ready and would starve it.
                _ = ticker.tick() => {
                    let now = Instant::now();
                    for state in partitions.values_mut() {
                        if let Some(object) = state.writer.close_if_idle(now) {
                            state.queue.push_back(Arc::new(Pending::Data(object)));
                        }
                    }
                    self.forget_revoked(&mut partitions);
                    paused = self.apply_backpressure(&partitions, paused);
                }
                message = self.consumer.recv() => match message {
                    Ok(first) => {
                        let batch = self.take_ready(first);
                        let encoded = encode_batch(&batch);
                        for (message, encoded) in batch.iter().zip(encoded) {
                            self.accept(&mut partitions, message, encoded, &policy);
                            accepted += 1;
                            // The buffer bound is enforced as records arrive, not only on ticks.
                            if accepted.is_multiple_of(128) {
                                paused = self.apply_backpressure(&partitions, paused);
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
            self.start_uploads(&mut partitions, &done_sender, &uploads_cancel);
        }

        // Drain: close every open object, let the queues empty within the time limit.
        for state in partitions.values_mut() {
            if let Some(object) = state.writer.close() {
                state.queue.push_back(Arc::new(Pending::Data(object)));
            }
        }
        let deadline = Instant::now() + self.config.storage.drain_timeout;
        self.start_uploads(&mut partitions, &done_sender, &uploads_cancel);
        while partitions
            .values()
            .any(|state| state.uploading || !state.queue.is_empty())
        {
            match tokio::time::timeout_at(deadline, done.recv()).await {
                Ok(Some(uploaded)) => self.finish_upload(&mut partitions, uploaded).await,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("drain timeout: unstored records will be read again on restart");
                    break;
                }
            }
            self.start_uploads(&mut partitions, &done_sender, &uploads_cancel);
        }
        uploads_cancel.cancel();
    }

    /// The message just received and those already waiting behind it, up to a batch.
    fn take_ready<'c>(&'c self, first: BorrowedMessage<'c>) -> Vec<BorrowedMessage<'c>> {
        let mut batch = vec![first];
        while batch.len() < ENCODE_BATCH {
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(message),
                Some(Err(error)) => {
                    tracing::warn!(%error, "consume error");
                    break;
                }
                None => break,
            }
        }
        batch
    }

    fn accept(
        &self,
        partitions: &mut BTreeMap<i32, PartitionState>,
        message: &BorrowedMessage<'_>,
        encoded: Result<Encoded, prost::DecodeError>,
        policy: &RotationPolicy,
    ) {
        let partition = message.partition();
        let Some(generation) = self.assignment.generation(partition) else {
            return;
        };
        let state = partitions
            .entry(partition)
            .or_insert_with(|| PartitionState {
                uncounted: Vec::new(),
                generation,
                writer: PartitionWriter::new(partition, policy.clone()),
                queue: VecDeque::new(),
                uploading: false,
            });
        if state.generation != generation {
            // Revoked and assigned again: start over from the committed offset.
            *state = PartitionState {
                uncounted: Vec::new(),
                generation,
                writer: PartitionWriter::new(partition, policy.clone()),
                queue: VecDeque::new(),
                uploading: false,
            };
        }
        self.metrics.records_consumed.inc();
        let payload = message.payload().unwrap_or_default();
        let now = Instant::now();
        match encoded {
            Ok(encoded) => {
                let position = AuditPosition {
                    topic: message.topic(),
                    partition,
                    offset: message.offset(),
                };
                use opentelemetry::trace::TraceContextExt as _;
                let context = relais_telemetry::propagation::extract_kafka(message.headers());
                let span_context = context.span().span_context().clone();
                if span_context.is_sampled() && relais_telemetry::spans_exported() {
                    // The message's own trace reaches the audit trail: one short consumer span
                    // per sampled record (the object's span links the batch as a whole).
                    record_process_span(&context, &position, &encoded.message_id);
                }
                let line = Line {
                    offset: message.offset(),
                    time: encoded.time,
                    json: encoded.json,
                    trace_id: encoded.trace_id,
                    message_id: encoded.message_id,
                    context: span_context.is_valid().then_some(span_context),
                };
                if let Some(object) = state.writer.push(line, now) {
                    state.queue.push_back(Arc::new(Pending::Data(object)));
                }
            }
            Err(error) => {
                // Never a crash, never a stuck partition: close what is open (so order and
                // determinism hold), then store the bytes as they came.
                tracing::warn!(partition, offset = message.offset(), %error, "undecodable audit record quarantined");
                if let Some(object) = state.writer.close() {
                    state.queue.push_back(Arc::new(Pending::Data(object)));
                }
                state
                    .queue
                    .push_back(Arc::new(Pending::Quarantine(QuarantinedRecord {
                        partition,
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: payload.to_vec(),
                        error: error.to_string(),
                        first_arrival: now,
                    })));
            }
        }
    }

    fn start_uploads(
        &self,
        partitions: &mut BTreeMap<i32, PartitionState>,
        done: &mpsc::Sender<Uploaded>,
        cancel: &CancellationToken,
    ) {
        for (partition, state) in partitions.iter_mut() {
            if state.uploading {
                continue;
            }
            // Shared, not copied: an object holds up to `objects.max_bytes` of lines.
            let Some(item) = state.queue.front().map(Arc::clone) else {
                continue;
            };
            state.uploading = true;
            let store = Arc::clone(&self.store);
            let done = done.clone();
            let cancel = cancel.clone();
            let (partition, generation) = (*partition, state.generation);
            let end_offset = item.end_offset();
            let span = tracing::info_span!(
                "store object",
                otel.kind = "producer",
                relais.partition = partition,
                relais.start_offset = tracing::field::Empty,
                relais.records = item.records(),
            );
            if let Pending::Data(object) = &*item {
                span.record("relais.start_offset", object.start_offset);
                // The object's span points at the traces of the records in it.
                for link in &object.links {
                    span.add_link(link.clone());
                }
            }
            tokio::spawn(
                async move {
                    let (stored, index) = match store.write(Arc::clone(&item), &cancel).await {
                        Ok(stored) => (
                            Some(StoredSize {
                                records: item.records(),
                                compressed: stored.compressed_bytes,
                                uncompressed: stored.uncompressed_bytes,
                            }),
                            stored.index,
                        ),
                        Err(error) => {
                            tracing::info!(%error, partition, "object not stored");
                            (None, None)
                        }
                    };
                    let _ = done
                        .send(Uploaded {
                            partition,
                            generation,
                            stored,
                            index,
                            end_offset,
                        })
                        .await;
                }
                .instrument(span),
            );
        }
    }

    async fn finish_upload(
        &self,
        partitions: &mut BTreeMap<i32, PartitionState>,
        uploaded: Uploaded,
    ) {
        let Some(state) = partitions.get_mut(&uploaded.partition) else {
            return;
        };
        if state.generation != uploaded.generation {
            return;
        }
        state.uploading = false;
        let Some(StoredSize {
            records,
            compressed,
            uncompressed,
        }) = uploaded.stored
        else {
            return;
        };
        if let Some(entry) = uploaded.index {
            self.index.insert(entry);
        }
        let item = state.queue.pop_front();
        state.uncounted.push(StoredItem {
            end_offset: uploaded.end_offset,
            records,
            quarantined: matches!(item.as_deref(), Some(Pending::Quarantine(_))),
        });
        self.metrics.bytes_written.inc_by(compressed as u64);
        self.metrics
            .uncompressed_written
            .inc_by(uncompressed as u64);
        // Offsets only after the object is stored: a crash before this line re-reads it.
        let mut offsets = TopicPartitionList::new();
        let _ = offsets.add_partition_offset(
            &self.config.kafka.audit_topic,
            uploaded.partition,
            Offset::Offset(uploaded.end_offset + 1),
        );
        let consumer = Arc::clone(&self.consumer);
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync)).await;
        match committed {
            Ok(Ok(())) => {
                self.metrics.commits.inc();
                // This commit covers every earlier stored item of the partition too.
                let (covered, waiting): (Vec<StoredItem>, Vec<StoredItem>) = state
                    .uncounted
                    .drain(..)
                    .partition(|stored| stored.end_offset <= uploaded.end_offset);
                state.uncounted = waiting;
                for stored in covered {
                    if stored.quarantined {
                        self.metrics.records_quarantined.inc();
                    } else {
                        self.metrics.objects_written.inc();
                        self.metrics.records_written.inc_by(stored.records as u64);
                    }
                }
            }
            other => tracing::warn!(
                ?other,
                partition = uploaded.partition,
                "offset commit failed; a later commit covers the object, or it is stored again after a rebalance"
            ),
        }
    }

    fn forget_revoked(&self, partitions: &mut BTreeMap<i32, PartitionState>) {
        partitions.retain(|partition, state| {
            self.assignment.generation(*partition) == Some(state.generation)
        });
    }

    /// Updates the buffer gauges and pauses or resumes consumption; returns the paused state.
    fn apply_backpressure(&self, partitions: &BTreeMap<i32, PartitionState>, paused: bool) -> bool {
        let (mut records, mut bytes, mut oldest): (usize, usize, Option<Instant>) = (0, 0, None);
        for state in partitions.values() {
            let (open_records, open_bytes) = state.writer.open_size();
            records += open_records;
            bytes += open_bytes;
            let candidates = state
                .queue
                .iter()
                .map(|item| item.first_arrival())
                .chain(state.writer.first_arrival());
            for arrival in candidates {
                oldest = Some(oldest.map_or(arrival, |o: Instant| o.min(arrival)));
            }
            records += state.queue.iter().map(|item| item.records()).sum::<usize>();
            bytes += state.queue.iter().map(|item| item.bytes()).sum::<usize>();
        }
        self.metrics.buffer_records.set(records as i64);
        self.metrics.buffer_bytes.set(bytes as i64);
        self.metrics
            .oldest_unflushed_age
            .set(oldest.map_or(0.0, |o| o.elapsed().as_secs_f64()));
        let limits = &self.config.buffer;
        let full = records >= limits.max_records || bytes >= limits.max_bytes;
        let relieved = records * 5 < limits.max_records * 4 && bytes * 5 < limits.max_bytes * 4;
        if !full && !paused {
            // The common case, checked every 128 records: nothing to change. Asking librdkafka
            // for the assignment is a round trip to its main thread, and doing it on every
            // check kept the pipeline loop waiting (2M records: 218k -> 240-250k records/s).
            return false;
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return paused;
        };
        if full && !paused {
            tracing::warn!(records, bytes, "buffer full: pausing consumption");
            let _ = self.consumer.pause(&assignment);
            self.metrics.paused.set(1);
            return true;
        }
        if paused && relieved {
            tracing::info!(records, bytes, "buffer relieved: resuming consumption");
            let _ = self.consumer.resume(&assignment);
            self.metrics.paused.set(0);
            return false;
        }
        if paused {
            // Partitions assigned since the pause start unpaused: pause them too.
            let _ = self.consumer.pause(&assignment);
        }
        paused
    }
}

/// `process relais.audit`, a child of the record's trace, per the OpenTelemetry messaging
/// conventions; it ends at once (the object that stores the record has its own span).
/// Records taken from the consumer at once, at most: decoding and encoding them is spread over
/// the cores (`encode_batch`), while their effect on the objects stays in offset order. One
/// thread doing both capped the service at one core in `make bench`.
const ENCODE_BATCH: usize = 1024;

/// Fewer records than this per thread are not worth a thread.
const RECORDS_PER_THREAD: usize = 128;

/// Cores to encode on, read once: on Linux the answer comes from cgroup files, not worth
/// reading again for every batch.
static CORES: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
});

/// A decoded record as its stored line, with what the object and its index need.
#[derive(Debug)]
pub(crate) struct Encoded {
    time: chrono::DateTime<chrono::Utc>,
    json: Vec<u8>,
    trace_id: String,
    message_id: String,
}

/// What encoding needs from a message; plain data, so other threads can take it.
struct RawRecord<'a> {
    payload: &'a [u8],
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp_millis: Option<i64>,
}

fn encode_one(raw: &RawRecord<'_>) -> Result<Encoded, prost::DecodeError> {
    let record = AuditRecord::decode(raw.payload)?;
    let position = AuditPosition {
        topic: raw.topic,
        partition: raw.partition,
        offset: raw.offset,
    };
    let time = encode::record_time(Some(&record), encode::kafka_time(raw.timestamp_millis));
    let json = encode::RecordLine {
        record: &record,
        position,
    }
    .to_vec();
    Ok(Encoded {
        time,
        json,
        trace_id: record.trace_id,
        message_id: record.message_id,
    })
}

/// Decodes and encodes a batch on up to all cores; the results keep the batch's order.
fn encode_batch(batch: &[BorrowedMessage<'_>]) -> Vec<Result<Encoded, prost::DecodeError>> {
    let raw: Vec<RawRecord<'_>> = batch
        .iter()
        .map(|message| RawRecord {
            payload: message.payload().unwrap_or_default(),
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_millis: message.timestamp().to_millis(),
        })
        .collect();
    let threads = (*CORES).min(raw.len() / RECORDS_PER_THREAD).max(1);
    if threads == 1 {
        return raw.iter().map(encode_one).collect();
    }
    let chunk = raw.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut chunks = raw.chunks(chunk);
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks
            .map(|part| scope.spawn(move || part.iter().map(encode_one).collect::<Vec<_>>()))
            .collect();
        let mut encoded: Vec<_> = first.iter().map(encode_one).collect();
        for other in others {
            match other.join() {
                Ok(part) => encoded.extend(part),
                // Encoding does not panic (fuzzed); if it ever did, fail as loudly here.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        encoded
    })
}

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
