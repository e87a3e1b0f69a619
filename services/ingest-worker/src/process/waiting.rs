//! A delivery's waiting for its upstream, and how a delivery ends.

use std::time::Duration;

use relais_resilience::{AttemptRecord, Delivery};

use super::Processor;

/// How a delivery ended.
pub(super) enum Attempted {
    /// The upstream's last answer, and every attempt made.
    Answered(Delivery, Vec<AttemptRecord>),
    /// It waited for its upstream longer than `in_memory_wait`: to the next tier.
    WaitedTooLong {
        reason: &'static str,
        attempts: Vec<AttemptRecord>,
    },
    /// Shutdown began while it waited: not decided, read again later.
    Abandoned,
}

/// Longest single wait while the circuit is open, so shutdown and recovery are noticed soon.
const MAX_PARK_STEP: Duration = Duration::from_millis(500);

/// A delivery's waiting for its upstream: counted on the `parked` gauge while it lasts, and
/// bounded by `in_memory_wait` when the upstream has tiers to move the message to.
pub(super) struct Waiting<'a> {
    processor: &'a Processor,
    since: Option<tokio::time::Instant>,
    pub(super) bounded: bool,
    abandoned: bool,
}

impl<'a> Waiting<'a> {
    pub(super) fn new(processor: &'a Processor, bounded: bool) -> Self {
        Self {
            processor,
            since: None,
            bounded,
            abandoned: false,
        }
    }

    /// The message begins (or goes on) waiting.
    pub(super) fn start(&mut self) {
        if self.since.is_none() {
            self.since = Some(tokio::time::Instant::now());
            self.processor.metrics.parked.inc();
        }
    }

    /// The wait is over.
    pub(super) fn end(&mut self) {
        if self.since.take().is_some() {
            self.processor.metrics.parked.dec();
        }
    }

    /// `Some(reason)` once the message has waited as long as it may in memory.
    pub(super) fn too_long(&self, reason: &'static str) -> Option<&'static str> {
        let waited = self.since.map_or(Duration::ZERO, |since| since.elapsed());
        (self.bounded && waited >= self.processor.retry.in_memory_wait).then_some(reason)
    }

    /// Waits up to `wait` (bounded, so shutdown and recovery are noticed soon). `Some` when
    /// the message should not wait any longer: shutdown began, or it has waited, or would wait,
    /// as long as it may in memory (the reason it waited).
    pub(super) async fn park(
        &mut self,
        wait: Duration,
        reason: &'static str,
    ) -> Option<&'static str> {
        self.start();
        if let Some(reason) = self.too_long(reason) {
            return Some(reason);
        }
        if self.bounded && wait >= self.processor.retry.in_memory_wait {
            // A hold or a Retry-After this long: no point waiting part of it here.
            return Some(reason);
        }
        let step = wait.clamp(Duration::from_millis(20), MAX_PARK_STEP);
        // Boxed: only a delivery that waits carries the timer, not the future of every one.
        let shutdown = Box::pin(async {
            tokio::select! {
                _ = self.processor.shutdown.cancelled() => true,
                _ = tokio::time::sleep(step) => false,
            }
        });
        if shutdown.await {
            self.abandoned = true;
            return Some("shutdown");
        }
        None
    }

    /// How a delivery that stops waiting ends.
    pub(super) fn give_up(
        mut self,
        reason: &'static str,
        attempts: Vec<AttemptRecord>,
    ) -> Attempted {
        self.end();
        if self.abandoned {
            Attempted::Abandoned
        } else {
            Attempted::WaitedTooLong { reason, attempts }
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.end();
    }
}
