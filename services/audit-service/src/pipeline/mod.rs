//! The running service: one task owns the partitions' open objects and upload queues; uploads
//! run concurrently across partitions, one at a time within a partition; each stored item
//! commits the offset after it. The task only receives and applies: the records waiting in the
//! consumer are copied out in batches, decoded and encoded as JSON lines on the blocking pool
//! (several batches at once, on all cores), and applied in the order they were received while
//! the task goes on receiving. The lines of a batch are encoded into a buffer per run of one
//! partition, and a run whose lines all go to the open object is handed to it without a copy.
//!
//! ```text
//! relais.audit ─▶ batch ─▶ decode + encode ─┬─▶ PartitionWriter (open object) ─▶ queue ─▶ Store::write ─▶ commit
//!                 (in order) (blocking pool) └─▶ (undecodable) quarantine item ──▶ queue ┘  (one in flight per partition)
//! ```
//!
//! - [`assignment`]: generations per assigned partition, and the fence that stops a revoked
//!   partition's upload before the partition moves;
//! - [`prepare`]: decoding and encoding off the task;
//! - [`partition`]: one partition's queue and the one-item-in-flight rule;
//! - `storing`: uploads and the commits after them, as the loop starts and finishes them;
//! - [`commits`]: offset commits off the task, retried after a failure;
//! - [`backpressure`]: when consumption pauses, and which open objects close early;
//! - [`health`]: readiness while objects cannot be stored or offsets cannot be committed.

pub mod assignment;
pub mod backpressure;
pub mod commits;
pub mod health;
pub mod partition;
mod prepare;
mod storing;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::BorrowedMessage;
use relais_telemetry::admin::ReadinessCheck;
use relais_telemetry::shutdown::CancellationToken;
use relais_telemetry::tasks::sleep_until;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::AuditConfig;
use crate::index::Index;
use crate::metrics::AuditMetrics;
use crate::object::{ChunkPool, Pending, QuarantinedRecord, RotationPolicy};
use crate::store::Store;

pub use self::assignment::{Assignment, AuditConsumer, AuditContext};
use self::backpressure::{Flow, Load, OpenObject};
pub use self::commits::CommitFaults;
use self::commits::{Backoff, Commits};
use self::health::Verdict;
use self::partition::PartitionState;
use self::prepare::{
    ENCODE_BATCH, ENCODING_BATCHES, Encoded, Encoding, Prepared, PreparedRun, ReceivedBatch,
};
use self::storing::Uploaded;

/// What the pipeline needs from the rest of the service.
pub struct Pipeline {
    pub consumer: Arc<AuditConsumer>,
    pub assignment: Arc<Assignment>,
    pub store: Arc<Store>,
    pub config: AuditConfig,
    pub metrics: AuditMetrics,
    pub index: Arc<Index>,
    pub commit_faults: Arc<CommitFaults>,
    /// Turned false while objects cannot be stored.
    pub store_ready: ReadinessCheck,
    /// Turned false while offsets cannot be committed.
    pub commits_ready: ReadinessCheck,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Runs until `shutdown`, then writes what it holds (within the drain timeout) and commits
    /// what was stored. Dropped before that (a crash, in tests), its uploads stop with it.
    pub async fn run(self, shutdown: CancellationToken) {
        let (done_sender, done) = mpsc::channel::<Uploaded>(256);
        let uploads_cancel = CancellationToken::new();
        let _stop_uploads = uploads_cancel.clone().drop_guard();
        let mut running = Loop {
            store_verdict: Verdict::new(self.store_ready.clone()),
            commit_verdict: Verdict::new(self.commits_ready.clone()),
            policy: RotationPolicy {
                max_records: self.config.objects.max_records,
                max_bytes: self.config.objects.max_bytes,
                idle: self.config.objects.idle,
            },
            topic: Arc::from(self.config.kafka.audit_topic.as_str()),
            // Chunks kept are chunks that held buffered records: the buffer's bound is theirs.
            chunks: Arc::new(ChunkPool::new(self.config.buffer.max_bytes)),
            commit_backoff: Backoff {
                base: self.config.storage.base_backoff,
                max: self.config.storage.max_backoff,
            },
            pipeline: self,
            partitions: BTreeMap::new(),
            encoding: Encoding::default(),
            commits: Commits::default(),
            paused: false,
            done_sender,
            done,
            uploads_cancel,
        };
        running.receive_until(&shutdown).await;
        running.drain().await;
    }
}

