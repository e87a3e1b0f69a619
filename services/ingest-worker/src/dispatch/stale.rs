//! Key order states gone stale (records lost from a retry tier, [`crate::parked`]), read again
//! once their partition is settled.

use std::collections::VecDeque;

use rdkafka::Offset;
use rdkafka::consumer::Consumer;

use super::Dispatcher;
use crate::parked::InMemory;
use crate::records::Inbound;
use crate::tracker::SourcePartition;

impl Dispatcher {
    /// Asks for the stale key order states to be read again from the tiers, each once its
    /// partition is settled: every message of it that was handed on is committed, so what
    /// waits is what the worker holds of the tiers plus what it has not read of them yet, and
    /// nothing changes either while the partition's messages are held.
    pub(super) fn read_stale_states_again(&self) {
        for partition in self.sources.parked.stale() {
            let tiers: Vec<SourcePartition> = self
                .sources
                .topics
                .tiers()
                .map(|(topic, _, _)| SourcePartition { topic, partition })
                .collect();
            if !std::iter::once(SourcePartition::ingress(partition))
                .chain(tiers.iter().copied())
                .all(|source| self.is_settled(source))
            {
                continue;
            }
            let Ok(permit) = self.sources.loads.try_reserve() else {
                continue;
            };
            let in_memory = self.tier_records_held(partition, &tiers);
            let held = in_memory.waiting.len();
            if let Some(request) = self.sources.parked.read_again(partition, in_memory) {
                tracing::info!(
                    partition,
                    held,
                    "reading the partition's retry tiers again: its work in flight is committed"
                );
                permit.send(request);
            }
        }
    }

    /// Whether every message of `source` that is not held here is committed.
    fn is_settled(&self, source: SourcePartition) -> bool {
        let held = self.held.get(&source).map_or(0, VecDeque::len);
        self.tracker.uncommitted_counts(source).0 == held
    }

    /// The tier records of `partition` read and held here (for room, until due, or after their
    /// log started again), and where each tier is read next.
    fn tier_records_held(&self, partition: i32, tiers: &[SourcePartition]) -> InMemory {
        let mut in_memory = InMemory::default();
        for source in tiers {
            let held = self
                .held
                .get(source)
                .into_iter()
                .flatten()
                .map(|prepared| &prepared.inbound);
            // Records of an earlier assignment are dropped when their turn comes.
            let owned = self.tracker.generation(*source);
            let records = held
                .chain(self.due.records(*source))
                .chain(self.after_rewind.records(*source))
                .filter(|record| Some(record.generation) == owned);
            in_memory.waiting.extend(records.filter_map(waiting_entry));
        }
        match self.sources.tiers.position() {
            Ok(positions) => {
                for element in positions.elements() {
                    let ours = element.partition() == partition
                        && self
                            .sources
                            .topics
                            .index_of(element.topic())
                            .is_some_and(|index| tiers.iter().any(|source| source.topic == index));
                    if let (true, Offset::Offset(next)) = (ours, element.offset()) {
                        in_memory.positions.insert(element.topic().to_owned(), next);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, partition, "cannot read the retry tier consumer's positions; the tiers are read from their committed offsets");
            }
        }
        in_memory
    }
}

/// (upstream, key, tier) of a tier record that waits for its key.
fn waiting_entry(inbound: &Inbound) -> Option<(String, Vec<u8>, usize)> {
    let state = inbound.retry_state()?;
    Some((state.upstream.clone(), inbound.key.clone()?, state.tier))
}
