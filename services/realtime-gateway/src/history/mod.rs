//! The bounded buffer of recent events, and the live feed that continues it.
//!
//! Every event taken in is appended here and published on the feed in the same critical
//! section, so a subscriber that takes its replay and its feed receiver under the lock sees
//! every event exactly once: older ones in the replay, newer ones on the feed.
//!
//! Resume works per partition: a client's position is the last offset it has seen on each
//! partition of `relais.events` (its last event id per partition). Whatever the buffer still
//! holds past those offsets is replayed; where the buffer has already dropped events the client
//! never saw, the answer says so as an explicit gap instead of pretending nothing was missed.

mod replay;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tokio::sync::broadcast;
use utoipa::ToSchema;

pub use self::replay::{Replay, ReplayOvertaken};
use crate::event::{Event, Outcome};

/// An event in the buffer: its arrival number, the event, and its WebSocket frame (encoded
/// once, shared by every client).
#[derive(Debug)]
pub struct Entry {
    pub seq: u64,
    pub event: Event,
    pub frame: Utf8Bytes,
}

/// The last offset seen on each partition.
pub type Position = BTreeMap<i32, i64>;

/// A stretch of a partition that was dropped from the buffer before a client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Gap {
    pub partition: i32,
    /// The client's last offset on the partition (-1: none).
    pub after_offset: i64,
    /// The first offset the buffer can still replay.
    pub resumes_at_offset: i64,
}

/// What a subscriber starts from.
#[derive(Debug)]
pub struct Subscription {
    /// What a resuming subscriber has still to be sent from the buffer; None when it does not
    /// resume.
    pub replay: Option<Replay>,
    pub gaps: Vec<Gap>,
    /// Where the feed starts: the last offset per partition when subscribing.
    pub position: Position,
    pub feed: broadcast::Receiver<Arc<Entry>>,
}

/// Filters shared by `/api/v1/events` and WebSocket subscriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub upstream: Option<String>,
    pub outcome: Option<Outcome>,
    pub event_type: Option<String>,
    pub trace_id: Option<String>,
    pub message_id: Option<String>,
}

impl EventFilter {
    /// A filter from query parameters; an empty value (`?type=`) means the same as an absent
    /// one.
    pub fn new(
        upstream: Option<String>,
        outcome: Option<Outcome>,
        event_type: Option<String>,
        trace_id: Option<String>,
        message_id: Option<String>,
    ) -> Self {
        let present = |value: Option<String>| value.filter(|value| !value.is_empty());
        Self {
            upstream: present(upstream),
            outcome,
            event_type: present(event_type),
            trace_id: present(trace_id),
            message_id: present(message_id),
        }
    }

    /// Only the events of one message.
    pub fn message(message_id: &str) -> Self {
        Self {
            message_id: Some(message_id.to_owned()),
            ..Self::default()
        }
    }

    pub fn matches(&self, event: &Event) -> bool {
        self.upstream
            .as_deref()
            .is_none_or(|upstream| event.view.upstream == upstream)
            && self.outcome.is_none_or(|outcome| event.outcome == outcome)
            && self
                .event_type
                .as_deref()
                .is_none_or(|event_type| event.view.event_type == event_type)
            && self
                .trace_id
                .as_deref()
                .is_none_or(|trace_id| event.view.trace_id == trace_id)
            && self
                .message_id
                .as_deref()
                .is_none_or(|message_id| event.view.message_id == message_id)
    }
}

/// One page of `/api/v1/events`, newest first.
#[derive(Debug)]
pub struct Page {
    pub events: Vec<Arc<Entry>>,
    /// Pass back to get the next (older) page; `None` at the end of the buffer.
    pub next_cursor: Option<u64>,
}

/// Decision times from `from` (inclusive) to `to` (exclusive); an unset end is open.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeRange {
    pub from: Option<SystemTime>,
    pub to: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, Default)]
struct PartitionState {
    /// Last offset taken in (-1: none yet).
    last_offset: i64,
    /// Highest offset of the current log dropped from the buffer (-1: none).
    evicted_through: i64,
    /// Arrival number of the first event of the partition's current log: entries before it
    /// are of a log that has since started again, and are not replayed.
    log_start_seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Arrival numbers are consecutive: the entry of `seq` is at `seq - front.seq`.
    entries: VecDeque<Arc<Entry>>,
    next_seq: u64,
    by_trace: HashMap<String, VecDeque<u64>>,
    partitions: BTreeMap<i32, PartitionState>,
}

impl Inner {
    /// The entry with arrival number `seq`, if still held.
    fn entry(&self, seq: u64) -> Option<&Arc<Entry>> {
        let first = self.entries.front()?.seq;
        self.entries
            .get(usize::try_from(seq.checked_sub(first)?).ok()?)
    }
}

/// What [`History::insert`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// Taken in, and its offset was not after the partition's last: the gateway reads each
    /// offset once (it assigns a partition once and never seeks), so the partition's log
    /// started again (`relais.events` deleted and created again, or the partition truncated).
    /// Resume positions of the partition count in the new log from here on; its earlier
    /// events stay listed but are not replayed.
    LogRestarted,
}

