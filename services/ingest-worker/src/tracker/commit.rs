//! What the committer takes from the tracker, and what it reports back: the finished prefix
//! of each partition and what finished behind it ([`ahead`]), put back when a transaction
//! fails and marked recorded when it commits.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::{OffsetTracker, PartitionState, Slot, SourcePartition, ahead};

/// What the committer takes for one partition: (offset, output) in offset order and the
/// offset to commit (the next one to read). Outputs at offsets above `commit_offset` are
/// committed ahead of it; `recorded_ahead` names them, and those recorded before, for the
/// commit's metadata ([`ahead::encode`]).
#[derive(Debug)]
pub struct Ready<T> {
    pub partition: SourcePartition,
    pub generation: u64,
    pub outputs: Vec<(i64, T)>,
    pub commit_offset: i64,
    pub recorded_ahead: BTreeSet<i64>,
}

impl<T> Ready<T> {
    /// Outputs of the contiguous prefix (the rest are committed ahead).
    pub fn prefix_len(&self) -> usize {
        self.outputs
            .partition_point(|(offset, _)| *offset < self.commit_offset)
    }
}

impl<T> OffsetTracker<T> {
    pub fn metadata_limit(&self) -> usize {
        self.metadata_limit.load(Ordering::Relaxed)
    }

    /// The broker refused commit metadata of the current limit: from now on at most
    /// [`ahead::smaller_limit`] of it. Returns the new limit, or `None` when it was 0 already.
    pub fn shrink_metadata_limit(&self) -> Option<usize> {
        let limit = self.metadata_limit();
        if limit == 0 {
            return None;
        }
        let smaller = ahead::smaller_limit(limit);
        self.metadata_limit.store(smaller, Ordering::Relaxed);
        Some(smaller)
    }

    /// Takes the contiguous finished prefix of every partition and the finished messages
    /// behind it (committed ahead of it, [`ahead`]), up to `max` outputs in all.
    pub fn take_ready(&self, max: usize) -> Vec<Ready<T>> {
        // Work moves from pending to in the transaction: the sum changes only by the recorded
        // messages the commit position passes.
        let limit = self.metadata_limit();
        let mut owned = self.lock();
        let mut ready = Vec::new();
        let mut budget = max;
        let mut passed = 0;
        for (partition, state) in owned.partitions.iter_mut() {
            let mut outputs = Vec::new();
            let mut last = None;
            while budget > 0
                && state
                    .pending
                    .front()
                    .is_some_and(|(_, slot)| matches!(slot, Slot::Finished(_) | Slot::Recorded))
            {
                match state.pending.pop_front() {
                    Some((offset, Slot::Finished(output))) => {
                        outputs.push((offset, output));
                        budget -= 1;
                        last = Some(offset);
                    }
                    Some((offset, _)) => {
                        passed += 1;
                        last = Some(offset);
                    }
                    None => break,
                }
            }
            state.in_transaction += outputs.len();
            let commit_offset = match (last, state.pending.front()) {
                (Some(last), _) => last + 1,
                (None, Some((open, _))) => *open,
                _ => continue,
            };
            state.recorded_ahead = state.recorded_ahead.split_off(&commit_offset);
            let mut recorded_ahead = state.recorded_ahead.clone();
            if budget > 0 {
                budget -= take_ahead(
                    state,
                    commit_offset,
                    budget,
                    limit,
                    &mut outputs,
                    &mut recorded_ahead,
                );
            }
            if last.is_some() || !outputs.is_empty() {
                ready.push(Ready {
                    partition: *partition,
                    generation: state.generation,
                    outputs,
                    commit_offset,
                    recorded_ahead,
                });
            }
        }
        owned.uncommitted -= passed;
        ready
    }

