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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tokio::sync::broadcast;
use utoipa::ToSchema;

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
    pub replay: Vec<Arc<Entry>>,
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
}

impl EventFilter {
    /// A filter from query parameters; an empty value (`?type=`) means the same as an absent one.
    pub fn new(
        upstream: Option<String>,
        outcome: Option<Outcome>,
        event_type: Option<String>,
        trace_id: Option<String>,
    ) -> Self {
        let present = |value: Option<String>| value.filter(|value| !value.is_empty());
        Self {
            upstream: present(upstream),
            outcome,
            event_type: present(event_type),
            trace_id: present(trace_id),
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
    }
}

/// One page of `/api/v1/events`, newest first.
#[derive(Debug)]
pub struct Page {
    pub events: Vec<Arc<Entry>>,
    /// Pass back to get the next (older) page; `None` at the end of the buffer.
    pub next_cursor: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub struct TimeRange {
    pub from: Option<SystemTime>,
    pub to: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, Default)]
struct PartitionState {
    /// Last offset taken in (-1: none yet).
    last_offset: i64,
    /// Highest offset dropped from the buffer (-1: none).
    evicted_through: i64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: VecDeque<Arc<Entry>>,
    next_seq: u64,
    by_trace: HashMap<String, VecDeque<u64>>,
    partitions: BTreeMap<i32, PartitionState>,
}

/// What [`History::insert`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// Already taken in (a re-read after a reassignment): ignored.
    Duplicate,
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
        let partition = inner
            .partitions
            .entry(event.id.partition)
            .or_insert(PartitionState {
                last_offset: -1,
                evicted_through: -1,
            });
        if event.id.offset <= partition.last_offset {
            return Inserted::Duplicate;
        }
        partition.last_offset = event.id.offset;
        let seq = inner.next_seq;
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
        Inserted::New
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
            if let Some(state) = inner.partitions.get_mut(&entry.event.id.partition) {
                state.evicted_through = state.evicted_through.max(entry.event.id.offset);
            }
            let trace = &entry.event.view.trace_id;
            if let Some(seqs) = inner.by_trace.get_mut(trace) {
                seqs.retain(|seq| *seq != entry.seq);
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

    /// Starts a feed subscription, replaying what `resume` has not seen (see the module docs).
    pub fn subscribe(&self, resume: Option<&Position>, filter: &EventFilter) -> Subscription {
        let inner = self.read();
        let feed = self.feed.subscribe();
        let position: Position = inner
            .partitions
            .iter()
            .map(|(partition, state)| (*partition, state.last_offset))
            .collect();
        let Some(resume) = resume else {
            return Subscription {
                replay: Vec::new(),
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
        let replay = inner
            .entries
            .iter()
            .filter(|entry| {
                entry.event.id.offset > seen(entry.event.id.partition)
                    && filter.matches(&entry.event)
            })
            .cloned()
            .collect();
        Subscription {
            replay,
            gaps,
            position,
            feed,
        }
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

    /// Every buffered event of `trace_id`, oldest first.
    pub fn trace(&self, trace_id: &str) -> Vec<Arc<Entry>> {
        let inner = self.read();
        let Some(seqs) = inner.by_trace.get(trace_id) else {
            return Vec::new();
        };
        let Some(first_seq) = inner.entries.front().map(|entry| entry.seq) else {
            return Vec::new();
        };
        seqs.iter()
            .filter_map(|seq| {
                let index = usize::try_from(seq.checked_sub(first_seq)?).ok()?;
                inner.entries.get(index).cloned()
            })
            .collect()
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

    fn insert(history: &History, partition: i32, offset: i64, trace: u32) {
        history.insert(
            event(partition, offset, "a", trace),
            Utf8Bytes::from_static(""),
            SystemTime::now(),
        );
    }

    fn ids(entries: &[Arc<Entry>]) -> Vec<String> {
        entries.iter().map(|e| e.event.id.to_string()).collect()
    }

    #[test]
    fn resume_replays_exactly_what_was_not_seen() {
        let history = History::new(100, Duration::from_secs(600), 64);
        insert(&history, 0, 10, 1);
        insert(&history, 1, 5, 2);
        insert(&history, 0, 12, 3);
        insert(&history, 1, 7, 4);
        let seen = Position::from([(0, 10), (1, 5)]);
        let subscription = history.subscribe(Some(&seen), &EventFilter::default());
        assert_eq!(ids(&subscription.replay), ["0:12", "1:7"]);
        assert!(subscription.gaps.is_empty());
        assert_eq!(subscription.position, Position::from([(0, 12), (1, 7)]));
        // A duplicate (a re-read) is neither stored nor published.
        assert_eq!(
            history.insert(
                event(0, 12, "a", 9),
                Utf8Bytes::from_static(""),
                SystemTime::now()
            ),
            Inserted::Duplicate
        );
    }

    #[test]
    fn events_after_subscribing_arrive_on_the_feed_not_in_the_replay() {
        let history = History::new(100, Duration::from_secs(600), 64);
        insert(&history, 0, 1, 1);
        let mut subscription = history.subscribe(Some(&Position::new()), &EventFilter::default());
        insert(&history, 0, 2, 2);
        assert_eq!(ids(&subscription.replay), ["0:1"]);
        let next = subscription.feed.try_recv().unwrap();
        assert_eq!(next.event.id.to_string(), "0:2");
    }

    #[test]
    fn an_evicted_stretch_is_reported_as_a_gap() {
        let history = History::new(3, Duration::from_secs(600), 64);
        for offset in 0..6 {
            insert(&history, 0, offset, 1);
        }
        let subscription =
            history.subscribe(Some(&Position::from([(0, 1)])), &EventFilter::default());
        assert_eq!(
            subscription.gaps,
            [Gap {
                partition: 0,
                after_offset: 1,
                resumes_at_offset: 3
            }]
        );
        assert_eq!(ids(&subscription.replay), ["0:3", "0:4", "0:5"]);
        // A client that saw everything evicted has no gap.
        let caught_up = history.subscribe(Some(&Position::from([(0, 2)])), &EventFilter::default());
        assert!(caught_up.gaps.is_empty());
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
        assert_eq!(
            ids(&history.trace(&format!("{:032x}", 1))),
            ["0:0", "0:3", "0:6", "0:9"]
        );
    }
}
