//! Retrying operations that are not reqwest requests (an S3 PUT through rust-s3, say) with the
//! same machinery the HTTP stack uses: reqwest-retry's exponential policy with full jitter,
//! a per-attempt timeout, and the caller's decision of what is retryable.
//!
//! The HTTP stack is the right tool whenever a call is a reqwest request; this is for clients
//! that own their HTTP layer. Each attempt is bounded, each wait is bounded, and the whole
//! loop stops on cancellation, so an outage never pins a task forever.

use std::future::Future;
use std::time::Duration;

use relais_telemetry::shutdown::CancellationToken;
use reqwest_retry::policies::ExponentialBackoff;

use crate::backoff;

/// How an operation is retried.
#[derive(Debug, Clone)]
pub struct OperationRetry {
    backoff: ExponentialBackoff,
    /// Attempts in all; `None` retries until cancelled (for writes that must not be lost).
    pub max_attempts: Option<u32>,
    pub attempt_timeout: Duration,
}

/// Why an operation gave up.
#[derive(Debug, thiserror::Error)]
pub enum OperationError<E> {
    #[error("operation failed and is not retryable")]
    Fatal(#[source] E),
    #[error("operation failed after {attempts} attempts")]
    Exhausted {
        attempts: u32,
        #[source]
        last: E,
    },
    #[error("operation cancelled")]
    Cancelled,
}

/// What one failed attempt was.
#[derive(Debug)]
pub enum AttemptFailure<'a, E> {
    Error(&'a E),
    TimedOut,
}

impl OperationRetry {
    pub fn new(
        base: Duration,
        max: Duration,
        max_attempts: Option<u32>,
        attempt_timeout: Duration,
    ) -> Self {
        Self {
            backoff: backoff::exponential_full_jitter(base, max),
            max_attempts,
            attempt_timeout,
        }
    }

    /// Runs `operation` until it succeeds, fails for good (`retryable` says no), runs out of
    /// attempts, or `cancel` fires. `on_retry` sees every failed attempt before the wait (for
    /// metrics and logs). A timed-out attempt is always retryable: nothing is known about it,
    /// and the operations this serves are idempotent (same key, same bytes).
    pub async fn run<T, E, F, Fut>(
        &self,
        cancel: &CancellationToken,
        mut operation: F,
        retryable: impl Fn(&E) -> bool,
        mut on_retry: impl FnMut(AttemptFailure<'_, E>, u32, Duration),
    ) -> Result<T, OperationError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return Err(OperationError::Cancelled),
                outcome = tokio::time::timeout(self.attempt_timeout, operation()) => outcome,
            };
            let last_error = match outcome {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) if !retryable(&error) => return Err(OperationError::Fatal(error)),
                Ok(Err(error)) => Some(error),
                Err(_) => None,
            };
            let wait = backoff::jittered(&self.backoff, attempt - 1);
            if self.max_attempts.is_some_and(|max| attempt >= max) {
                return match last_error {
                    Some(last) => Err(OperationError::Exhausted {
                        attempts: attempt,
                        last,
                    }),
                    None => Err(OperationError::Cancelled),
                };
            }
            match &last_error {
                Some(error) => on_retry(AttemptFailure::Error(error), attempt, wait),
                None => on_retry(AttemptFailure::TimedOut, attempt, wait),
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(OperationError::Cancelled),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_with_growing_waits() {
        let retry = OperationRetry::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            None,
            Duration::from_secs(5),
        );
        let calls = AtomicU32::new(0);
        let mut waits = Vec::new();
        let result: Result<u32, OperationError<&str>> = retry
            .run(
                &CancellationToken::new(),
                || async {
                    let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    if call < 4 {
                        Err("unavailable")
                    } else {
                        Ok(call)
                    }
                },
                |_| true,
                |_, _, wait| waits.push(wait),
            )
            .await;
        assert_eq!(result.unwrap(), 4);
        assert_eq!(waits.len(), 3);
        assert!(waits[0] <= Duration::from_millis(101));
        assert!(waits[2] <= Duration::from_millis(401));
    }

    #[tokio::test(start_paused = true)]
    async fn hanging_attempts_time_out_and_fatal_errors_stop() {
        let retry = OperationRetry::new(
            Duration::from_millis(10),
            Duration::from_millis(10),
            Some(3),
            Duration::from_secs(1),
        );
        let started = tokio::time::Instant::now();
        let result: Result<(), OperationError<&str>> = retry
            .run(
                &CancellationToken::new(),
                std::future::pending,
                |_| true,
                |_, _, _| {},
            )
            .await;
        assert!(
            matches!(result, Err(OperationError::Cancelled)),
            "no error value from a timeout"
        );
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "three bounded attempts"
        );

        let fatal: Result<(), OperationError<&str>> = retry
            .run(
                &CancellationToken::new(),
                || async { Err("forbidden") },
                |_| false,
                |_, _, _| {},
            )
            .await;
        assert!(matches!(fatal, Err(OperationError::Fatal("forbidden"))));
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_an_endless_retry() {
        let retry = OperationRetry::new(
            Duration::from_millis(10),
            Duration::from_secs(1),
            None,
            Duration::from_secs(1),
        );
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            stopper.cancel();
        });
        let result: Result<(), OperationError<&str>> = retry
            .run(&cancel, || async { Err("down") }, |_| true, |_, _, _| {})
            .await;
        assert!(matches!(result, Err(OperationError::Cancelled)));
    }
}
