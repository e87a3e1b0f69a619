//! The ingress consumer and its rebalance callbacks, which keep the offset tracker (and the
//! retry tiers, [`crate::tiers`]) in step with the group's assignment.
//!
//! A partition about to move to another worker is handed over first: the callback waits, for
//! at most `pipeline.handover_timeout`, until the partition's deliveries in flight have
//! finished and their outcomes are committed (finished ones behind a message that had not
//! started ahead of the offset, [`crate::tracker::ahead`]), so that the next owner does not send
//! them again.
//! It runs inside the dispatcher's read (librdkafka calls it from the poll), so nothing new
//! starts meanwhile; the delivery tasks and the committer go on, on the runtime's other
//! threads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, TopicPartitionList};
use relais_kafka::resets::ResetWatch;
use relais_telemetry::shutdown::CancellationToken;
use tokio::runtime::RuntimeFlavor;

use crate::metrics::WorkerMetrics;
use crate::records::Tracker;
use crate::tiers::TierAssignment;
use crate::tracker::{INGRESS, RecordedAhead, SourcePartition, TopicIndex, ahead};

/// Keeps the tracker in step with the group's assignment; the tier partitions of the same
/// numbers follow the ingress partitions ([`crate::tiers`]).
#[derive(Debug)]
pub struct WorkerContext {
    pub tracker: Arc<Tracker>,
    pub tiers: TierAssignment,
    pub metrics: WorkerMetrics,
    /// Picks the offset resets out of librdkafka's log ([`crate::resets`]).
    pub resets: ResetWatch,
    pub handover: Handover,
}

impl ClientContext for WorkerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.resets.log(level, fac, log_message);
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Lost partitions (this member timed out of the group) can no longer be committed.
            if !consumer.assignment_lost() {
                let numbers: Vec<i32> = partitions
                    .elements()
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                self.hand_over(&numbers);
            }
            for element in partitions.elements() {
                let partition = element.partition();
                let dropped = self.tracker.revoke(SourcePartition::ingress(partition));
                self.tiers.revoked(&self.tracker, partition);
                tracing::info!(partition, uncommitted = dropped, "partition revoked");
            }
            self.report_assigned();
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let elements = partitions.elements();
                let numbers: Vec<i32> = elements.iter().map(|e| e.partition()).collect();
                let recorded = elements
                    .first()
                    .and_then(|first| self.recorded_ahead(consumer, first.topic(), &numbers));
                for partition in numbers {
                    let generation = self.tracker.assign(SourcePartition::ingress(partition));
                    self.tiers
                        .assigned(&self.tracker, partition, generation, recorded.is_some());
                    if let Some(named) = recorded.as_ref().and_then(|all| all.get(&partition)) {
                        self.tracker
                            .recorded_ahead(partition, generation, named.clone());
                    }
                    tracing::info!(partition, "partition assigned");
                }
                self.report_assigned();
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// How long a partition moving away waits for its work in flight ([`WorkerContext`]).
#[derive(Debug, Clone)]
pub struct Handover {
    pub timeout: Duration,
    /// Once shutdown began the committer has done its last round: nothing more would commit.
    pub shutdown: CancellationToken,
}

/// How long the rebalance callback waits for the committed offsets of the partitions it was
/// given (the group answers once no transaction committing them is open, which after a crash
/// lasts until the transaction times out; then the partitions' loads wait for it instead).
const RECORDED_AHEAD_READ: Duration = Duration::from_secs(2);

/// How often a handover looks again.
const HANDOVER_CHECK: Duration = Duration::from_millis(10);

impl WorkerContext {
    /// Waits, bounded, until the ingress `partitions` and their tier partitions have nothing
    /// in flight and nothing finished left to commit.
    fn hand_over(&self, partitions: &[i32]) {
        if self.handover.timeout.is_zero() || self.handover.shutdown.is_cancelled() {
            return;
        }
        let tiers = self.tiers.topic_indexes();
        let sources: Vec<SourcePartition> = partitions
            .iter()
            .flat_map(|&partition| {
                std::iter::once(INGRESS)
                    .chain(tiers.iter().copied())
                    .map(move |topic| SourcePartition { topic, partition })
            })
            .collect();
        let started = Instant::now();
        let deadline = started + self.handover.timeout;
        let wait = || {
            while !self.tracker.handed_over(&sources) && Instant::now() < deadline {
                std::thread::sleep(HANDOVER_CHECK);
            }
        };
        // The callback runs on a runtime thread: its other tasks move to another thread while
        // this one waits.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait);
            }
            _ => wait(),
        }
        let committed = self.tracker.handed_over(&sources);
        self.metrics.handover(committed);
        if committed {
            tracing::info!(?partitions, took = ?started.elapsed(), "partitions handed over: their work in flight is committed");
        } else {
            tracing::warn!(
                ?partitions,
                timeout = ?self.handover.timeout,
                "partitions handed over with work still in flight: the next owner sends it again"
            );
        }
    }

    /// What the committed offsets of newly assigned ingress `partitions` of `topic` and of
    /// their tier partitions name as recorded ahead ([`crate::tracker::ahead`]), per partition;
    /// `None` when they cannot be read at once, and the partitions' loads read them instead
    /// ([`crate::tiers::load_parked`]) while their messages wait.
    fn recorded_ahead(
        &self,
        consumer: &BaseConsumer<Self>,
        topic: &str,
        partitions: &[i32],
    ) -> Option<BTreeMap<i32, RecordedAhead>> {
        let topics: Vec<(TopicIndex, &str)> = std::iter::once((INGRESS, topic))
            .chain(
                self.tiers
                    .topics
                    .tiers()
                    .map(|(index, name, _)| (index, name)),
            )
            .collect();
        let mut asked = TopicPartitionList::new();
        for &partition in partitions {
            for (_, name) in &topics {
                asked.add_partition(name, partition);
            }
        }
        let read = consumer
            .committed_offsets(asked, RECORDED_AHEAD_READ)
            .and_then(|committed| {
                partitions
                    .iter()
                    .map(|&partition| {
                        Ok((partition, ahead::named_in(&committed, &topics, partition)?))
                    })
                    .collect()
            });
        match read {
            Ok(recorded) => Some(recorded),
            Err(error) => {
                tracing::warn!(%error, ?partitions, "cannot read the committed offsets at once; the partitions' messages wait until they are read");
                None
            }
        }
    }

    fn report_assigned(&self) {
        let ingress = self
            .tracker
            .partitions()
            .iter()
            .filter(|source| source.topic == INGRESS)
            .count();
        self.metrics.assigned_partitions.set(ingress as i64);
    }
}

pub type WorkerConsumer = StreamConsumer<WorkerContext>;

/// Partitions currently paused for backpressure (shared with the status report).
pub type PausedPartitions = Arc<Mutex<BTreeSet<SourcePartition>>>;