    /// Puts back what a failed transaction took, in front of the rest, if the partition is
    /// still owned under the same generation.
    pub fn restore(&self, batch: Vec<Ready<T>>) {
        let mut owned = self.lock();
        for ready in batch.into_iter().rev() {
            let partition = ready.partition;
            owned.update(&partition, |state| {
                if state.generation != ready.generation {
                    return;
                }
                let prefix = ready.prefix_len();
                state.in_transaction = state.in_transaction.saturating_sub(prefix);
                let mut outputs = ready.outputs;
                for (offset, output) in outputs.split_off(prefix) {
                    if let Ok(index) = state
                        .pending
                        .binary_search_by_key(&offset, |(offset, _)| *offset)
                        && matches!(state.pending[index].1, Slot::TakenAhead)
                    {
                        state.pending[index].1 = Slot::Finished(output);
                        state.taken_ahead -= 1;
                    }
                }
                for (offset, output) in outputs.into_iter().rev() {
                    state.pending.push_front((offset, Slot::Finished(output)));
                }
            });
        }
    }

    /// A batch taken by [`Self::take_ready`] was committed. Returns how many of its outputs
    /// were committed ahead of their partitions' commit positions.
    pub fn committed(&self, batch: &[Ready<T>]) -> usize {
        let mut owned = self.lock();
        let mut ahead = 0;
        for ready in batch {
            owned.update(&ready.partition, |state| {
                if state.generation != ready.generation {
                    return;
                }
                let prefix = ready.prefix_len();
                state.in_transaction = state.in_transaction.saturating_sub(prefix);
                for (offset, _) in &ready.outputs[prefix..] {
                    if let Ok(index) = state
                        .pending
                        .binary_search_by_key(offset, |(offset, _)| *offset)
                        && matches!(state.pending[index].1, Slot::TakenAhead)
                    {
                        state.pending[index].1 = Slot::Recorded;
                        state.taken_ahead -= 1;
                        state.recorded_ahead.insert(*offset);
                        ahead += 1;
                    }
                }
            });
        }
        ahead
    }

    /// Whether `partitions` have nothing more to commit before they go to another owner: no
    /// message of theirs in a delivery task, no finished message waiting for the committer
    /// (in the prefix, or behind it unless the last round's metadata was full), no
    /// transaction of theirs open. (What is left was read and never started: the next owner
    /// reads it again without it having been sent.)
    pub fn handed_over(&self, partitions: &[SourcePartition]) -> bool {
        let owned = self.lock();
        partitions.iter().all(|partition| {
            owned.partitions.get(partition).is_none_or(|state| {
                let finished = |(_, slot): &(i64, Slot<T>)| matches!(slot, Slot::Finished(_));
                let committable = if !state.ahead_full {
                    state.pending.iter().any(finished)
                } else {
                    state.pending.front().is_some_and(finished)
                };
                state.in_lanes == 0
                    && state.in_transaction == 0
                    && state.taken_ahead == 0
                    && !committable
            })
        })
    }
}

/// Takes the finished messages behind the open one at `commit_offset`, as many as `budget`
/// allows and the commit's metadata of at most `limit` bytes can name beside `recorded_ahead`
/// (which they join), into `outputs`. Returns how many it took.
fn take_ahead<T>(
    state: &mut PartitionState<T>,
    commit_offset: i64,
    budget: usize,
    limit: usize,
    outputs: &mut Vec<(i64, T)>,
    recorded_ahead: &mut BTreeSet<i64>,
) -> usize {
    let finished: Vec<usize> = state
        .pending
        .iter()
        .enumerate()
        .filter(|(_, (_, slot))| matches!(slot, Slot::Finished(_)))
        .map(|(index, _)| index)
        .take(budget)
        .collect();
    let candidates: Vec<i64> = finished
        .iter()
        .map(|&index| state.pending[index].0)
        .collect();
    let fitting = ahead::most_that_fit(commit_offset, recorded_ahead, &candidates, limit);
    state.ahead_full = fitting < finished.len();
    for &index in &finished[..fitting] {
        let (offset, slot) = &mut state.pending[index];
        if let Slot::Finished(output) = std::mem::replace(slot, Slot::TakenAhead) {
            outputs.push((*offset, output));
            recorded_ahead.insert(*offset);
        }
    }
    state.taken_ahead += fitting;
    fitting
}
