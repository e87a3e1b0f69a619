//! The running pipeline: consumer → dispatcher (normalise, route) → per-upstream scheduler →
//! deliveries → tracker → committer.
//!
//! ```text
//!  relais.ingress ─▶ dispatcher ─▶ queue[upstream] ─▶ delivery tasks ─▶ OffsetTracker ─▶ Committer
//!                     │ prepare      (key order,       (≤ max_in_flight   (contiguous)   (one txn:
//!                     │ (Processor)   max_queued)        per upstream)                   records+offsets)
//!                     └ hold, then pause the partition, while the upstream's queue is full
//! ```
//!
//! Each upstream has its own queue and in-flight limit ([`crate::schedule`]): a message waiting
//! on its upstream occupies only that upstream's capacity. Per-key order holds per upstream;
//! distinct keys never wait for each other.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, TopicPartitionList};
use relais_telemetry::admin::ReadinessCheck;
use relais_telemetry::shutdown::CancellationToken;
use tokio::sync::mpsc;

use crate::committer::{CommitError, Committer, Tracker};
use crate::metrics::WorkerMetrics;
use crate::process::{Prepared, Processor};
use crate::records::Inbound;
use crate::schedule::{Done, Scheduler};
use crate::tracker::Finished;

/// Keeps the tracker in step with the group's assignment.
#[derive(Debug)]
pub struct WorkerContext {
    pub tracker: Arc<Tracker>,
    pub metrics: WorkerMetrics,
}

impl ClientContext for WorkerContext {}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            for element in partitions.elements() {
                let dropped = self.tracker.revoke(element.partition());
                tracing::info!(
                    partition = element.partition(),
                    uncommitted = dropped,
                    "partition revoked"
                );
            }
            self.metrics
                .assigned_partitions
                .set(self.tracker.partitions().len() as i64);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                for element in partitions.elements() {
                    self.tracker.assign(element.partition());
                    tracing::info!(partition = element.partition(), "partition assigned");
                }
                self.metrics
                    .assigned_partitions
                    .set(self.tracker.partitions().len() as i64);
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

pub type WorkerConsumer = StreamConsumer<WorkerContext>;

/// Partitions currently paused for backpressure (shared with the status report).
pub type PausedPartitions = Arc<Mutex<BTreeSet<i32>>>;

/// How many read messages may wait for their commit, per partition and in all. While commits
/// fail (the transaction coordinator away) nothing is committed, so without this bound the
/// worker would read on until its memory ran out.
#[derive(Debug, Clone, Copy)]
pub struct UncommittedLimits {
    pub per_partition: usize,
    pub total: usize,
}

/// Messages a partition holds (its upstream's queue full) before it is paused.
const HELD_BEFORE_PAUSE: usize = 256;

