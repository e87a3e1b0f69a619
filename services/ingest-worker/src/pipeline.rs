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

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
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
            // Keyless messages keep partition order among themselves.
            None => inbound.partition.hash(&mut hasher),
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

/// Reads the ingress topic and feeds the lanes until shutdown, pausing consumption while a
/// lane is full. Messages received while paused (already fetched) are held in order and
/// dispatched first once the lane has room.
pub async fn dispatch(
    consumer: Arc<WorkerConsumer>,
    lanes: Lanes,
    tracker: Arc<Tracker>,
    metrics: WorkerMetrics,
    shutdown: CancellationToken,
) {
    let mut held: VecDeque<Inbound> = VecDeque::new();
    loop {
        let inbound = match held.pop_front() {
            Some(inbound) => inbound,
            None => tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                message = consumer.recv() => match message {
                    Ok(message) => match detach(&message, &tracker) {
                        Some(inbound) => inbound,
                        None => continue,
                    },
                    Err(error) => {
                        tracing::warn!(%error, "consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            },
        };
        if !tracker.dispatched(inbound.partition, inbound.generation, inbound.offset) {
            continue;
        }
        let lane = &lanes.senders[lanes.lane_of(&inbound)];
        metrics.queue_depth.set(lanes.depth() as i64);
        let inbound = match lane.try_send(inbound) {
            Ok(()) => continue,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(inbound)) => inbound,
        };

        // Backpressure: stop fetching, keep polling (so the group keeps us), wait for room.
        set_paused(&consumer, true);
        metrics.paused.set(1);
        metrics.pauses.inc();
        let sent = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break false,
                permit = lane.reserve() => match permit {
                    Ok(permit) => {
                        permit.send(inbound);
                        break true;
                    }
                    Err(_) => break false,
                },
                message = consumer.recv() => {
                    if let Ok(message) = message
                        && let Some(fetched) = detach(&message, &tracker)
                    {
                        held.push_back(fetched);
                    }
                }
            }
        };
        set_paused(&consumer, false);
        metrics.paused.set(0);
        if !sent {
            return;
        }
    }
}

fn set_paused(consumer: &WorkerConsumer, paused: bool) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let result = if paused {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => tracing::info!(
            paused,
            partitions = assignment.count(),
            "consumption {}",
            if paused { "paused" } else { "resumed" }
        ),
        Err(error) => tracing::warn!(%error, paused, "pause/resume failed"),
    }
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

/// Commits every `interval` until shutdown, then once more for what the lanes finished while
/// draining. A fatal producer error ends the loop (and the worker).
pub async fn commit_loop(
    committer: Committer,
    interval: Duration,
    lanes_done: CancellationToken,
) -> Result<(), CommitError> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::from_millis(100);
    loop {
        let last_round = tokio::select! {
            _ = ticker.tick() => false,
            _ = lanes_done.cancelled() => true,
        };
        match committer.commit_ready().await {
            Ok(_) => backoff = Duration::from_millis(100),
            Err(CommitError::Fatal(error)) => return Err(CommitError::Fatal(error)),
            Err(error) => {
                tracing::warn!(error = %error, "commit round failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if last_round {
                    // One retry for the final round, then give up: what is not committed is
                    // read again by whoever owns the partition next.
                    if let Err(error) = committer.commit_ready().await {
                        tracing::warn!(error = %error, "final commit failed; uncommitted messages will be redelivered");
                    }
                    return Ok(());
                }
                continue;
            }
        }
        if last_round {
            return Ok(());
        }
    }
}
