//! Deciding one message: normalise, route, deliver through the resilience layer, and turn the
//! result into exactly one outcome with its records.

mod moves;
mod outcome;
mod trace;
mod waiting;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use relais_ingress::{IngressEvent, Normaliser};
use relais_resilience::{CallOutcome, CircuitState, Endpoint, Refusal, RetryStop, UpstreamClient};
use relais_telemetry::exemplar::{self, LatencyHistogram};
use relais_telemetry::shutdown::CancellationToken;
use relais_telemetry::work;
use tokio_util::either::Either;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::concurrency::Feedback;
use crate::config::RoutingConfig;
use crate::control::{HoldEvent, HoldEvents};
use crate::dlq::DlqLimits;
use crate::hold::{Admission, UpstreamHold, Verdict};
use crate::metrics::WorkerMetrics;
use crate::parked::{ParkedKeys, Placement};
use crate::records::{self, Decided, Inbound, OutRecord, Outcome, OutputTopics};
use crate::retry::TierTopics;
use crate::schedule::Ordering;
use outcome::{feedback_of, keep_first_and_latest, outcome_of};
use trace::trace_text;
use waiting::{Attempted, Waiting};

/// An upstream with the endpoint events are POSTed to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub client: UpstreamClient,
    pub endpoint: Endpoint,
    pub hold: Arc<UpstreamHold>,
    pub ordering: Ordering,
    /// Delays of its retry tiers (empty: its messages wait in memory).
    pub retry_tiers: Arc<[Duration]>,
    /// Its messages' time from their ingress timestamp to their outcome.
    pub ingress_to_outcome: LatencyHistogram,
}

/// Where messages go that cannot be delivered yet (see [`crate::retry`]).
#[derive(Debug)]
pub struct RetryTiers {
    pub topics: TierTopics,
    /// A message that waited this long for its upstream moves to its next tier.
    pub in_memory_wait: Duration,
    pub parked: Arc<ParkedKeys>,
}

/// A message normalised and routed, waiting for its delivery (see [`Processor::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    pub inbound: Inbound,
    /// The message's span when spans are exported, else none.
    span: tracing::Span,
    /// The message's trace and span ids.
    trace: SpanContext,
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
    pub retry: RetryTiers,
    /// Where this worker's answers that hold, disable or release an upstream are announced.
    pub hold_changes: HoldEvents,
    pub metrics: WorkerMetrics,
    pub shutdown: CancellationToken,
}

impl Processor {
    /// The first, synchronous half of deciding a message: normalise and route it, in its
    /// trace. The scheduler queues the result by upstream; boxed here, since it is handed on
    /// several times before it is queued.
    pub fn prepare(&self, inbound: Inbound) -> Box<Prepared> {
        let parent_context = relais_telemetry::propagation::extract_kafka_pairs(&inbound.headers);
        let parent = parent_context.span().span_context().clone();
        let started = tokio::time::Instant::now();
        // With spans exported the message has a span, which gives it its trace and span ids
        // (records, logs, `traceparent`). Without export only its span context is made, and
        // the work on the message carries it in scope (see `relais_telemetry::work`).
        let (span, trace) = if relais_telemetry::spans_exported() {
            let span = tracing::info_span!(
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
            );
            let _ = span.set_parent(parent_context);
            let traced = span.context().span().span_context().clone();
            // A span that no layer records (tracing switched off) has no ids of its own.
            let trace = if traced.is_valid() {
                traced
            } else {
                work::child_of(&parent)
            };
            (span, trace)
        } else {
            (tracing::Span::none(), work::child_of(&parent))
        };
        let (decided, event) = if span.is_none() {
            work::sync_scope(trace.clone(), || self.route_message(&inbound, &trace))
        } else {
            span.in_scope(|| self.route_message(&inbound, &trace))
        };
        Box::new(Prepared {
            inbound,
            span,
            trace,
            started,
            decided,
            event,
        })
    }

    /// The second half: delivers a routed message and builds its records. `None` means it was
    /// abandoned during shutdown while waiting for its upstream: it is not committed and will
    /// be read again.
    pub async fn finish(self: &Arc<Self>, prepared: Prepared) -> Option<Vec<OutRecord>> {
        self.finish_with_feedback(prepared).await.0
    }

