//! The running pipeline: consumers → dispatcher (normalise, route) → per-upstream scheduler →
//! deliveries → tracker → committer.
//!
//! ```text
//!  relais.ingress ──┬─▶ dispatcher ─▶ queue[upstream] ─▶ delivery tasks ─▶ OffsetTracker ─▶ Committer
//!  relais.retry.* ──┘   │ prepare      (key order,       (≤ max_in_flight   (contiguous)   (one txn:
//!  (paused until due)   │ (Processor)   max_queued)        per upstream)                   records+offsets)
//!                       └ hold, then pause the partition, while the upstream's queue is full
//! ```
//!
//! A delivery that cannot succeed soon ends in a move to a retry tier instead of an outcome
//! ([`crate::retry`]): the move is written like an outcome, in the transaction with the offset
//! it frees.
//!
//! Each upstream has its own queue and in-flight limit ([`crate::schedule`]): a message waiting
//! on its upstream occupies only that upstream's capacity. Per-key order holds per upstream;
//! distinct keys never wait for each other.

use std::time::Duration;

use relais_telemetry::admin::ReadinessCheck;
use relais_telemetry::shutdown::CancellationToken;

use crate::committer::{CommitError, Committer};

/// Commit rounds that fail in a row before the worker reports itself not ready.
const FAILED_ROUNDS_BEFORE_NOT_READY: u32 = 3;

/// Commits every `interval` until shutdown, then once more for what the deliveries finished
/// while draining. Readiness turns false while commits keep failing, and true again with the
/// next committed round. A producer that cannot be replaced, or a commit left unsettled at
/// shutdown, ends the loop (and the worker).
pub async fn commit_loop(
    mut committer: Committer,
    interval: Duration,
    readiness: ReadinessCheck,
    deliveries_done: CancellationToken,
) -> Result<(), CommitError> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::from_millis(100);
    let mut failed_rounds = 0u32;
    loop {
        let last_round = tokio::select! {
            _ = ticker.tick() => false,
            _ = deliveries_done.cancelled() => true,
        };
        match committer.commit_ready().await {
            Ok(_) => {
                backoff = Duration::from_millis(100);
                if failed_rounds >= FAILED_ROUNDS_BEFORE_NOT_READY {
                    tracing::info!(failed_rounds, "commits succeed again");
                }
                failed_rounds = 0;
                readiness.set_ready();
            }
            Err(error) if error.ends_the_worker() => {
                readiness.set_not_ready(error.to_string());
                return Err(error);
            }
            Err(error) => {
                failed_rounds += 1;
                let cause = std::error::Error::source(&error)
                    .map(ToString::to_string)
                    .unwrap_or_default();
                tracing::warn!(%error, %cause, failed_rounds, "commit round failed; retrying");
                if failed_rounds >= FAILED_ROUNDS_BEFORE_NOT_READY {
                    readiness.set_not_ready(format!("cannot commit: {error}: {cause}"));
                }
                committer
                    .metrics
                    .uncommitted
                    .set(committer.tracker.in_flight() as i64);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if last_round {
                    // One retry for the final round, then give up: what is not committed is
                    // read again by whoever owns the partition next.
                    if let Err(error) = committer.commit_ready().await {
                        tracing::warn!(error = %error, "final commit failed; uncommitted messages will be redelivered");
                        if error.ends_the_worker() {
                            return Err(error);
                        }
                    }
                    return Ok(());
                }
                continue;
            }
        }
        committer
            .metrics
            .uncommitted
            .set(committer.tracker.in_flight() as i64);
        if last_round {
            return Ok(());
        }
    }
}
