//! The retry layer of the outbound stack, between admission (`admission.rs`) and the probe
//! (`probe.rs`); `client.rs` composes them.

use std::sync::Arc;
use std::time::Duration;

use http::Extensions;
use prometheus_client::metrics::gauge::Gauge;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

use crate::attempt::{AttemptProgress, AttemptRecord, CallProgress, CallRecord};
use crate::backoff;
use crate::budget::RetryBudget;
use crate::circuit::CircuitBreaker;
use crate::classify::{
    AttemptResult, Decision, RetryClassifier, RetryStop, TimeoutKind, TransportError,
};
use crate::error::{ResilienceError, transport_error};
use crate::metrics::UpstreamReasonLabels;
use crate::metrics::{AttemptMetrics, ResilienceMetrics};
use crate::pace::Pacer;
use crate::policy::RetryPolicyConfig;

/// The retry machinery: runs attempts, each under its own time limit (so one hang cannot eat
/// the deadline), asks the classifier what each result means, waits with jittered backoff
/// (never less than `Retry-After`), and stops at the first of: success, a final answer,
/// `max_attempts`, an exhausted budget, a `Retry-After` beyond the cap, a deadline that the
/// wait would cross, or a circuit that opened meanwhile. Every attempt is reported to the
/// circuit breaker and recorded with its probe data.
#[derive(Debug)]
pub(crate) struct Retry {
    pub(crate) policy: RetryPolicyConfig,
    /// The limit of one attempt: connect, request, response and body.
    pub(crate) attempt_timeout: Duration,
    /// This upstream's retry-budget gauge, resolved once rather than per call.
    pub(crate) budget_utilisation: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(crate) backoff: reqwest_retry::policies::ExponentialBackoff,
    pub(crate) classifier: Arc<dyn RetryClassifier>,
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) breaker: Arc<CircuitBreaker>,
    /// The upstream's pace: a `Retry-After` on 429/503 pauses every call, and each retry waits
    /// for its turn under the rate limit.
    pub(crate) pacer: Arc<Pacer>,
    pub(crate) upstream: Arc<str>,
    pub(crate) server: ServerAddress,
    pub(crate) metrics: ResilienceMetrics,
    /// The attempts' series of this upstream.
    pub(crate) attempts: AttemptMetrics,
}

/// The header that lets an upstream deduplicate, which makes a POST safe to send again.
pub(crate) const IDEMPOTENCY_KEY: http::HeaderName =
    http::HeaderName::from_static("idempotency-key");

#[async_trait::async_trait]
impl Middleware for Retry {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let call = CallRecord::of(extensions);
        let deadline = call.lock().deadline;
        let method = method_label(request.method());
        let server = self.server.of(&request);
        // A repeat is harmless when the method is idempotent or the upstream can deduplicate.
        let replayable =
            request.method().is_idempotent() || request.headers().contains_key(IDEMPOTENCY_KEY);
        self.budget.record_request();

        let mut pending = Some(request);
        let mut number = 0u32;
        loop {
            // The request is handed on in a block of its own, so the future does not keep a
            // third copy of it across the attempt beside the caller's and the spare.
            let (spare, limit, sending) = {
                let Some(request) = pending.take() else {
                    // Unreachable: the loop only continues with a cloned request in hand.
                    return Err(ResilienceError::Timeout(TimeoutKind::Deadline).into_middleware());
                };
                // Kept for the next attempt; a streaming body cannot be cloned, then no retry.
                let spare = request.try_clone();
                call.lock().current = AttemptProgress {
                    number,
                    ..AttemptProgress::default()
                };
                // Each attempt gets its own limit, so one hang cannot eat the deadline; the
                // same timer ends it at the deadline when that comes first.
                let limit = attempt_limit(Instant::now(), self.attempt_timeout, deadline);
                let sending =
                    tokio::time::timeout_at(limit.at, next.clone().run(request, extensions));
                (spare, limit.kind, sending)
            };
            let started = Instant::now();
            let result = match sending.await {
                Ok(result) => result,
                Err(_) if limit == TimeoutKind::Deadline => {
                    return Err(cut_at_deadline(&call, &self.attempts, (method, &server)));
                }
                Err(_) => Err(ResilienceError::Timeout(TimeoutKind::Attempt).into_middleware()),
            };
            let attempt = Attempt {
                number,
                elapsed: started.elapsed(),
                can_resend: spare.is_some(),
                replayable,
                deadline,
            };
            let wait = match self.settle(&result, attempt, &call, (method, &server)) {
                Settled::Over => return result,
                Settled::RetryAfter(wait) => wait,
            };
            drop(result);
            // Only a retry waits: its timers live in a box of their own, so the future of
            // every call (moved whole into a box by the middleware chain) does not hold them.
            if let Err(stop) = Box::pin(self.pause(wait, deadline)).await {
                call.lock().retry_stop = Some(stop);
                return Err(ResilienceError::Timeout(TimeoutKind::Deadline).into_middleware());
            }
            pending = spare;
            number += 1;
        }
    }
}

