//! Subscribing to the feed, and replaying to a resuming client what it has not seen.
//!
//! The replay is read from the buffer a batch at a time by arrival number, never copied whole:
//! a resuming client holds one batch, however much it missed and however many clients resume
//! at once. The replay covers the entries that arrived before the subscription (the feed
//! carries the later ones). If the buffer drops entries the replay has not reached yet (a
//! client reading its replay more slowly than events arrive), the replay is overtaken and the
//! client is told it lagged, as on the live feed.

use std::sync::Arc;

use super::{Entry, Gap, History, Position, Subscription};

/// Entries looked at per batch at most, sent or not: a batch holds the buffer's lock briefly
/// even when most entries were already seen.
const SCAN_PER_BATCH: usize = 4096;

/// Where a resuming client's replay stands.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The client's position when it connected: entries at or before it were seen.
    resume: Position,
    /// The next arrival number to look at.
    next_seq: u64,
    /// The first arrival number the feed carries.
    end_seq: u64,
}

impl Replay {
    pub fn is_done(&self) -> bool {
        self.next_seq >= self.end_seq
    }
}

/// The buffer dropped entries the replay had not reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOvertaken {
    pub missed: u64,
}

impl History {
    /// Starts a feed subscription, with the replay of what `resume` has not seen (see the
    /// module docs of `history`). The subscriber applies its filter as it sends.
    pub fn subscribe(&self, resume: Option<&Position>) -> Subscription {
        let inner = self.read();
        let feed = self.feed.subscribe();
        let position: Position = inner
            .partitions
            .iter()
            .map(|(partition, state)| (*partition, state.last_offset))
            .collect();
        let Some(resume) = resume else {
            return Subscription {
                replay: None,
                gaps: Vec::new(),
                position,
                feed,
            };
        };
        let seen = |partition: i32| resume.get(&partition).copied().unwrap_or(-1);
        let gaps = inner
            .partitions
            .iter()
            .filter(|(partition, state)| state.evicted_through > seen(**partition))
            .map(|(partition, state)| Gap {
                partition: *partition,
                after_offset: seen(*partition),
                resumes_at_offset: state.evicted_through + 1,
            })
            .collect();
        let replay = Replay {
            resume: resume.clone(),
            next_seq: inner
                .entries
                .front()
                .map_or(inner.next_seq, |entry| entry.seq),
            end_seq: inner.next_seq,
        };
        Subscription {
            replay: Some(replay),
            gaps,
            position,
            feed,
        }
    }

