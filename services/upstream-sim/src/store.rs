//! What the simulator received, per `Idempotency-Key`, so tests can count duplicate deliveries.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

/// Counts for one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KeyCounts {
    /// Requests that arrived with this key, whatever the answer.
    pub received: u64,
    /// Requests with this key that were answered 2xx: more than one is a duplicate delivery.
    pub accepted: u64,
}

/// Totals over all keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub accepted: u64,
    pub distinct_keys: u64,
    /// Keys accepted more than once.
    pub duplicated_keys: u64,
    /// Accepted requests beyond the first per key.
    pub duplicate_deliveries: u64,
    /// Requests without an `Idempotency-Key` (not tracked per key).
    pub without_key: u64,
    /// Keys not tracked because the store was full.
    pub untracked: u64,
    /// Events accepted for the first time that carried `data.order_key` and `data.seq`.
    pub ordered_events: u64,
    /// Of those, events whose order key had a higher `seq` accepted before: delivered out of
    /// order. (A repeated delivery of an event accepted before is a duplicate, not this.)
    pub order_violations: u64,
}

/// Where an event stands in the order of its key, read from its body: tests and benchmarks
/// put `{"order_key": "...", "seq": n}` in the event's `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderMark {
    pub key: String,
    pub seq: u64,
}

impl OrderMark {
    /// The mark of a delivery body, if it has one. Bodies without `"seq"` are not parsed.
    pub fn of_body(body: &[u8]) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Body {
            data: Data,
        }
        #[derive(serde::Deserialize)]
        struct Data {
            order_key: String,
            seq: u64,
        }
        if !body.windows(5).any(|window| window == b"\"seq\"") {
            return None;
        }
        let body: Body = serde_json::from_slice(body).ok()?;
        Some(Self {
            key: body.data.order_key,
            seq: body.data.seq,
        })
    }
}

/// A bounded map from key to counts; `reset` empties it.
#[derive(Debug)]
pub struct DeliveryStore {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<String, KeyCounts>,
    /// The highest `seq` accepted per order key.
    order: HashMap<String, u64>,
    summary: Summary,
}

impl DeliveryStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts an arriving request.
    pub fn received(&self, key: Option<&str>) {
        let mut inner = self.lock();
        inner.summary.requests += 1;
        let Some(key) = key else {
            inner.summary.without_key += 1;
            return;
        };
        if let Some(counts) = inner.keys.get_mut(key) {
            counts.received += 1;
        } else if inner.keys.len() < self.capacity {
            inner.keys.insert(
                key.to_owned(),
                KeyCounts {
                    received: 1,
                    accepted: 0,
                },
            );
            inner.summary.distinct_keys += 1;
        } else {
            inner.summary.untracked += 1;
        }
    }

    /// Counts a 2xx answer; returns whether this key had been accepted before.
    pub fn accepted(&self, key: Option<&str>) -> bool {
        let mut inner = self.lock();
        inner.summary.accepted += 1;
        let Some(counts) = key.and_then(|key| inner.keys.get_mut(key)) else {
            return false;
        };
        counts.accepted += 1;
        let accepted = counts.accepted;
        if accepted == 2 {
            inner.summary.duplicated_keys += 1;
        }
        if accepted >= 2 {
            inner.summary.duplicate_deliveries += 1;
        }
        accepted >= 2
    }

    /// Checks the order of an event accepted for the first time; true when it came after a
    /// later event of its order key.
    pub fn check_order(&self, mark: OrderMark) -> bool {
        let mut inner = self.lock();
        inner.summary.ordered_events += 1;
        let tracked = inner.order.len() < self.capacity || inner.order.contains_key(&mark.key);
        if !tracked {
            return false;
        }
        let highest = inner.order.entry(mark.key).or_insert(mark.seq);
        let violated = mark.seq < *highest;
        *highest = (*highest).max(mark.seq);
        if violated {
            inner.summary.order_violations += 1;
        }
        violated
    }

    pub fn key(&self, key: &str) -> Option<KeyCounts> {
        self.lock().keys.get(key).copied()
    }

    pub fn summary(&self) -> Summary {
        self.lock().summary
    }

    pub fn reset(&self) {
        *self.lock() = Inner::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_accepted_after_a_later_one_of_its_key_is_an_order_violation() {
        let store = DeliveryStore::new(100);
        let mark = |key: &str, seq| OrderMark {
            key: key.into(),
            seq,
        };
        assert!(!store.check_order(mark("a", 1)));
        assert!(!store.check_order(mark("a", 3)));
        assert!(!store.check_order(mark("b", 0)), "keys are independent");
        assert!(store.check_order(mark("a", 2)), "2 after 3");
        assert!(!store.check_order(mark("a", 4)));
        let summary = store.summary();
        assert_eq!((summary.ordered_events, summary.order_violations), (5, 1));
    }

    #[test]
    fn the_mark_is_read_from_the_event_data() {
        let body = br#"{"id":"e-1","type":"t","data":{"order_key":"k-7","seq":12,"x":[1]}}"#;
        assert_eq!(
            OrderMark::of_body(body),
            Some(OrderMark {
                key: "k-7".into(),
                seq: 12
            })
        );
        assert_eq!(OrderMark::of_body(br#"{"data":{"n":1}}"#), None);
        assert_eq!(OrderMark::of_body(br#"{"data":{"seq":"x"}}"#), None);
    }

    #[test]
    fn counts_duplicates_per_key() {
        let store = DeliveryStore::new(10);
        for key in ["a", "a", "b", "a"] {
            store.received(Some(key));
        }
        assert!(!store.accepted(Some("a")));
        assert!(store.accepted(Some("a")));
        assert!(store.accepted(Some("a")));
        assert!(!store.accepted(Some("b")));
        assert_eq!(
            store.key("a"),
            Some(KeyCounts {
                received: 3,
                accepted: 3
            })
        );
        let summary = store.summary();
        assert_eq!(summary.distinct_keys, 2);
        assert_eq!(summary.duplicated_keys, 1);
        assert_eq!(summary.duplicate_deliveries, 2);
        store.reset();
        assert_eq!(store.summary(), Summary::default());
    }

    #[test]
    fn stays_bounded() {
        let store = DeliveryStore::new(2);
        for key in ["a", "b", "c"] {
            store.received(Some(key));
        }
        assert_eq!(store.summary().untracked, 1);
        assert_eq!(store.key("c"), None);
    }
}
