//! What a delivery's attempts say: the outcome with its reason code, the feedback for the
//! adaptive limit, and which attempts a record keeps.

use std::time::Duration;

use relais_resilience::{AttemptRecord, CallOutcome, Delivery, RetryStop, TransportError};

use crate::concurrency::Feedback;
use crate::records::Outcome;

/// Most attempts one record keeps. A message that waits through a long outage meets a
/// half-open trial every few seconds; the first attempts and the latest say what happened,
/// and the record stays bounded.
const MAX_RECORDED_ATTEMPTS: usize = 32;
const FIRST_RECORDED_ATTEMPTS: usize = 8;

pub(super) fn keep_first_and_latest(attempts: &mut Vec<AttemptRecord>) {
    if attempts.len() > MAX_RECORDED_ATTEMPTS {
        let latest_from = attempts.len() - (MAX_RECORDED_ATTEMPTS - FIRST_RECORDED_ATTEMPTS);
        attempts.drain(FIRST_RECORDED_ATTEMPTS..latest_from);
    }
}

/// What a delivery's attempts say about the upstream's load: back-pressure (429, 503, a
/// timeout) and the mean round trip of the answered attempts.
pub(super) fn feedback_of(attempts: &[AttemptRecord]) -> Feedback {
    let backpressure = attempts
        .iter()
        .any(|attempt| matches!(attempt.status, Some(429 | 503)) || attempt.timeout.is_some());
    let answered: Vec<Duration> = attempts
        .iter()
        .filter(|attempt| attempt.status.is_some())
        .map(|attempt| attempt.timings.total)
        .collect();
    let rtt =
        (!answered.is_empty()).then(|| answered.iter().sum::<Duration>() / answered.len() as u32);
    Feedback { rtt, backpressure }
}

/// Maps the final delivery to an outcome with a stable reason code.
pub(super) fn outcome_of(delivery: &Delivery) -> Outcome {
    if delivery.succeeded() {
        return Outcome::Delivered;
    }
    let stop = delivery.retry_stop.unwrap_or(RetryStop::NotRetryable);
    match (&delivery.outcome, stop) {
        (CallOutcome::Response { status }, RetryStop::NotRetryable)
            if (300..400).contains(status) =>
        {
            let location = delivery
                .attempts
                .last()
                .and_then(|attempt| attempt.response.as_ref())
                .and_then(|response| response.header("location"))
                .unwrap_or("nowhere (no Location header)");
            Outcome::Failed {
                reason: format!("http_{status}"),
                detail: format!(
                    "upstream answered {status} redirecting to {location}; redirects are not followed (the upstream's policy.redirects)"
                ),
            }
        }
        (CallOutcome::Response { status }, RetryStop::NotRetryable) => Outcome::Failed {
            reason: format!("http_{status}"),
            detail: format!("upstream answered {status}, which is not retried"),
        },
        (CallOutcome::Failed(error), RetryStop::NotRetryable) => Outcome::Failed {
            reason: format!("transport_{}", error.error_type()),
            detail: "the request failed in a way that is unsafe or pointless to repeat".into(),
        },
        (outcome, stop) => Outcome::DeadLettered {
            reason: match stop {
                RetryStop::MaxAttempts => "retries_exhausted".into(),
                RetryStop::BudgetExhausted => "retry_budget_exhausted".into(),
                RetryStop::RetryAfterTooLong => "retry_after_too_long".into(),
                RetryStop::Deadline => "deadline_exceeded".into(),
                RetryStop::CircuitOpened => "circuit_open".into(),
                RetryStop::NotRetryable => "not_retryable".into(),
            },
            detail: match outcome {
                CallOutcome::Response { status } => format!("last answer {status}"),
                CallOutcome::Failed(TransportError::Timeout(kind)) => {
                    format!("last attempt: {} timeout", kind.as_str())
                }
                CallOutcome::Failed(error) => format!("last attempt: {}", error.error_type()),
                CallOutcome::Refused(_) => "refused while the circuit was open (fail-fast)".into(),
            },
        },
    }
}
