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
fn only_the_contiguous_prefix_is_ready() {
    let tracker = OffsetTracker::default();
    let generation = tracker.assign(p(0));
    for offset in [10, 11, 12] {
        assert_eq!(
            tracker.dispatched(p(0), generation, offset),
            Dispatched::Registered
        );
    }
    assert!(finish(&tracker, 0, generation, 11, "b"));
    assert!(tracker.take_ready(100).is_empty(), "10 is not finished");
    assert!(finish(&tracker, 0, generation, 10, "a"));
    let ready = tracker.take_ready(100);
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].outputs, [(10, "a"), (11, "b")]);
    assert_eq!(ready[0].commit_offset, 12);
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
