//! The middleware layers of the outbound stack, outermost first. `client.rs` composes them.

use std::sync::Arc;
use std::time::Duration;

use http::Extensions;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::attempt::{AttemptProgress, AttemptRecord, CallProgress, CallRecord};
use crate::backoff;
use crate::budget::RetryBudget;
use crate::circuit::CircuitBreaker;
use crate::classify::{
    AttemptResult, Decision, RetryClassifier, RetryStop, TimeoutKind, TransportError,
};
use crate::error::{ResilienceError, transport_error};
use crate::metrics::ResilienceMetrics;
use crate::metrics::{UpstreamLabels, UpstreamReasonLabels};
use crate::pace::Pacer;
use crate::policy::RetryPolicyConfig;

/// Outermost: the overall deadline of the call, attempts and backoff included. When it fires
/// mid-attempt, that attempt is recorded with a deadline timeout.
#[derive(Debug)]
pub(crate) struct Deadline {
    pub(crate) deadline: Duration,
    pub(crate) upstream: Arc<str>,
    pub(crate) server: ServerAddress,
    pub(crate) metrics: ResilienceMetrics,
}

#[async_trait::async_trait]
impl Middleware for Deadline {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let deadline = Instant::now() + self.deadline;
        let call = CallRecord::of(extensions);
        call.lock().deadline = Some(deadline);
        let method = method_label(request.method());
        let server = self.server.of(&request);
        match tokio::time::timeout_at(deadline, next.run(request, extensions)).await {
            Ok(result) => result,
            Err(_) => {
                // The attempt in progress was cancelled with the inner layers; close its record.
                let mut progress = call.lock();
                if progress.current.started.is_some() {
                    let cut = Err(TransportError::Timeout(TimeoutKind::Deadline));
                    let labels = (&self.upstream, method, &server);
                    close_attempt(&mut progress, cut, Duration::ZERO, &self.metrics, labels);
                }
                progress.retry_stop = Some(RetryStop::Deadline);
                Err(ResilienceError::Timeout(TimeoutKind::Deadline).into_middleware())
            }
        }
    }
}

/// The bulkhead: a bounded number of calls in flight to this upstream. Waiting for a slot is
/// bounded too, by `max_wait` and by the deadline.
#[derive(Debug)]
pub(crate) struct Bulkhead {
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) max_wait: Duration,
    /// This upstream's series, resolved once here rather than looked up on every call.
    pub(crate) in_flight: Gauge,
    pub(crate) rejected: Counter,
}

#[async_trait::async_trait]
impl Middleware for Bulkhead {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => Some(permit),
            // No free slot: queue for one as long as `max_wait` allows. Only a call that queues
            // arms a timer.
            Err(_) => tokio::time::timeout(self.max_wait, Arc::clone(&self.slots).acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        };
        // No slot in time, or a closed semaphore (never happens: it is never closed).
        let Some(permit) = permit else {
            self.rejected.inc();
            return Err(ResilienceError::BulkheadFull(self.max_wait).into_middleware());
        };
        // The outer deadline can cancel this future at the await: the guard, not a decrement
        // after it, keeps the gauge true.
        let _in_flight = InFlight::enter(&self.in_flight);
        let result = next.run(request, extensions).await;
        drop(permit);
        result
    }
}

/// Counts one call in flight on a gauge for as long as it lives.
#[derive(Debug)]
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The circuit breaker gate: an open circuit refuses the call before anything is sent.
#[derive(Debug)]
pub(crate) struct CircuitGate {
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) upstream: Arc<str>,
    pub(crate) metrics: ResilienceMetrics,
}

#[async_trait::async_trait]
impl Middleware for CircuitGate {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => {
                self.metrics
                    .circuit_rejected
                    .get_or_create(&UpstreamLabels {
                        upstream: self.upstream.to_string(),
                    })
                    .inc();
                return Err(ResilienceError::CircuitOpen(open).into_middleware());
            }
        };
        let result = next.run(request, extensions).await;
        drop(permit);
        result
    }
}

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
}

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
            request.method().is_idempotent() || request.headers().contains_key("idempotency-key");
        self.budget.record_request();

        let mut pending = Some(request);
        let mut number = 0u32;
        loop {
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

            let started = Instant::now();
            // Each attempt gets its own limit, so one hang cannot eat the deadline.
            let result = match tokio::time::timeout(
                self.attempt_timeout,
                next.clone().run(request, extensions),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(ResilienceError::Timeout(TimeoutKind::Attempt).into_middleware()),
            };
            let elapsed = started.elapsed();

            let attempt_result = match &result {
                Ok(response) => AttemptResult::from_response(response.status(), response.headers()),
                Err(error) => AttemptResult::Error(transport_error(error)),
            };
            self.breaker.record(
                self.classifier.is_upstream_failure(&attempt_result),
                elapsed,
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

            let (stop, wait) = match self.classifier.classify(&attempt_result, replayable) {
                Decision::Success => (None, Duration::ZERO),
                Decision::Fatal => (Some(RetryStop::NotRetryable), Duration::ZERO),
                Decision::Retry { not_before } => {
                    let plan = self.plan_retry(number, not_before, spare.is_some(), deadline);
                    self.budget_utilisation.set(self.budget.utilisation());
                    match plan {
                        Ok(delay) => (None, delay),
                        Err(stop) => (Some(stop), Duration::ZERO),
                    }
                }
            };
            let succeeded =
                stop.is_none() && matches!(&result, Ok(response) if response.status().is_success());

            {
                let mut progress = call.lock();
                let ended = match &result {
                    Ok(response) => Ok(response.status().as_u16()),
                    Err(error) => Err(transport_error(error)),
                };
                let labels = (&self.upstream, method, &server);
                close_attempt(&mut progress, ended, wait, &self.metrics, labels);
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
                return result;
            }
            if succeeded {
                return result;
            }
            self.metrics
                .retries
                .get_or_create(&UpstreamReasonLabels {
                    upstream: self.upstream.to_string(),
                    reason: retry_cause(&attempt_result),
                })
                .inc();
            drop(result);
            tokio::time::sleep(wait).await;
            if let Err(stop) = self.wait_for_turn(deadline).await {
                call.lock().retry_stop = Some(stop);
                return Err(ResilienceError::Timeout(TimeoutKind::Deadline).into_middleware());
            }
            pending = spare;
            number += 1;
        }
    }
}

