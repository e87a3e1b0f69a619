//! Deciding one message: normalise, route, deliver through the resilience layer, and turn the
//! result into exactly one outcome with its records.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opentelemetry::trace::TraceContextExt;
use relais_ingress::{IngressEvent, Normaliser};
use relais_resilience::{
    AttemptRecord, CallOutcome, CircuitState, Delivery, Endpoint, Refusal, RetryStop,
    TransportError, UpstreamClient,
};
use relais_telemetry::shutdown::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::concurrency::Feedback;
use crate::config::RoutingConfig;
use crate::control::{HoldEvent, HoldEvents};
use crate::dlq::DlqLimits;
use crate::hold::{Admission, UpstreamHold, Verdict};
use crate::metrics::WorkerMetrics;
use crate::records::{self, Decided, Inbound, OutRecord, Outcome, OutputTopics};

/// An upstream with the endpoint events are POSTed to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub client: UpstreamClient,
    pub endpoint: Endpoint,
    pub hold: Arc<UpstreamHold>,
}

/// A message normalised and routed, waiting for its delivery (see [`Processor::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    pub inbound: Inbound,
    span: tracing::Span,
    started: tokio::time::Instant,
    decided: Decided,
    event: Option<IngressEvent>,
}

impl Prepared {
    /// The upstream it goes to; `None` when its outcome is decided without one (rejected).
    pub fn upstream(&self) -> Option<&str> {
        self.event.as_ref().map(|_| self.decided.upstream.as_str())
    }
}

/// Everything needed to decide messages; shared by all deliveries.
#[derive(Debug)]
pub struct Processor {
    pub normaliser: Normaliser,
    pub routing: RoutingConfig,
    pub upstreams: BTreeMap<String, Upstream>,
    pub topics: OutputTopics,
    pub dlq_limits: DlqLimits,
    pub worker_id: String,
    pub fail_fast_when_open: bool,
    /// Where this worker's answers that hold, disable or release an upstream are announced.
    pub hold_changes: HoldEvents,
    pub metrics: WorkerMetrics,
    pub shutdown: CancellationToken,
}

/// Longest single wait while the circuit is open, so shutdown and recovery are noticed soon.
const MAX_PARK_STEP: Duration = Duration::from_millis(500);

impl Processor {
    /// The first, synchronous half of deciding a message: normalise and route it, under the
    /// span that gives the message its trace. The scheduler queues the result by upstream.
    pub fn prepare(&self, inbound: Inbound) -> Prepared {
        let parent = relais_telemetry::propagation::extract_kafka_pairs(&inbound.headers);
        // The span gives the message its trace and span ids (records, logs, `traceparent`).
        // Its attributes are for trace backends only, so without export it carries none.
        let span = if relais_telemetry::spans_exported() {
            tracing::info_span!(
                "process",
                otel.name = %format!("process {}", inbound.topic),
                otel.kind = "consumer",
                messaging.system = "kafka",
                messaging.operation.type = "process",
                messaging.destination.name = %inbound.topic,
                messaging.destination.partition.id = inbound.partition,
                messaging.kafka.offset = inbound.offset,
                messaging.message.id = tracing::field::Empty,
                relais.outcome = tracing::field::Empty,
            )
        } else {
            tracing::info_span!("process")
        };
        let _ = span.set_parent(parent);
        let started = tokio::time::Instant::now();
        let (decided, event) = span.in_scope(|| self.route_message(&inbound));
        Prepared {
            inbound,
            span,
            started,
            decided,
            event,
        }
    }

    /// The second half: delivers a routed message and builds its records. `None` means it was
    /// abandoned during shutdown while waiting for its upstream: it is not committed and will
    /// be read again.
    pub async fn finish(self: &Arc<Self>, prepared: Prepared) -> Option<Vec<OutRecord>> {
        self.finish_with_feedback(prepared).await.0
    }

