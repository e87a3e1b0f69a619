//! The running pipeline: consumer → dispatcher → keyed lanes → processor → tracker →
//! committer.
//!
//! ```text
//!  relais.ingress ─▶ dispatcher ─▶ lane[hash(key) % N] ─▶ Processor ─▶ OffsetTracker ─▶ Committer
//!                     │ pause when a lane is full                          (contiguous)   (one txn:
//!                     └ resume when it drains                                               records+offsets)
//! ```
//!
//! Per-key order: messages with the same key share a lane and a lane delivers one at a time,
//! so events of one entity reach the upstream in partition order. Different keys run
//! concurrently across lanes; a slow key delays only the keys that hash to its lane.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
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
use crate::process::Processor;
use crate::records::Inbound;
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

/// The lanes' senders with their capacity, for dispatch and queue-depth reporting.
pub struct Lanes {
    senders: Vec<mpsc::Sender<Inbound>>,
    capacity: usize,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes")
            .field("lanes", &self.senders.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Lanes {
    /// Messages waiting in all lanes.
    pub fn depth(&self) -> usize {
        self.senders
            .iter()
            .map(|sender| self.capacity - sender.capacity())
            .sum()
    }

    fn lane_of(&self, inbound: &Inbound) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match &inbound.key {
            Some(key) => key.hash(&mut hasher),
            // Keyless messages promise no order (as in Kafka itself): spread them over all lanes.
            None => (inbound.partition, inbound.offset).hash(&mut hasher),
        }
        (hasher.finish() % self.senders.len() as u64) as usize
    }
}

/// Starts `count` lanes, each delivering its messages one at a time. Lanes stop taking new
/// messages once shutdown begins; the one in hand finishes (or is abandoned if it waits on an
/// open circuit), so the drain is bounded.
pub fn start_lanes(
    count: usize,
    capacity: usize,
    processor: Arc<Processor>,
    tracker: Arc<Tracker>,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> Lanes {
    let mut senders = Vec::with_capacity(count);
    for _ in 0..count {
        let (sender, mut receiver) = mpsc::channel::<Inbound>(capacity);
        let processor = Arc::clone(&processor);
        let tracker = Arc::clone(&tracker);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                let inbound = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    next = receiver.recv() => match next {
                        Some(inbound) => inbound,
                        None => break,
                    },
                };
                let (partition, generation, offset) =
                    (inbound.partition, inbound.generation, inbound.offset);
                if tracker.generation(partition) != Some(generation) {
                    // Revoked while it waited: the new owner decides it.
                    continue;
                }
                if let Some(output) = processor.process(inbound).await {
                    tracker.finished(partition, generation, Finished { offset, output });
                }
            }
        });
        senders.push(sender);
    }
    Lanes { senders, capacity }
}

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

