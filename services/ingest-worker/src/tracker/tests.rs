use super::*;

fn finish(
    tracker: &OffsetTracker<&'static str>,
    partition: i32,
    generation: u64,
    offset: i64,
    output: &'static str,
) -> bool {
    tracker.finished(p(partition), generation, Finished { offset, output })
}

fn p(partition: i32) -> SourcePartition {
    SourcePartition::ingress(partition)
}

#[test]
fn an_ingress_partition_and_a_tier_partition_of_the_same_number_are_apart() {
    let tracker: OffsetTracker<&'static str> = OffsetTracker::default();
    let tier = SourcePartition {
        topic: 1,
        partition: 0,
    };
    let ingress = tracker.assign(p(0));
    let retry = tracker.assign(tier);
    assert_eq!(tracker.dispatched(p(0), ingress, 7), Dispatched::Registered);
    assert_eq!(tracker.dispatched(tier, retry, 3), Dispatched::Registered);
    assert!(tracker.finished(
        tier,
        retry,
        Finished {
            offset: 3,
            output: "t"
        }
    ));
    let ready = tracker.take_ready(10);
    assert_eq!(ready.len(), 1, "the ingress message is not finished");
    assert_eq!(ready[0].partition, tier);
    assert_eq!(ready[0].commit_offset, 4);
}

#[test]
fn the_commit_position_passes_only_the_contiguous_prefix() {
    let tracker = OffsetTracker::default();
    let generation = tracker.assign(p(0));
    for offset in [10, 11, 12] {
        assert_eq!(
            tracker.dispatched(p(0), generation, offset),
            Dispatched::Registered
        );
    }
    assert!(tracker.take_ready(100).is_empty(), "nothing finished");
    assert!(finish(&tracker, 0, generation, 10, "a"));
    assert!(finish(&tracker, 0, generation, 11, "b"));
    let ready = tracker.take_ready(100);
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].outputs, [(10, "a"), (11, "b")]);
    assert_eq!(ready[0].commit_offset, 12, "12 is not finished");
    assert!(ready[0].recorded_ahead.is_empty());
    assert_eq!(tracker.in_flight(), 3, "taken is not committed yet");
    tracker.committed(&ready);
    assert_eq!(tracker.in_flight(), 1);
}

#[test]
fn revoked_and_old_generation_work_is_dropped() {
    let tracker = OffsetTracker::default();
    let old = tracker.assign(p(3));
    assert_eq!(tracker.dispatched(p(3), old, 0), Dispatched::Registered);
    assert_eq!(tracker.revoke(p(3)), 1);
    assert!(!finish(&tracker, 3, old, 0, "late"), "revoked");
    assert_eq!(tracker.dispatched(p(3), old, 1), Dispatched::NotOwned);
    let new = tracker.assign(p(3));
    assert_eq!(
        tracker.dispatched(p(3), new, 0),
        Dispatched::Registered,
        "re-read from the committed offset"
    );
    assert!(!finish(&tracker, 3, old, 0, "stale"), "old generation");
    assert!(finish(&tracker, 3, new, 0, "fresh"));
    assert_eq!(tracker.take_ready(10)[0].outputs, [(0, "fresh")]);
    assert_eq!(
        tracker.dispatched(p(9), new, 0),
        Dispatched::NotOwned,
        "not owned"
    );
}

#[test]
fn batches_are_bounded_and_restorable() {
    let tracker = OffsetTracker::default();
    let generation = tracker.assign(p(1));
    for offset in 0..5 {
        tracker.dispatched(p(1), generation, offset);
        finish(&tracker, 1, generation, offset, "x");
    }
    let batch = tracker.take_ready(3);
    assert_eq!(batch[0].outputs.len(), 3);
    assert_eq!(batch[0].commit_offset, 3);
    assert_eq!(
        tracker.uncommitted_counts(p(1)).0,
        5,
        "a batch in its transaction still counts"
    );
    tracker.restore(batch);
    assert_eq!(tracker.uncommitted_counts(p(1)).0, 5);
    let again = tracker.take_ready(10);
    assert_eq!(again[0].outputs.len(), 5, "restored in front, in order");
    assert_eq!(again[0].commit_offset, 5);
    tracker.committed(&again);
    assert_eq!(tracker.uncommitted_counts(p(1)).0, 0);
}

