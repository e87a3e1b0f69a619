//! Which outcomes may be committed.
//!
//! Messages of a partition are dispatched in offset order but finish out of order (lanes run
//! concurrently). An outcome may only be written in the same transaction as the offset that
//! covers it, and an offset covers every message before it, so only the **contiguous prefix**
//! of finished messages of each partition is ever committed. A finished message behind an
//! unfinished one waits; if the worker dies meanwhile, both are re-read and decided again, and
//! neither outcome was written: exactly one outcome per message.
//!
//! Partitions are owned per assignment *generation*: when a partition is revoked its pending
//! work is dropped (the new owner redoes it), and a late outcome of an old generation is
//! ignored.

use std::collections::{BTreeMap, VecDeque};
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

/// One message's finished work: the records to write in the transaction.
#[derive(Debug, Clone)]
pub struct Finished<T> {
    pub offset: i64,
    pub output: T,
}

#[derive(Debug)]
struct PartitionState<T> {
    generation: u64,
    /// Dispatched offsets in order, each with its output once finished.
    pending: VecDeque<(i64, Option<T>)>,
    /// Finished messages taken by the committer and not yet committed: they still count as
    /// uncommitted work until their transaction commits (or they are restored).
    in_transaction: usize,
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
}

impl<T> Default for OffsetTracker<T> {
    fn default() -> Self {
        Self {
            owned: Mutex::new(Owned {
                partitions: BTreeMap::new(),
                uncommitted: 0,
            }),
            next_generation: Mutex::new(1),
        }
    }
}

/// What the committer takes for one partition: (offset, output) in offset order and the
/// offset to commit (the next one to read).
#[derive(Debug)]
pub struct Ready<T> {
    pub partition: SourcePartition,
    pub generation: u64,
    pub outputs: Vec<(i64, T)>,
    pub commit_offset: i64,
}

impl<T> OffsetTracker<T> {
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
                state.pending.push_back((offset, None));
                state.last_offset = Some(offset);
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
            Ok(index) => {
                state.pending[index].1 = Some(finished.output);
                true
            }
            Err(_) => false,
        }
    }

    /// Takes the contiguous finished prefix of every partition, up to `max` outputs in all.
    pub fn take_ready(&self, max: usize) -> Vec<Ready<T>> {
        // Work moves from pending to in the transaction: the sum does not change.
        let mut owned = self.lock();
        let mut ready = Vec::new();
        let mut budget = max;
        for (partition, state) in owned.partitions.iter_mut() {
            let mut outputs = Vec::new();
            let mut last = None;
            while budget > 0
                && state
                    .pending
                    .front()
                    .is_some_and(|(_, output)| output.is_some())
            {
                let Some((offset, Some(output))) = state.pending.pop_front() else {
                    break;
                };
                outputs.push((offset, output));
                last = Some(offset);
                budget -= 1;
            }
            if let Some(last) = last {
                state.in_transaction += outputs.len();
                ready.push(Ready {
                    partition: *partition,
                    generation: state.generation,
                    outputs,
                    commit_offset: last + 1,
                });
            }
        }
        ready
    }

    /// Puts back what a failed transaction took, in front of the rest, if the partition is
    /// still owned under the same generation.
    pub fn restore(&self, batch: Vec<Ready<T>>) {
        let mut owned = self.lock();
        for ready in batch.into_iter().rev() {
            owned.update(&ready.partition, |state| {
                if state.generation != ready.generation {
                    return;
                }
                state.in_transaction = state.in_transaction.saturating_sub(ready.outputs.len());
                for (offset, output) in ready.outputs.into_iter().rev() {
                    state.pending.push_front((offset, Some(output)));
                }
            });
        }
    }

    /// A batch taken by [`Self::take_ready`] was committed.
    pub fn committed(&self, batch: &[Ready<T>]) {
        let mut owned = self.lock();
        for ready in batch {
            owned.update(&ready.partition, |state| {
                if state.generation == ready.generation {
                    state.in_transaction = state.in_transaction.saturating_sub(ready.outputs.len());
                }
            });
        }
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

    /// Whether `partitions` have nothing more to commit before they go to another owner: no
    /// message of theirs in a delivery task, no finished prefix waiting for the committer, no
    /// transaction of theirs open. (What is left was read and never started: the next owner
    /// reads it again without it having been sent.)
    pub fn handed_over(&self, partitions: &[SourcePartition]) -> bool {
        let owned = self.lock();
        partitions.iter().all(|partition| {
            owned.partitions.get(partition).is_none_or(|state| {
                state.in_lanes == 0
                    && state.in_transaction == 0
                    && state
                        .pending
                        .front()
                        .is_none_or(|(_, output)| output.is_none())
            })
        })
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