/// Reads the ingress topic and feeds the lanes until shutdown.
///
/// Backpressure is per partition: when a message finds its lane full, it is held, in order with
/// the later messages of its partition, while the other partitions keep flowing. Held messages
/// are retried every few milliseconds. Only when a partition holds more than `hold_limit`
/// messages is it paused (librdkafka drops a paused partition's prefetched messages and must
/// fetch them again, so pausing at the first full lane would cost more than it saves); it
/// resumes once its hold is empty. A message over the [`UncommittedLimits`] is held too and
/// pauses its partition at once: that wait lasts as long as the commits fail. The consumer
/// keeps polling throughout, so the group never mistakes a long pause (an upstream outage)
/// for a dead replica.
pub async fn dispatch(
    consumer: Arc<WorkerConsumer>,
    lanes: Lanes,
    tracker: Arc<Tracker>,
    metrics: WorkerMetrics,
    paused: PausedPartitions,
    limits: UncommittedLimits,
    shutdown: CancellationToken,
) {
    let hold_limit = lanes.capacity * 8;
    let mut dispatcher = Dispatcher {
        consumer,
        lanes,
        tracker,
        metrics,
        paused,
        held: BTreeMap::new(),
        hold_limit,
        limits,
    };
    let mut retry = tokio::time::interval(Duration::from_millis(5));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = retry.tick(), if !dispatcher.held.is_empty() => {
                if !dispatcher.drain_held() {
                    return;
                }
            }
            message = dispatcher.consumer.recv() => match message {
                Ok(message) => {
                    if let Some(inbound) = detach(&message, &dispatcher.tracker) {
                        drop(message);
                        if !dispatcher.offer(inbound) {
                            return;
                        }
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

struct Dispatcher {
    consumer: Arc<WorkerConsumer>,
    lanes: Lanes,
    tracker: Arc<Tracker>,
    metrics: WorkerMetrics,
    paused: PausedPartitions,
    /// Messages waiting for room in their lanes, per partition, in offset order.
    held: BTreeMap<i32, VecDeque<Inbound>>,
    /// Held messages of one partition beyond which the partition is paused.
    hold_limit: usize,
    limits: UncommittedLimits,
}

impl Dispatcher {
    /// Hands a freshly read message to its lane, or holds it. False when the lanes are gone.
    fn offer(&mut self, inbound: Inbound) -> bool {
        if !self
            .tracker
            .dispatched(inbound.partition, inbound.generation, inbound.offset)
        {
            return true;
        }
        let partition = inbound.partition;
        let over_limit = self.over_uncommitted_limit(partition);
        let inbound = match self.held.get_mut(&partition) {
            // Behind earlier held messages of its partition: order first.
            Some(queue) => {
                queue.push_back(inbound);
                None
            }
            None if over_limit => Some(inbound),
            None => {
                let lane = &self.lanes.senders[self.lanes.lane_of(&inbound)];
                match lane.try_send(inbound) {
                    Ok(()) => None,
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                    Err(mpsc::error::TrySendError::Full(inbound)) => Some(inbound),
                }
            }
        };
        if let Some(inbound) = inbound {
            self.held.entry(partition).or_default().push_back(inbound);
        }
        if let Some(queue) = self.held.get(&partition)
            && (over_limit || queue.len() > self.hold_limit)
            && let Some(topic) = queue.front().map(|front| front.topic.clone())
        {
            self.pause(&topic, partition);
        }
        self.metrics.queue_depth.set(self.lanes.depth() as i64);
        true
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

    /// Moves held messages into lanes with room; resumes partitions whose hold emptied.
    fn drain_held(&mut self) -> bool {
        let mut emptied = Vec::new();
        let mut held_total = self.held_total();
        for (partition, queue) in &mut self.held {
            while let Some(front) = queue.front() {
                if self.tracker.generation(*partition) != Some(front.generation) {
                    // Revoked while held: the new owner reads it again.
                    held_total -= queue.len();
                    queue.clear();
                    break;
                }
                // Held messages are registered with the tracker already: what counts is the
                // work beyond the holds, plus the message at the front.
                let (here, total) = self.tracker.uncommitted_counts(*partition);
                if over_uncommitted(
                    self.limits,
                    here.saturating_sub(queue.len() - 1),
                    total.saturating_sub(held_total.saturating_sub(1)),
                ) {
                    break;
                }
                let lane = &self.lanes.senders[self.lanes.lane_of(front)];
                match lane.try_reserve() {
                    Ok(permit) => {
                        if let Some(inbound) = queue.pop_front() {
                            permit.send(inbound);
                            held_total -= 1;
                        }
                    }
                    Err(mpsc::error::TrySendError::Full(())) => break,
                    Err(mpsc::error::TrySendError::Closed(())) => return false,
                }
            }
            if queue.is_empty() {
                emptied.push(*partition);
            }
        }
        for partition in emptied {
            self.held.remove(&partition);
            let was_paused = self
                .paused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&partition);
            if was_paused {
                self.resume(partition);
            }
        }
        self.metrics.queue_depth.set(self.lanes.depth() as i64);
        true
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
        tracing::debug!(partition, "partition paused: its lanes are full");
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

/// Commits every `interval` until shutdown, then once more for what the lanes finished while
/// draining. Readiness turns false while commits keep failing, and true again with the next
/// committed round. A fatal producer error, or a commit left unsettled at shutdown, ends the
/// loop (and the worker).
pub async fn commit_loop(
    committer: Committer,
    interval: Duration,
    readiness: ReadinessCheck,
    lanes_done: CancellationToken,
) -> Result<(), CommitError> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::from_millis(100);
    let mut failed_rounds = 0u32;
    loop {
        let last_round = tokio::select! {
            _ = ticker.tick() => false,
            _ = lanes_done.cancelled() => true,
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
