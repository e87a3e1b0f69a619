//! The dispatcher: reads the ingress topic and the retry tiers, prepares each message, and
//! hands it to its upstream's queue, with backpressure per partition.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};
use relais_telemetry::shutdown::CancellationToken;
use relais_telemetry::tasks::sleep_until;
use tokio::sync::mpsc;

use crate::consumer::{PausedPartitions, WorkerConsumer};
use crate::metrics::{TopicLabels, WorkerMetrics};
use crate::parked::ParkedKeys;
use crate::process::{Prepared, Processor};
use crate::read_gate::{LONGEST_UNREAD, ReadGate};
use crate::records::Inbound;
use crate::records::Tracker;
use crate::retry::{RetryState, TierTopics};
use crate::schedule::{Done, Scheduler};
use crate::tiers::{DueHeads, TierConsumer};
use crate::tracker::{Dispatched, Finished, INGRESS, SourcePartition};

mod rewound;
mod stale;

use rewound::AfterRewind;

/// How many read messages may wait for their commit, per partition and in all. While commits
/// fail (the transaction coordinator away) nothing is committed, so without this bound the
/// worker would read on until its memory ran out.
#[derive(Debug, Clone, Copy)]
pub struct UncommittedLimits {
    pub per_partition: usize,
    pub total: usize,
}

/// Reports, or messages the consumer has already fetched, taken in one turn of the loop at
/// most: each turn polls every branch again, and at most this many wait behind a shutdown.
const TAKEN_AT_ONCE: usize = 64;

/// Messages a partition holds (its upstream's queue full) before it is paused.
const HELD_BEFORE_PAUSE: usize = 256;

/// Reads the ingress topic and the retry tiers, and feeds the scheduler until shutdown.
///
/// Backpressure is per partition: when a message finds its upstream's queue full, it is held,
/// in order with the later messages of its partition, while the other partitions keep flowing.
/// Held messages are offered again whenever a delivery ends, and every few milliseconds. While
/// every upstream's queue is full the ingress is not read at all, for up to a second
/// ([`ReadGate`]): in a busy but healthy pipeline a slot frees long before, and nothing is held
/// or paused. Only when a partition holds more than [`HELD_BEFORE_PAUSE`] messages is it paused
/// (librdkafka drops a paused partition's prefetched messages and must fetch them again, so
/// pausing at the first full queue would cost more than it saves); it resumes once its hold is
/// empty. A message over the [`UncommittedLimits`] is held too and pauses its partition at
/// once: that wait lasts as long as the commits fail. Beyond the read gate's second the
/// consumer keeps polling, so the group never mistakes a long pause (an upstream outage) for a
/// dead replica.
///
/// A tier record that is not due yet pauses its tier partition until it is ([`DueHeads`]); the
/// messages of a partition whose key order state is not loaded yet are held (a stale state is
/// read again once every message of the partition handed on is committed); those of a
/// partition whose log started again wait until the ones read before them are committed
/// ([`AfterRewind`]).
pub async fn dispatch(
    mut dispatcher: Dispatcher,
    mut reports: mpsc::Receiver<Done>,
    shutdown: CancellationToken,
) {
    let mut retry = tokio::time::interval(Duration::from_millis(5));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The depth gauges are read by scrapes and status reports, seconds apart: counting the
    // queues for every message would cost more than the gauges are worth.
    let mut gauges = tokio::time::interval(Duration::from_millis(100));
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reads_tiers = !dispatcher.sources.topics.is_empty();
    loop {
        let next_due = dispatcher.due.next_due();
        let now = tokio::time::Instant::now();
        let reads_ingress = dispatcher
            .read_gate
            .reads(dispatcher.scheduler.every_queue_full(), now);
        let gate_opens = dispatcher.read_gate.opens_at(now);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            Some(done) = reports.recv() => {
                dispatcher.scheduler.finished(done);
                // The reports already waiting are taken in the same turn of the loop.
                for _ in 1..TAKEN_AT_ONCE {
                    let Ok(done) = reports.try_recv() else { break };
                    dispatcher.scheduler.finished(done);
                }
                if !dispatcher.held.is_empty() {
                    dispatcher.drain_held().await;
                }
            }
            _ = retry.tick(), if !dispatcher.held.is_empty() || !dispatcher.after_rewind.is_empty() => {
                dispatcher.drain_held().await;
                dispatcher.release_after_rewind().await;
            }
            _ = gauges.tick() => {
                dispatcher.report_depth();
                dispatcher.read_stale_states_again();
            }
            _ = sleep_until(next_due), if next_due.is_some() => dispatcher.release_due().await,
            _ = sleep_until(gate_opens), if gate_opens.is_some() => {}
            message = dispatcher.sources.ingress.recv(), if reads_ingress => {
                let read = message.map(|message| dispatcher.detach(&message));
                dispatcher.received(read, "consume error").await;
                dispatcher.receive_fetched().await;
            }
            message = dispatcher.sources.tiers.recv(), if reads_tiers => {
                let read = message.map(|message| dispatcher.detach(&message));
                dispatcher.received(read, "retry tier consume error").await;
            }
        }
    }
}

