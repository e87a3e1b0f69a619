//! What a connection owes its client besides events, and what it watches on the client: pings
//! and position frames on their own intervals, and how long the client has gone without a pong.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When the next ping and the next position frame are due. One timer serves both: the
/// connection sleeps until [`Chores::next`] and then asks what is due.
#[derive(Debug, Clone)]
pub(super) struct Chores {
    ping_interval: Duration,
    position_interval: Duration,
    next_ping: Instant,
    next_position: Instant,
}

/// What fell due at one wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Due {
    pub(super) ping: bool,
    pub(super) position: bool,
}

impl Chores {
    pub(super) fn new(
        start: Instant,
        ping_interval: Duration,
        position_interval: Duration,
    ) -> Self {
        Self {
            ping_interval,
            position_interval,
            next_ping: start + ping_interval,
            next_position: start + position_interval,
        }
    }

    /// The earliest moment something is due.
    pub(super) fn next(&self) -> Instant {
        self.next_ping.min(self.next_position)
    }

    /// What is due at `now`; each chore taken is scheduled one interval after `now`, so a
    /// connection that was busy for several intervals owes one ping, not a burst of them.
    pub(super) fn take_due(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        if now >= self.next_ping {
            due.ping = true;
            self.next_ping = now + self.ping_interval;
        }
        if now >= self.next_position {
            due.position = true;
            self.next_position = now + self.position_interval;
        }
        due
    }
}

/// When the client last answered a ping, shared between the task that reads the client's
/// frames and the one that decides whether the client is gone.
#[derive(Debug)]
pub(super) struct PongClock {
    start: Instant,
    /// Milliseconds from `start` to the last pong (or to `start` itself, before any).
    last_pong_ms: AtomicU64,
}

impl PongClock {
    pub(super) fn new(start: Instant) -> Self {
        Self {
            start,
            last_pong_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn pong(&self, now: Instant) {
        let since_start = now.saturating_duration_since(self.start);
        let ms = u64::try_from(since_start.as_millis()).unwrap_or(u64::MAX);
        self.last_pong_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long the client has gone without a pong (since the connection went live, before
    /// its first one).
    pub(super) fn silent_for(&self, now: Instant) -> Duration {
        let last = self.start + Duration::from_millis(self.last_pong_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_timer_wakes_for_the_earlier_chore_and_only_that_one_is_taken() {
        let start = Instant::now();
        let mut chores = Chores::new(start, 15 * SECOND, 5 * SECOND);
        assert_eq!(chores.next(), start + 5 * SECOND);
        let due = chores.take_due(start + 5 * SECOND);
        assert_eq!(
            due,
            Due {
                ping: false,
                position: true
            }
        );
        assert_eq!(chores.next(), start + 10 * SECOND);
        assert_eq!(
            chores.take_due(start + 10 * SECOND),
            Due {
                ping: false,
                position: true
            }
        );
        assert_eq!(chores.next(), start + 15 * SECOND);
        assert_eq!(
            chores.take_due(start + 15 * SECOND),
            Due {
                ping: true,
                position: true
            }
        );
        assert_eq!(chores.next(), start + 20 * SECOND);
    }

    #[test]
    fn nothing_is_due_before_its_time() {
        let start = Instant::now();
        let mut chores = Chores::new(start, 15 * SECOND, 5 * SECOND);
        assert_eq!(chores.take_due(start + 4 * SECOND), Due::default());
        assert_eq!(chores.next(), start + 5 * SECOND);
    }

    #[test]
    fn a_late_wake_up_owes_each_chore_once_and_schedules_from_now() {
        let start = Instant::now();
        let mut chores = Chores::new(start, 15 * SECOND, 5 * SECOND);
        let late = start + 62 * SECOND;
        assert_eq!(
            chores.take_due(late),
            Due {
                ping: true,
                position: true
            }
        );
        assert_eq!(chores.next(), late + 5 * SECOND);
        assert_eq!(chores.take_due(late + SECOND), Due::default());
    }

    #[test]
    fn silence_counts_from_the_last_pong_or_from_the_start() {
        let start = Instant::now();
        let clock = PongClock::new(start);
        assert_eq!(clock.silent_for(start + 10 * SECOND), 10 * SECOND);
        clock.pong(start + 20 * SECOND);
        assert_eq!(clock.silent_for(start + 50 * SECOND), 30 * SECOND);
        // A pong noted late by a busy reader never moves the clock back.
        clock.pong(start + 5 * SECOND);
        assert_eq!(clock.silent_for(start + 50 * SECOND), 30 * SECOND);
        assert_eq!(clock.silent_for(start), Duration::ZERO);
    }
}
