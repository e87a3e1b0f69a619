//! Per-upstream scheduling: each upstream has its own queue and its own limit of deliveries in
//! flight, so a message waiting on its upstream (open circuit, held, backing off) occupies
//! only that upstream's capacity, never another's.
//!
//! Order is per upstream and per key: with `ordering = "key"` a message starts only after every
//! earlier message of its key for that upstream has finished, and distinct keys never wait for
//! each other (no hash lanes whose unrelated keys queue behind one slow key). With
//! `ordering = "none"` messages start in arrival order as capacity allows. Keyless messages
//! promise no order, as in Kafka itself.
//!
//! The scheduler is owned by the dispatcher task; deliveries run as tasks of their own and
//! report back through a bounded channel (bounded by the sum of the in-flight limits, so a
//! report never waits).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use tokio::time::Instant;

use crate::concurrency::{AdaptiveLimit, Feedback};
use crate::process::{Prepared, Processor};
use crate::records::Tracker;
use crate::tracker::Finished;

/// Whether an upstream's deliveries keep the order of their Kafka keys.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// A key's later message never starts before an earlier one has finished.
    #[default]
    Key,
    /// No order: the fastest.
    None,
}

/// How one upstream is scheduled.
#[derive(Debug, Clone)]
pub struct UpstreamSchedule {
    pub ordering: Ordering,
    /// Deliveries in flight, at most.
    pub max_in_flight: usize,
    /// Whether the in-flight limit adapts to the upstream within `1..=max_in_flight`
    /// ([`crate::concurrency`]); otherwise it is `max_in_flight`.
    pub adaptive: bool,
    /// The in-flight limit in force.
    pub limit_gauge: Gauge,
    /// The adaptive limit's knee (0 while it has none).
    pub knee_gauge: Gauge,
    /// Messages queued (not yet started), at most; beyond, the dispatcher holds the message
    /// and, if the wait goes on, pauses its partition.
    pub max_queued: usize,
    /// Gauges of this upstream: queued and in flight.
    pub queued_gauge: Gauge,
    pub in_flight_gauge: Gauge,
}

/// Messages in arrival order where, per key, one may be out at a time: a message whose key has
/// one ahead (ready or out) waits behind it. Keyless messages never wait for each other.
#[derive(Debug)]
struct KeyedQueue<T> {
    /// May be taken now, in arrival order, each with its key.
    ready: VecDeque<(Option<Vec<u8>>, T)>,
    /// Every key with a message ahead, and the messages of that key behind it, in order.
    busy_keys: HashMap<Vec<u8>, VecDeque<T>>,
    /// Messages not yet taken.
    len: usize,
}

impl<T> Default for KeyedQueue<T> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            busy_keys: HashMap::new(),
            len: 0,
        }
    }
}

impl<T> KeyedQueue<T> {
    fn push(&mut self, key: Option<Vec<u8>>, item: T) {
        self.len += 1;
        match key {
            Some(key) => match self.busy_keys.get_mut(&key) {
                Some(behind) => behind.push_back(item),
                None => {
                    self.busy_keys.insert(key.clone(), VecDeque::new());
                    self.ready.push_back((Some(key), item));
                }
            },
            None => self.ready.push_back((None, item)),
        }
    }

    /// The next message that may go out, with its key (hand the key back to `release`).
    fn take(&mut self) -> Option<(Option<Vec<u8>>, T)> {
        let next = self.ready.pop_front()?;
        self.len -= 1;
        Some(next)
    }

    /// The message of `key` that went out is done: the next of that key may go.
    fn release(&mut self, key: Option<Vec<u8>>) {
        let Some(key) = key else {
            return;
        };
        match self.busy_keys.get_mut(&key).and_then(VecDeque::pop_front) {
            Some(next) => self.ready.push_back((Some(key), next)),
            None => {
                self.busy_keys.remove(&key);
            }
        }
    }
}

/// The queue of one upstream.
#[derive(Debug)]
struct UpstreamQueue {
    name: Arc<str>,
    schedule: UpstreamSchedule,
    in_flight: usize,
    /// Boxed: a queue's deques grow by whole slots, and a key with one message waiting
    /// would otherwise hold room for four prepared messages.
    waiting: KeyedQueue<Box<Prepared>>,
    adaptive: Option<AdaptiveLimit>,
}

