//! Key order across retry tiers (`ordering = "key"`): which keys have messages waiting in a
//! tier, and where the next message of such a key must go.
//!
//! Per ingress partition, upstream and key, the worker counts the key's messages in each tier.
//! The rules keep one invariant: along a key's waiting messages, oldest first, the tiers never
//! increase. So the oldest (the head) is always in the highest tier that holds the key:
//!
//! - a fresh message of a key that has any waiting follows the youngest, into the lowest tier
//!   that holds the key (behind it in that tier's partition, since it is written later);
//! - a due tier record is delivered only if no tier above its own holds the key; otherwise it is
//!   not the head, and it moves behind the next older messages: into the lowest tier above its
//!   own that holds the key (not straight to the head's, where a younger message from a lower,
//!   shorter tier may have arrived first);
//! - the head itself moves one tier up (or is decided) as its upstream answers.
//!
//! Within one tier partition a key's records are in order, and the scheduler starts one message
//! per key at a time, so these rules never let a younger message overtake an older one.
//!
//! The state lives in memory, per partition the worker owns. It is rebuilt when a partition is
//! assigned, from the records waiting in the tiers (read from their committed offsets to their
//! end, [`crate::tiers::load_parked`]); until then the partition's messages wait. Memory: one
//! entry per waiting key (its bytes and a count per tier).
//!
//! Records that leave a tier without being read (deleted by retention or a delete-records
//! request, or the tier topic created again) would stay counted, and their keys' messages would
//! detour through the tiers for as long as the worker owns the partition. So when Kafka reports
//! such a loss, the partition's state is marked stale: its messages wait again, and once
//! nothing of it is in flight (every message handed on committed) it is read again from the
//! tiers, which then hold exactly what waits ([`ParkedKeys::lost_waiting_records`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

/// Where a message about to be delivered goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// No older message of its key waits: deliver it.
    Deliver,
    /// Behind older messages of its key: move it to this tier (index in the schedule).
    Follow(usize),
}

/// One key's waiting messages, counted per tier of its upstream's schedule.
#[derive(Debug, Default, Clone)]
struct TierCounts(Vec<u32>);

impl TierCounts {
    fn add(&mut self, tier: usize) {
        if self.0.len() <= tier {
            self.0.resize(tier + 1, 0);
        }
        self.0[tier] += 1;
    }

    fn remove(&mut self, tier: usize) {
        if let Some(count) = self.0.get_mut(tier) {
            *count = count.saturating_sub(1);
        }
    }

    fn lowest(&self) -> Option<usize> {
        self.0.iter().position(|count| *count > 0)
    }

    fn highest(&self) -> Option<usize> {
        self.0.iter().rposition(|count| *count > 0)
    }

    fn lowest_above(&self, tier: usize) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .skip(tier + 1)
            .find(|(_, count)| **count > 0)
            .map(|(above, _)| above)
    }

    fn is_empty(&self) -> bool {
        self.highest().is_none()
    }
}

/// Per upstream, per key (nested so that a lookup borrows instead of allocating).
type KeyCounts = HashMap<String, HashMap<Vec<u8>, TierCounts>>;

/// Whether a partition's state is known.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Knowledge {
    /// Being read from the tiers: its messages wait.
    #[default]
    Reading,
    /// Records left a tier unread: its messages wait, and the state is to be read again once
    /// nothing of the partition is in flight.
    Stale,
    Loaded,
}

#[derive(Debug, Default)]
struct PartitionKeys {
    /// The assignment generation the state belongs to.
    generation: u64,
    /// Reads of the tiers asked under this assignment: only the latest one's answer counts.
    round: u32,
    knowledge: Knowledge,
    keys: KeyCounts,
}

/// A read of a partition's waiting records, asked under one assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRequest {
    pub partition: i32,
    pub generation: u64,
    pub round: u32,
    /// For a read after records were lost: what of the tiers the worker has read already.
    pub in_memory: Option<InMemory>,
}

/// The tier records of a partition that the worker has read and holds, none of them handed on,
/// and where it reads each tier next: a second read counts these and reads on from there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InMemory {
    /// (upstream, key, tier) of each record held.
    pub waiting: Vec<(String, Vec<u8>, usize)>,
    /// Per tier topic, the offset after the last record read (absent: none since assignment).
    pub positions: BTreeMap<String, i64>,
}

