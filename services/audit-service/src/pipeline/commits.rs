//! Offset commits, one at a time, off the pipeline task: a synchronous commit is a round trip
//! to the broker, and awaiting it on the task kept it from receiving (once per object). Stored
//! items wait here while a commit is in flight; the next commit covers all of them at once. A
//! failed commit is tried again after a backoff, and its partitions store nothing more
//! meanwhile (see `partition`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::assignment::AuditConsumer;

/// An offset to commit: the end of an item a partition has stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitTarget {
    pub partition: i32,
    pub generation: u64,
    pub end_offset: i64,
}

/// Commit failures injected by tests, standing for a broker that refuses commits (as while
/// its group coordinator moves). The service never sets any.
#[derive(Debug, Default)]
pub struct CommitFaults {
    refuse: AtomicU32,
}

impl CommitFaults {
    /// Refuses the next `count` commits.
    pub fn refuse_next(&self, count: u32) {
        self.refuse.store(count, Ordering::SeqCst);
    }

    fn take(&self) -> bool {
        self.refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }
}

#[derive(Debug, Default)]
pub struct Commits {
    waiting: BTreeMap<i32, CommitTarget>,
    in_flight: Option<JoinHandle<(Vec<CommitTarget>, bool)>>,
    /// Commits failed in a row.
    failures: u32,
    retry_at: Option<Instant>,
}

impl Commits {
    /// Commits failed in a row (0 after a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.in_flight.is_none()
    }

    /// Adds a target to the next commit; a later end of the same partition replaces it.
    pub fn wait(&mut self, target: CommitTarget) {
        self.waiting.insert(target.partition, target);
    }

    /// Starts committing every waiting offset in one request, unless a commit is in flight
    /// or a failed one's backoff has not passed. `owned` drops the targets of partitions
    /// revoked meanwhile.
    pub fn start(
        &mut self,
        consumer: &Arc<AuditConsumer>,
        topic: &str,
        faults: &Arc<CommitFaults>,
        owned: impl Fn(&CommitTarget) -> bool,
    ) {
        if self.in_flight.is_some() || self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.waiting.retain(|_, target| owned(target));
        if self.waiting.is_empty() {
            return;
        }
        let targets: Vec<CommitTarget> = std::mem::take(&mut self.waiting).into_values().collect();
        let mut offsets = TopicPartitionList::new();
        for target in &targets {
            let _ = offsets.add_partition_offset(
                topic,
                target.partition,
                Offset::Offset(target.end_offset + 1),
            );
        }
        let (consumer, faults) = (Arc::clone(consumer), Arc::clone(faults));
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let committed = if faults.take() {
                Err(rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::CoordinatorNotAvailable,
                ))
            } else {
                consumer.commit(&offsets, CommitMode::Sync)
            };
            if let Err(error) = &committed {
                tracing::warn!(%error, "offset commit failed; it is tried again, and the partitions store nothing more until it succeeds");
            }
            (targets, committed.is_ok())
        }));
    }

    /// The targets of the commit in flight and whether it succeeded; pending while none is.
    pub async fn finished(&mut self) -> (Vec<CommitTarget>, bool) {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return std::future::pending().await;
        };
        let result = in_flight.await;
        self.in_flight = None;
        // A commit task does not panic; if it was cancelled, it counts as failed.
        result.unwrap_or_default()
    }

    /// Takes note of how a commit ended; a failed one's targets wait for the next try.
    pub fn ended(&mut self, targets: &[CommitTarget], succeeded: bool, backoff: &Backoff) {
        if succeeded {
            self.failures = 0;
            self.retry_at = None;
            return;
        }
        for target in targets {
            self.waiting.entry(target.partition).or_insert(*target);
        }
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(Instant::now() + backoff.after(self.failures));
    }
}

/// Waits between failed commits: doubling from `base`, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after `failures` failures in a row (at least one).
    pub fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_maximum() {
        let backoff = Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
        };
        let waits: Vec<u128> = (1..=8).map(|n| backoff.after(n).as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(backoff.after(u32::MAX), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_commit_keeps_its_targets_and_waits_before_the_next_try() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        let mut commits = Commits::default();
        let first = CommitTarget {
            partition: 1,
            generation: 7,
            end_offset: 99,
        };
        commits.ended(&[first], false, &backoff);
        assert!(!commits.is_idle());
        // A newer end of the same partition (not possible while it waits, but the later one
        // must win) is kept over the failed one.
        commits.wait(CommitTarget {
            end_offset: 150,
            ..first
        });
        commits.ended(&[first], false, &backoff);
        assert_eq!(commits.waiting[&1].end_offset, 150);
        assert_eq!(commits.failures, 2);
        let retry_at = commits.retry_at.unwrap_or_else(|| unreachable!());
        assert_eq!(retry_at - Instant::now(), Duration::from_secs(2));
        commits.ended(&[], true, &backoff);
        assert_eq!((commits.failures, commits.retry_at), (0, None));
    }

    #[test]
    fn injected_faults_refuse_exactly_the_count_asked() {
        let faults = CommitFaults::default();
        assert!(!faults.take());
        faults.refuse_next(2);
        assert!(faults.take());
        assert!(faults.take());
        assert!(!faults.take());
    }
}
