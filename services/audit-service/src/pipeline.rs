//! The running service: one task owns the partitions' open objects and upload queues; uploads
//! run concurrently across partitions, one at a time within a partition; each stored item
//! commits the offset after it. The task only receives and applies: the records waiting in the
//! consumer are copied out in batches, decoded and encoded as JSON lines on the blocking pool
//! (several batches at once, on all cores), and applied in the order they were received while
//! the task goes on receiving.
//!
//! ```text
//! relais.audit ─▶ batch ─▶ decode + encode ─┬─▶ PartitionWriter (open object) ─▶ queue ─▶ Store::write ─▶ commit
//!                 (in order) (blocking pool) └─▶ (undecodable) quarantine item ──▶ queue ┘  (one in flight per partition)
//! ```
//!
//! Memory is bounded by the buffer limits: when the records or bytes held exceed them, every
//! assigned partition is paused (the consumer keeps polling); below 80 % they resume. Records
//! being encoded count in the buffer; when the open objects alone fill it, the largest are
//! closed early (`close_under_pressure`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt as _;
use prost::Message as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use relais_proto::v1::{AuditRecord, OperatorAction};
use relais_telemetry::shutdown::CancellationToken;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::actions;
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
    /// The front item is being stored, or its offset committed.
    uploading: bool,
    /// Stored items whose offsets are not committed yet, counted in the written metrics only
    /// once a commit covers them: an object whose commit is lost is stored again later (same
    /// key) and must not be counted twice.
    uncounted: Vec<StoredItem>,
}