/// The waiting keys of every owned partition (shared by the deliveries and the loader).
#[derive(Debug, Default)]
pub struct ParkedKeys {
    partitions: Mutex<HashMap<i32, PartitionKeys>>,
}

impl ParkedKeys {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, PartitionKeys>> {
        // Every operation leaves the map consistent before anything can panic.
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A partition was assigned under `generation`: its state is unknown until loaded by the
    /// read returned.
    pub fn assigned(&self, partition: i32, generation: u64) -> LoadRequest {
        self.lock().insert(
            partition,
            PartitionKeys {
                generation,
                ..PartitionKeys::default()
            },
        );
        LoadRequest {
            partition,
            generation,
            round: 0,
            in_memory: None,
        }
    }

    /// A partition was revoked: the next owner rebuilds its state.
    pub fn revoked(&self, partition: i32) {
        self.lock().remove(&partition);
    }

    /// The waiting records of a partition, read as `request` asked: each (upstream, key, tier).
    /// They replace what was known. Ignored if the partition changed hands meanwhile, or
    /// another read was asked since.
    pub fn load(
        &self,
        request: &LoadRequest,
        waiting: impl IntoIterator<Item = (String, Vec<u8>, usize)>,
    ) -> bool {
        let mut partitions = self.lock();
        let Some(state) = partitions.get_mut(&request.partition) else {
            return false;
        };
        if state.generation != request.generation
            || state.round != request.round
            || state.knowledge != Knowledge::Reading
        {
            return false;
        }
        let mut keys = KeyCounts::new();
        for (upstream, key, tier) in waiting {
            keys.entry(upstream)
                .or_default()
                .entry(key)
                .or_default()
                .add(tier);
        }
        state.keys = keys;
        state.knowledge = Knowledge::Loaded;
        true
    }

    /// Whether a partition's messages may be delivered (its waiting keys are known).
    pub fn is_loaded(&self, partition: i32) -> bool {
        self.lock()
            .get(&partition)
            .is_some_and(|state| state.knowledge == Knowledge::Loaded)
    }

    /// Records of a partition's tiers were deleted or lost before they were read: its state
    /// counts them still. Its messages wait from now on, until the state is read again
    /// ([`Self::read_again`]). False when the partition is not owned or is stale already.
    pub fn lost_waiting_records(&self, partition: i32) -> bool {
        let mut partitions = self.lock();
        match partitions.get_mut(&partition) {
            Some(state) if state.knowledge != Knowledge::Stale => {
                state.knowledge = Knowledge::Stale;
                true
            }
            _ => false,
        }
    }