    /// [`Processor::finish`], with what the delivery told about its upstream (for the adaptive
    /// concurrency limit). Not an `async fn`: that would keep a copy of `prepared` in the
    /// future beside the one its parts are moved into, and the future of every delivery is
    /// moved whole into its task.
    pub fn finish_with_feedback(
        self: &Arc<Self>,
        prepared: Prepared,
    ) -> impl Future<Output = (Option<Vec<OutRecord>>, Option<Feedback>)> + Send + 'static {
        let Prepared {
            inbound,
            span,
            trace,
            started,
            mut decided,
            event,
        } = prepared;
        let this = Arc::clone(self);
        let recorded = span.clone();
        let work = async move {
            let mut feedback = None;
            let mut scheduled = None;
            if let Some(event) = event {
                let Some(upstream) = this.upstreams.get(&decided.upstream) else {
                    return (None, None);
                };
                let from_tier = inbound.retry_state().map(|state| state.tier);
                match this.placement(&inbound, upstream, from_tier) {
                    Placement::Follow(tier) => {
                        scheduled = this.schedule(
                            &inbound,
                            upstream,
                            from_tier,
                            tier,
                            "waiting_behind_key",
                        );
                        if scheduled.is_none() {
                            // Only after a configuration change: the tier its key waits in is
                            // gone from the upstream's schedule.
                            decided.outcome = Outcome::DeadLettered {
                                reason: "retry_tiers_exhausted".into(),
                                detail: format!(
                                    "behind an earlier message of its key in tier {tier}, which the upstream no longer has"
                                ),
                            };
                        }
                    }
                    Placement::Deliver => {
                        let attempted = this.deliver(upstream, &event).await;
                        let (delivery, attempts) = match attempted {
                            Attempted::Abandoned => return (None, None),
                            Attempted::WaitedTooLong { reason, attempts } => {
                                decided.attempts = attempts;
                                scheduled = this.next_tier(&inbound, upstream, from_tier, reason);
                                if scheduled.is_none() {
                                    decided.outcome = Outcome::DeadLettered {
                                        reason: "retry_tiers_exhausted".into(),
                                        detail: format!(
                                            "waited for the upstream ({reason}) after the last retry tier"
                                        ),
                                    };
                                }
                                (None, Vec::new())
                            }
                            Attempted::Answered(delivery, attempts) => (Some(delivery), attempts),
                        };
                        if let Some(delivery) = delivery {
                            feedback = Some(feedback_of(&attempts));
                            decided.attempts = attempts;
                            decided.circuit_state = Some(delivery.circuit_state);
                            decided.outcome = outcome_of(&delivery);
                            if let Outcome::DeadLettered { reason, detail } = &decided.outcome
                                && !upstream.retry_tiers.is_empty()
                            {
                                scheduled = this.next_tier(&inbound, upstream, from_tier, reason);
                                if scheduled.is_none() {
                                    decided.outcome = Outcome::DeadLettered {
                                        reason: "retry_tiers_exhausted".into(),
                                        detail: format!(
                                            "{reason} after the last retry tier: {detail}"
                                        ),
                                    };
                                }
                            }
                        }
                    }
                }
                decided.decided_at = SystemTime::now();
                if scheduled.is_none() {
                    this.decided_from_tier(&inbound, upstream, from_tier);
                    let ingress_time = inbound.ingress_time().unwrap_or(inbound.first_seen());
                    let waited = decided.decided_at.duration_since(ingress_time);
                    exemplar::observe(
                        &upstream.ingress_to_outcome,
                        waited.unwrap_or_default().as_secs_f64(),
                    );
                }
            }
            recorded.record("messaging.message.id", decided.message_id.as_str());
            if let Some(scheduled) = scheduled {
                recorded.record("relais.outcome", "retry_scheduled");
                this.metrics
                    .record_retry_scheduled(&decided.upstream, &scheduled.reason);
                tracing::debug!(
                    message_id = %decided.message_id,
                    tier = scheduled.state.tier,
                    reason = %scheduled.reason,
                    "message moved to a retry tier"
                );
                let records =
                    records::build_move(&inbound, &decided, &scheduled, &this.topics.events);
                return (Some(records), feedback);
            }
            recorded.record("relais.outcome", decided.outcome.label());
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
            let records = records::build(&inbound, decided, &this.topics, this.dlq_limits);
            if records.iter().any(crate::dlq::is_truncated_dlq_copy) {
                this.metrics.dlq_truncated.inc();
            }
            (Some(records), feedback)
        };
        if span.is_none() {
            Either::Left(work::scope(trace, work))
        } else {
            Either::Right(work.instrument(span))
        }
    }

    /// Normalises and routes: the outcome so far, and the event to deliver (`None` when the
    /// outcome is decided already: rejected input).
    fn route_message(
        &self,
        inbound: &Inbound,
        trace: &SpanContext,
    ) -> (Decided, Option<IngressEvent>) {
        let (trace_id, span_id, traceparent) = trace_text(trace);
        // The id of a message whose payload cannot be trusted is its position; a valid one's
        // is its own, set below.
        let mut decided = Decided {
            message_id: String::new(),
            trace_id,
            span_id,
            traceparent,
            outcome: Outcome::Delivered,
            event_type: String::new(),
            source: String::new(),
            upstream: String::new(),
            occurred_at: inbound.ingress_time().unwrap_or(inbound.first_seen()),
            decided_at: SystemTime::now(),
            worker_id: self.worker_id.clone(),
            attempts: Vec::new(),
            circuit_state: None,
        };
        if let Some(Err(problem)) = &inbound.retry {
            decided.message_id = fallback_message_id(inbound);
            self.metrics.record_rejection("bad_retry_record");
            decided.outcome = Outcome::Rejected {
                reason: "bad_retry_record",
                detail: format!(
                    "a retry tier record without readable relais-retry headers: {problem}"
                ),
            };
            return (decided, None);
        }
        // A message back from a tier is judged as it was when first read, so that waiting
        // does not make it too old.
        let now = chrono::DateTime::<chrono::Utc>::from(inbound.first_seen());
        let event = match self.normaliser.normalise(&inbound.payload, now) {
            Ok(event) => event,
            Err(rejection) => {
                decided.message_id = fallback_message_id(inbound);
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
        // A tier record goes back to the upstream it waited for, whatever the routing says now.
        let upstream_name = match inbound.retry_state() {
            Some(state) => state.upstream.as_str(),
            None => self.route(&event),
        };
        decided.upstream = upstream_name.to_owned();
        if !self.upstreams.contains_key(upstream_name) {
            // From the ingress topic unreachable after configuration validation; from a tier,
            // an upstream since removed from the configuration.
            decided.outcome = Outcome::Failed {
                reason: "unknown_route".into(),
                detail: format!("no upstream {upstream_name}"),
            };
            return (decided, None);
        }
        (decided, Some(event))
    }

    /// Calls the upstream; while its circuit is open, waits for it (backpressure) unless
    /// configured to fail fast, and for an upstream with retry tiers at most `in_memory_wait`.
    async fn deliver(&self, upstream: &Upstream, event: &IngressEvent) -> Attempted {
        let body = Bytes::from(event.to_json_bytes());
        let mut attempts = Vec::new();
        let mut waiting = Waiting::new(self, !upstream.retry_tiers.is_empty());
        loop {
            // A held upstream (it refused everyone: 401, 403, 410, or is disabled) is waited for
            // like an open circuit; fail-fast mode does not apply, since the message is not at
            // fault.
            let (trial, epoch) = match upstream.hold.admit() {
                Admission::Call { trial, epoch } => (trial, epoch),
                // Held, it refuses everyone: with tiers the message moves at once (see below).
                Admission::Wait(_) if waiting.bounded => {
                    return waiting.give_up("upstream_held", attempts);
                }
                Admission::Wait(wait) => match waiting.park(wait, "upstream_held").await {
                    Some(reason) => return waiting.give_up(reason, attempts),
                    None => continue,
                },
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
                waiting.start();
                if let Some(reason) = waiting.too_long("upstream_held") {
                    return waiting.give_up(reason, attempts);
                }
                continue;
            }
            // The upstream's pace (its rate limit, or a pause it asked for with Retry-After):
            // not a failure of anything, so no fail-fast either.
            if let CallOutcome::Refused(Refusal::Throttled { retry_in }) = delivery.outcome {
                match waiting.park(retry_in, "throttled").await {
                    Some(reason) => return waiting.give_up(reason, attempts),
                    None => continue,
                }
            }
            // (how long to wait, whether the upstream is down)
            let wait = match delivery.outcome {
                CallOutcome::Refused(Refusal::CircuitOpen { retry_in }) => Some((retry_in, true)),
                CallOutcome::Refused(Refusal::BulkheadFull) => {
                    Some((Duration::from_millis(50), false))
                }
                // Retries stopped because the circuit opened: the upstream is down, not this
                // message bad. Wait for the circuit instead of dead-lettering.
                _ if delivery.retry_stop == Some(RetryStop::CircuitOpened)
                    || (!delivery.succeeded()
                        && delivery.circuit_state == CircuitState::Open
                        && delivery.retry_stop != Some(RetryStop::NotRetryable)) =>
                {
                    Some((Duration::ZERO, true))
                }
                _ => None,
            };
            let Some((wait, upstream_down)) = wait else {
                waiting.end();
                return Attempted::Answered(delivery, attempts);
            };
            if self.fail_fast_when_open {
                waiting.end();
                return Attempted::Answered(delivery, attempts);
            }
            // With tiers, a message whose upstream is down moves out of the way at once: waiting
            // here would hold one of the upstream's in-flight slots, its queue would fill, and
            // the partitions it reads from would stop for every upstream.
            if upstream_down && waiting.bounded {
                return waiting.give_up("circuit_open", attempts);
            }
            if let Some(reason) = waiting.park(wait, "circuit_open").await {
                return waiting.give_up(reason, attempts);
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
                trace_id: trace_text(&work::span_context()).0,
            });
        }
        verdict
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

/// The id of a message whose payload cannot be trusted: its position, unique and stable.
fn fallback_message_id(inbound: &Inbound) -> String {
    let origin = inbound.origin();
    format!("{}-{}-{}", origin.topic, origin.partition, origin.offset)
}