    /// [`Processor::finish`], with what the delivery told about its upstream (for the adaptive
    /// concurrency limit).
    pub async fn finish_with_feedback(
        self: &Arc<Self>,
        prepared: Prepared,
    ) -> (Option<Vec<OutRecord>>, Option<Feedback>) {
        let Prepared {
            inbound,
            span,
            started,
            mut decided,
            event,
        } = prepared;
        let this = Arc::clone(self);
        async move {
            let mut feedback = None;
            if let Some(event) = event {
                let Some(upstream) = this.upstreams.get(&decided.upstream) else {
                    return (None, None);
                };
                let Some((delivery, attempts)) = this.deliver(upstream, &event).await else {
                    return (None, None);
                };
                feedback = Some(feedback_of(&attempts));
                decided.attempts = attempts;
                decided.circuit_state = Some(delivery.circuit_state);
                decided.outcome = outcome_of(&delivery);
                decided.decided_at = SystemTime::now();
                let ingress_time = inbound.timestamp.unwrap_or(inbound.received_at);
                this.metrics.record_ingress_to_outcome(
                    &decided.upstream,
                    decided
                        .decided_at
                        .duration_since(ingress_time)
                        .unwrap_or_default(),
                );
            }
            let span = tracing::Span::current();
            span.record("messaging.message.id", decided.message_id.as_str());
            span.record("relais.outcome", decided.outcome.label());
            this.metrics
                .record_outcome(&decided.outcome, started.elapsed());
            if decided.outcome != Outcome::Delivered {
                tracing::info!(
                    message_id = %decided.message_id,
                    outcome = decided.outcome.label(),
                    reason = decided.outcome.reason(),
                    partition = inbound.partition,
                    offset = inbound.offset,
                    "message not delivered"
                );
            }
            let records = records::build(&inbound, &decided, &this.topics, this.dlq_limits);
            if records.iter().any(crate::dlq::is_truncated_dlq_copy) {
                this.metrics.dlq_truncated.inc();
            }
            (Some(records), feedback)
        }
        .instrument(span)
        .await
    }

    /// Normalises and routes: the outcome so far, and the event to deliver (`None` when the
    /// outcome is decided already: rejected input).
    fn route_message(&self, inbound: &Inbound) -> (Decided, Option<IngressEvent>) {
        let (trace_id, span_id, traceparent) = current_trace();
        let mut decided = Decided {
            message_id: fallback_message_id(inbound),
            trace_id,
            span_id,
            traceparent,
            outcome: Outcome::Delivered,
            event_type: String::new(),
            source: String::new(),
            upstream: String::new(),
            occurred_at: inbound.timestamp.unwrap_or(inbound.received_at),
            decided_at: SystemTime::now(),
            worker_id: self.worker_id.clone(),
            attempts: Vec::new(),
            circuit_state: None,
        };
        let event = match self
            .normaliser
            .normalise(&inbound.payload, chrono::Utc::now())
        {
            Ok(event) => event,
            Err(rejection) => {
                self.metrics.record_rejection(rejection.reason.code());
                decided.outcome = Outcome::Rejected {
                    reason: rejection.reason.code(),
                    detail: rejection.detail,
                };
                decided.decided_at = SystemTime::now();
                return (decided, None);
            }
        };
        decided.message_id = event.id.clone();
        decided.event_type = event.event_type.clone();
        decided.source = event.source.clone();
        decided.occurred_at = event.occurred_at.into();
        let upstream_name = self.route(&event);
        decided.upstream = upstream_name.to_owned();
        if !self.upstreams.contains_key(upstream_name) {
            // Unreachable after configuration validation; kept as an outcome, not a panic.
            decided.outcome = Outcome::Failed {
                reason: "unknown_route".into(),
                detail: format!("no upstream {upstream_name}"),
            };
            return (decided, None);
        }
        (decided, Some(event))
    }

    /// Calls the upstream; while its circuit is open, waits for it (backpressure) unless
    /// configured to fail fast. Returns the last delivery and all attempts made.
    async fn deliver(
        &self,
        upstream: &Upstream,
        event: &IngressEvent,
    ) -> Option<(Delivery, Vec<AttemptRecord>)> {
        let body = Bytes::from(event.to_json_bytes());
        let mut attempts = Vec::new();
        let mut parked = false;
        loop {
            // A held upstream (it refused everyone: 401, 403, 410, or is disabled) is waited for
            // like an open circuit; fail-fast mode does not apply, since the message is not at
            // fault.
            let (trial, epoch) = match upstream.hold.admit() {
                Admission::Call { trial, epoch } => (trial, epoch),
                Admission::Wait(wait) => {
                    if !parked {
                        parked = true;
                        self.metrics.parked.inc();
                    }
                    if !self.park(wait).await {
                        return None;
                    }
                    continue;
                }
            };
            let delivery = upstream
                .client
                .post_json(&upstream.endpoint, body.clone(), &event.id)
                .await;
            attempts.extend(delivery.attempts.iter().cloned());
            keep_first_and_latest(&mut attempts);
            let verdict = match delivery.outcome {
                // Nothing reached the upstream: the trial, if this was one, is still to be made.
                CallOutcome::Refused(_) => {
                    if trial {
                        upstream.hold.abandon_trial();
                    }
                    Verdict::Decide
                }
                CallOutcome::Response { status } => {
                    self.settle_hold(upstream, Some(status), trial, epoch, &event.id)
                }
                CallOutcome::Failed(_) => self.settle_hold(upstream, None, trial, epoch, &event.id),
            };
            if verdict == Verdict::CallAgain {
                if !parked {
                    parked = true;
                    self.metrics.parked.inc();
                }
                continue;
            }
            // The upstream's pace (its rate limit, or a pause it asked for with Retry-After):
            // not a failure of anything, so no fail-fast either.
            if let CallOutcome::Refused(Refusal::Throttled { retry_in }) = delivery.outcome {
                if !parked {
                    parked = true;
                    self.metrics.parked.inc();
                }
                if !self.park(retry_in).await {
                    return None;
                }
                continue;
            }
            let wait = match delivery.outcome {
                CallOutcome::Refused(Refusal::CircuitOpen { retry_in }) => Some(retry_in),
                CallOutcome::Refused(Refusal::BulkheadFull) => Some(Duration::from_millis(50)),
                // Retries stopped because the circuit opened: the upstream is down, not this
                // message bad. Wait for the circuit instead of dead-lettering.
                _ if delivery.retry_stop == Some(RetryStop::CircuitOpened)
                    || (!delivery.succeeded()
                        && delivery.circuit_state == CircuitState::Open
                        && delivery.retry_stop != Some(RetryStop::NotRetryable)) =>
                {
                    Some(Duration::ZERO)
                }
                _ => None,
            };
            let Some(wait) = wait else {
                if parked {
                    self.metrics.parked.dec();
                }
                return Some((delivery, attempts));
            };
            if self.fail_fast_when_open {
                if parked {
                    self.metrics.parked.dec();
                }
                return Some((delivery, attempts));
            }
            if !parked {
                parked = true;
                self.metrics.parked.inc();
            }
            if !self.park(wait).await {
                return None;
            }
        }
    }