#[test]
fn a_log_that_starts_again_waits_until_the_old_logs_messages_are_committed() {
    let tracker = OffsetTracker::default();
    let generation = tracker.assign(p(0));
    for offset in [398, 399] {
        assert_eq!(
            tracker.dispatched(p(0), generation, offset),
            Dispatched::Registered
        );
    }
    // The topic is created again: the next message read is offset 0 of the new log.
    assert_eq!(
        tracker.dispatched(p(0), generation, 0),
        Dispatched::AfterRewind
    );
    assert!(finish(&tracker, 0, generation, 398, "old"));
    assert!(finish(&tracker, 0, generation, 399, "old"));
    let ready = tracker.take_ready(10);
    assert_eq!(ready[0].commit_offset, 400);
    assert_eq!(
        tracker.dispatched(p(0), generation, 0),
        Dispatched::AfterRewind,
        "taken but not committed yet"
    );
    tracker.committed(&ready);
    assert_eq!(
        tracker.dispatched(p(0), generation, 0),
        Dispatched::Registered
    );
    assert_eq!(
        tracker.dispatched(p(0), generation, 1),
        Dispatched::Registered
    );
    assert!(finish(&tracker, 0, generation, 0, "new"));
    assert!(finish(&tracker, 0, generation, 1, "new"));
    let ready = tracker.take_ready(10);
    assert_eq!(ready[0].outputs, [(0, "new"), (1, "new")]);
    assert_eq!(ready[0].commit_offset, 2);
}

/// The sum kept as partitions change, against one counted from scratch.
fn counted(tracker: &OffsetTracker<&'static str>) -> usize {
    let owned = tracker.lock();
    owned
        .partitions
        .values()
        .map(PartitionState::uncommitted)
        .sum()
}

#[test]
fn the_uncommitted_sum_follows_every_change() {
    let tracker = OffsetTracker::default();
    let check = |what: &str| {
        let (_, total) = tracker.uncommitted_counts(p(0));
        assert_eq!(total, counted(&tracker), "after {what}");
        assert_eq!(tracker.in_flight(), total, "after {what}");
    };
    let first = tracker.assign(p(0));
    let second = tracker.assign(p(1));
    for offset in 0..6 {
        tracker.dispatched(p(0), first, offset);
        tracker.dispatched(p(1), second, offset);
    }
    tracker.dispatched(p(0), first, 3);
    check("dispatching, and an offset of a log that went back kept out");
    for offset in 0..4 {
        finish(&tracker, 0, first, offset, "x");
        finish(&tracker, 1, second, offset, "y");
    }
    let batch = tracker.take_ready(5);
    check("taking a batch");
    tracker.restore(batch);
    check("restoring it");
    let batch = tracker.take_ready(100);
    tracker.committed(&batch[..1]);
    check("committing part of it");
    assert_eq!(tracker.uncommitted_counts(p(0)), (2, 8));
    tracker.revoke(p(1));
    check("a revocation with work in a transaction");
    tracker.committed(&batch);
    check("committing a batch of a revoked partition");
    let again = tracker.assign(p(0));
    check("assigning an owned partition again");
    assert_eq!(tracker.in_flight(), 0, "its old work is the new owner's");
    assert_eq!(tracker.dispatched(p(0), again, 0), Dispatched::Registered);
    check("dispatching under the new generation");
    assert_eq!(tracker.in_flight(), 1);
}