impl UpstreamQueue {
    fn limit(&self) -> usize {
        self.adaptive
            .as_ref()
            .map_or(self.schedule.max_in_flight, AdaptiveLimit::limit)
    }

    fn push(&mut self, prepared: Box<Prepared>) {
        let key = match self.schedule.ordering {
            Ordering::Key => prepared.inbound.key.clone(),
            Ordering::None => None,
        };
        self.waiting.push(key, prepared);
    }

    fn release(&mut self, key: Option<Vec<u8>>) {
        self.in_flight -= 1;
        self.waiting.release(key);
    }

    fn report(&self) {
        self.schedule.queued_gauge.set(self.waiting.len as i64);
        self.schedule.in_flight_gauge.set(self.in_flight as i64);
        self.schedule.limit_gauge.set(self.limit() as i64);
        let knee = self.adaptive.as_ref().and_then(AdaptiveLimit::knee);
        self.schedule.knee_gauge.set(knee.unwrap_or(0) as i64);
    }
}

/// A delivery that ended (or was dropped), as its task reports it.
#[derive(Debug)]
pub struct Done {
    upstream: Arc<str>,
    key: Option<Vec<u8>>,
    feedback: Option<Feedback>,
}

/// The queues of all upstreams and the deliveries they started.
#[derive(Debug)]
pub struct Scheduler {
    queues: BTreeMap<String, UpstreamQueue>,
    processor: Arc<Processor>,
    tracker: Arc<Tracker>,
    tasks: TaskTracker,
    done: mpsc::Sender<Done>,
}

impl Scheduler {
    /// A scheduler for `upstreams`, and the receiver of its deliveries' reports, which the
    /// dispatcher hands back to [`Scheduler::finished`].
    pub fn new(
        upstreams: BTreeMap<String, UpstreamSchedule>,
        processor: Arc<Processor>,
        tracker: Arc<Tracker>,
        tasks: TaskTracker,
    ) -> (Self, mpsc::Receiver<Done>) {
        let capacity = upstreams
            .values()
            .map(|schedule| schedule.max_in_flight)
            .sum::<usize>()
            .max(1);
        let (done, reports) = mpsc::channel(capacity);
        let queues = upstreams
            .into_iter()
            .map(|(name, schedule)| {
                let adaptive = schedule
                    .adaptive
                    .then(|| AdaptiveLimit::new(schedule.max_in_flight, Instant::now()));
                let queue = UpstreamQueue {
                    name: Arc::from(name.as_str()),
                    schedule,
                    in_flight: 0,
                    waiting: KeyedQueue::default(),
                    adaptive,
                };
                queue.report();
                (name, queue)
            })
            .collect();
        let scheduler = Self {
            queues,
            processor,
            tracker,
            tasks,
            done,
        };
        (scheduler, reports)
    }

    /// Whether `upstream`'s queue takes another message now.
    pub fn has_room(&self, upstream: &str) -> bool {
        self.queues
            .get(upstream)
            .is_some_and(|queue| queue.waiting.len < queue.schedule.max_queued)
    }

    /// Whether no upstream's queue takes another message now.
    pub fn every_queue_full(&self) -> bool {
        self.queues
            .values()
            .all(|queue| queue.waiting.len >= queue.schedule.max_queued)
    }

    /// Messages queued over all upstreams (not yet started).
    pub fn queued(&self) -> usize {
        self.queues.values().map(|queue| queue.waiting.len).sum()
    }

    /// Queues a routed message (its upstream must have room) and starts what may start.
    pub fn submit(&mut self, prepared: Box<Prepared>) {
        let Some(queue) = prepared
            .upstream()
            .and_then(|upstream| self.queues.get_mut(upstream))
        else {
            return;
        };
        let upstream = Arc::clone(&queue.name);
        queue.push(prepared);
        self.start(&upstream);
    }

