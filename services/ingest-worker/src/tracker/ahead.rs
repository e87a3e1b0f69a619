//! Outcomes recorded ahead of a partition's committed offset, written into the offset's commit
//! metadata.
//!
//! A partition that moves to another worker can have finished messages behind one that has
//! not started (its upstream's queue full, its key waiting for an earlier message). The
//! committed offset cannot pass the unstarted one, so without more the next owner would send
//! the finished ones again. Instead the handover commits their outcome records in the same
//! transaction as the offset, and names them in the offset's metadata; the next owner reads
//! the metadata before it reads the partition and does not send them again (Confluent's
//! Parallel Consumer keeps its completed offsets the same way).
//!
//! The metadata is `relais-ahead/1:` and the offsets as distances from the committed offset,
//! in ascending runs: `relais-ahead/1:1-3,7` after offset 100 names 101, 102, 103 and 107.
//! Anything else (empty, another tool's text, a malformed list) names nothing.

use std::collections::BTreeSet;

use rdkafka::TopicPartitionList;
use rdkafka::error::KafkaResult;

use super::{RecordedAhead, TopicIndex};

const PREFIX: &str = "relais-ahead/1:";

/// The longest metadata written. Brokers refuse a commit whose metadata is longer than
/// `offset.metadata.max.bytes` (4,096 by default), which would fail the whole transaction.
pub const METADATA_LIMIT: usize = 1024;

/// The most offsets a list names (runs make a short list name many); a list naming more was
/// not written by a worker.
pub const MOST_NAMED: usize = 100_000;

/// The metadata naming `ahead` (each above `committed`); empty when it names nothing.
pub fn encode(committed: i64, ahead: &BTreeSet<i64>) -> String {
    let mut text = String::new();
    for (first, last) in runs(committed, ahead) {
        text.push_str(if text.is_empty() { PREFIX } else { "," });
        push_run(&mut text, first, last);
    }
    text
}

/// What the group's answer `committed` names as recorded ahead for `partition` of each of
/// `topics`: per topic with a committed offset, the offset and the offsets named. An error on
/// any of them fails the whole: a name left out would have a recorded message decided again.
pub fn named_in(
    committed: &TopicPartitionList,
    topics: &[(TopicIndex, &str)],
    partition: i32,
) -> KafkaResult<RecordedAhead> {
    let mut named = RecordedAhead::new();
    for &(index, topic) in topics {
        let Some(element) = committed.find_partition(topic, partition) else {
            continue;
        };
        element.error()?;
        let Some(offset) = element.offset().to_raw().filter(|offset| *offset >= 0) else {
            continue;
        };
        // rdkafka panics on metadata that is not UTF-8, which no worker writes.
        let offsets = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decode(offset, element.metadata())
        }))
        .unwrap_or_default();
        named.push((index, offset, offsets));
    }
    Ok(named)
}

/// The offsets named by `metadata` committed with offset `committed`.
pub fn decode(committed: i64, metadata: &str) -> BTreeSet<i64> {
    let Some(list) = metadata.strip_prefix(PREFIX) else {
        return BTreeSet::new();
    };
    let mut offsets = BTreeSet::new();
    let mut previous = 0;
    let mut named: i64 = 0;
    for run in list.split(',') {
        let (first, last) = match run.split_once('-') {
            Some((first, last)) => (first.parse::<i64>(), last.parse::<i64>()),
            None => (run.parse::<i64>(), run.parse::<i64>()),
        };
        // Runs ascend and do not touch, and no more are named than a written list can hold:
        // anything else was not written by a worker, and naming a message wrongly would keep
        // it from being sent at all.
        let (Ok(first), Ok(last)) = (first, last) else {
            return BTreeSet::new();
        };
        if first <= previous || last < first {
            return BTreeSet::new();
        }
        named = named.saturating_add(last - first + 1);
        if named > MOST_NAMED as i64 {
            return BTreeSet::new();
        }
        let (Some(from), Some(to)) = (committed.checked_add(first), committed.checked_add(last))
        else {
            return BTreeSet::new();
        };
        offsets.extend(from..=to);
        previous = last + 1;
    }
    offsets
}

/// Whether `ahead` can be named in metadata of at most [`METADATA_LIMIT`] bytes, and in at
/// most [`MOST_NAMED`] offsets.
pub fn fits(committed: i64, ahead: &BTreeSet<i64>) -> bool {
    if ahead.range(committed.saturating_add(1)..).count() > MOST_NAMED {
        return false;
    }
    let mut length = 0;
    for (first, last) in runs(committed, ahead) {
        length += 1 + digits(first) + if first == last { 0 } else { 1 + digits(last) };
        if PREFIX.len() + length > METADATA_LIMIT + 1 {
            return false;
        }
    }
    true
}