/// What the retry layer knows of an attempt that just ended, besides its result.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    number: u32,
    elapsed: Duration,
    /// A copy of the request is at hand for another attempt.
    can_resend: bool,
    /// Sending again is harmless (idempotent method, or an idempotency key).
    replayable: bool,
    deadline: Option<Instant>,
}

/// Whether the call is over after an attempt, or goes on after a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Over,
    RetryAfter(Duration),
}

impl Retry {
    /// Reports an attempt's result to the breaker and the pacer, decides whether another
    /// attempt follows, and closes the attempt's record with that decision.
    fn settle(
        &self,
        result: &reqwest_middleware::Result<Response>,
        attempt: Attempt,
        call: &CallRecord,
        labels: (&'static str, &Arc<str>),
    ) -> Settled {
        let attempt_result = match result {
            Ok(response) => AttemptResult::from_response(response.status(), response.headers()),
            Err(error) => AttemptResult::Error(transport_error(error)),
        };
        self.breaker.record(
            self.classifier.is_upstream_failure(&attempt_result),
            attempt.elapsed,
        );
        if let AttemptResult::Response {
            status,
            retry_after: Some(wait),
        } = &attempt_result
            && matches!(status.as_u16(), 429 | 503)
        {
            self.pacer
                .pause((*wait).min(self.policy.max_retry_after), Instant::now());
        }

        let (stop, wait) = match self
            .classifier
            .classify(&attempt_result, attempt.replayable)
        {
            Decision::Success => (None, Duration::ZERO),
            Decision::Fatal => (Some(RetryStop::NotRetryable), Duration::ZERO),
            Decision::Retry { not_before } => {
                let plan = self.plan_retry(
                    attempt.number,
                    not_before,
                    attempt.can_resend,
                    attempt.deadline,
                );
                self.budget_utilisation.set(self.budget.utilisation());
                match plan {
                    Ok(delay) => (None, delay),
                    Err(stop) => (Some(stop), Duration::ZERO),
                }
            }
        };
        let succeeded =
            stop.is_none() && matches!(result, Ok(response) if response.status().is_success());
        {
            let mut progress = call.lock();
            let ended = match result {
                Ok(response) => Ok(response.status().as_u16()),
                Err(error) => Err(transport_error(error)),
            };
            close_attempt(&mut progress, ended, wait, &self.attempts, labels);
            progress.retry_stop = stop;
        }

        if let Some(stop) = stop {
            if stop != RetryStop::NotRetryable {
                self.metrics
                    .retry_stops
                    .get_or_create(&UpstreamReasonLabels {
                        upstream: self.upstream.to_string(),
                        reason: stop.as_str(),
                    })
                    .inc();
            }
            return Settled::Over;
        }
        if succeeded {
            return Settled::Over;
        }
        self.metrics
            .retries
            .get_or_create(&UpstreamReasonLabels {
                upstream: self.upstream.to_string(),
                reason: retry_cause(&attempt_result),
            })
            .inc();
        Settled::RetryAfter(wait)
    }

    /// The wait before a retry: its backoff, then its turn under the upstream's pace; stops
    /// when that would cross the deadline.
    async fn pause(&self, backoff: Duration, deadline: Option<Instant>) -> Result<(), RetryStop> {
        tokio::time::sleep(backoff).await;
        loop {
            let now = Instant::now();
            let Err(wait) = self.pacer.admit(now) else {
                return Ok(());
            };
            if deadline.is_some_and(|deadline| now + wait.duration() >= deadline) {
                return Err(RetryStop::Deadline);
            }
            self.metrics
                .throttled
                .get_or_create(&UpstreamReasonLabels {
                    upstream: self.upstream.to_string(),
                    reason: wait.reason(),
                })
                .inc();
            tokio::time::sleep(wait.duration()).await;
        }
    }

    /// Whether and when retry number `number + 1` may go out; the checks run cheapest first and
    /// the budget last, so a retry that is refused for another reason spends no budget.
    fn plan_retry(
        &self,
        number: u32,
        not_before: Option<Duration>,
        can_resend: bool,
        deadline: Option<Instant>,
    ) -> Result<Duration, RetryStop> {
        // An opened circuit is checked first: it is the most useful reason to report, since
        // the caller should wait for the circuit rather than give the message up.
        if !self.breaker.allows_retry() {
            return Err(RetryStop::CircuitOpened);
        }
        if number + 1 >= self.policy.max_attempts {
            return Err(RetryStop::MaxAttempts);
        }
        if !can_resend {
            return Err(RetryStop::NotRetryable);
        }
        let jitter = backoff::jittered(&self.backoff, number);
        let delay = backoff::next_delay(jitter, not_before, self.policy.max_retry_after)
            .ok_or(RetryStop::RetryAfterTooLong)?;
        if deadline.is_some_and(|deadline| Instant::now() + delay >= deadline) {
            return Err(RetryStop::Deadline);
        }
        if !self.budget.try_retry() {
            return Err(RetryStop::BudgetExhausted);
        }
        Ok(delay)
    }
}

/// When an attempt must end at the latest, and what ends it then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AttemptLimit {
    at: Instant,
    kind: TimeoutKind,
}

