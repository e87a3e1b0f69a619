//! The transactional producer, which the committer replaces when librdkafka gives up on it.
//!
//! librdkafka leaves a producer in a fatal state for good, and not only when a newer instance
//! with the same transactional id fenced it: a broker that stays away longer than the records'
//! delivery timeout makes the open transaction abortable, and the abort can then be refused as
//! an invalid state; a broker back after longer than the transaction timeout has aborted the
//! transaction itself, which the producer learns as fencing. Either way a new producer with the
//! same transactional id carries on: initialising it fences the old one and settles the
//! transaction the old one left, committed or aborted. Only a worker whose producer keeps being
//! fenced (another process with its `worker_id`) stops, see [`ReplacementBudget`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{FutureProducer, Producer as _};
use relais_telemetry::shutdown::CancellationToken;
use tokio::time::Instant;

use super::round::blocking;

/// First wait between attempts to initialise a new producer while the brokers are away.
const INIT_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between those attempts.
const MAX_INIT_BACKOFF: Duration = Duration::from_secs(5);

/// The producer every transaction is written with, shared by the committer (which replaces it)
/// and whoever asks the brokers through it.
#[derive(Clone)]
pub struct TransactionalProducer {
    current: Arc<Mutex<FutureProducer>>,
    /// What each producer is made from, `transactional.id` included.
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TransactionalProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalProducer")
            .finish_non_exhaustive()
    }
}

impl TransactionalProducer {
    /// The first producer; [`TransactionalProducer::init`] readies it for transactions.
    pub fn create(config: ClientConfig) -> KafkaResult<Self> {
        let producer: FutureProducer = config.create()?;
        Ok(Self {
            current: Arc::new(Mutex::new(producer)),
            config: Arc::new(config),
        })
    }

    /// The producer to use now (a handle: clones share one librdkafka client).
    pub fn current(&self) -> FutureProducer {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Initialises transactions on the current producer: fences an earlier instance with the
    /// same identity (a crashed predecessor) and settles whatever transaction it left open.
    pub async fn init(&self, timeout: Duration) -> KafkaResult<()> {
        let producer = self.current();
        blocking(move || producer.init_transactions(timeout)).await
    }

    /// Puts a new, initialised producer in place of the current one. While the brokers cannot
    /// be reached it tries again, waiting longer each time up to a few seconds, until
    /// `shutdown`; an error that trying again cannot mend (refused credentials or ACLs) is
    /// returned at once.
    pub async fn replace(
        &self,
        call_timeout: Duration,
        shutdown: &CancellationToken,
    ) -> KafkaResult<()> {
        let mut backoff = INIT_BACKOFF;
        let new = loop {
            let new: FutureProducer = self.config.create()?;
            let initialising = new.clone();
            let error = match blocking(move || initialising.init_transactions(call_timeout)).await {
                Ok(()) => break new,
                Err(error) => {
                    // Destroying a client joins its threads: not on a runtime worker.
                    let _ = tokio::task::spawn_blocking(move || drop(new)).await;
                    error
                }
            };
            if !worth_trying_again(&error) || shutdown.is_cancelled() {
                return Err(error);
            }
            tracing::warn!(%error, ?backoff, "cannot initialise a new transactional producer yet");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return Err(error),
            }
            backoff = (backoff * 2).min(MAX_INIT_BACKOFF);
        };
        let old = std::mem::replace(
            &mut *self.current.lock().unwrap_or_else(PoisonError::into_inner),
            new,
        );
        // Dropping a producer purges and flushes it and joins its thread: not on a runtime
        // worker.
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        Ok(())
    }
}

/// Whether initialising a producer that failed with `error` may succeed later: yes for
/// timeouts and unreachable brokers, no for what only an operator can change.
fn worth_trying_again(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(inner) => inner.is_retriable() || !inner.is_fatal(),
        _ => true,
    }
}

/// How often a fatal producer may be replaced: a broker outage makes one replacement, a
/// flapping broker a few; a producer fenced again and again is fought over by another
/// process with the same `worker_id`, and replacing it each time would only fence that one in
/// turn. Beyond `allowed` replacements within `window` the worker stops.
#[derive(Debug)]
pub struct ReplacementBudget {
    allowed: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

/// Replacements allowed within [`REPLACEMENT_WINDOW`] by default.
const REPLACEMENTS_ALLOWED: usize = 3;
const REPLACEMENT_WINDOW: Duration = Duration::from_secs(300);

impl Default for ReplacementBudget {
    fn default() -> Self {
        Self::new(REPLACEMENTS_ALLOWED, REPLACEMENT_WINDOW)
    }
}

impl ReplacementBudget {
    pub fn new(allowed: usize, window: Duration) -> Self {
        Self {
            allowed,
            window,
            recent: VecDeque::with_capacity(allowed + 1),
        }
    }

    /// Counts a replacement at `now`; false when it is one more than the window allows.
    pub fn spend(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|earlier| now.duration_since(*earlier) >= self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.allowed {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_replacements_in_a_window_are_allowed_and_more_stop_the_worker() {
        let start = Instant::now();
        let minute = Duration::from_secs(60);
        let mut budget = ReplacementBudget::new(3, 5 * minute);
        assert!(budget.spend(start));
        assert!(budget.spend(start + minute));
        assert!(budget.spend(start + 2 * minute));
        assert!(
            !budget.spend(start + 3 * minute),
            "a fourth within five minutes"
        );
        // The first has left the window: room for one more.
        assert!(budget.spend(start + 5 * minute));
        assert!(!budget.spend(start + 5 * minute + Duration::from_secs(1)));
    }

    #[test]
    fn one_replacement_per_outage_never_runs_out() {
        let start = Instant::now();
        let mut budget = ReplacementBudget::new(3, Duration::from_secs(300));
        for hour in 0..48 {
            assert!(budget.spend(start + Duration::from_secs(3600 * hour)));
        }
    }
}