#[test]
fn partitions_are_handed_over_once_their_started_work_is_committed() {
    let tracker = Arc::new(OffsetTracker::<&'static str>::default());
    let zero = p(0);
    let generation = tracker.assign(zero);
    for offset in 0..3 {
        assert_eq!(
            tracker.dispatched(zero, generation, offset),
            Dispatched::Registered
        );
    }
    assert!(
        tracker.handed_over(&[zero]),
        "read and never started: nothing to wait for"
    );
    let first = tracker.enter_lane(zero, generation);
    let second = tracker.enter_lane(zero, generation);
    assert!(!tracker.handed_over(&[zero]), "in delivery");
    finish(&tracker, 0, generation, 0, "a");
    drop(first);
    assert!(!tracker.handed_over(&[zero]), "one still in delivery");
    finish(&tracker, 0, generation, 1, "b");
    drop(second);
    assert!(
        !tracker.handed_over(&[zero]),
        "finished, waiting for the committer"
    );
    let batch = tracker.take_ready(10);
    assert!(!tracker.handed_over(&[zero]), "in a transaction");
    tracker.committed(&batch);
    assert!(tracker.handed_over(&[zero]), "offset 2 was never started");

    let stale = tracker.enter_lane(zero, generation);
    tracker.revoke(zero);
    let again = tracker.assign(zero);
    drop(stale);
    let _current = tracker.enter_lane(zero, again);
    assert!(
        !tracker.handed_over(&[zero]),
        "an earlier assignment's delivery ending does not count for the new one"
    );
    assert!(tracker.handed_over(&[p(7)]), "not owned");
}

fn offsets(list: &[i64]) -> BTreeSet<i64> {
    list.iter().copied().collect()
}

#[test]
fn what_finished_behind_an_open_message_is_committed_ahead_of_it_in_every_round() {
    let tracker = OffsetTracker::default();
    let generation = tracker.assign(p(0));
    for offset in 10..16 {
        tracker.dispatched(p(0), generation, offset);
    }
    for offset in [10, 12, 13, 15] {
        assert!(finish(&tracker, 0, generation, offset, "x"));
    }
    assert!(
        !tracker.handed_over(&[p(0)]),
        "10, 12, 13 and 15 are finished"
    );
    let ready = tracker.take_ready(100);
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].commit_offset, 11, "11 has not finished");
    assert_eq!(
        ready[0].outputs,
        [(10, "x"), (12, "x"), (13, "x"), (15, "x")]
    );
    assert_eq!(ready[0].prefix_len(), 1);
    assert_eq!(ready[0].recorded_ahead, offsets(&[12, 13, 15]));
    assert!(!tracker.handed_over(&[p(0)]), "in a transaction");
    assert_eq!(tracker.committed(&ready), 3);
    assert!(tracker.handed_over(&[p(0)]), "11 and 14 never started");
    assert!(tracker.take_ready(100).is_empty(), "nothing new to commit");
    assert_eq!(
        tracker.in_flight(),
        5,
        "the recorded ones count until the commit position passes them"
    );

    // 14 finishes late: committed ahead too, the earlier ones named again beside it.
    assert!(finish(&tracker, 0, generation, 14, "y"));
    let ready = tracker.take_ready(100);
    assert_eq!(ready[0].outputs, [(14, "y")]);
    assert_eq!(ready[0].commit_offset, 11);
    assert_eq!(ready[0].recorded_ahead, offsets(&[12, 13, 14, 15]));
    tracker.committed(&ready);
    // 11 finishes: the commit position passes the recorded ones without writing them again.
    assert!(finish(&tracker, 0, generation, 11, "z"));
    let ready = tracker.take_ready(100);
    assert_eq!(ready[0].outputs, [(11, "z")]);
    assert_eq!(ready[0].commit_offset, 16);
    assert!(ready[0].recorded_ahead.is_empty(), "all passed");
    tracker.committed(&ready);
    assert_eq!(tracker.in_flight(), 0);
    assert_eq!(tracker.in_flight(), counted(&tracker));
}

#[test]
fn what_was_taken_ahead_is_finished_again_when_its_transaction_fails() {
    let tracker = OffsetTracker::default();
    let generation = tracker.assign(p(0));
    for offset in 0..4 {
        tracker.dispatched(p(0), generation, offset);
    }
    finish(&tracker, 0, generation, 0, "a");
    finish(&tracker, 0, generation, 2, "c");
    finish(&tracker, 0, generation, 3, "d");
    let ready = tracker.take_ready(100);
    assert_eq!(ready[0].outputs, [(0, "a"), (2, "c"), (3, "d")]);
    assert_eq!((ready[0].commit_offset, ready[0].prefix_len()), (1, 1));
    tracker.restore(ready);
    assert_eq!(tracker.in_flight(), counted(&tracker));
    assert!(!tracker.handed_over(&[p(0)]));
    let again = tracker.take_ready(100);
    assert_eq!(
        again[0].outputs,
        [(0, "a"), (2, "c"), (3, "d")],
        "all of it again"
    );
    assert_eq!(again[0].recorded_ahead, offsets(&[2, 3]));
    assert_eq!(tracker.committed(&again), 2);
    assert!(tracker.handed_over(&[p(0)]));
    assert_eq!(tracker.in_flight(), counted(&tracker));
}