/// The attempt's own limit, or the call's deadline when that comes first.
fn attempt_limit(
    now: Instant,
    attempt_timeout: Duration,
    deadline: Option<Instant>,
) -> AttemptLimit {
    let own = now + attempt_timeout;
    match deadline {
        Some(deadline) if deadline < own => AttemptLimit {
            at: deadline,
            kind: TimeoutKind::Deadline,
        },
        _ => AttemptLimit {
            at: own,
            kind: TimeoutKind::Attempt,
        },
    }
}

/// The deadline passed during an attempt: the attempt is recorded as cut by it and the call
/// ends with a deadline timeout, without another attempt and without telling the breaker
/// (the upstream did not fail; the call ran out of time).
fn cut_at_deadline(
    call: &CallRecord,
    attempts: &AttemptMetrics,
    labels: (&'static str, &Arc<str>),
) -> reqwest_middleware::Error {
    let mut progress = call.lock();
    if progress.current.started.is_some() {
        let cut = Err(TransportError::Timeout(TimeoutKind::Deadline));
        close_attempt(&mut progress, cut, Duration::ZERO, attempts, labels);
    }
    progress.retry_stop = Some(RetryStop::Deadline);
    ResilienceError::Timeout(TimeoutKind::Deadline).into_middleware()
}

/// Closes the attempt in progress: its record is counted in the metrics (labelled by upstream,
/// method and server address) and kept in the call's record, and it is closed once only (the
/// attempt cut by the deadline is closed as such, any other when the retry layer settles it).
fn close_attempt(
    progress: &mut CallProgress,
    result: Result<u16, TransportError>,
    backoff: Duration,
    attempts: &AttemptMetrics,
    (method, server): (&'static str, &Arc<str>),
) {
    let record = finish_attempt(&progress.current, result, backoff);
    let exemplar = progress.current.exemplar.take();
    attempts.record(method, server, &record, exemplar);
    progress.attempts.push(record);
    progress.current.started = None;
}

/// Turns an attempt's progress into its final record.
fn finish_attempt(
    progress: &AttemptProgress,
    result: Result<u16, TransportError>,
    backoff: Duration,
) -> AttemptRecord {
    let mut timings = progress.timings;
    if let Some(started) = progress.started
        && timings.total.is_zero()
    {
        // Cancelled before the probe finished (a timeout): the attempt lasted until now.
        timings.total = started.elapsed();
    }
    let (status, error) = match result {
        Ok(status) => (Some(status), None),
        Err(error) => (None, Some(error)),
    };
    AttemptRecord {
        number: progress.number,
        started_at: progress
            .started_at
            .unwrap_or_else(std::time::SystemTime::now),
        status,
        error,
        timeout: match error {
            Some(TransportError::Timeout(kind)) => Some(kind),
            _ => None,
        },
        timings,
        request_bytes: progress.request_bytes,
        response_bytes: progress.response_bytes,
        backoff,
        response: progress.response.clone(),
    }
}

fn retry_cause(result: &AttemptResult) -> &'static str {
    match result {
        AttemptResult::Response { status, .. } if status.as_u16() == 429 => "status_429",
        AttemptResult::Response { status, .. } if status.is_server_error() => "status_5xx",
        AttemptResult::Response { .. } => "status_other",
        AttemptResult::Error(error) => error.error_type(),
    }
}

/// `server.address` of a request: the upstream's own host shared, any other host (an endpoint
/// given as an absolute URL) allocated.
#[derive(Debug, Clone)]
pub(crate) struct ServerAddress {
    usual: Arc<str>,
}

impl ServerAddress {
    pub(crate) fn new(base_url: &reqwest::Url) -> Self {
        Self {
            usual: Arc::from(base_url.host_str().unwrap_or_default()),
        }
    }

    pub(crate) fn of(&self, request: &Request) -> Arc<str> {
        match request.url().host_str().unwrap_or_default() {
            host if host == &*self.usual => Arc::clone(&self.usual),
            host => Arc::from(host),
        }
    }
}

/// `http.request.method` as the OpenTelemetry conventions have it: the known methods by name,
/// anything else as `_OTHER` (which also keeps the label's values a small fixed set).
pub(crate) fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::TRACE => "TRACE",
        http::Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_ends_at_its_own_limit_or_at_the_deadline_if_that_is_earlier() {
        let now = Instant::now();
        let timeout = Duration::from_secs(2);
        let own = AttemptLimit {
            at: now + timeout,
            kind: TimeoutKind::Attempt,
        };
        assert_eq!(attempt_limit(now, timeout, None), own);
        assert_eq!(attempt_limit(now, timeout, Some(now + timeout * 3)), own);
        // At the same instant the attempt's own limit is what ends it; the retry layer then
        // finds no time left for another.
        assert_eq!(attempt_limit(now, timeout, Some(now + timeout)), own);
        let deadline = now + Duration::from_millis(500);
        assert_eq!(
            attempt_limit(now, timeout, Some(deadline)),
            AttemptLimit {
                at: deadline,
                kind: TimeoutKind::Deadline,
            }
        );
    }

    #[test]
    fn the_upstreams_own_host_is_shared_and_any_other_is_its_own() {
        let base = reqwest::Url::parse("https://api.example.test/v1/").unwrap();
        let server = ServerAddress::new(&base);
        let usual = Request::new(http::Method::POST, base.join("events").unwrap());
        let elsewhere = Request::new(
            http::Method::POST,
            reqwest::Url::parse("https://other.example.test/hook").unwrap(),
        );
        assert!(Arc::ptr_eq(&server.of(&usual), &server.of(&usual)));
        assert_eq!(&*server.of(&usual), "api.example.test");
        assert_eq!(&*server.of(&elsewhere), "other.example.test");
    }
}