    /// Hands a call's answer to the upstream's hold, and announces the change it made.
    fn settle_hold(
        &self,
        upstream: &Upstream,
        answer: Option<u16>,
        trial: bool,
        epoch: u64,
        message_id: &str,
    ) -> Verdict {
        let (verdict, change) = upstream.hold.settle(answer, trial, epoch);
        if let Some(change) = change {
            let answer = answer.map_or_else(|| "no answer".to_owned(), |status| status.to_string());
            self.hold_changes.send(HoldEvent {
                change,
                upstream: upstream.client.name().to_owned(),
                detail: format!(
                    "{answer} from {} for message {message_id}",
                    upstream.endpoint
                ),
                trace_id: current_trace().0,
            });
        }
        verdict
    }

    /// Waits up to `wait` (bounded, so shutdown and recovery are noticed soon). False when
    /// shutdown began: the message is abandoned (not committed, read again later).
    async fn park(&self, wait: Duration) -> bool {
        let step = wait.clamp(Duration::from_millis(20), MAX_PARK_STEP);
        tokio::select! {
            _ = self.shutdown.cancelled() => {
                self.metrics.parked.dec();
                false
            }
            _ = tokio::time::sleep(step) => true,
        }
    }

    fn route<'a>(&'a self, event: &'a IngressEvent) -> &'a str {
        if let Some(route) = &event.route {
            return route;
        }
        self.routing
            .rules
            .iter()
            .find(|rule| event.event_type.starts_with(&rule.type_prefix))
            .map_or(self.routing.default_upstream.as_str(), |rule| {
                rule.upstream.as_str()
            })
    }
}

/// Most attempts one record keeps. A message that waits through a long outage meets a
/// half-open trial every few seconds; the first attempts and the latest say what happened,
/// and the record stays bounded.
const MAX_RECORDED_ATTEMPTS: usize = 32;
const FIRST_RECORDED_ATTEMPTS: usize = 8;

fn keep_first_and_latest(attempts: &mut Vec<AttemptRecord>) {
    if attempts.len() > MAX_RECORDED_ATTEMPTS {
        let latest_from = attempts.len() - (MAX_RECORDED_ATTEMPTS - FIRST_RECORDED_ATTEMPTS);
        attempts.drain(FIRST_RECORDED_ATTEMPTS..latest_from);
    }
}

/// What a delivery's attempts say about the upstream's load: back-pressure (429, 503, a
/// timeout) and the mean round trip of the answered attempts.
fn feedback_of(attempts: &[AttemptRecord]) -> Feedback {
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
fn outcome_of(delivery: &Delivery) -> Outcome {
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

/// Trace id, span id and `traceparent` of the current span; a fresh random trace when the
/// span has no valid context (tracing disabled), since the trace id is mandatory downstream.
fn current_trace() -> (String, String, String) {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    let (trace_id, span_id, sampled) = if span_context.is_valid() {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
            span_context.is_sampled(),
        )
    } else {
        (
            // Never all zeros, which W3C reserves for "invalid".
            format!("{:032x}", rand::random::<u128>() | 1),
            format!("{:016x}", rand::random::<u64>() | 1),
            false,
        )
    };
    let traceparent = format!(
        "00-{trace_id}-{span_id}-{}",
        if sampled { "01" } else { "00" }
    );
    (trace_id, span_id, traceparent)
}

/// The id of a message whose payload cannot be trusted: its position, unique and stable.
fn fallback_message_id(inbound: &Inbound) -> String {
    format!("{}-{}-{}", inbound.topic, inbound.partition, inbound.offset)
}