/// The pipeline loop's state; one task owns it.
struct Loop {
    pipeline: Pipeline,
    policy: RotationPolicy,
    topic: Arc<str>,
    /// Full-size chunks of stored objects, for the objects that follow.
    chunks: Arc<ChunkPool>,
    commit_backoff: Backoff,
    partitions: BTreeMap<i32, PartitionState>,
    encoding: Encoding,
    commits: Commits,
    paused: bool,
    done_sender: mpsc::Sender<Uploaded>,
    done: mpsc::Receiver<Uploaded>,
    /// The parent of every upload's cancellation: fires when the loop ends.
    uploads_cancel: CancellationToken,
    store_verdict: Verdict,
    commit_verdict: Verdict,
}

impl Loop {
    async fn receive_until(&mut self, shutdown: &CancellationToken) {
        let mut accepted: u64 = 0;
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        loop {
            let next_idle_close = self.next_idle_close();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(uploaded) = self.done.recv() => self.finish_upload(uploaded),
                (targets, ok) = self.commits.finished() => self.finish_commit(&targets, ok),
                // Both timers before `recv`: with a backlog, `recv` is always ready and would
                // starve them.
                _ = sleep_until(next_idle_close), if next_idle_close.is_some() => self.close_idle_objects(),
                _ = ticker.tick() => {
                    self.chunks.release_if_unused();
                    self.forget_revoked();
                    self.apply_backpressure();
                    self.update_readiness();
                }
                prepared = self.encoding.oldest() => {
                    for run in prepared.runs {
                        let before = accepted;
                        accepted += self.apply_run(run) as u64;
                        // The buffer bound is enforced as records arrive, not only on ticks.
                        if accepted / 128 != before / 128 {
                            self.apply_backpressure();
                        }
                    }
                }
                message = self.pipeline.consumer.recv(), if self.encoding.len() < ENCODING_BATCHES => match message {
                    Ok(first) => {
                        // Records being encoded count in the buffer: a batch takes no more than
                        // the room left, so the bound holds while they are on their way.
                        let room = self.pipeline.config.buffer.max_records.saturating_sub(self.load().0.records);
                        let batch = self.take_ready(first, room.clamp(1, ENCODE_BATCH));
                        self.encoding.start(batch, &self.topic, &self.chunks);
                        self.apply_backpressure();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
            self.start_commit();
            self.start_uploads();
        }
    }

    /// Applies what was received, closes every open object, and lets the queues empty within
    /// the drain timeout; what is left is read again after a restart.
    async fn drain(&mut self) {
        while !self.encoding.is_empty() {
            for run in self.encoding.oldest().await.runs {
                self.apply_run(run);
            }
        }
        for state in self.partitions.values_mut() {
            state.close_open_object();
        }
        let deadline = Instant::now() + self.pipeline.config.storage.drain_timeout;
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        self.start_uploads();
        while !self.commits.is_idle() || self.partitions.values().any(PartitionState::is_busy) {
            let drained = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    Some(uploaded) = self.done.recv() => self.finish_upload(uploaded),
                    (targets, ok) = self.commits.finished() => self.finish_commit(&targets, ok),
                    // A failed commit is tried again after its backoff.
                    _ = ticker.tick() => {}
                }
            })
            .await;
            if drained.is_err() {
                tracing::warn!("drain timeout: unstored records will be read again on restart");
                break;
            }
            self.forget_revoked();
            self.start_commit();
            self.start_uploads();
        }
        self.uploads_cancel.cancel();
    }

    /// The message just received and those already waiting behind it, up to `limit`, copied
    /// out of the consumer so the encoders can take them. Each carries its partition's
    /// assignment generation as it is now; records of a partition not assigned are dropped.
    fn take_ready(&self, first: BorrowedMessage<'_>, limit: usize) -> ReceivedBatch {
        let first_size = first.payload_len() + first.key_len();
        let mut batch =
            ReceivedBatch::with_capacity(limit, prepare::batch_reserve(first_size, limit));
        self.receive(&first, &mut batch);
        drop(first);
        // One stream for the whole batch: each `recv` registers and unregisters a waker.
        let mut waiting = self.pipeline.consumer.stream();
        while batch.len() < limit {
            match waiting.next().now_or_never().flatten() {
                Some(Ok(message)) => self.receive(&message, &mut batch),
                Some(Err(error)) => {
                    tracing::warn!(%error, "consume error");
                    break;
                }
                None => break,
            }
        }
        batch
    }

    fn receive(&self, message: &BorrowedMessage<'_>, batch: &mut ReceivedBatch) {
        let Some(generation) = self.pipeline.assignment.generation(message.partition()) else {
            return;
        };
        self.pipeline.metrics.records_consumed.inc();
        batch.push(message, generation);
    }

    /// Applies a run of one partition's records in the order received; returns how many. When
    /// every line of the run goes to the partition's open object, the run's buffer becomes part
    /// of the object as it is; otherwise each line is copied in turn. Both give the same
    /// objects (`PartitionWriter::takes_whole`).
    fn apply_run(&mut self, run: PreparedRun) -> usize {
        let PreparedRun { json, records } = run;
        let count = records.len();
        if let Some(state) = self.whole_run_state(&records, json.len()) {
            // The records of a batch arrived together.
            let arrival = records[0].arrival;
            let lines = records
                .into_iter()
                .filter_map(|record| Some(record.content.ok()?.line));
            state.writer.push_whole(lines, json, arrival);
            return count;
        }
        for record in records {
            self.apply(record, &json);
        }
        self.chunks.give(json);
        count
    }

    /// The state of the partition a run goes to whole, if it does: every record decoded, all
    /// of the partition's current assignment generation, and every line fitting its open
    /// object.
    fn whole_run_state(
        &mut self,
        records: &[Prepared],
        bytes: usize,
    ) -> Option<&mut PartitionState> {
        let first = records.first()?;
        let (partition, generation) = (first.partition, first.generation);
        let uniform = records
            .iter()
            .all(|record| record.generation == generation && record.content.is_ok());
        let state = self.partitions.get_mut(&partition)?;
        if !uniform || state.generation != generation {
            return None;
        }
        let positions = records.iter().filter_map(|record| {
            let line = &record.content.as_ref().ok()?.line;
            Some((line.offset, line.time))
        });
        state
            .writer
            .takes_whole(positions, records.len(), bytes)
            .then_some(state)
    }

    /// Applies a prepared record to its partition's open object, in the order received.
    fn apply(&mut self, record: Prepared, json: &[u8]) {
        let Prepared {
            generation,
            partition,
            offset,
            arrival,
            content,
        } = record;
        let (policy, chunks) = (&self.policy, &self.chunks);
        let state = self
            .partitions
            .entry(partition)
            .or_insert_with(|| PartitionState::new(partition, generation, policy, chunks));
        if state.generation < generation {
            // Revoked and assigned again: start over from the committed offset.
            *state = PartitionState::new(partition, generation, policy, chunks);
        } else if state.generation > generation {
            // Received before the partition was revoked; the new assignment reads it again.
            return;
        }
        match content {
            Ok(Encoded { line, json: range }) => {
                if let Some(object) = state.writer.push(line, &json[range], arrival) {
                    state.enqueue(Pending::Data(object));
                }
            }
            Err(undecodable) => {
                // Never a crash, never a stuck partition: close what is open (so order and
                // determinism hold), then store the bytes as they came.
                tracing::warn!(partition, offset, error = %undecodable.error, "undecodable audit record quarantined");
                state.close_open_object();
                state.enqueue(Pending::Quarantine(QuarantinedRecord {
                    partition,
                    offset,
                    key: undecodable.key,
                    payload: undecodable.payload,
                    error: undecodable.error,
                    first_arrival: arrival,
                }));
            }
        }
    }

    fn update_readiness(&mut self) {
        let put_timeout = self.pipeline.config.storage.put_timeout;
        self.store_verdict.update(health::store_problem(
            self.pipeline.store.failing(),
            put_timeout,
        ));
        self.commit_verdict
            .update(health::commit_problem(self.commits.failures()));
    }

    /// When the first open object reaches its idle time, if any is open.
    fn next_idle_close(&self) -> Option<Instant> {
        self.partitions
            .values()
            .filter_map(|state| state.writer.idle_deadline())
            .min()
    }

    fn close_idle_objects(&mut self) {
        let now = Instant::now();
        for state in self.partitions.values_mut() {
            if let Some(object) = state.writer.close_if_idle(now) {
                state.enqueue(Pending::Data(object));
            }
        }
    }

    fn forget_revoked(&mut self) {
        let assignment = &self.pipeline.assignment;
        self.partitions
            .retain(|partition, state| assignment.generation(*partition) == Some(state.generation));
    }

    /// What the buffer holds (the partitions' open objects and queues, and the records being
    /// encoded), and when its oldest record arrived.
    fn load(&self) -> (Load, Option<Instant>) {
        let mut load = Load {
            records: self.encoding.records,
            bytes: self.encoding.bytes,
        };
        let mut oldest: Option<Instant> = None;
        for held in self.partitions.values().map(PartitionState::held) {
            load.records += held.records;
            load.bytes += held.bytes;
            oldest = match (oldest, held.oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        (load, oldest)
    }

    /// Updates the buffer gauges and pauses or resumes consumption (see `backpressure`).
    fn apply_backpressure(&mut self) {
        let (load, oldest) = self.load();
        let metrics = &self.pipeline.metrics;
        metrics.buffer_records.set(load.records as i64);
        metrics.buffer_bytes.set(load.bytes as i64);
        metrics
            .oldest_unflushed_age
            .set(oldest.map_or(0.0, |o| o.elapsed().as_secs_f64()));
        let limits = &self.pipeline.config.buffer;
        let flow = backpressure::flow(load, limits, self.paused);
        if flow == Flow::Run {
            // The common case, checked every 128 records: nothing to change. Asking librdkafka
            // for the assignment is a round trip to its main thread, and doing it on every
            // check kept the pipeline loop waiting (2M records: 218k -> 240-250k records/s).
            return;
        }
        if load.is_full(limits) {
            self.close_under_pressure();
        }
        let (consumer, metrics) = (&self.pipeline.consumer, &self.pipeline.metrics);
        let Ok(assignment) = consumer.assignment() else {
            return;
        };
        match flow {
            Flow::Run => {}
            Flow::Pause => {
                tracing::warn!(
                    records = load.records,
                    bytes = load.bytes,
                    "buffer full: pausing consumption"
                );
                let _ = consumer.pause(&assignment);
                metrics.paused.set(1);
                self.paused = true;
            }
            Flow::Resume => {
                tracing::info!(
                    records = load.records,
                    bytes = load.bytes,
                    "buffer relieved: resuming consumption"
                );
                let _ = consumer.resume(&assignment);
                metrics.paused.set(0);
                self.paused = false;
            }
            // Partitions assigned since the pause start unpaused: pause them too.
            Flow::StayPaused => {
                let _ = consumer.pause(&assignment);
            }
        }
    }

    fn close_under_pressure(&mut self) {
        let open: Vec<OpenObject> = self
            .partitions
            .iter()
            .map(|(&partition, state)| {
                let (records, bytes) = state.writer.open_size();
                OpenObject {
                    partition,
                    records,
                    bytes,
                }
            })
            .collect();
        for partition in backpressure::objects_to_close(&open, &self.pipeline.config.buffer) {
            if let Some(state) = self.partitions.get_mut(&partition)
                && state.close_open_object()
            {
                self.pipeline.metrics.pressure_closes.inc();
            }
        }
    }
}