/// Where the dispatcher reads.
#[allow(missing_debug_implementations)] // the consumers have no Debug
pub struct Sources {
    pub ingress: Arc<WorkerConsumer>,
    pub tiers: Arc<TierConsumer>,
    pub topics: TierTopics,
    /// Key order state per partition; a partition's messages wait until it is loaded.
    pub parked: Arc<ParkedKeys>,
    /// Where a stale partition's state is asked to be read again.
    pub loads: crate::tiers::LoadRequests,
    /// Where the tier records kept until due are counted for the lag reporter.
    pub kept: crate::tiers::KeptRecords,
}

/// What [`dispatch`] works with.
pub struct Dispatcher {
    sources: Sources,
    processor: Arc<Processor>,
    scheduler: Scheduler,
    tracker: Arc<Tracker>,
    metrics: WorkerMetrics,
    paused: PausedPartitions,
    /// Messages waiting for room in their upstream's queue, per partition, in offset order.
    held: BTreeMap<SourcePartition, VecDeque<Box<Prepared>>>,
    /// Tier records read before they were due, their partitions paused.
    due: DueHeads,
    /// Messages of partitions whose log started again, unregistered until the ones read
    /// before them are committed.
    after_rewind: AfterRewind,
    /// Held messages of one partition beyond which the partition is paused.
    hold_limit: usize,
    limits: UncommittedLimits,
    read_gate: ReadGate,
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
        sources: Sources,
        processor: Arc<Processor>,
        scheduler: Scheduler,
        tracker: Arc<Tracker>,
        metrics: WorkerMetrics,
        paused: PausedPartitions,
        limits: UncommittedLimits,
    ) -> Self {
        let dispatcher = Self {
            sources,
            processor,
            scheduler,
            tracker,
            metrics,
            paused,
            held: BTreeMap::new(),
            due: DueHeads::default(),
            after_rewind: AfterRewind::default(),
            hold_limit: HELD_BEFORE_PAUSE,
            limits,
            read_gate: ReadGate::new(LONGEST_UNREAD),
        };
        dispatcher.report_oldest();
        dispatcher
    }

    fn detach(&self, message: &BorrowedMessage<'_>) -> Option<Inbound> {
        detach(message, &self.tracker, &self.sources.topics)
    }

    /// Takes the ingress messages the consumer has already fetched, while the read gate lets
    /// them in, without waiting for more.
    async fn receive_fetched(&mut self) {
        for _ in 1..TAKEN_AT_ONCE {
            let now = tokio::time::Instant::now();
            if !self.read_gate.reads(self.scheduler.every_queue_full(), now) {
                return;
            }
            // The message borrows the consumer: it is detached before the read is offered.
            let read = {
                let recv = std::pin::pin!(self.sources.ingress.recv());
                match recv.poll(&mut Context::from_waker(Waker::noop())) {
                    Poll::Ready(message) => message.map(|message| self.detach(&message)),
                    Poll::Pending => return,
                }
            };
            // An error is waited out once, then the loop sees shutdown and reports again.
            let failed = read.is_err();
            self.received(read, "consume error").await;
            if failed {
                return;
            }
        }
    }

    /// What a consumer handed out: a message to offer (`None`: of a partition no longer owned),
    /// or an error to wait out.
    async fn received(
        &mut self,
        read: rdkafka::error::KafkaResult<Option<Inbound>>,
        what: &'static str,
    ) {
        match read {
            Ok(Some(inbound)) => self.offer(inbound).await,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "{what}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Prepares a freshly read message and hands it on, or holds it.
    async fn offer(&mut self, inbound: Inbound) {
        let source = inbound.source();
        if source.topic != INGRESS {
            // A tier record waits for its due time, and so do the records behind it.
            let wait = crate::tiers::wait_of(&inbound, &self.sources.topics, SystemTime::now());
            if self.due.is_waiting(source) || wait.is_some_and(|wait| !wait.is_zero()) {
                let due = tokio::time::Instant::now() + wait.unwrap_or_default();
                self.due.keep(inbound, due);
                self.pause_consumer(source);
                self.report_oldest();
                return;
            }
        }
        if self.after_rewind.is_waiting(source) {
            self.keep_after_rewind(inbound);
            return;
        }
        // Asked before the message is registered: once the partition is loaded, the tracker
        // knows which of its offsets an earlier owner recorded ahead.
        let loaded = self.sources.parked.is_loaded(source.partition);
        match self
            .tracker
            .dispatched(source, inbound.generation, inbound.offset)
        {
            Dispatched::Registered => self.offer_registered(source, inbound, loaded).await,
            Dispatched::Recorded => self.recorded_earlier(&inbound),
            Dispatched::NotOwned => {}
            Dispatched::AfterRewind => {
                tracing::warn!(
                    topic = %inbound.topic,
                    partition = source.partition,
                    offset = inbound.offset,
                    "the partition's log started again (the topic created again, or the partition truncated): its new messages wait until those read before are committed"
                );
                self.keep_after_rewind(inbound);
            }
        }
    }

    /// Hands on, or holds, a message the tracker registered; `loaded`: whether its partition's
    /// state was loaded before it was registered.
    async fn offer_registered(&mut self, source: SourcePartition, inbound: Inbound, loaded: bool) {
        let over_limit = self.over_uncommitted_limit(source);
        let prepared = self.processor.prepare(inbound);
        let behind_held = self.held.contains_key(&source);
        if behind_held || !loaded || over_limit || !self.has_room(&prepared) {
            // Behind earlier held messages of its partition, order first.
            self.held.entry(source).or_default().push_back(prepared);
        } else {
            self.hand_on(prepared).await;
        }
        if self
            .held
            .get(&source)
            .is_some_and(|queue| over_limit || queue.len() > self.hold_limit)
        {
            self.pause(source);
        }
    }

    /// A message read again whose outcome was committed ahead of the offset before this
    /// assignment (by another worker, or this one before a crash; [`crate::tracker::ahead`]):
    /// it is not decided or sent again.
    fn recorded_earlier(&self, inbound: &Inbound) {
        self.metrics.recorded_skipped.inc();
        tracing::debug!(
            topic = %inbound.topic,
            partition = inbound.partition,
            offset = inbound.offset,
            "outcome recorded ahead before this assignment; not sent again"
        );
    }

    /// Resumes a partition paused for backpressure once nothing of it is held or waits.
    fn resume_if_nothing_waits(&self, source: SourcePartition) {
        let was_paused = !self.held.contains_key(&source)
            && !self.after_rewind.is_waiting(source)
            && self
                .paused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&source);
        if was_paused {
            self.resume(source);
        }
    }

    /// Offers the tier records that came due, and resumes their partitions.
    async fn release_due(&mut self) {
        let (due, emptied) = self.due.take_due();
        for source in emptied {
            let still_owned = self.tracker.generation(source).is_some();
            let backpressure = self
                .paused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&source);
            if still_owned && !backpressure {
                self.resume_consumer(source);
            }
        }
        for record in due {
            self.offer(record).await;
        }
        self.report_oldest();
    }

    fn report_oldest(&self) {
        *self
            .sources
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            self.due.kept_per_topic(&self.sources.topics);
        let oldest = self.due.oldest_per_topic(&self.sources.topics);
        for (_, topic, _) in self.sources.topics.tiers() {
            self.metrics
                .retry_oldest
                .get_or_create(&TopicLabels {
                    topic: topic.to_owned(),
                })
                .set(oldest.get(topic).map_or(0.0, Duration::as_secs_f64));
        }
    }

    fn report_depth(&self) {
        self.metrics
            .queue_depth
            .set((self.scheduler.queued() + self.held_total() + self.after_rewind.len()) as i64);
        self.metrics
            .retry_waiting_keys
            .set(self.sources.parked.waiting_keys() as i64);
    }

    fn has_room(&self, prepared: &Prepared) -> bool {
        prepared
            .upstream()
            .is_none_or(|upstream| self.scheduler.has_room(upstream))
    }

    /// A routed message goes to its upstream's queue; one decided already (rejected input) is
    /// finished here, which takes no waiting.
    async fn hand_on(&mut self, prepared: Box<Prepared>) {
        if prepared.upstream().is_some() {
            self.scheduler.submit(prepared);
            return;
        }
        let (source, generation, offset) = (
            prepared.inbound.source(),
            prepared.inbound.generation,
            prepared.inbound.offset,
        );
        if let Some(output) = self.processor.finish(*prepared).await {
            self.tracker
                .finished(source, generation, Finished { offset, output });
        }
    }

    /// True when a freshly read message of `source` (registered with the tracker already)
    /// would take its partition, or the worker, over its uncommitted limit.
    fn over_uncommitted_limit(&self, source: SourcePartition) -> bool {
        let held_here = self.held.get(&source).map_or(0, VecDeque::len);
        let (here, total) = self.tracker.uncommitted_counts(source);
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
        let sources: Vec<SourcePartition> = self.held.keys().copied().collect();
        for source in sources {
            let loaded = self.sources.parked.is_loaded(source.partition);
            while let Some(front) = self.held.get(&source).and_then(VecDeque::front) {
                let queued_here = self.held.get(&source).map_or(0, VecDeque::len);
                if self.tracker.generation(source) != Some(front.inbound.generation) {
                    // Revoked while held: the new owner reads it again.
                    held_total -= queued_here;
                    self.held.remove(&source);
                    break;
                }
                // Held messages are registered with the tracker already: what counts is the
                // work beyond the holds, plus the message at the front.
                let (here, total) = self.tracker.uncommitted_counts(source);
                if !loaded
                    || over_uncommitted(
                        self.limits,
                        here.saturating_sub(queued_here - 1),
                        total.saturating_sub(held_total.saturating_sub(1)),
                    )
                    || !self.has_room(front)
                {
                    break;
                }
                let Some(prepared) = self.held.get_mut(&source).and_then(VecDeque::pop_front)
                else {
                    break;
                };
                held_total -= 1;
                // Held before its partition was loaded, it may turn out recorded already.
                let inbound = &prepared.inbound;
                if self
                    .tracker
                    .recorded_earlier(source, inbound.generation, inbound.offset)
                {
                    self.recorded_earlier(inbound);
                    continue;
                }
                self.hand_on(prepared).await;
            }
            if self.held.get(&source).is_some_and(VecDeque::is_empty) {
                self.held.remove(&source);
            }
            self.resume_if_nothing_waits(source);
        }
    }

    /// Pauses a partition for backpressure.
    fn pause(&self, source: SourcePartition) {
        let count = {
            let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
            if !paused.insert(source) {
                return;
            }
            paused.len()
        };
        self.pause_consumer(source);
        self.metrics.pauses.inc();
        self.metrics.paused_partitions.set(count as i64);
        tracing::debug!(?source, "partition paused: its upstream's queue is full");
    }

    /// Resumes a partition paused for backpressure, unless it waits for a due time too.
    fn resume(&self, source: SourcePartition) {
        let count = {
            let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
            paused.remove(&source);
            paused.len()
        };
        self.metrics.paused_partitions.set(count as i64);
        if !self.due.is_waiting(source) {
            self.resume_consumer(source);
        }
        tracing::debug!(?source, "partition resumed");
    }

    fn pause_consumer(&self, source: SourcePartition) {
        self.set_paused(source, true);
    }

    fn resume_consumer(&self, source: SourcePartition) {
        self.set_paused(source, false);
    }

    /// Pauses or resumes a partition on the consumer that reads its topic.
    fn set_paused(&self, source: SourcePartition, paused: bool) {
        let Some(topic) = self.sources.topics.name(source.topic) else {
            return;
        };
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, source.partition);
        let result = match (source.topic == INGRESS, paused) {
            (true, true) => self.sources.ingress.pause(&list),
            (true, false) => self.sources.ingress.resume(&list),
            (false, true) => self.sources.tiers.pause(&list),
            (false, false) => self.sources.tiers.resume(&list),
        };
        if let Err(error) = result {
            tracing::warn!(%error, ?source, paused, "cannot pause or resume a partition");
        }
    }
}

/// The uncommitted-work bound: `partition` and `total` count the messages read and not yet
/// committed, the message in question included, the ones held behind it not.
fn over_uncommitted(limits: UncommittedLimits, partition: usize, total: usize) -> bool {
    partition > limits.per_partition || total > limits.total
}

/// Copies what the pipeline needs out of the consumer's buffer.
fn detach(
    message: &BorrowedMessage<'_>,
    tracker: &Tracker,
    topics: &TierTopics,
) -> Option<Inbound> {
    let topic_index = topics.index_of(message.topic())?;
    let source = SourcePartition {
        topic: topic_index,
        partition: message.partition(),
    };
    let generation = tracker.generation(source)?;
    let headers = crate::retry::owned_headers(message);
    let timestamp = message
        .timestamp()
        .to_millis()
        .and_then(|millis| u64::try_from(millis).ok())
        .map(|millis| SystemTime::UNIX_EPOCH + Duration::from_millis(millis));
    let retry = (topic_index != INGRESS).then(|| RetryState::from_headers(&headers));
    Some(Inbound {
        topic: message.topic().to_owned(),
        topic_index,
        partition: message.partition(),
        offset: message.offset(),
        generation,
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
        timestamp,
        received_at: SystemTime::now(),
        retry,
    })
}