impl PartitionState {
    fn new(partition: i32, generation: u64, policy: &RotationPolicy) -> Self {
        Self {
            generation,
            writer: PartitionWriter::new(partition, policy.clone()),
            queue: VecDeque::new(),
            uploading: false,
            uncounted: Vec::new(),
        }
    }
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

/// What the partitions hold in memory.
#[derive(Debug, Default)]
struct Held {
    records: usize,
    /// NDJSON bytes, or payload bytes for quarantined records.
    bytes: usize,
    /// When the oldest record held arrived.
    oldest: Option<Instant>,
}

/// Batches being decoded and encoded on the blocking pool, oldest first (they are applied in
/// this order), with the records and payload bytes they carry.
#[derive(Debug, Default)]
struct Encoding {
    batches: VecDeque<(JoinHandle<Vec<Prepared>>, usize, usize)>,
    records: usize,
    bytes: usize,
}

impl Encoding {
    fn start(&mut self, batch: Vec<Received>, topic: &Arc<str>) {
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
    async fn oldest(&mut self) -> Vec<Prepared> {
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

/// An offset to commit: the end of an item a partition has stored.
#[derive(Debug, Clone, Copy)]
struct CommitTarget {
    partition: i32,
    generation: u64,
    end_offset: i64,
}

/// Offset commits, one at a time, off the pipeline task: a synchronous commit is a round trip
/// to the broker, and awaiting it there kept the task from receiving (once per object). Stored
/// items wait here while a commit is in flight; the next commit covers all of them at once.
#[derive(Debug, Default)]
struct Commits {
    waiting: BTreeMap<i32, CommitTarget>,
    in_flight: Option<JoinHandle<(Vec<CommitTarget>, bool)>>,
}

impl Commits {
    fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.in_flight.is_none()
    }

    /// The targets of the commit in flight and whether it succeeded; pending while none is.
    async fn finished(&mut self) -> (Vec<CommitTarget>, bool) {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return std::future::pending().await;
        };
        let result = in_flight.await;
        self.in_flight = None;
        // A commit task does not panic; if it was cancelled, its partitions are re-read.
        result.unwrap_or_default()
    }
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
        let topic: Arc<str> = Arc::from(self.config.kafka.audit_topic.as_str());
        let mut encoding = Encoding::default();
        let mut commits = Commits::default();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(uploaded) = done.recv() => self.finish_upload(&mut partitions, &mut commits, uploaded),
                (targets, ok) = commits.finished() => self.finish_commit(&mut partitions, &targets, ok),
                // Before `recv`: with a backlog, `recv` is always ready and would starve it.
                _ = ticker.tick() => {
                    let now = Instant::now();
                    for state in partitions.values_mut() {
                        if let Some(object) = state.writer.close_if_idle(now) {
                            state.queue.push_back(Arc::new(Pending::Data(object)));
                        }
                    }
                    self.forget_revoked(&mut partitions);
                    paused = self.apply_backpressure(&mut partitions, &encoding, paused);
                }
                prepared = encoding.oldest() => {
                    for record in prepared {
                        self.apply(&mut partitions, record, &policy);
                        accepted += 1;
                        // The buffer bound is enforced as records arrive, not only on ticks.
                        if accepted.is_multiple_of(128) {
                            paused = self.apply_backpressure(&mut partitions, &encoding, paused);
                        }
                    }
                }
                message = self.consumer.recv(), if encoding.batches.len() < ENCODING_BATCHES => match message {
                    Ok(first) => {
                        // Records being encoded count in the buffer: a batch takes no more than
                        // the room left, so the bound holds while they are on their way.
                        let room = self.config.buffer.max_records.saturating_sub(self.held(&partitions).records + encoding.records);
                        let batch = self.take_ready(first, room.clamp(1, ENCODE_BATCH));
                        encoding.start(batch, &topic);
                        paused = self.apply_backpressure(&mut partitions, &encoding, paused);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
            self.start_commit(&mut commits);
            self.start_uploads(&mut partitions, &done_sender, &uploads_cancel);
        }

        // Drain: apply what was received, close every open object, let the queues empty within
        // the time limit.
        while !encoding.batches.is_empty() {
            let prepared = encoding.oldest().await;
            for record in prepared {
                self.apply(&mut partitions, record, &policy);
            }
        }
        for state in partitions.values_mut() {
            if let Some(object) = state.writer.close() {
                state.queue.push_back(Arc::new(Pending::Data(object)));
            }
        }
        let deadline = Instant::now() + self.config.storage.drain_timeout;
        self.start_uploads(&mut partitions, &done_sender, &uploads_cancel);
        while !commits.is_idle()
            || partitions
                .values()
                .any(|state| state.uploading || !state.queue.is_empty())
        {
            let drained = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    Some(uploaded) = done.recv() => self.finish_upload(&mut partitions, &mut commits, uploaded),
                    (targets, ok) = commits.finished() => self.finish_commit(&mut partitions, &targets, ok),
                }
            })
            .await;
            if drained.is_err() {
                tracing::warn!("drain timeout: unstored records will be read again on restart");
                break;
            }
            self.start_commit(&mut commits);
            self.start_uploads(&mut partitions, &done_sender, &uploads_cancel);
        }
        uploads_cancel.cancel();
    }

    /// The message just received and those already waiting behind it, up to `limit`, copied
    /// out of the consumer so the encoders can take them. Each carries its partition's
    /// assignment generation as it is now; records of a partition not assigned are dropped.
    fn take_ready(&self, first: BorrowedMessage<'_>, limit: usize) -> Vec<Received> {
        let mut batch = Vec::with_capacity(limit);
        batch.extend(self.receive(&first));
        drop(first);
        while batch.len() < limit {
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.extend(self.receive(&message)),
                Some(Err(error)) => {
                    tracing::warn!(%error, "consume error");
                    break;
                }
                None => break,
            }
        }
        batch
    }

    fn receive(&self, message: &BorrowedMessage<'_>) -> Option<Received> {
        let generation = self.assignment.generation(message.partition())?;
        self.metrics.records_consumed.inc();
        Some(Received {
            generation,
            partition: message.partition(),
            offset: message.offset(),
            timestamp_millis: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers: message.headers().map(|headers| headers.detach()),
            arrival: Instant::now(),
        })
    }

    /// Applies a prepared record to its partition's open object, in the order received.
    fn apply(
        &self,
        partitions: &mut BTreeMap<i32, PartitionState>,
        record: Prepared,
        policy: &RotationPolicy,
    ) {
        let Prepared {
            generation,
            partition,
            offset,
            arrival,
            content,
        } = record;
        let state = partitions
            .entry(partition)
            .or_insert_with(|| PartitionState::new(partition, generation, policy));
        if state.generation < generation {
            // Revoked and assigned again: start over from the committed offset.
            *state = PartitionState::new(partition, generation, policy);
        } else if state.generation > generation {
            // Received before the partition was revoked; the new assignment reads it again.
            return;
        }
        match content {
            Ok(line) => {
                if let Some(object) = state.writer.push(line, arrival) {
                    state.queue.push_back(Arc::new(Pending::Data(object)));
                }
            }
            Err(undecodable) => {
                // Never a crash, never a stuck partition: close what is open (so order and
                // determinism hold), then store the bytes as they came.
                tracing::warn!(partition, offset, error = %undecodable.error, "undecodable audit record quarantined");
                if let Some(object) = state.writer.close() {
                    state.queue.push_back(Arc::new(Pending::Data(object)));
                }
                state
                    .queue
                    .push_back(Arc::new(Pending::Quarantine(QuarantinedRecord {
                        partition,
                        offset,
                        key: undecodable.key,
                        payload: undecodable.payload,
                        error: undecodable.error,
                        first_arrival: arrival,
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

    /// Takes note of a finished upload. The partition's next item waits for the commit of this
    /// one: a partition never has more than one item stored and not committed, which is what
    /// makes a restart overwrite rather than duplicate (see `object`).
    fn finish_upload(
        &self,
        partitions: &mut BTreeMap<i32, PartitionState>,
        commits: &mut Commits,
        uploaded: Uploaded,
    ) {
        let Some(state) = partitions.get_mut(&uploaded.partition) else {
            return;
        };
        if state.generation != uploaded.generation {
            return;
        }
        let Some(StoredSize {
            records,
            compressed,
            uncompressed,
        }) = uploaded.stored
        else {
            state.uploading = false;
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
        // Offsets only after the object is stored: a crash before the commit re-reads it.
        commits.waiting.insert(
            uploaded.partition,
            CommitTarget {
                partition: uploaded.partition,
                generation: uploaded.generation,
                end_offset: uploaded.end_offset,
            },
        );
    }

    /// Commits every waiting offset in one request, unless a commit is in flight.
    fn start_commit(&self, commits: &mut Commits) {
        if commits.in_flight.is_some() || commits.waiting.is_empty() {
            return;
        }
        let targets: Vec<CommitTarget> =
            std::mem::take(&mut commits.waiting).into_values().collect();
        let mut offsets = TopicPartitionList::new();
        for target in &targets {
            let _ = offsets.add_partition_offset(
                &self.config.kafka.audit_topic,
                target.partition,
                Offset::Offset(target.end_offset + 1),
            );
        }
        let consumer = Arc::clone(&self.consumer);
        commits.in_flight = Some(tokio::task::spawn_blocking(move || {
            let committed = consumer.commit(&offsets, CommitMode::Sync);
            if let Err(error) = &committed {
                tracing::warn!(
                    %error,
                    "offset commit failed; a later commit covers the objects, or they are stored again after a rebalance"
                );
            }
            (targets, committed.is_ok())
        }));
    }

    /// Counts what a commit covered and lets its partitions store their next item.
    fn finish_commit(
        &self,
        partitions: &mut BTreeMap<i32, PartitionState>,
        targets: &[CommitTarget],
        committed: bool,
    ) {
        if committed {
            self.metrics.commits.inc();
        }
        for target in targets {
            let Some(state) = partitions.get_mut(&target.partition) else {
                continue;
            };
            if state.generation != target.generation {
                continue;
            }
            state.uploading = false;
            if !committed {
                continue;
            }
            // This commit covers every earlier stored item of the partition too.
            let (covered, waiting): (Vec<StoredItem>, Vec<StoredItem>) = state
                .uncounted
                .drain(..)
                .partition(|stored| stored.end_offset <= target.end_offset);
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
    }

    fn forget_revoked(&self, partitions: &mut BTreeMap<i32, PartitionState>) {
        partitions.retain(|partition, state| {
            self.assignment.generation(*partition) == Some(state.generation)
        });
    }

    /// Closes the largest open objects until those left open hold at most half the buffer.
    /// Objects otherwise stay open until a rotation rule closes them, and with many partitions
    /// the open objects alone can fill the buffer (12 partitions × 20,000 records > 200,000):
    /// consumption would then pause with nothing to store until the idle rule fired. Closed
    /// here, they are stored now and the buffer drains. Safe for the same reason as the idle
    /// rule (see `object`).
    fn close_under_pressure(&self, partitions: &mut BTreeMap<i32, PartitionState>) {
        let limits = &self.config.buffer;
        let mut open: Vec<(usize, usize, i32)> = partitions
            .iter()
            .map(|(partition, state)| {
                let (records, bytes) = state.writer.open_size();
                (records, bytes, *partition)
            })
            .filter(|(records, _, _)| *records > 0)
            .collect();
        let (mut records, mut bytes) = open.iter().fold((0, 0), |(r, b), (records, bytes, _)| {
            (r + records, b + bytes)
        });
        open.sort_unstable_by(|a, b| b.cmp(a));
        for (object_records, object_bytes, partition) in open {
            if records * 2 <= limits.max_records && bytes * 2 <= limits.max_bytes {
                break;
            }
            if let Some(state) = partitions.get_mut(&partition)
                && let Some(object) = state.writer.close()
            {
                state.queue.push_back(Arc::new(Pending::Data(object)));
                self.metrics.pressure_closes.inc();
            }
            records -= object_records;
            bytes -= object_bytes;
        }
    }

    /// What the partitions hold: open objects and items waiting to be stored.
    fn held(&self, partitions: &BTreeMap<i32, PartitionState>) -> Held {
        let mut held = Held::default();
        for state in partitions.values() {
            let (open_records, open_bytes) = state.writer.open_size();
            held.records += open_records;
            held.bytes += open_bytes;
            let candidates = state
                .queue
                .iter()
                .map(|item| item.first_arrival())
                .chain(state.writer.first_arrival());
            for arrival in candidates {
                held.oldest = Some(held.oldest.map_or(arrival, |o: Instant| o.min(arrival)));
            }
            held.records += state.queue.iter().map(|item| item.records()).sum::<usize>();
            held.bytes += state.queue.iter().map(|item| item.bytes()).sum::<usize>();
        }
        held
    }

    /// Updates the buffer gauges and pauses or resumes consumption; returns the paused state.
    /// Records being encoded count in the buffer.
    fn apply_backpressure(
        &self,
        partitions: &mut BTreeMap<i32, PartitionState>,
        encoding: &Encoding,
        paused: bool,
    ) -> bool {
        let held = self.held(partitions);
        let (records, bytes, oldest) = (
            held.records + encoding.records,
            held.bytes + encoding.bytes,
            held.oldest,
        );
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
        if full {
            self.close_under_pressure(partitions);
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

/// Records taken from the consumer at once, at most: one batch is decoded and encoded on one
/// thread of the blocking pool.
const ENCODE_BATCH: usize = 1024;

/// Batches being encoded at once, at most. Several, so that every core encodes while the
/// pipeline task goes on receiving: with one task doing both, or waiting for each batch, the
/// service used about one of two cores in `make bench`.
const ENCODING_BATCHES: usize = 4;

/// A record copied out of the consumer, as the encoders take it.
struct Received {
    /// The partition's assignment generation when the record was received.
    generation: u64,
    partition: i32,
    offset: i64,
    timestamp_millis: Option<i64>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
    arrival: Instant,
}

/// A received record after decoding: its line, or what quarantines it.
#[derive(Debug)]
struct Prepared {
    generation: u64,
    partition: i32,
    offset: i64,
    arrival: Instant,
    content: Result<Line, Undecodable>,
}

/// A record that did not decode, as it came.
#[derive(Debug)]
struct Undecodable {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    error: String,
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