    /// The next entries of the replay that the client has not seen, at most `max` (fewer, or
    /// none, when many entries were skipped); empty once the replay is done.
    pub fn replay_batch(
        &self,
        replay: &mut Replay,
        max: usize,
    ) -> Result<Vec<Arc<Entry>>, ReplayOvertaken> {
        let inner = self.read();
        if let Some(front) = inner.entries.front()
            && front.seq > replay.next_seq
            && replay.next_seq < replay.end_seq
        {
            return Err(ReplayOvertaken {
                missed: front.seq.min(replay.end_seq) - replay.next_seq,
            });
        }
        let mut batch = Vec::new();
        let mut scanned = 0;
        while !replay.is_done() && batch.len() < max && scanned < SCAN_PER_BATCH {
            let Some(entry) = inner.entry(replay.next_seq) else {
                // Nothing held at or after it (the buffer emptied by age): nothing to replay.
                replay.next_seq = replay.end_seq;
                break;
            };
            replay.next_seq += 1;
            scanned += 1;
            let id = entry.event.id;
            let of_current_log = inner
                .partitions
                .get(&id.partition)
                .is_none_or(|state| entry.seq >= state.log_start_seq);
            if of_current_log && id.offset > replay.resume.get(&id.partition).copied().unwrap_or(-1)
            {
                batch.push(Arc::clone(entry));
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::history::tests::{ids, insert};

    /// The whole replay, batch by batch.
    fn replayed(history: &History, replay: &mut Replay) -> Vec<String> {
        let mut all = Vec::new();
        while !replay.is_done() {
            all.extend(ids(&history.replay_batch(replay, 2).unwrap()));
        }
        all
    }

    #[test]
    fn resume_replays_exactly_what_was_not_seen() {
        let history = History::new(100, Duration::from_secs(600), 64);
        insert(&history, 0, 10, 1);
        insert(&history, 1, 5, 2);
        insert(&history, 0, 12, 3);
        insert(&history, 1, 7, 4);
        let seen = Position::from([(0, 10), (1, 5)]);
        let mut subscription = history.subscribe(Some(&seen));
        let mut replay = subscription.replay.take().unwrap();
        assert_eq!(replayed(&history, &mut replay), ["0:12", "1:7"]);
        assert!(subscription.gaps.is_empty());
        assert_eq!(subscription.position, Position::from([(0, 12), (1, 7)]));
    }

    #[test]
    fn events_after_subscribing_arrive_on_the_feed_not_in_the_replay() {
        let history = History::new(100, Duration::from_secs(600), 64);
        insert(&history, 0, 1, 1);
        let mut subscription = history.subscribe(Some(&Position::new()));
        insert(&history, 0, 2, 2);
        let mut replay = subscription.replay.take().unwrap();
        assert_eq!(replayed(&history, &mut replay), ["0:1"]);
        let next = subscription.feed.try_recv().unwrap();
        assert_eq!(next.event.id.to_string(), "0:2");
    }

    #[test]
    fn an_evicted_stretch_is_reported_as_a_gap() {
        let history = History::new(3, Duration::from_secs(600), 64);
        for offset in 0..6 {
            insert(&history, 0, offset, 1);
        }
        let mut subscription = history.subscribe(Some(&Position::from([(0, 1)])));
        assert_eq!(
            subscription.gaps,
            [Gap {
                partition: 0,
                after_offset: 1,
                resumes_at_offset: 3
            }]
        );
        let mut replay = subscription.replay.take().unwrap();
        assert_eq!(replayed(&history, &mut replay), ["0:3", "0:4", "0:5"]);
        // A client that saw everything evicted has no gap.
        let caught_up = history.subscribe(Some(&Position::from([(0, 2)])));
        assert!(caught_up.gaps.is_empty());
    }

    #[test]
    fn a_replay_overtaken_by_eviction_says_how_much_it_missed() {
        let history = History::new(4, Duration::from_secs(600), 64);
        for offset in 0..4 {
            insert(&history, 0, offset, 1);
        }
        let mut subscription = history.subscribe(Some(&Position::new()));
        let mut replay = subscription.replay.take().unwrap();
        assert_eq!(ids(&history.replay_batch(&mut replay, 1).unwrap()), ["0:0"]);
        // Three more arrive: the buffer (4) drops 0:1 .. 0:2 before the replay reached them.
        for offset in 4..7 {
            insert(&history, 0, offset, 1);
        }
        assert_eq!(
            history.replay_batch(&mut replay, 10).err(),
            Some(ReplayOvertaken { missed: 2 })
        );
    }

    #[test]
    fn a_resuming_client_holds_one_batch_however_much_it_missed() {
        let history = History::new(100_000, Duration::from_secs(600), 64);
        for offset in 0..100_000 {
            insert(&history, i32::try_from(offset % 4).unwrap(), offset, 1);
        }
        let mut subscription = history.subscribe(Some(&Position::new()));
        let mut replay = subscription.replay.take().unwrap();
        let mut total = 0;
        while !replay.is_done() {
            let batch = history.replay_batch(&mut replay, 64).unwrap();
            assert!(batch.len() <= 64);
            total += batch.len();
        }
        assert_eq!(total, 100_000);
        // Seen everything but one partition: the scan moves on in bounded steps.
        let seen = Position::from([(0, i64::MAX), (1, i64::MAX), (2, i64::MAX)]);
        let mut subscription = history.subscribe(Some(&seen));
        let mut replay = subscription.replay.take().unwrap();
        let first = history.replay_batch(&mut replay, 64).unwrap();
        assert_eq!(first.len(), 64);
        assert!(first.iter().all(|entry| entry.event.id.partition == 3));
    }
}