#[test]
fn offsets_recorded_by_an_earlier_owner_are_registered_as_done_and_named_until_passed() {
    let tracker = OffsetTracker::default();
    let generation = tracker.assign(p(0));
    let tier = SourcePartition {
        topic: 1,
        partition: 0,
    };
    let tier_generation = tracker.assign(tier);
    assert!(!tracker.recorded_ahead(0, generation + 7, vec![(INGRESS, 5, offsets(&[6]))]));
    assert!(tracker.recorded_ahead(
        0,
        generation,
        vec![(INGRESS, 5, offsets(&[6, 7, 9])), (1, 2, offsets(&[3]))]
    ));
    assert_eq!(
        tracker.dispatched(p(0), generation, 5),
        Dispatched::Registered
    );
    assert_eq!(
        tracker.dispatched(p(0), generation, 6),
        Dispatched::Recorded
    );
    assert_eq!(
        tracker.dispatched(tier, tier_generation, 3),
        Dispatched::Recorded
    );
    assert_eq!(
        tracker.in_flight(),
        3,
        "counted until the commit position passes them"
    );
    let ready = tracker.take_ready(100);
    assert_eq!(
        ready.len(),
        1,
        "the tier partition's commit position passes 3"
    );
    assert_eq!(ready[0].partition, tier);
    assert_eq!(ready[0].commit_offset, 4);
    assert!(ready[0].outputs.is_empty());
    tracker.committed(&ready);
    assert_eq!(tracker.in_flight(), counted(&tracker));

    // Read after the metadata: 7 is recorded, 8 is not.
    assert_eq!(
        tracker.dispatched(p(0), generation, 7),
        Dispatched::Recorded
    );
    assert_eq!(
        tracker.dispatched(p(0), generation, 8),
        Dispatched::Registered
    );
    assert!(!tracker.recorded_earlier(p(0), generation, 8));
    finish(&tracker, 0, generation, 5, "e");
    let ready = tracker.take_ready(100);
    assert_eq!(ready[0].outputs, [(5, "e")]);
    assert_eq!(ready[0].commit_offset, 8, "past 6 and 7");
    assert_eq!(ready[0].recorded_ahead, offsets(&[9]), "9 still named");
    tracker.committed(&ready);
    assert_eq!(tracker.in_flight(), counted(&tracker));
}

#[test]
fn a_message_registered_before_the_metadata_was_read_is_found_recorded_later() {
    let tracker = OffsetTracker::default();
    let generation = tracker.assign(p(0));
    assert_eq!(
        tracker.dispatched(p(0), generation, 4),
        Dispatched::Registered
    );
    assert_eq!(
        tracker.dispatched(p(0), generation, 5),
        Dispatched::Registered
    );
    assert!(tracker.recorded_ahead(0, generation, vec![(INGRESS, 4, offsets(&[5]))]));
    assert!(tracker.recorded_earlier(p(0), generation, 5));
    assert!(!tracker.recorded_earlier(p(0), generation, 5), "once");
    assert!(!tracker.recorded_earlier(p(0), generation, 4), "not named");
    assert!(!finish(&tracker, 0, generation, 5, "late"), "done already");
    finish(&tracker, 0, generation, 4, "d");
    let ready = tracker.take_ready(100);
    assert_eq!(ready[0].outputs, [(4, "d")]);
    assert_eq!(ready[0].commit_offset, 6);
}