/// How many of `candidates` (ascending, above `committed`), taken from the first, can be named
/// beside `recorded` in one commit's metadata ([`fits`]).
pub fn most_that_fit(committed: i64, recorded: &BTreeSet<i64>, candidates: &[i64]) -> usize {
    let named_with = |count: usize| {
        let mut named = recorded.clone();
        named.extend(&candidates[..count]);
        named
    };
    // The metadata's length grows with every run of offsets: the largest count that fits.
    let (mut fitting, mut too_many) = (0, candidates.len() + 1);
    while fitting + 1 < too_many {
        let middle = (fitting + too_many) / 2;
        if fits(committed, &named_with(middle)) {
            fitting = middle;
        } else {
            too_many = middle;
        }
    }
    fitting
}

/// The ascending runs of consecutive offsets in `ahead` above `committed`, as distances.
fn runs(committed: i64, ahead: &BTreeSet<i64>) -> Vec<(i64, i64)> {
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &offset in ahead.range(committed.saturating_add(1)..) {
        let distance = offset - committed;
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == distance => *last = distance,
            _ => runs.push((distance, distance)),
        }
    }
    runs
}

fn push_run(text: &mut String, first: i64, last: i64) {
    use std::fmt::Write as _;
    let _ = if first == last {
        write!(text, "{first}")
    } else {
        write!(text, "{first}-{last}")
    };
}

fn digits(value: i64) -> usize {
    value.checked_ilog10().map_or(1, |log| log as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(offsets: &[i64]) -> BTreeSet<i64> {
        offsets.iter().copied().collect()
    }

    #[test]
    fn offsets_are_written_as_runs_of_distances_and_read_back() {
        let ahead = set(&[101, 102, 103, 107, 109, 110]);
        let text = encode(100, &ahead);
        assert_eq!(text, "relais-ahead/1:1-3,7,9-10");
        assert_eq!(decode(100, &text), ahead);
        assert!(fits(100, &ahead));
    }

    #[test]
    fn nothing_ahead_is_no_metadata() {
        assert_eq!(encode(100, &BTreeSet::new()), "");
        assert!(decode(100, "").is_empty());
    }

    #[test]
    fn offsets_at_or_below_the_committed_one_are_not_named() {
        assert_eq!(encode(100, &set(&[99, 100, 102])), "relais-ahead/1:2");
    }

    #[test]
    fn metadata_of_anything_else_names_nothing() {
        for metadata in [
            "some other tool's note",
            "relais-ahead/1:",
            "relais-ahead/1:x",
            "relais-ahead/1:0",
            "relais-ahead/1:-3",
            "relais-ahead/1:3-2",
            "relais-ahead/1:3,3",
            "relais-ahead/1:4,3",
            "relais-ahead/1:1-3,3",
            "relais-ahead/1:1,,2",
            "relais-ahead/1:1-99999999999",
            "relais-ahead/2:1",
        ] {
            assert!(decode(100, metadata).is_empty(), "{metadata}");
        }
        assert!(decode(i64::MAX - 1, "relais-ahead/1:5").is_empty());
    }

    #[test]
    fn what_fits_is_what_is_written_within_the_limit() {
        // Every other offset: one run each, as long as the list can get.
        let committed = 1_000_000;
        let mut ahead = BTreeSet::new();
        let mut offset = committed + 1;
        while fits(committed, &ahead) {
            ahead.insert(offset);
            offset += 2;
        }
        ahead.remove(&(offset - 2));
        assert!(fits(committed, &ahead));
        let text = encode(committed, &ahead);
        assert!(text.len() <= METADATA_LIMIT, "{}", text.len());
        assert!(text.len() > METADATA_LIMIT - 8, "{}", text.len());
        assert_eq!(decode(committed, &text), ahead);
    }

    #[test]
    fn no_list_names_more_than_a_worker_writes() {
        let ahead: BTreeSet<i64> = (1..=MOST_NAMED as i64).collect();
        assert!(fits(0, &ahead));
        assert_eq!(decode(0, &encode(0, &ahead)).len(), MOST_NAMED);
        let more: BTreeSet<i64> = (1..=MOST_NAMED as i64 + 1).collect();
        assert!(!fits(0, &more));
        assert!(decode(0, "relais-ahead/1:1-99999999999").is_empty());
        assert!(decode(0, "relais-ahead/1:1-60000,60002-120000").is_empty());
    }

    #[test]
    fn as_many_as_fit_are_taken_beside_those_named_already() {
        let recorded = set(&[2]);
        assert_eq!(most_that_fit(0, &recorded, &[4, 5, 6]), 3);
        assert_eq!(most_that_fit(0, &recorded, &[]), 0);
        let scattered: Vec<i64> = (1..2000).map(|n| n * 2).collect();
        let fitting = most_that_fit(0, &recorded, &scattered);
        assert!(fitting > 100 && fitting < scattered.len(), "{fitting}");
        let mut named = recorded.clone();
        named.extend(&scattered[..fitting]);
        assert!(fits(0, &named));
        named.insert(scattered[fitting]);
        assert!(!fits(0, &named));
    }

    #[test]
    fn a_long_run_is_short() {
        let ahead: BTreeSet<i64> = (1..=5000).map(|distance| 7 + distance).collect();
        assert!(fits(7, &ahead));
        assert_eq!(encode(7, &ahead), "relais-ahead/1:1-5000");
    }
}