    /// Partitions whose state is to be read again.
    pub fn stale(&self) -> Vec<i32> {
        self.lock()
            .iter()
            .filter(|(_, state)| state.knowledge == Knowledge::Stale)
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// The read that replaces a stale partition's state, counting `in_memory`; the caller asks
    /// it once nothing of the partition is in flight (no move or outcome can change the tiers
    /// meanwhile, since its messages wait).
    pub fn read_again(&self, partition: i32, in_memory: InMemory) -> Option<LoadRequest> {
        let mut partitions = self.lock();
        let state = partitions.get_mut(&partition)?;
        if state.knowledge != Knowledge::Stale {
            return None;
        }
        state.knowledge = Knowledge::Reading;
        state.round = state.round.wrapping_add(1);
        Some(LoadRequest {
            partition,
            generation: state.generation,
            round: state.round,
            in_memory: Some(in_memory),
        })
    }

    /// Where a message of `key` for `upstream` goes: `tier` is the tier it was read from
    /// (`None`: fresh from the ingress topic).
    pub fn place(
        &self,
        partition: i32,
        upstream: &str,
        key: &[u8],
        tier: Option<usize>,
    ) -> Placement {
        let partitions = self.lock();
        let Some(counts) = partitions
            .get(&partition)
            .and_then(|state| state.keys.get(upstream)?.get(key))
        else {
            return Placement::Deliver;
        };
        match tier {
            None => counts
                .lowest()
                .map_or(Placement::Deliver, Placement::Follow),
            Some(own) => counts
                .lowest_above(own)
                .map_or(Placement::Deliver, Placement::Follow),
        }
    }

    /// A message of `key` moved from `from` (`None`: the ingress topic) into tier `to`.
    pub fn moved(
        &self,
        partition: i32,
        upstream: &str,
        key: &[u8],
        from: Option<usize>,
        to: usize,
    ) {
        let mut partitions = self.lock();
        let Some(state) = partitions.get_mut(&partition) else {
            return;
        };
        let counts = state
            .keys
            .entry(upstream.to_owned())
            .or_default()
            .entry(key.to_vec())
            .or_default();
        if let Some(from) = from {
            counts.remove(from);
        }
        counts.add(to);
    }

    /// A message of `key` read from tier `from` got its outcome.
    pub fn decided(&self, partition: i32, upstream: &str, key: &[u8], from: usize) {
        let mut partitions = self.lock();
        let Some(state) = partitions.get_mut(&partition) else {
            return;
        };
        let Some(keys) = state.keys.get_mut(upstream) else {
            return;
        };
        if let Some(counts) = keys.get_mut(key) {
            counts.remove(from);
            if counts.is_empty() {
                keys.remove(key);
            }
        }
    }

    /// Keys with messages waiting, over all partitions.
    pub fn waiting_keys(&self) -> usize {
        self.lock()
            .values()
            .flat_map(|state| state.keys.values())
            .map(HashMap::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: i32 = 3;

    fn loaded() -> ParkedKeys {
        let parked = ParkedKeys::default();
        let read = parked.assigned(P, 1);
        assert!(!parked.is_loaded(P));
        assert!(parked.load(&read, []));
        parked
    }

    #[test]
    fn a_key_with_nothing_waiting_is_delivered() {
        let parked = loaded();
        assert_eq!(parked.place(P, "u", b"k", None), Placement::Deliver);
        assert_eq!(parked.place(P, "u", b"k", Some(2)), Placement::Deliver);
    }

    #[test]
    fn fresh_messages_follow_the_youngest_and_tier_records_follow_the_head() {
        let parked = loaded();
        // m1 fails and moves to tier 0; m2 arrives and must follow it.
        parked.moved(P, "u", b"k", None, 0);
        assert_eq!(parked.place(P, "u", b"k", None), Placement::Follow(0));
        parked.moved(P, "u", b"k", None, 0);
        // m1 comes due first (same tier, written first): it is the head.
        assert_eq!(parked.place(P, "u", b"k", Some(0)), Placement::Deliver);
        // It fails again and moves up to tier 1.
        parked.moved(P, "u", b"k", Some(0), 1);
        // m3 arrives: it follows the youngest (m2, tier 0), not the head.
        assert_eq!(parked.place(P, "u", b"k", None), Placement::Follow(0));
        parked.moved(P, "u", b"k", None, 0);
        // m2 comes due in tier 0 while m1 waits in tier 1: m2 follows m1 up.
        assert_eq!(parked.place(P, "u", b"k", Some(0)), Placement::Follow(1));
        parked.moved(P, "u", b"k", Some(0), 1);
        // m3 likewise.
        assert_eq!(parked.place(P, "u", b"k", Some(0)), Placement::Follow(1));
        parked.moved(P, "u", b"k", Some(0), 1);
        // Now all three are in tier 1 in order: each is delivered in turn.
        for _ in 0..3 {
            assert_eq!(parked.place(P, "u", b"k", Some(1)), Placement::Deliver);
            parked.decided(P, "u", b"k", 1);
        }
        assert_eq!(
            parked.waiting_keys(),
            0,
            "a key with nothing waiting is forgotten"
        );
        assert_eq!(parked.place(P, "u", b"k", None), Placement::Deliver);
    }

    #[test]
    fn a_younger_message_from_a_shorter_tier_never_passes_an_older_one() {
        let parked = loaded();
        // m0 waits in tier 2, m1 in tier 1, m2 in tier 0 (each moved once more than the next).
        parked.moved(P, "u", b"k", None, 2);
        parked.moved(P, "u", b"k", None, 1);
        parked.moved(P, "u", b"k", None, 0);
        // Tier 0 is the shortest: m2 comes due first. It must go behind m1 (tier 1), not to
        // m0's tier 2, where it would arrive before m1.
        assert_eq!(parked.place(P, "u", b"k", Some(0)), Placement::Follow(1));
        parked.moved(P, "u", b"k", Some(0), 1);
        // m1 comes due in tier 1 (m2 behind it there): behind m0 in tier 2.
        assert_eq!(parked.place(P, "u", b"k", Some(1)), Placement::Follow(2));
        parked.moved(P, "u", b"k", Some(1), 2);
        assert_eq!(parked.place(P, "u", b"k", Some(1)), Placement::Follow(2));
        parked.moved(P, "u", b"k", Some(1), 2);
        // All in tier 2 in order m0, m1, m2: each is the head in turn.
        for _ in 0..3 {
            assert_eq!(parked.place(P, "u", b"k", Some(2)), Placement::Deliver);
            parked.decided(P, "u", b"k", 2);
        }
        assert_eq!(parked.waiting_keys(), 0);
    }

    #[test]
    fn keys_upstreams_and_partitions_are_apart() {
        let parked = loaded();
        let read = parked.assigned(4, 2);
        parked.load(&read, []);
        parked.moved(P, "u", b"k", None, 1);
        assert_eq!(parked.place(P, "u", b"other", None), Placement::Deliver);
        assert_eq!(parked.place(P, "v", b"k", None), Placement::Deliver);
        assert_eq!(parked.place(4, "u", b"k", None), Placement::Deliver);
    }

    #[test]
    fn state_is_rebuilt_from_what_waits_and_only_for_the_current_owner() {
        let parked = ParkedKeys::default();
        let read = parked.assigned(P, 7);
        let older = LoadRequest {
            generation: 6,
            ..read.clone()
        };
        assert!(
            !parked.load(&older, [("u".into(), b"k".to_vec(), 0)]),
            "an older assignment"
        );
        assert!(!parked.is_loaded(P));
        assert!(parked.load(
            &read,
            [
                ("u".into(), b"k".to_vec(), 2),
                ("u".into(), b"k".to_vec(), 0)
            ]
        ));
        assert_eq!(parked.place(P, "u", b"k", None), Placement::Follow(0));
        assert_eq!(parked.place(P, "u", b"k", Some(0)), Placement::Follow(2));
        parked.revoked(P);
        assert!(!parked.is_loaded(P));
        assert!(!parked.load(&read, []), "revoked");
    }

    #[test]
    fn records_lost_from_a_tier_make_the_state_stale_until_read_again() {
        let parked = loaded();
        parked.moved(P, "u", b"lost", None, 1);
        parked.moved(P, "u", b"kept", None, 0);
        assert!(parked.lost_waiting_records(P));
        assert!(!parked.lost_waiting_records(P), "stale already");
        assert!(!parked.lost_waiting_records(9), "not owned");
        assert!(!parked.is_loaded(P), "its messages wait");
        assert_eq!(parked.stale(), [P]);

        let again = parked.read_again(P, InMemory::default()).unwrap();
        assert_eq!(again.round, 1);
        assert_eq!(
            parked.read_again(P, InMemory::default()),
            None,
            "asked once"
        );
        assert!(parked.stale().is_empty());
        let first = LoadRequest {
            round: 0,
            ..again.clone()
        };
        assert!(
            !parked.load(&first, [("u".into(), b"lost".to_vec(), 1)]),
            "the assignment's read, answered late, is not the latest"
        );
        // What the tiers hold replaces what was counted: the lost key waits no more.
        assert!(parked.load(&again, [("u".into(), b"kept".to_vec(), 0)]));
        assert!(parked.is_loaded(P));
        assert_eq!(parked.place(P, "u", b"lost", None), Placement::Deliver);
        assert_eq!(parked.place(P, "u", b"kept", None), Placement::Follow(0));
        assert_eq!(parked.waiting_keys(), 1);
    }

    #[test]
    fn a_loss_reported_while_the_tiers_are_read_makes_that_read_void() {
        let parked = ParkedKeys::default();
        let read = parked.assigned(P, 1);
        assert!(parked.lost_waiting_records(P));
        assert!(
            !parked.load(&read, [("u".into(), b"k".to_vec(), 0)]),
            "it may have been read before the loss"
        );
        let again = parked.read_again(P, InMemory::default()).unwrap();
        assert!(parked.load(&again, []));
        assert!(parked.is_loaded(P));
    }
}
