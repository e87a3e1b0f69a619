//! Outcomes recorded ahead of a partition's committed offset, written into the offset's commit
//! metadata.
//!
//! A partition can have finished messages behind one that has not finished (its upstream's
//! queue full, its key waiting for an earlier message, one upstream slower than another). The
//! committed offset cannot pass the unfinished one, so without more whoever reads the partition
//! next (another worker after a move, this one after a crash) would send the finished ones
//! again. Instead every commit round writes their outcome records in the same transaction as
//! the offset, and names them in the offset's metadata; the next reader reads the metadata
//! before it reads the partition and does not send them again (Confluent's Parallel Consumer
//! keeps its completed offsets the same way).
//!
//! The metadata names offsets by their distance from the committed offset, in whichever of two
//! forms is shorter:
//! - `relais-ahead/1:` and ascending runs: `relais-ahead/1:1-3,7` after offset 100 names 101,
//!   102, 103 and 107 (short for long runs, however far);
//! - `relais-ahead/2:` and a bitmap in URL-safe base64 without padding, bit `k` (lowest first)
//!   of byte `j` naming distance `8j + k + 1`: `relais-ahead/2:Rw` names the same four (short
//!   for scattered offsets: any of the first 6,000 or so fit).
//!
//! Anything else (empty, another tool's text, a malformed list) names nothing.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BITMAP_TEXT;
use rdkafka::TopicPartitionList;
use rdkafka::error::KafkaResult;

use super::{RecordedAhead, TopicIndex};

const RUNS: &str = "relais-ahead/1:";
const BITMAP: &str = "relais-ahead/2:";

/// The longest metadata written unless configured otherwise. Brokers refuse a commit whose
/// metadata is longer than their `offset.metadata.max.bytes` (4,096 by default), which fails
/// the whole transaction ([`smaller_limit`]).
pub const DEFAULT_LIMIT: usize = 1024;

/// The longest metadata read or written at all: anything longer was not written by a worker.
pub const MOST_METADATA: usize = 65_536;

/// Below this, a limit names too little to be worth a metadata field.
const SMALLEST_LIMIT: usize = 64;

/// The most offsets a list names (runs make a short list name many); a list naming more was
/// not written by a worker.
pub const MOST_NAMED: usize = 100_000;

