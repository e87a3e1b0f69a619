//! Messages of a partition whose log started again under the running worker (the topic deleted
//! and created again, or the partition truncated), kept in order until every message read
//! before them is committed ([`crate::tracker::Dispatched::AfterRewind`]).

use std::collections::{BTreeMap, VecDeque};

use super::Dispatcher;
use crate::records::Inbound;
use crate::tracker::{Dispatched, SourcePartition};

#[derive(Debug, Default)]
pub(super) struct AfterRewind {
    waiting: BTreeMap<SourcePartition, VecDeque<Inbound>>,
}

impl AfterRewind {
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Whether messages of `source` wait: a later one of it waits behind them.
    pub(super) fn is_waiting(&self, source: SourcePartition) -> bool {
        self.waiting.contains_key(&source)
    }

    /// Messages waiting, over all partitions.
    pub(super) fn len(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }

    /// Keeps a message behind those of its partition; returns how many of it wait.
    pub(super) fn keep(&mut self, inbound: Inbound) -> usize {
        let queue = self.waiting.entry(inbound.source()).or_default();
        queue.push_back(inbound);
        queue.len()
    }

    /// The messages of `source` that wait.
    pub(super) fn records(&self, source: SourcePartition) -> impl Iterator<Item = &Inbound> {
        self.waiting.get(&source).into_iter().flatten()
    }

    pub(super) fn sources(&self) -> Vec<SourcePartition> {
        self.waiting.keys().copied().collect()
    }

    pub(super) fn front(&self, source: SourcePartition) -> Option<&Inbound> {
        self.waiting.get(&source).and_then(VecDeque::front)
    }

    pub(super) fn pop(&mut self, source: SourcePartition) -> Option<Inbound> {
        let queue = self.waiting.get_mut(&source)?;
        let front = queue.pop_front();
        if queue.is_empty() {
            self.waiting.remove(&source);
        }
        front
    }
}

impl Dispatcher {
    /// Keeps a message of a partition whose log started again; pauses the partition when many
    /// wait.
    pub(super) fn keep_after_rewind(&mut self, inbound: Inbound) {
        let source = inbound.source();
        if self.after_rewind.keep(inbound) > self.hold_limit {
            self.pause(source);
        }
    }

    /// Registers and offers the messages of partitions whose log started again once those read
    /// before them are committed; resumes their partitions.
    pub(super) async fn release_after_rewind(&mut self) {
        for source in self.after_rewind.sources() {
            while let Some(front) = self.after_rewind.front(source) {
                let loaded = self.sources.parked.is_loaded(source.partition);
                match self
                    .tracker
                    .dispatched(source, front.generation, front.offset)
                {
                    Dispatched::AfterRewind => break,
                    // Read under an assignment since revoked: its next owner reads it again.
                    // Messages of a later assignment may wait behind it.
                    Dispatched::NotOwned => drop(self.after_rewind.pop(source)),
                    Dispatched::Registered => {
                        if let Some(inbound) = self.after_rewind.pop(source) {
                            self.offer_registered(source, inbound, loaded).await;
                        }
                    }
                    Dispatched::Recorded => {
                        if let Some(inbound) = self.after_rewind.pop(source) {
                            self.recorded_earlier(&inbound);
                        }
                    }
                }
            }
            self.resume_if_nothing_waits(source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(partition: i32, offset: i64) -> Inbound {
        Inbound {
            partition,
            offset,
            ..crate::records::fixtures::inbound(Vec::new(), b"k", &[])
        }
    }

    #[test]
    fn messages_wait_in_order_per_partition() {
        let mut waiting = AfterRewind::default();
        assert!(waiting.is_empty());
        assert_eq!(waiting.keep(inbound(0, 0)), 1);
        assert_eq!(waiting.keep(inbound(1, 5)), 1);
        assert_eq!(waiting.keep(inbound(0, 1)), 2);
        assert_eq!(waiting.len(), 3);
        let zero = SourcePartition::ingress(0);
        assert!(waiting.is_waiting(zero));
        assert_eq!(waiting.front(zero).map(|m| m.offset), Some(0));
        assert_eq!(waiting.pop(zero).map(|m| m.offset), Some(0));
        assert_eq!(waiting.pop(zero).map(|m| m.offset), Some(1));
        assert!(!waiting.is_waiting(zero), "emptied");
        assert_eq!(
            waiting.pop(SourcePartition::ingress(1)).map(|m| m.offset),
            Some(5)
        );
        assert!(waiting.is_empty());
    }
}
