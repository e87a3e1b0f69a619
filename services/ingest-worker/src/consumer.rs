//! The ingress consumer and its rebalance callbacks, which keep the offset tracker (and the
//! retry tiers, [`crate::tiers`]) in step with the group's assignment.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use relais_kafka::resets::ResetWatch;

use crate::metrics::WorkerMetrics;
use crate::records::Tracker;
use crate::tiers::TierAssignment;
use crate::tracker::{INGRESS, SourcePartition};

/// Keeps the tracker in step with the group's assignment; the tier partitions of the same
/// numbers follow the ingress partitions ([`crate::tiers`]).
#[derive(Debug)]
pub struct WorkerContext {
    pub tracker: Arc<Tracker>,
    pub tiers: TierAssignment,
    pub metrics: WorkerMetrics,
    /// Picks the offset resets out of librdkafka's log ([`crate::resets`]).
    pub resets: ResetWatch,
}

impl ClientContext for WorkerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.resets.log(level, fac, log_message);
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            for element in partitions.elements() {
                let partition = element.partition();
                let dropped = self.tracker.revoke(SourcePartition::ingress(partition));
                self.tiers.revoked(&self.tracker, partition);
                tracing::info!(partition, uncommitted = dropped, "partition revoked");
            }
            self.report_assigned();
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                for element in partitions.elements() {
                    let partition = element.partition();
                    let generation = self.tracker.assign(SourcePartition::ingress(partition));
                    self.tiers.assigned(&self.tracker, partition, generation);
                    tracing::info!(partition, "partition assigned");
                }
                self.report_assigned();
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

impl WorkerContext {
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