/// The metadata naming `ahead` (each above `committed`), in the shorter form; empty when it
/// names nothing.
pub fn encode(committed: i64, ahead: &BTreeSet<i64>) -> String {
    let mut text = String::new();
    for (first, last) in runs(committed, ahead) {
        text.push_str(if text.is_empty() { RUNS } else { "," });
        push_run(&mut text, first, last);
    }
    let Some(farthest) = farthest(committed, ahead) else {
        return text;
    };
    if bitmap_length(farthest) < text.len() {
        let mut bitmap = vec![0u8; (farthest as usize).div_ceil(8)];
        for &offset in ahead.range(committed.saturating_add(1)..) {
            let bit = (offset - committed - 1) as usize;
            bitmap[bit / 8] |= 1 << (bit % 8);
        }
        text = format!("{BITMAP}{}", BITMAP_TEXT.encode(bitmap));
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
    if let Some(list) = metadata.strip_prefix(RUNS) {
        decode_runs(committed, list)
    } else if let Some(bitmap) = metadata.strip_prefix(BITMAP) {
        decode_bitmap(committed, bitmap)
    } else {
        BTreeSet::new()
    }
}

fn decode_runs(committed: i64, list: &str) -> BTreeSet<i64> {
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

fn decode_bitmap(committed: i64, text: &str) -> BTreeSet<i64> {
    // A bitmap longer than a worker writes, or one naming nothing, was not written by one.
    if BITMAP.len() + text.len() > MOST_METADATA {
        return BTreeSet::new();
    }
    let Ok(bitmap) = BITMAP_TEXT.decode(text) else {
        return BTreeSet::new();
    };
    let offsets: Option<BTreeSet<i64>> = bitmap
        .iter()
        .enumerate()
        .flat_map(|(byte, bits)| {
            (0..8)
                .filter(move |bit| bits & (1 << bit) != 0)
                .map(move |bit| committed.checked_add(byte as i64 * 8 + bit + 1))
        })
        .collect();
    offsets.unwrap_or_default()
}

/// Whether `ahead` can be named in metadata of at most `limit` bytes, and in at most
/// [`MOST_NAMED`] offsets.
pub fn fits(committed: i64, ahead: &BTreeSet<i64>, limit: usize) -> bool {
    let Some(farthest) = farthest(committed, ahead) else {
        return true;
    };
    if bitmap_length(farthest) <= limit {
        return true;
    }
    if ahead.range(committed.saturating_add(1)..).count() > MOST_NAMED {
        return false;
    }
    let mut length = 0;
    for (first, last) in runs(committed, ahead) {
        length += 1 + digits(first) + if first == last { 0 } else { 1 + digits(last) };
        if RUNS.len() + length > limit + 1 {
            return false;
        }
    }
    true
}

/// How many of `candidates` (ascending, above `committed`), taken from the first, can be named
/// beside `recorded` in one commit's metadata of at most `limit` bytes ([`fits`]).
pub fn most_that_fit(
    committed: i64,
    recorded: &BTreeSet<i64>,
    candidates: &[i64],
    limit: usize,
) -> usize {
    if limit == 0 {
        return 0;
    }
    let farthest = candidates.last().max(recorded.last()).copied();
    if farthest.is_none_or(|farthest| bitmap_length(farthest - committed) <= limit) {
        return candidates.len();
    }
    let named_with = |count: usize| {
        let mut named = recorded.clone();
        named.extend(&candidates[..count]);
        named
    };
    // The metadata's length grows with every run of offsets: the largest count that fits.
    let (mut fitting, mut too_many) = (0, candidates.len() + 1);
    while fitting + 1 < too_many {
        let middle = (fitting + too_many) / 2;
        if fits(committed, &named_with(middle), limit) {
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

/// The limit to try after the broker refused metadata of at most `limit` bytes: half, and 0
/// (nothing committed ahead) below [`SMALLEST_LIMIT`].
pub fn smaller_limit(limit: usize) -> usize {
    match limit / 2 {
        half if half < SMALLEST_LIMIT => 0,
        half => half,
    }
}

/// The distance of the farthest offset of `ahead` above `committed`.
fn farthest(committed: i64, ahead: &BTreeSet<i64>) -> Option<i64> {
    ahead
        .last()
        .filter(|&&last| last > committed)
        .map(|last| last - committed)
}

/// The length of the bitmap form naming distances up to `farthest`.
fn bitmap_length(farthest: i64) -> usize {
    let bytes = u64::try_from(farthest).unwrap_or(0).div_ceil(8);
    let text = usize::try_from(bytes.saturating_mul(4).div_ceil(3)).unwrap_or(usize::MAX);
    BITMAP.len().saturating_add(text)
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
    fn offsets_are_written_in_the_shorter_form_and_read_back() {
        let scattered = set(&[101, 102, 103, 107, 109, 110]);
        let text = encode(100, &scattered);
        assert_eq!(text, "relais-ahead/2:RwM");
        assert_eq!(decode(100, &text), scattered);
        assert_eq!(decode(100, "relais-ahead/1:1-3,7,9-10"), scattered);
        assert!(fits(100, &scattered, DEFAULT_LIMIT));

        let far: BTreeSet<i64> = (100_001..=100_050).chain([100_100]).collect();
        let text = encode(0, &far);
        assert_eq!(text, "relais-ahead/1:100001-100050,100100");
        assert_eq!(decode(0, &text), far);
    }

    #[test]
    fn every_offset_of_the_bitmap_is_named() {
        // Each distance alone, at the edges of the bitmap's bytes.
        for distance in [1, 7, 8, 9, 16, 17, 4000] {
            let ahead = set(&[50 + distance]);
            let text = encode(50, &ahead);
            assert_eq!(decode(50, &text), ahead, "{distance}: {text}");
        }
        let every_third: BTreeSet<i64> = (1..2000).map(|n| n * 3).collect();
        let text = encode(0, &every_third);
        assert!(text.starts_with(BITMAP), "{text}");
        assert!(text.len() <= DEFAULT_LIMIT, "{}", text.len());
        assert_eq!(decode(0, &text), every_third);
    }

    #[test]
    fn nothing_ahead_is_no_metadata() {
        assert_eq!(encode(100, &BTreeSet::new()), "");
        assert!(decode(100, "").is_empty());
    }

    #[test]
    fn offsets_at_or_below_the_committed_one_are_not_named() {
        let text = encode(100, &set(&[99, 100, 102]));
        assert_eq!(decode(100, &text), set(&[102]), "{text}");
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
            "relais-ahead/2:",
            "relais-ahead/2:1",
            "relais-ahead/2:AAA",
            "relais-ahead/2:RwM=",
            "relais-ahead/2:R+M",
            "relais-ahead/3:RwM",
        ] {
            assert!(decode(100, metadata).is_empty(), "{metadata}");
        }
        assert!(decode(i64::MAX - 1, "relais-ahead/1:5").is_empty());
        assert!(decode(i64::MAX - 1, "relais-ahead/2:RwM").is_empty());
        let too_long = format!("{BITMAP}{}", "_".repeat(MOST_METADATA));
        assert!(decode(0, &too_long).is_empty());
    }

    #[test]
    fn what_fits_is_what_is_written_within_the_limit() {
        // Offsets so far apart that the bitmap is long: every other one of a run form, each a
        // run of its own, as long as the list can get.
        let committed = 1_000_000;
        let mut ahead = BTreeSet::new();
        let mut offset = committed + 10_000;
        while fits(committed, &ahead, DEFAULT_LIMIT) {
            ahead.insert(offset);
            offset += 2;
        }
        ahead.remove(&(offset - 2));
        assert!(fits(committed, &ahead, DEFAULT_LIMIT));
        let text = encode(committed, &ahead);
        assert!(text.starts_with(RUNS), "{text}");
        assert!(text.len() <= DEFAULT_LIMIT, "{}", text.len());
        assert!(text.len() > DEFAULT_LIMIT - 8, "{}", text.len());
        assert_eq!(decode(committed, &text), ahead);

        // Any offsets within the bitmap's reach fit, however scattered.
        let reach = (DEFAULT_LIMIT - BITMAP.len()) / 4 * 3 * 8;
        let every_other: BTreeSet<i64> = (1..=reach as i64).step_by(2).collect();
        assert!(fits(0, &every_other, DEFAULT_LIMIT));
        let text = encode(0, &every_other);
        assert!(text.len() <= DEFAULT_LIMIT, "{}", text.len());
        assert_eq!(decode(0, &text), every_other);
        let beyond: BTreeSet<i64> = (1..=reach as i64 + 100).step_by(2).collect();
        assert!(!fits(0, &beyond, DEFAULT_LIMIT));
    }

    #[test]
    fn no_list_names_more_than_a_worker_writes() {
        let ahead: BTreeSet<i64> = (1..=MOST_NAMED as i64).collect();
        assert!(fits(0, &ahead, DEFAULT_LIMIT));
        assert_eq!(decode(0, &encode(0, &ahead)).len(), MOST_NAMED);
        let more: BTreeSet<i64> = (1..=MOST_NAMED as i64 + 1).collect();
        assert!(!fits(0, &more, DEFAULT_LIMIT));
        assert!(decode(0, "relais-ahead/1:1-99999999999").is_empty());
        assert!(decode(0, "relais-ahead/1:1-60000,60002-120000").is_empty());
    }

    #[test]
    fn as_many_as_fit_are_taken_beside_those_named_already() {
        let recorded = set(&[2]);
        assert_eq!(most_that_fit(0, &recorded, &[4, 5, 6], DEFAULT_LIMIT), 3);
        assert_eq!(most_that_fit(0, &recorded, &[], DEFAULT_LIMIT), 0);
        let scattered: Vec<i64> = (1..2000).map(|n| 10_000 + n * 2).collect();
        let fitting = most_that_fit(0, &recorded, &scattered, DEFAULT_LIMIT);
        assert!(fitting > 100 && fitting < scattered.len(), "{fitting}");
        let near: Vec<i64> = (1..2000).map(|n| n * 2).collect();
        assert_eq!(
            most_that_fit(0, &recorded, &near, DEFAULT_LIMIT),
            near.len()
        );
        let mut named = recorded.clone();
        named.extend(&scattered[..fitting]);
        assert!(fits(0, &named, DEFAULT_LIMIT));
        named.insert(scattered[fitting]);
        assert!(!fits(0, &named, DEFAULT_LIMIT));
    }

    #[test]
    fn a_refused_limit_is_halved_down_to_nothing_ahead() {
        let limits: Vec<usize> = std::iter::successors(Some(DEFAULT_LIMIT), |&limit| {
            (limit > 0).then(|| smaller_limit(limit))
        })
        .collect();
        assert_eq!(limits, [1024, 512, 256, 128, 64, 0]);
        assert_eq!(smaller_limit(100), 0);
        assert_eq!(most_that_fit(0, &BTreeSet::new(), &[1, 2, 3], 0), 0);
        // A smaller limit reaches less far.
        let near: Vec<i64> = (1..1500).map(|n| n * 2).collect();
        assert_eq!(
            most_that_fit(0, &BTreeSet::new(), &near, DEFAULT_LIMIT),
            1499
        );
        assert_eq!(most_that_fit(0, &BTreeSet::new(), &near, 256), 720);
    }

    #[test]
    fn a_long_run_is_short() {
        let ahead: BTreeSet<i64> = (1..=5000).map(|distance| 7 + distance).collect();
        assert!(fits(7, &ahead, DEFAULT_LIMIT));
        assert_eq!(encode(7, &ahead), "relais-ahead/1:1-5000");
    }
}