    /// Takes a delivery's report and starts what may start next.
    pub fn finished(&mut self, done: Done) {
        if let Some(queue) = self.queues.get_mut(&*done.upstream) {
            queue.release(done.key);
            if let (Some(adaptive), Some(feedback)) = (queue.adaptive.as_mut(), done.feedback) {
                adaptive.finished(feedback, Instant::now());
            }
        }
        self.start(done.upstream.as_ref());
    }

    fn start(&mut self, upstream: &str) {
        let Some(queue) = self.queues.get_mut(upstream) else {
            return;
        };
        while queue.in_flight < queue.limit() {
            let Some((key, prepared)) = queue.waiting.take() else {
                break;
            };
            let in_flight = queue.in_flight;
            if let Some(adaptive) = queue.adaptive.as_mut() {
                adaptive.started(in_flight);
            }
            queue.in_flight += 1;
            let (source, generation, offset) = (
                prepared.inbound.source(),
                prepared.inbound.generation,
                prepared.inbound.offset,
            );
            let mut report = Done {
                upstream: Arc::clone(&queue.name),
                key,
                feedback: None,
            };
            if self.tracker.generation(source) != Some(generation) {
                // Revoked while it waited: the new owner decides it.
                queue.release(report.key);
                continue;
            }
            let (processor, tracker, done) = (
                Arc::clone(&self.processor),
                Arc::clone(&self.tracker),
                self.done.clone(),
            );
            let in_lane = self.tracker.enter_lane(source, generation);
            // Boxed: the delivery's state is over 2 KiB, which the runtime would otherwise
            // copy into the task and again at each change of the task's stage.
            let delivery = async move {
                let (output, feedback) = processor.finish_with_feedback(*prepared).await;
                if let Some(output) = output {
                    tracker.finished(source, generation, Finished { offset, output });
                }
                // Out of the lane before the report, which waits while the dispatcher is
                // busy (in a rebalance waiting for this very count, say).
                drop(in_lane);
                report.feedback = feedback;
                // The dispatcher has stopped when this fails: nothing is left to start.
                let _ = done.send(report).await;
            };
            self.tasks.spawn(Box::pin(delivery));
        }
        queue.report();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Option<Vec<u8>> {
        Some(name.as_bytes().to_vec())
    }

    fn take_all<T>(queue: &mut KeyedQueue<T>) -> Vec<(Option<Vec<u8>>, T)> {
        std::iter::from_fn(|| queue.take()).collect()
    }

    #[test]
    fn a_key_waits_for_its_earlier_message_and_other_keys_do_not() {
        let mut queue = KeyedQueue::default();
        queue.push(key("a"), 1);
        queue.push(key("a"), 2);
        queue.push(key("b"), 3);
        queue.push(None, 4);
        queue.push(key("a"), 5);
        let out: Vec<i32> = take_all(&mut queue).into_iter().map(|(_, n)| n).collect();
        assert_eq!(
            out,
            [1, 3, 4],
            "a's later messages wait; b and the keyless go"
        );
        assert_eq!(queue.len, 2);
        queue.release(key("b"));
        queue.release(None);
        assert!(
            queue.take().is_none(),
            "nothing of a until its first is done"
        );
        queue.release(key("a"));
        assert_eq!(queue.take(), Some((key("a"), 2)));
        assert!(queue.take().is_none());
        queue.release(key("a"));
        assert_eq!(queue.take(), Some((key("a"), 5)));
        queue.release(key("a"));
        assert!(
            queue.busy_keys.is_empty(),
            "a key with nothing left is forgotten"
        );
        assert_eq!(queue.len, 0);
    }

    #[test]
    fn without_keys_everything_goes_in_arrival_order() {
        let mut queue = KeyedQueue::default();
        for n in 0..5 {
            queue.push(None, n);
        }
        let out: Vec<i32> = take_all(&mut queue).into_iter().map(|(_, n)| n).collect();
        assert_eq!(out, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_key_that_comes_back_after_its_last_message_starts_at_once() {
        let mut queue = KeyedQueue::default();
        queue.push(key("a"), 1);
        let (taken_key, _) = queue.take().unwrap();
        queue.release(taken_key);
        queue.push(key("a"), 2);
        assert_eq!(queue.take(), Some((key("a"), 2)));
    }
}
