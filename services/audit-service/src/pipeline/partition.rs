//! One partition's state in the pipeline: its open object, the items waiting to be stored, and
//! where its one item in flight stands.
//!
//! A partition stores one item at a time, and its next item waits until the offset after the
//! previous one is committed: it never has more than one item stored and not committed, which
//! is what makes a restart overwrite rather than duplicate (see `object`). A failed commit
//! keeps the partition waiting until a later commit succeeds.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

use crate::object::{ChunkPool, PartitionWriter, Pending, RotationPolicy};

/// Where the partition's item in flight stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing in flight: the front of the queue may be stored.
    Idle,
    /// The front item is being stored.
    Storing,
    /// An item is stored; the offset after it is not committed yet.
    Committing,
}

/// A stored item waiting for the commit that covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredItem {
    pub end_offset: i64,
    pub records: usize,
    pub quarantined: bool,
}

/// What a partition holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub records: usize,
    /// NDJSON bytes, or payload bytes for quarantined records.
    pub bytes: usize,
    /// When the oldest record held arrived.
    pub oldest: Option<Instant>,
}

#[derive(Debug)]
pub struct PartitionState {
    pub generation: u64,
    pub writer: PartitionWriter,
    queue: VecDeque<Arc<Pending>>,
    phase: Phase,
    /// Stored items whose offsets are not committed yet, counted in the written metrics only
    /// once a commit covers them: an object whose commit is lost is stored again later (same
    /// key) and must not be counted twice.
    uncounted: Vec<StoredItem>,
}

impl PartitionState {
    pub fn new(
        partition: i32,
        generation: u64,
        policy: &RotationPolicy,
        chunks: &Arc<ChunkPool>,
    ) -> Self {
        Self {
            generation,
            writer: PartitionWriter::new(partition, policy.clone(), Arc::clone(chunks)),
            queue: VecDeque::new(),
            phase: Phase::Idle,
            uncounted: Vec::new(),
        }
    }

    /// Queues an item to store, after those already queued.
    pub fn enqueue(&mut self, item: Pending) {
        self.queue.push_back(Arc::new(item));
    }

    /// Closes the open object, if any, and queues it.
    pub fn close_open_object(&mut self) -> bool {
        match self.writer.close() {
            Some(object) => {
                self.enqueue(Pending::Data(object));
                true
            }
            None => false,
        }
    }

    /// Whether `start_upload` would give an item.
    pub fn ready_to_upload(&self) -> bool {
        self.phase == Phase::Idle && !self.queue.is_empty()
    }

    /// The item to store now, if the partition may store one: nothing in flight and nothing
    /// stored awaiting its commit. The caller stores it and reports with `stored`.
    pub fn start_upload(&mut self) -> Option<Arc<Pending>> {
        if self.phase != Phase::Idle {
            return None;
        }
        let item = self.queue.front().map(Arc::clone)?;
        self.phase = Phase::Storing;
        Some(item)
    }

    /// The upload of the front item ended: stored (its records) or not (cancelled, to be
    /// started again). Returns the offset to commit when it was stored.
    pub fn stored(&mut self, records: Option<usize>) -> Option<i64> {
        if self.phase != Phase::Storing {
            return None;
        }
        let Some(records) = records else {
            self.phase = Phase::Idle;
            return None;
        };
        let item = self.queue.pop_front()?;
        self.uncounted.push(StoredItem {
            end_offset: item.end_offset(),
            records,
            quarantined: matches!(*item, Pending::Quarantine(_)),
        });
        self.phase = Phase::Committing;
        Some(item.end_offset())
    }

    /// A commit up to `end_offset` finished. On success the partition may store its next
    /// item, and the stored items the commit covers are returned (to be counted); on failure it
    /// keeps waiting for a later commit.
    pub fn committed(&mut self, end_offset: i64, succeeded: bool) -> Vec<StoredItem> {
        if !succeeded {
            return Vec::new();
        }
        if self.phase == Phase::Committing {
            self.phase = Phase::Idle;
        }
        let (covered, waiting) = self
            .uncounted
            .drain(..)
            .partition(|stored| stored.end_offset <= end_offset);
        self.uncounted = waiting;
        covered
    }

    /// Something is queued, being stored or waiting for its commit.
    pub fn is_busy(&self) -> bool {
        self.phase != Phase::Idle || !self.queue.is_empty()
    }

    /// The open object and the items waiting to be stored.
    pub fn held(&self) -> Held {
        let (records, bytes) = self.writer.open_size();
        let oldest = self
            .queue
            .iter()
            .map(|item| item.first_arrival())
            .chain(self.writer.first_arrival())
            .min();
        Held {
            records: records + self.queue.iter().map(|item| item.records()).sum::<usize>(),
            bytes: bytes + self.queue.iter().map(|item| item.bytes()).sum::<usize>(),
            oldest,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::object::QuarantinedRecord;

    fn state() -> PartitionState {
        PartitionState::new(
            0,
            1,
            &RotationPolicy {
                max_records: 10,
                max_bytes: 1 << 20,
                idle: Duration::from_secs(1),
            },
            &Arc::new(ChunkPool::new(0)),
        )
    }

    fn item(offset: i64) -> Pending {
        Pending::Quarantine(QuarantinedRecord {
            partition: 0,
            offset,
            key: None,
            payload: vec![0; 8],
            error: "test".into(),
            first_arrival: Instant::now(),
        })
    }

    #[test]
    fn one_item_at_a_time_and_the_next_only_after_the_commit() {
        let mut partition = state();
        partition.enqueue(item(5));
        partition.enqueue(item(6));
        assert_eq!(partition.start_upload().map(|i| i.end_offset()), Some(5));
        assert!(partition.start_upload().is_none(), "one in flight");
        assert_eq!(partition.stored(Some(1)), Some(5));
        assert!(
            partition.start_upload().is_none(),
            "stored but not committed: the next waits"
        );
        let covered = partition.committed(5, true);
        assert_eq!(covered.len(), 1);
        assert!(covered[0].quarantined);
        assert_eq!(partition.start_upload().map(|i| i.end_offset()), Some(6));
    }

    #[test]
    fn a_failed_commit_keeps_the_next_item_waiting_until_one_succeeds() {
        let mut partition = state();
        partition.enqueue(item(5));
        partition.enqueue(item(6));
        partition.start_upload();
        partition.stored(Some(1));
        assert!(partition.committed(5, false).is_empty());
        assert!(partition.start_upload().is_none());
        assert!(partition.committed(5, false).is_empty());
        assert!(partition.start_upload().is_none());
        assert_eq!(partition.committed(5, true).len(), 1);
        assert!(partition.start_upload().is_some());
    }

    #[test]
    fn an_upload_that_did_not_store_is_started_again() {
        let mut partition = state();
        partition.enqueue(item(5));
        partition.start_upload();
        assert_eq!(partition.stored(None), None);
        assert!(partition.is_busy());
        assert_eq!(partition.start_upload().map(|i| i.end_offset()), Some(5));
    }

    #[test]
    fn what_is_held_counts_queued_items_until_they_are_stored() {
        let mut partition = state();
        assert_eq!(partition.held().records, 0);
        assert!(!partition.is_busy());
        partition.enqueue(item(5));
        partition.enqueue(item(6));
        let held = partition.held();
        assert_eq!((held.records, held.bytes), (2, 16));
        assert!(held.oldest.is_some());
        partition.start_upload();
        partition.stored(Some(1));
        assert_eq!(partition.held().records, 1);
        assert!(partition.is_busy(), "waiting for its commit");
    }
}