#[test]
fn what_the_metadata_cannot_name_waits_for_the_commit_position_and_does_not_hold_the_handover() {
    let tracker = OffsetTracker::default();
    let generation = tracker.assign(p(0));
    // Every other message finished, farther than the metadata can name.
    let count = 20_000;
    for offset in 0..count {
        tracker.dispatched(p(0), generation, offset);
    }
    for offset in (1..count).step_by(2) {
        finish(&tracker, 0, generation, offset, "x");
    }
    let ready = tracker.take_ready(count as usize);
    let taken = ready[0].outputs.len();
    assert!(taken > 2_500 && taken < 5_000, "{taken}");
    assert!(ahead::fits(
        0,
        &ready[0].recorded_ahead,
        ahead::DEFAULT_LIMIT
    ));
    tracker.committed(&ready);
    assert!(
        tracker.handed_over(&[p(0)]),
        "the rest is left to whoever reads the partition next"
    );

    // Once the commit position moves on, what it left behind is named from there.
    for offset in (0..10_000).step_by(2) {
        finish(&tracker, 0, generation, offset, "y");
    }
    let ready = tracker.take_ready(count as usize);
    assert_eq!(ready[0].commit_offset, 10_000);
    let farthest = ready[0].outputs.last().unwrap().0;
    assert!(farthest > 12_000, "{farthest}");
    assert!(ahead::fits(
        10_000,
        &ready[0].recorded_ahead,
        ahead::DEFAULT_LIMIT
    ));
    assert!(!tracker.handed_over(&[p(0)]), "in a transaction");
    tracker.committed(&ready);
}

#[test]
fn a_log_that_started_again_below_the_committed_offset_is_not_what_the_metadata_named() {
    let tracker = OffsetTracker::<&'static str>::default();
    let generation = tracker.assign(p(0));
    assert!(tracker.recorded_ahead(0, generation, vec![(INGRESS, 100, offsets(&[102]))]));
    // The topic was created again: reading starts at its beginning, below offset 100.
    assert_eq!(
        tracker.dispatched(p(0), generation, 0),
        Dispatched::Registered
    );
    for offset in 1..=102 {
        assert_eq!(
            tracker.dispatched(p(0), generation, offset),
            Dispatched::Registered,
            "{offset}"
        );
    }

    let read_first = tracker.assign(p(1));
    assert_eq!(
        tracker.dispatched(p(1), read_first, 3),
        Dispatched::Registered
    );
    assert!(tracker.recorded_ahead(1, read_first, vec![(INGRESS, 100, offsets(&[102]))]));
    assert!(
        !tracker.recorded_earlier(p(1), read_first, 102),
        "read below the committed offset before the metadata came"
    );
}

#[test]
fn a_smaller_metadata_limit_names_less_and_none_names_nothing_ahead() {
    let tracker = OffsetTracker::default();
    let generation = tracker.assign(p(0));
    for offset in 0..4_000 {
        tracker.dispatched(p(0), generation, offset);
    }
    for offset in (1..4_000).step_by(2) {
        finish(&tracker, 0, generation, offset, "x");
    }
    assert_eq!(tracker.metadata_limit(), ahead::DEFAULT_LIMIT);
    assert_eq!(tracker.shrink_metadata_limit(), Some(512));
    let ready = tracker.take_ready(10_000);
    let taken = ready[0].outputs.len();
    assert!(taken > 1_000 && taken < 1_600, "{taken}");
    assert!(ahead::encode(0, &ready[0].recorded_ahead).len() <= 512);
    tracker.restore(ready);

    let nothing_ahead = OffsetTracker::with_metadata_limit(0);
    let generation = nothing_ahead.assign(p(0));
    for offset in 0..3 {
        nothing_ahead.dispatched(p(0), generation, offset);
    }
    finish(&nothing_ahead, 0, generation, 1, "b");
    assert!(nothing_ahead.take_ready(10).is_empty(), "1 waits for 0");
    assert!(
        nothing_ahead.handed_over(&[p(0)]),
        "nothing it could commit"
    );
    finish(&nothing_ahead, 0, generation, 0, "a");
    let ready = nothing_ahead.take_ready(10);
    assert_eq!(ready[0].outputs, [(0, "a"), (1, "b")]);
    assert_eq!(ready[0].commit_offset, 2);
    assert_eq!(nothing_ahead.shrink_metadata_limit(), None);
}
