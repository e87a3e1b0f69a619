//! Which outcomes may be committed.
//!
//! Messages of a partition are dispatched in offset order but finish out of order (lanes run
//! concurrently). An outcome may only be written in the same transaction as the offset that
//! covers it, and an offset covers every message before it, so only the **contiguous prefix**
//! of finished messages of each partition is covered by the offset.
//!
//! A finished message behind an unfinished one is committed too, ahead of the offset: its
//! outcome is written in the transaction, the offset stays where it is, and the message's
//! offset is named in the offset's commit metadata ([`ahead`]). Whoever reads the partition
//! next (another worker after a move, this one after a crash) reads that metadata first and
//! registers those messages as recorded instead of deciding them again: exactly one outcome
//! per message, and nothing finished sent twice. What the metadata cannot name waits for the
//! offset, and is decided again if the worker dies meanwhile (its outcome was not written).
//!
//! Partitions are owned per assignment *generation*: when a partition is revoked its pending
//! work is dropped (the new owner redoes it), and a late outcome of an old generation is
//! ignored.

pub mod ahead;
mod commit;

pub use commit::Ready;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};

/// Which of the topics the worker reads: the ingress topic, or a retry tier's topic
/// ([`crate::retry::TierTopics`]).
pub type TopicIndex = u8;

/// The ingress topic's [`TopicIndex`].
pub const INGRESS: TopicIndex = 0;

/// A partition the worker reads and commits: of the ingress topic or of a retry tier topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourcePartition {
    pub topic: TopicIndex,
    pub partition: i32,
}

impl SourcePartition {
    pub fn ingress(partition: i32) -> Self {
        Self {
            topic: INGRESS,
            partition,
        }
    }
}

/// What [`OffsetTracker::dispatched`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatched {
    Registered,
    /// Its outcome was recorded ahead of the committed offset (by the partition's previous
    /// owner, see [`ahead`]): registered as done, it is not to be decided again.
    Recorded,
    /// Its partition is not owned under the message's generation (revoked meanwhile): the
    /// next owner reads it again.
    NotOwned,
    /// Its offset is not after the last one read: the partition's log started again under the
    /// same assignment (the topic deleted and created again, or the partition truncated), and
    /// this is a message of the new log. Its offset would be committed in the same sequence as
    /// the old log's, so it is registered only once every message read before it is committed:
    /// the caller keeps it, and the messages after it, and offers them again.
    AfterRewind,
}

/// What the committed offsets of a partition's topics (the ingress topic and each tier) name as
/// recorded ahead: per topic, the committed offset and the offsets named ([`ahead`]).
pub type RecordedAhead = Vec<(TopicIndex, i64, BTreeSet<i64>)>;

/// One message's finished work: the records to write in the transaction.
#[derive(Debug, Clone)]
pub struct Finished<T> {
    pub offset: i64,
    pub output: T,
}

/// Where a dispatched message is on its way to being committed.
#[derive(Debug)]
enum Slot<T> {
    /// Not finished.
    Open,
    Finished(T),
    /// Finished, and its output taken into a transaction ahead of the commit position.
    TakenAhead,
    /// Its outcome is recorded (committed ahead of the commit position, by this worker or an
    /// earlier owner): nothing is left to write, only the offset to pass.
    Recorded,
}

#[derive(Debug)]
struct PartitionState<T> {
    generation: u64,
    /// Dispatched offsets in order, each with where it is.
    pending: VecDeque<(i64, Slot<T>)>,
    /// Finished messages of the prefix taken by the committer and not yet committed: they
    /// still count as uncommitted work until their transaction commits (or they are
    /// restored).
    in_transaction: usize,
    /// Messages in `pending` taken ahead of the commit position into a transaction.
    taken_ahead: usize,
    /// Offsets beyond the commit position whose outcomes are recorded: named in the metadata
    /// of every commit of the partition until the commit position passes them.
    recorded_ahead: BTreeSet<i64>,
    /// The committed offset an earlier owner's metadata was read with: an offset read below
    /// it belongs to a log that started again (the topic created again), which the metadata
    /// does not describe.
    recorded_base: i64,
    /// The last round's metadata could not name more: the finished messages it left behind an
    /// open one wait for the commit position (whoever reads them next sends them again).
    ahead_full: bool,
    /// The highest offset dispatched under this generation.
    last_offset: Option<i64>,
    /// Messages in a delivery task now ([`InLane`]).
    in_lanes: usize,
}