/// Reads the ingress topic and feeds the scheduler until shutdown.
///
/// Backpressure is per partition: when a message finds its upstream's queue full, it is held,
/// in order with the later messages of its partition, while the other partitions keep flowing.
/// Held messages are offered again whenever a delivery ends, and every few milliseconds. Only
/// when a partition holds more than [`HELD_BEFORE_PAUSE`] messages is it paused (librdkafka drops a
/// paused partition's prefetched messages and must fetch them again, so pausing at the first
/// full queue would cost more than it saves); it resumes once its hold is empty. A message over
/// the [`UncommittedLimits`] is held too and pauses its partition at once: that wait lasts as
/// long as the commits fail. The consumer keeps polling throughout, so the group never mistakes
/// a long pause (an upstream outage) for a dead replica.
pub async fn dispatch(
    mut dispatcher: Dispatcher,
    mut reports: mpsc::Receiver<Done>,
    shutdown: CancellationToken,
) {
    let mut retry = tokio::time::interval(Duration::from_millis(5));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            Some(done) = reports.recv() => {
                dispatcher.scheduler.finished(done);
                if !dispatcher.held.is_empty() {
                    dispatcher.drain_held().await;
                }
                dispatcher.report_depth();
            }
            _ = retry.tick(), if !dispatcher.held.is_empty() => dispatcher.drain_held().await,
            message = dispatcher.consumer.recv() => match message {
                Ok(message) => {
                    if let Some(inbound) = detach(&message, &dispatcher.tracker) {
                        drop(message);
                        dispatcher.offer(inbound).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "consume error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// What [`dispatch`] works with.
pub struct Dispatcher {
    consumer: Arc<WorkerConsumer>,
    processor: Arc<Processor>,
    scheduler: Scheduler,
    tracker: Arc<Tracker>,
    metrics: WorkerMetrics,
    paused: PausedPartitions,
    /// Messages waiting for room in their upstream's queue, per partition, in offset order.
    held: BTreeMap<i32, VecDeque<Prepared>>,
    /// Held messages of one partition beyond which the partition is paused.
    hold_limit: usize,
    limits: UncommittedLimits,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("held", &self.held_total())
            .field("queued", &self.scheduler.queued())
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub fn new(
        consumer: Arc<WorkerConsumer>,
        processor: Arc<Processor>,
        scheduler: Scheduler,
        tracker: Arc<Tracker>,
        metrics: WorkerMetrics,
        paused: PausedPartitions,
        limits: UncommittedLimits,
    ) -> Self {
        Self {
            consumer,
            processor,
            scheduler,
            tracker,
            metrics,
            paused,
            held: BTreeMap::new(),
            hold_limit: HELD_BEFORE_PAUSE,
            limits,
        }
    }

    /// Prepares a freshly read message and hands it on, or holds it.
    async fn offer(&mut self, inbound: Inbound) {
        if !self
            .tracker
            .dispatched(inbound.partition, inbound.generation, inbound.offset)
        {
            return;
        }
        let partition = inbound.partition;
        let over_limit = self.over_uncommitted_limit(partition);
        let prepared = self.processor.prepare(inbound);
        let behind_held = self.held.contains_key(&partition);
        if behind_held || over_limit || !self.has_room(&prepared) {
            // Behind earlier held messages of its partition, order first.
            self.held.entry(partition).or_default().push_back(prepared);
        } else {
            self.hand_on(prepared).await;
        }
        if let Some(queue) = self.held.get(&partition)
            && (over_limit || queue.len() > self.hold_limit)
            && let Some(topic) = queue.front().map(|front| front.inbound.topic.clone())
        {
            self.pause(&topic, partition);
        }
        self.report_depth();
    }

    fn report_depth(&self) {
        self.metrics
            .queue_depth
            .set((self.scheduler.queued() + self.held_total()) as i64);
    }

    fn has_room(&self, prepared: &Prepared) -> bool {
        prepared
            .upstream()
            .is_none_or(|upstream| self.scheduler.has_room(upstream))
    }

    /// A routed message goes to its upstream's queue; one decided already (rejected input) is
    /// finished here, which takes no waiting.
    async fn hand_on(&mut self, prepared: Prepared) {
        if prepared.upstream().is_some() {
            self.scheduler.submit(prepared);
            return;
        }
        let (partition, generation, offset) = (
            prepared.inbound.partition,
            prepared.inbound.generation,
            prepared.inbound.offset,
        );
        if let Some(output) = self.processor.finish(prepared).await {
            self.tracker
                .finished(partition, generation, Finished { offset, output });
        }
    }

    /// True when a freshly read message of `partition` (registered with the tracker already)
    /// would take its partition, or the worker, over its uncommitted limit.
    fn over_uncommitted_limit(&self, partition: i32) -> bool {
        let held_here = self.held.get(&partition).map_or(0, VecDeque::len);
        let (here, total) = self.tracker.uncommitted_counts(partition);
        over_uncommitted(
            self.limits,
            here.saturating_sub(held_here),
            total.saturating_sub(self.held_total()),
        )
    }

    fn held_total(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }

    /// Hands held messages on where their upstreams have room; resumes partitions whose hold
    /// emptied.
    async fn drain_held(&mut self) {
        let mut held_total = self.held_total();
        let partitions: Vec<i32> = self.held.keys().copied().collect();
        for partition in partitions {
            while let Some(front) = self.held.get(&partition).and_then(VecDeque::front) {
                let queued_here = self.held.get(&partition).map_or(0, VecDeque::len);
                if self.tracker.generation(partition) != Some(front.inbound.generation) {
                    // Revoked while held: the new owner reads it again.
                    held_total -= queued_here;
                    self.held.remove(&partition);
                    break;
                }
                // Held messages are registered with the tracker already: what counts is the
                // work beyond the holds, plus the message at the front.
                let (here, total) = self.tracker.uncommitted_counts(partition);
                if over_uncommitted(
                    self.limits,
                    here.saturating_sub(queued_here - 1),
                    total.saturating_sub(held_total.saturating_sub(1)),
                ) || !self.has_room(front)
                {
                    break;
                }
                let Some(prepared) = self.held.get_mut(&partition).and_then(VecDeque::pop_front)
                else {
                    break;
                };
                held_total -= 1;
                self.hand_on(prepared).await;
            }
            if self.held.get(&partition).is_some_and(VecDeque::is_empty) {
                self.held.remove(&partition);
            }
            let was_paused = !self.held.contains_key(&partition)
                && self
                    .paused
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(&partition);
            if was_paused {
                self.resume(partition);
            }
        }
        self.report_depth();
    }

    fn pause(&self, topic: &str, partition: i32) {
        if self
            .paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&partition)
        {
            return;
        }
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        if let Err(error) = self.consumer.pause(&list) {
            tracing::warn!(%error, partition, "cannot pause partition");
        }
        let count = {
            let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
            paused.insert(partition);
            paused.len()
        };
        self.metrics.pauses.inc();
        self.metrics.paused_partitions.set(count as i64);
        tracing::debug!(partition, "partition paused: its upstream's queue is full");
    }

    fn resume(&self, partition: i32) {
        let count = {
            let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
            paused.remove(&partition);
            paused.len()
        };
        self.metrics.paused_partitions.set(count as i64);
        if let Ok(assignment) = self.consumer.assignment() {
            let mut list = TopicPartitionList::new();
            for element in assignment
                .elements()
                .iter()
                .filter(|e| e.partition() == partition)
            {
                list.add_partition(element.topic(), partition);
            }
            if list.count() > 0
                && let Err(error) = self.consumer.resume(&list)
            {
                tracing::warn!(%error, partition, "cannot resume partition");
            }
        }
        tracing::debug!(partition, "partition resumed");
    }
}

/// The uncommitted-work bound: `partition` and `total` count the messages read and not yet
/// committed, the message in question included, the ones held behind it not.
fn over_uncommitted(limits: UncommittedLimits, partition: usize, total: usize) -> bool {
    partition > limits.per_partition || total > limits.total
}

/// Copies what the pipeline needs out of the consumer's buffer.
fn detach(message: &BorrowedMessage<'_>, tracker: &Tracker) -> Option<Inbound> {
    let generation = tracker.generation(message.partition())?;
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let timestamp = message
        .timestamp()
        .to_millis()
        .and_then(|millis| u64::try_from(millis).ok())
        .map(|millis| SystemTime::UNIX_EPOCH + Duration::from_millis(millis));
    Some(Inbound {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        generation,
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
        timestamp,
        received_at: SystemTime::now(),
    })
}

/// Commit rounds that fail in a row before the worker reports itself not ready.
const FAILED_ROUNDS_BEFORE_NOT_READY: u32 = 3;

/// Commits every `interval` until shutdown, then once more for what the deliveries finished
/// while draining. Readiness turns false while commits keep failing, and true again with the next
/// committed round. A fatal producer error, or a commit left unsettled at shutdown, ends the
/// loop (and the worker).
pub async fn commit_loop(
    committer: Committer,
    interval: Duration,
    readiness: ReadinessCheck,
    deliveries_done: CancellationToken,
) -> Result<(), CommitError> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::from_millis(100);
    let mut failed_rounds = 0u32;
    loop {
        let last_round = tokio::select! {
            _ = ticker.tick() => false,
            _ = deliveries_done.cancelled() => true,
        };
        match committer.commit_ready().await {
            Ok(_) => {
                backoff = Duration::from_millis(100);
                if failed_rounds >= FAILED_ROUNDS_BEFORE_NOT_READY {
                    tracing::info!(failed_rounds, "commits succeed again");
                }
                failed_rounds = 0;
                readiness.set_ready();
            }
            Err(error) if error.ends_the_worker() => {
                readiness.set_not_ready(error.to_string());
                return Err(error);
            }
            Err(error) => {
                failed_rounds += 1;
                let cause = std::error::Error::source(&error)
                    .map(ToString::to_string)
                    .unwrap_or_default();
                tracing::warn!(%error, %cause, failed_rounds, "commit round failed; retrying");
                if failed_rounds >= FAILED_ROUNDS_BEFORE_NOT_READY {
                    readiness.set_not_ready(format!("cannot commit: {error}: {cause}"));
                }
                committer
                    .metrics
                    .uncommitted
                    .set(committer.tracker.in_flight() as i64);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if last_round {
                    // One retry for the final round, then give up: what is not committed is
                    // read again by whoever owns the partition next.
                    if let Err(error) = committer.commit_ready().await {
                        tracing::warn!(error = %error, "final commit failed; uncommitted messages will be redelivered");
                        if error.ends_the_worker() {
                            return Err(error);
                        }
                    }
                    return Ok(());
                }
                continue;
            }
        }
        committer
            .metrics
            .uncommitted
            .set(committer.tracker.in_flight() as i64);
        if last_round {
            return Ok(());
        }
    }
}
