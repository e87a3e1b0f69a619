//! When the dispatcher reads the ingress topic.
//!
//! While every upstream's queue is full, a message read now could only be held, and a
//! partition whose hold overflows is paused: librdkafka then drops what it prefetched for that
//! partition and, on resume, fetches and decompresses whole record batches again to reach the
//! next offset. So while every queue is full the dispatcher leaves the ingress unread, and
//! librdkafka's bounded prefetch waits instead of being thrown away. Only for a while: a
//! consumer that stops polling for longer than `max.poll.interval.ms` is taken for dead by its
//! group, so a wait that lasts (an upstream outage) goes back to reading, holding and pausing,
//! which keeps polling.

use std::time::Duration;

use tokio::time::Instant;

/// How long the ingress may stay unread while every queue is full: far below librdkafka's
/// `max.poll.interval.ms` (five minutes by default), far above a delivery's time on a healthy
/// upstream.
pub const LONGEST_UNREAD: Duration = Duration::from_secs(1);

/// Whether the dispatcher reads the ingress now.
#[derive(Debug)]
pub struct ReadGate {
    full_since: Option<Instant>,
    longest: Duration,
}

impl ReadGate {
    pub fn new(longest: Duration) -> Self {
        Self {
            full_since: None,
            longest,
        }
    }

    /// Whether to read now, given whether every upstream's queue is full.
    pub fn reads(&mut self, every_queue_full: bool, now: Instant) -> bool {
        if !every_queue_full {
            self.full_since = None;
            return true;
        }
        let since = *self.full_since.get_or_insert(now);
        now.duration_since(since) >= self.longest
    }

    /// When a closed gate opens by itself (`None` while it is open).
    pub fn opens_at(&self, now: Instant) -> Option<Instant> {
        self.full_since
            .map(|since| since + self.longest)
            .filter(|opens| *opens > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_while_any_queue_has_room_and_waits_while_none_has() {
        let start = Instant::now();
        let mut gate = ReadGate::new(Duration::from_secs(1));
        assert!(gate.reads(false, start));
        assert_eq!(gate.opens_at(start), None);
        assert!(!gate.reads(true, start), "every queue full: not read");
        assert_eq!(gate.opens_at(start), Some(start + Duration::from_secs(1)));
        let later = start + Duration::from_millis(400);
        assert!(!gate.reads(true, later), "still full, still waiting");
        assert!(gate.reads(false, later), "room again: read");
        assert!(
            !gate.reads(true, later + Duration::from_millis(900)),
            "a new wait starts when the queues fill again"
        );
    }

    #[test]
    fn a_wait_that_lasts_goes_back_to_reading() {
        let start = Instant::now();
        let mut gate = ReadGate::new(Duration::from_secs(1));
        assert!(!gate.reads(true, start));
        let after = start + Duration::from_secs(1);
        assert!(gate.reads(true, after), "an outage: read, hold and pause");
        assert_eq!(gate.opens_at(after), None);
        assert!(gate.reads(true, after + Duration::from_secs(60)));
    }
}