impl<T> PartitionState<T> {
    /// Dispatched and not yet committed.
    fn uncommitted(&self) -> usize {
        self.pending.len() + self.in_transaction
    }
}

/// The owned partitions, and their uncommitted work summed as it changes (the dispatcher asks
/// for the sum with every message it reads).
#[derive(Debug)]
struct Owned<T> {
    partitions: BTreeMap<SourcePartition, PartitionState<T>>,
    uncommitted: usize,
}

impl<T> Owned<T> {
    /// Applies `change` to a partition's state, keeping the sum true whatever it does.
    fn update<R>(
        &mut self,
        partition: &SourcePartition,
        change: impl FnOnce(&mut PartitionState<T>) -> R,
    ) -> Option<R> {
        let state = self.partitions.get_mut(partition)?;
        let before = state.uncommitted();
        let result = change(state);
        self.uncommitted = self.uncommitted - before + state.uncommitted();
        Some(result)
    }
}

/// Shared between the dispatcher (dispatched), the lanes (finished), the rebalance callbacks
/// (assign, revoke) and the committer (take_ready).
#[derive(Debug)]
pub struct OffsetTracker<T> {
    owned: Mutex<Owned<T>>,
    next_generation: Mutex<u64>,
    /// The longest commit metadata naming offsets ahead ([`ahead`]); smaller once a broker
    /// refused it.
    metadata_limit: AtomicUsize,
}

impl<T> Default for OffsetTracker<T> {
    fn default() -> Self {
        Self::with_metadata_limit(ahead::DEFAULT_LIMIT)
    }
}