impl Retry {
    /// Waits until the upstream's pace lets the next attempt go; stops when that would cross
    /// the deadline.
    async fn wait_for_turn(&self, deadline: Option<Instant>) -> Result<(), RetryStop> {
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

/// Closes the attempt in progress: its record is counted in the metrics (labelled by upstream,
/// method and server address) and kept in the call's record, and it is closed once only (the
/// deadline layer closes it when it cuts the attempt, the retry layer otherwise).
fn close_attempt(
    progress: &mut CallProgress,
    result: Result<u16, TransportError>,
    backoff: Duration,
    metrics: &ResilienceMetrics,
    (upstream, method, server): (&Arc<str>, &'static str, &Arc<str>),
) {
    let record = finish_attempt(&progress.current, result, backoff);
    let exemplar = progress.current.exemplar.take();
    metrics.record_attempt(upstream, method, server, &record, exemplar);
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

    fn of(&self, request: &Request) -> Arc<str> {
        match request.url().host_str().unwrap_or_default() {
            host if host == &*self.usual => Arc::clone(&self.usual),
            host => Arc::from(host),
        }
    }
}

/// `http.request.method` as the OpenTelemetry conventions have it: the known methods by name,
/// anything else as `_OTHER` (which also keeps the label's values a small fixed set).
fn method_label(method: &http::Method) -> &'static str {
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

    /// A loopback server that accepts connections and never answers.
    async fn silent_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        address
    }

    /// With every slot taken, a call queues for at most `max_wait`: refused and counted after
    /// it, let through when a slot frees within it.
    #[tokio::test(start_paused = true)]
    async fn a_full_bulkhead_queues_a_call_up_to_its_wait() {
        let address = silent_server().await;
        let url = format!("http://{address}/");
        let slots = Arc::new(Semaphore::new(1));
        let (in_flight, rejected) = (Gauge::default(), Counter::default());
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(Bulkhead {
                slots: Arc::clone(&slots),
                max_wait: Duration::from_secs(1),
                in_flight: in_flight.clone(),
                rejected: rejected.clone(),
            })
            .build();
        let holder = tokio::spawn(client.get(&url).send());
        while slots.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        let queued_at = Instant::now();
        let error = client.get(&url).send().await.unwrap_err();
        assert!(matches!(
            crate::error::refusal(&error),
            Some(ResilienceError::BulkheadFull(_))
        ));
        assert!(queued_at.elapsed() >= Duration::from_secs(1));
        assert_eq!(rejected.get(), 1);

        let queued = tokio::spawn(client.get(&url).send());
        tokio::time::sleep(Duration::from_millis(500)).await;
        holder.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(in_flight.get(), 1, "the queued call took the freed slot");
        assert_eq!(rejected.get(), 1);
        queued.abort();
    }

    /// A call cancelled while it waits for its answer (as the deadline layer does) gives back
    /// its slot and its count.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_call_leaves_the_bulkhead_as_it_found_it() {
        let address = silent_server().await;
        let slots = Arc::new(Semaphore::new(2));
        let in_flight = Gauge::default();
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(Bulkhead {
                slots: Arc::clone(&slots),
                max_wait: Duration::from_secs(1),
                in_flight: in_flight.clone(),
                rejected: Counter::default(),
            })
            .build();
        for _ in 0..3 {
            let call = client.get(format!("http://{address}/")).send();
            let cancelled = tokio::time::timeout(Duration::from_secs(5), call).await;
            assert!(
                cancelled.is_err(),
                "the call was cancelled by the outer timeout"
            );
            assert_eq!(in_flight.get(), 0);
            assert_eq!(slots.available_permits(), 2);
        }
    }
}