#[derive(Debug)]
pub struct History {
    inner: RwLock<Inner>,
    feed: broadcast::Sender<Arc<Entry>>,
    max_events: usize,
    max_age: Duration,
}

impl History {
    /// `client_queue` bounds how far any feed subscriber may fall behind.
    pub fn new(max_events: usize, max_age: Duration, client_queue: usize) -> Self {
        let (feed, _) = broadcast::channel(client_queue);
        Self {
            inner: RwLock::new(Inner::default()),
            feed,
            max_events,
            max_age,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `event`, drops what is now too old or too many, and publishes it.
    pub fn insert(&self, event: Event, frame: Utf8Bytes, now: SystemTime) -> Inserted {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let seq = inner.next_seq;
        let partition = inner
            .partitions
            .entry(event.id.partition)
            .or_insert(PartitionState {
                last_offset: -1,
                evicted_through: -1,
                log_start_seq: seq,
            });
        let inserted = if event.id.offset <= partition.last_offset {
            *partition = PartitionState {
                last_offset: -1,
                evicted_through: -1,
                log_start_seq: seq,
            };
            Inserted::LogRestarted
        } else {
            Inserted::New
        };
        partition.last_offset = event.id.offset;
        inner.next_seq += 1;
        inner
            .by_trace
            .entry(event.view.trace_id.clone())
            .or_default()
            .push_back(seq);
        let entry = Arc::new(Entry { seq, event, frame });
        inner.entries.push_back(Arc::clone(&entry));
        self.evict(&mut inner, now);
        // Sent under the lock: see the module docs. A send error only means no subscriber.
        let _ = self.feed.send(entry);
        inserted
    }

    fn evict(&self, inner: &mut Inner, now: SystemTime) {
        let oldest_kept = now
            .checked_sub(self.max_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        while let Some(front) = inner.entries.front() {
            let too_many = inner.entries.len() > self.max_events;
            if !too_many && front.event.decided_at >= oldest_kept {
                break;
            }
            let Some(entry) = inner.entries.pop_front() else {
                break;
            };
            if let Some(state) = inner.partitions.get_mut(&entry.event.id.partition)
                && entry.seq >= state.log_start_seq
            {
                state.evicted_through = state.evicted_through.max(entry.event.id.offset);
            }
            // Entries leave in arrival order, so the oldest entry of the buffer is the oldest
            // of its trace: the front of the trace's list, taken off at once however many
            // events the trace has.
            let trace = &entry.event.view.trace_id;
            if let Some(seqs) = inner.by_trace.get_mut(trace) {
                if seqs.front() == Some(&entry.seq) {
                    seqs.pop_front();
                }
                if seqs.is_empty() {
                    inner.by_trace.remove(trace);
                }
            }
        }
    }

    /// Drops what has aged out even when nothing new arrives.
    pub fn expire(&self, now: SystemTime) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        self.evict(&mut inner, now);
    }

    /// Newest-first page of events older than `cursor` (an arrival number) that match.
    pub fn page(
        &self,
        filter: &EventFilter,
        range: TimeRange,
        cursor: Option<u64>,
        limit: usize,
    ) -> Page {
        let inner = self.read();
        let mut events = Vec::with_capacity(limit.min(256));
        let mut next_cursor = None;
        for entry in inner.entries.iter().rev() {
            if cursor.is_some_and(|cursor| entry.seq >= cursor) {
                continue;
            }
            let decided = entry.event.decided_at;
            if range.to.is_some_and(|to| decided >= to)
                || range.from.is_some_and(|from| decided < from)
                || !filter.matches(&entry.event)
            {
                continue;
            }
            if events.len() == limit {
                next_cursor = events.last().map(|last: &Arc<Entry>| last.seq);
                break;
            }
            events.push(Arc::clone(entry));
        }
        Page {
            events,
            next_cursor,
        }
    }

    /// The buffered events of `trace_id`, oldest first, at most `limit`; true when the trace
    /// has more (any number of events may carry one trace id).
    pub fn trace(&self, trace_id: &str, limit: usize) -> (Vec<Arc<Entry>>, bool) {
        let inner = self.read();
        let Some(seqs) = inner.by_trace.get(trace_id) else {
            return (Vec::new(), false);
        };
        let events = seqs
            .iter()
            .take(limit)
            .filter_map(|seq| inner.entry(*seq).cloned())
            .collect();
        (events, seqs.len() > limit)
    }

    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last offset taken in per partition.
    pub fn position(&self) -> Position {
        self.read()
            .partitions
            .iter()
            .map(|(partition, state)| (*partition, state.last_offset))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use relais_proto::v1::PipelineEvent;

    use super::*;
    use crate::event::EventId;

    pub(crate) fn event(partition: i32, offset: i64, upstream: &str, trace: u32) -> Event {
        let decided = SystemTime::now();
        let seconds = decided
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Event::from_proto(
            EventId { partition, offset },
            PipelineEvent {
                trace_id: format!("{trace:032x}"),
                upstream: upstream.into(),
                outcome: relais_proto::v1::Outcome::Delivered as i32,
                decided_at: Some(relais_proto::Timestamp {
                    seconds: i64::try_from(seconds).unwrap(),
                    nanos: 0,
                }),
                ..PipelineEvent::default()
            },
        )
        .unwrap()
    }

    pub(crate) fn insert(history: &History, partition: i32, offset: i64, trace: u32) {
        history.insert(
            event(partition, offset, "a", trace),
            Utf8Bytes::from_static(""),
            SystemTime::now(),
        );
    }

    pub(crate) fn ids(entries: &[Arc<Entry>]) -> Vec<String> {
        entries.iter().map(|e| e.event.id.to_string()).collect()
    }

    #[test]
    fn pages_walk_back_through_the_buffer_and_traces_are_indexed() {
        let history = History::new(100, Duration::from_secs(600), 64);
        for offset in 0..10 {
            insert(&history, 0, offset, u32::try_from(offset % 3).unwrap() + 1);
        }
        let range = TimeRange {
            from: None,
            to: None,
        };
        let first = history.page(&EventFilter::default(), range, None, 4);
        assert_eq!(ids(&first.events), ["0:9", "0:8", "0:7", "0:6"]);
        let second = history.page(&EventFilter::default(), range, first.next_cursor, 4);
        assert_eq!(ids(&second.events), ["0:5", "0:4", "0:3", "0:2"]);
        let third = history.page(&EventFilter::default(), range, second.next_cursor, 4);
        assert_eq!(ids(&third.events), ["0:1", "0:0"]);
        assert_eq!(third.next_cursor, None);
        let (trace, truncated) = history.trace(&format!("{:032x}", 1), 10);
        assert_eq!(ids(&trace), ["0:0", "0:3", "0:6", "0:9"]);
        assert!(!truncated);
        let (trace, truncated) = history.trace(&format!("{:032x}", 1), 2);
        assert_eq!(ids(&trace), ["0:0", "0:3"]);
        assert!(truncated);
    }

    #[test]
    fn one_trace_id_on_every_event_is_evicted_from_the_front() {
        let history = History::new(1000, Duration::from_secs(600), 64);
        for offset in 0..5000 {
            insert(&history, 0, offset, 7);
        }
        let inner = history.read();
        let seqs = &inner.by_trace[&format!("{:032x}", 7)];
        // The trace's list follows the buffer exactly: the 1,000 newest, in order.
        assert_eq!(seqs.len(), 1000);
        assert_eq!(seqs.front(), Some(&4000));
        assert_eq!(seqs.back(), Some(&4999));
        drop(inner);
        let (trace, truncated) = history.trace(&format!("{:032x}", 7), 100);
        assert_eq!(trace.len(), 100);
        assert_eq!(trace[0].event.id.offset, 4000);
        assert!(truncated);
    }

    #[test]
    fn a_log_that_starts_again_is_taken_in_and_its_old_events_are_not_replayed() {
        let history = History::new(4, Duration::from_secs(600), 64);
        let inserted = |offset| {
            history.insert(
                event(0, offset, "a", 1),
                Utf8Bytes::from_static(""),
                SystemTime::now(),
            )
        };
        assert_eq!(inserted(500), Inserted::New);
        assert_eq!(inserted(501), Inserted::New);
        let mut feed = history.subscribe(None).feed;
        assert_eq!(inserted(0), Inserted::LogRestarted, "the new log's first");
        assert_eq!(inserted(1), Inserted::New);
        let live: Vec<String> = std::iter::from_fn(|| feed.try_recv().ok())
            .map(|entry| entry.event.id.to_string())
            .collect();
        assert_eq!(live, ["0:0", "0:1"], "published on the live feed");
        assert_eq!(history.position(), Position::from([(0, 1)]));

        // A client of the new log that saw 0:0 is replayed 0:1 only, not the old log's 0:501.
        let mut resumed = history.subscribe(Some(&Position::from([(0, 0)])));
        let mut replay = resumed.replay.take().unwrap();
        assert_eq!(
            ids(&history.replay_batch(&mut replay, 10).unwrap()),
            ["0:1"]
        );
        // The old log's events leaving the buffer are no gap in the new one.
        assert_eq!(inserted(2), Inserted::New);
        assert_eq!(inserted(3), Inserted::New);
        assert_eq!(history.len(), 4);
        let resumed = history.subscribe(Some(&Position::from([(0, 0)])));
        assert!(resumed.gaps.is_empty(), "{:?}", resumed.gaps);
        assert_eq!(inserted(4), Inserted::New);
        let resumed = history.subscribe(Some(&Position::from([(0, -1)])));
        assert_eq!(
            resumed.gaps,
            [Gap {
                partition: 0,
                after_offset: -1,
                resumes_at_offset: 1
            }],
            "the new log's own evictions are gaps"
        );
    }
}