impl<T> OffsetTracker<T> {
    /// A tracker whose commit metadata is at most `limit` bytes (0: nothing committed ahead).
    pub fn with_metadata_limit(limit: usize) -> Self {
        Self {
            owned: Mutex::new(Owned {
                partitions: BTreeMap::new(),
                uncommitted: 0,
            }),
            next_generation: Mutex::new(1),
            metadata_limit: AtomicUsize::new(limit),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Owned<T>> {
        // Each operation leaves the map consistent before anything can panic.
        self.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A partition was assigned; returns its generation.
    pub fn assign(&self, partition: SourcePartition) -> u64 {
        let generation = {
            let mut next = self
                .next_generation
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let generation = *next;
            *next += 1;
            generation
        };
        let mut owned = self.lock();
        let replaced = owned.partitions.insert(
            partition,
            PartitionState {
                generation,
                pending: VecDeque::new(),
                in_transaction: 0,
                taken_ahead: 0,
                recorded_ahead: BTreeSet::new(),
                recorded_base: i64::MIN,
                ahead_full: false,
                last_offset: None,
                in_lanes: 0,
            },
        );
        if let Some(replaced) = replaced {
            owned.uncommitted -= replaced.uncommitted();
        }
        generation
    }

    /// A partition was revoked: its unfinished and uncommitted work is dropped.
    pub fn revoke(&self, partition: SourcePartition) -> usize {
        let mut owned = self.lock();
        let Some(state) = owned.partitions.remove(&partition) else {
            return 0;
        };
        owned.uncommitted -= state.uncommitted();
        state.pending.len()
    }

    /// The generation a partition is owned under, if it is owned.
    pub fn generation(&self, partition: SourcePartition) -> Option<u64> {
        self.lock()
            .partitions
            .get(&partition)
            .map(|state| state.generation)
    }

    /// Registers a message before it goes to a lane, unless its partition is not owned under
    /// `generation`, or its offset is not after the last one registered while messages read
    /// before it are still uncommitted (see [`Dispatched::AfterRewind`]).
    pub fn dispatched(
        &self,
        partition: SourcePartition,
        generation: u64,
        offset: i64,
    ) -> Dispatched {
        self.lock()
            .update(&partition, |state| {
                if state.generation != generation {
                    return Dispatched::NotOwned;
                }
                if state.last_offset.is_some_and(|last| offset <= last) && state.uncommitted() > 0 {
                    return Dispatched::AfterRewind;
                }
                state.last_offset = Some(offset);
                if offset < state.recorded_base {
                    state.recorded_ahead.clear();
                }
                if state.recorded_ahead.contains(&offset) {
                    state.pending.push_back((offset, Slot::Recorded));
                    return Dispatched::Recorded;
                }
                state.pending.push_back((offset, Slot::Open));
                Dispatched::Registered
            })
            .unwrap_or(Dispatched::NotOwned)
    }

    /// Records a finished message. Outputs of revoked partitions or old generations are
    /// dropped (returns false).
    pub fn finished(
        &self,
        partition: SourcePartition,
        generation: u64,
        finished: Finished<T>,
    ) -> bool {
        let mut owned = self.lock();
        let Some(state) = owned.partitions.get_mut(&partition) else {
            return false;
        };
        if state.generation != generation {
            return false;
        }
        match state
            .pending
            .binary_search_by_key(&finished.offset, |(offset, _)| *offset)
        {
            Ok(index) => match state.pending[index].1 {
                Slot::Open => {
                    state.pending[index].1 = Slot::Finished(finished.output);
                    true
                }
                _ => false,
            },
            Err(_) => false,
        }
    }

    /// A registered message whose outcome an earlier owner recorded ahead ([`ahead`]), found
    /// so only once the partition's commit metadata was read: it is marked recorded (true),
    /// and is not to be decided.
    pub fn recorded_earlier(
        &self,
        partition: SourcePartition,
        generation: u64,
        offset: i64,
    ) -> bool {
        let mut owned = self.lock();
        let Some(state) = owned.partitions.get_mut(&partition) else {
            return false;
        };
        if state.generation != generation || !state.recorded_ahead.contains(&offset) {
            return false;
        }
        match state
            .pending
            .binary_search_by_key(&offset, |(offset, _)| *offset)
        {
            Ok(index) if matches!(state.pending[index].1, Slot::Open) => {
                state.pending[index].1 = Slot::Recorded;
                true
            }
            _ => false,
        }
    }

    /// The offsets whose outcomes were recorded ahead of the committed offsets, as the
    /// partitions' commit metadata says, of ingress partition `partition` and its tier
    /// partitions (`recorded`: per topic, the committed offset and the offsets it names), read
    /// when it was assigned under `generation`. False when it changed hands since.
    pub fn recorded_ahead(&self, partition: i32, generation: u64, recorded: RecordedAhead) -> bool {
        let mut owned = self.lock();
        if owned
            .partitions
            .get(&SourcePartition::ingress(partition))
            .is_none_or(|state| state.generation != generation)
        {
            return false;
        }
        for (topic, committed, offsets) in recorded {
            if let Some(state) = owned
                .partitions
                .get_mut(&SourcePartition { topic, partition })
            {
                state.recorded_base = committed;
                let read_below = state
                    .pending
                    .front()
                    .is_some_and(|(offset, _)| *offset < committed);
                state.recorded_ahead = if read_below { BTreeSet::new() } else { offsets };
            }
        }
        true
    }

    /// Messages dispatched but not yet committed, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.lock().uncommitted
    }

    /// Messages dispatched but not yet committed, of one partition and over all, under one
    /// lock (the dispatcher asks for every message).
    pub fn uncommitted_counts(&self, partition: SourcePartition) -> (usize, usize) {
        let owned = self.lock();
        (
            owned
                .partitions
                .get(&partition)
                .map_or(0, PartitionState::uncommitted),
            owned.uncommitted,
        )
    }

    /// Owned partitions.
    pub fn partitions(&self) -> Vec<SourcePartition> {
        self.lock().partitions.keys().copied().collect()
    }

    /// A message of `partition` goes into a delivery task: counted until the guard drops.
    pub fn enter_lane(self: &Arc<Self>, partition: SourcePartition, generation: u64) -> InLane<T> {
        self.lock().update(&partition, |state| {
            if state.generation == generation {
                state.in_lanes += 1;
            }
        });
        InLane {
            tracker: Arc::clone(self),
            partition,
            generation,
        }
    }
}

/// A message in a delivery task ([`OffsetTracker::enter_lane`]); counted until dropped.
#[derive(Debug)]
pub struct InLane<T> {
    tracker: Arc<OffsetTracker<T>>,
    partition: SourcePartition,
    generation: u64,
}

impl<T> Drop for InLane<T> {
    fn drop(&mut self) {
        self.tracker.lock().update(&self.partition, |state| {
            if state.generation == self.generation {
                state.in_lanes = state.in_lanes.saturating_sub(1);
            }
        });
    }
}

#[cfg(test)]
mod tests;
