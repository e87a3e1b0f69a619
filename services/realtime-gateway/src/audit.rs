//! The audit half of a trace or message lookup: `AuditQuery.GetTrail` on the audit-service.
//!
//! One bounded attempt per lookup: a person is waiting, and an answer without its audit half
//! (clearly marked partial) is more useful than a slow one. The channel connects lazily
//! and reconnects by itself, so an audit-service that was away is used again when it is back.

use std::time::Duration;

use relais_grpc::BearerToken;
use relais_proto::v1::audit_query_client::AuditQueryClient;
use relais_proto::v1::{AuditRecord, OperatorAction, TrailRequest, trail_request};
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use utoipa::ToSchema;

use crate::event::{CircuitState, Outcome, rfc3339, system_time};
use crate::metrics::{GatewayMetrics, ResultLabels};

#[derive(Debug, Clone)]
pub struct AuditClient {
    client: AuditQueryClient<InterceptedService<Channel, BearerToken>>,
    timeout: Duration,
    max_records: u32,
    metrics: GatewayMetrics,
}

/// One audit record, as the trace answer shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditRecordView {
    pub message_id: String,
    pub trace_id: String,
    pub outcome: Outcome,
    pub reason_code: String,
    pub reason_detail: String,
    pub event_type: String,
    pub source: String,
    pub upstream: String,
    pub worker_id: String,
    pub occurred_at: Option<String>,
    pub received_at: Option<String>,
    pub decided_at: Option<String>,
    /// Where the message was read from: `relais.ingress` partition and offset.
    pub ingress_partition: i32,
    pub ingress_offset: i64,
    pub circuit_state: CircuitState,
    pub payload_bytes: u64,
    pub attempts: Vec<AttemptView>,
}

/// One HTTP attempt, with the network probe's timings.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptView {
    pub number: u32,
    pub started_at: Option<String>,
    /// 0 when no response arrived.
    pub status_code: u32,
    pub error_type: String,
    pub dns_us: u64,
    pub connect_us: u64,
    pub tls_us: u64,
    pub time_to_first_byte_us: u64,
    pub transfer_us: u64,
    pub total_us: u64,
    pub backoff_ms: u64,
    /// What an unsuccessful answer said; absent on success or without a response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseView>,
}

/// The kept part of an unsuccessful answer: allow-listed headers and the body's first bytes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseView {
    /// Lower-case header names (content type, location, retry-after, rate limits, request ids).
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: String,
    pub body_truncated: bool,
}

impl From<AuditRecord> for AuditRecordView {
    fn from(record: AuditRecord) -> Self {
        let time = |t: Option<&relais_proto::Timestamp>| t.and_then(system_time).map(rfc3339);
        let position = record.position.unwrap_or_default();
        Self {
            occurred_at: time(record.occurred_at.as_ref()),
            received_at: time(record.received_at.as_ref()),
            decided_at: time(record.decided_at.as_ref()),
            outcome: Outcome::from_proto(record.outcome),
            circuit_state: CircuitState::from_proto(record.circuit_state),
            ingress_partition: position.partition,
            ingress_offset: position.offset,
            attempts: record
                .attempts
                .into_iter()
                .map(|attempt| {
                    let timings = attempt.timings.unwrap_or_default();
                    AttemptView {
                        number: attempt.number,
                        started_at: time(attempt.started_at.as_ref()),
                        status_code: attempt.status_code,
                        error_type: attempt.error_type,
                        dns_us: timings.dns_us,
                        connect_us: timings.connect_us,
                        tls_us: timings.tls_us,
                        time_to_first_byte_us: timings.time_to_first_byte_us,
                        transfer_us: timings.transfer_us,
                        total_us: timings.total_us,
                        backoff_ms: attempt.backoff_ms,
                        response: attempt.response.map(|response| ResponseView {
                            headers: response
                                .headers
                                .into_iter()
                                .map(|header| (header.name, header.value))
                                .collect(),
                            body: response.body,
                            body_truncated: response.body_truncated,
                        }),
                    }
                })
                .collect(),
            message_id: record.message_id,
            trace_id: record.trace_id,
            reason_code: record.reason_code,
            reason_detail: record.reason_detail,
            event_type: record.event_type,
            source: record.source,
            upstream: record.upstream,
            worker_id: record.worker_id,
            payload_bytes: record.payload_bytes,
        }
    }
}

/// An operator action recorded in the audit trail: an upstream disabled or enabled, a replay
/// job, records Kafka deleted before a worker read them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActionView {
    pub action_id: String,
    /// Such as `upstream.disabled`, `replay.started`, `kafka.records_deleted`.
    pub action: String,
    /// What it was done to: `upstream/{name}`, `replay/{job}`, `kafka/{topic}/{partition}`.
    pub subject: String,
    /// Who: `token:{name}` or `worker:{id}`.
    pub actor: String,
    pub detail: String,
    pub at: Option<String>,
    pub trace_id: String,
}

impl From<OperatorAction> for ActionView {
    fn from(action: OperatorAction) -> Self {
        Self {
            at: action.at.as_ref().and_then(system_time).map(rfc3339),
            action_id: action.action_id,
            action: action.action,
            subject: action.subject,
            actor: action.actor,
            detail: action.detail,
            trace_id: action.trace_id,
        }
    }
}

/// What a trail is looked up by.
#[derive(Debug, Clone, Copy)]
pub enum TrailKey<'a> {
    /// Every record of a trace, and the actions of that trace.
    Trace(&'a str),
    /// Every record of a message (each decision: moves to a retry tier, the outcome, a
    /// replay's), and the actions whose subject is that id.
    Message(&'a str),
}

/// The audit trail of a trace or a message, or why it could not be had (safe to show a
/// client).
#[derive(Debug)]
pub enum Trail {
    Found {
        records: Vec<AuditRecordView>,
        actions: Vec<ActionView>,
        truncated: bool,
        /// The audit-service stopped at its deadline: later records may be missing.
        stopped_at_deadline: bool,
    },
    Unavailable(&'static str),
    /// The audit-service refused the request itself (a window too long, say).
    Refused(String),
}

/// The event-time window of a trail lookup; unset ends are the audit-service's defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrailWindow {
    pub from: Option<std::time::SystemTime>,
    pub to: Option<std::time::SystemTime>,
}

impl AuditClient {
    pub fn new(
        endpoint: Endpoint,
        token: BearerToken,
        timeout: Duration,
        max_records: u32,
        metrics: GatewayMetrics,
    ) -> Self {
        let channel = endpoint
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        Self {
            client: AuditQueryClient::with_interceptor(channel, token),
            timeout,
            max_records,
            metrics,
        }
    }

    pub async fn trail(&self, key: TrailKey<'_>, window: TrailWindow) -> Trail {
        let key = match key {
            TrailKey::Trace(trace_id) => trail_request::Key::TraceId(trace_id.to_owned()),
            TrailKey::Message(message_id) => trail_request::Key::MessageId(message_id.to_owned()),
        };
        let mut request = tonic::Request::new(TrailRequest {
            key: Some(key),
            from: window.from.map(Into::into),
            to: window.to.map(Into::into),
            limit: self.max_records,
        });
        request.set_timeout(self.timeout);
        relais_telemetry::propagation::inject_grpc(
            &tracing_opentelemetry::OpenTelemetrySpanExt::context(&tracing::Span::current()),
            request.metadata_mut(),
        );
        let mut client = self.client.clone();
        let answer = tokio::time::timeout(self.timeout, client.get_trail(request)).await;
        let (result, trail) = match answer {
            Ok(Ok(response)) => {
                let response = response.into_inner();
                (
                    "ok",
                    Trail::Found {
                        records: response.records.into_iter().map(Into::into).collect(),
                        actions: response.actions.into_iter().map(Into::into).collect(),
                        truncated: response.truncated,
                        stopped_at_deadline: response.partial,
                    },
                )
            }
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "audit trail lookup failed");
                match status.code() {
                    tonic::Code::Unavailable => (
                        "unavailable",
                        Trail::Unavailable("audit-service unreachable"),
                    ),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => (
                        "timeout",
                        Trail::Unavailable("audit-service did not answer in time"),
                    ),
                    tonic::Code::ResourceExhausted => (
                        "busy",
                        Trail::Unavailable("audit-service is busy with other lookups"),
                    ),
                    tonic::Code::InvalidArgument => {
                        ("refused", Trail::Refused(status.message().to_owned()))
                    }
                    _ => (
                        "error",
                        Trail::Unavailable("audit-service returned an error"),
                    ),
                }
            }
            Err(_) => (
                "timeout",
                Trail::Unavailable("audit-service did not answer in time"),
            ),
        };
        self.metrics
            .audit_queries
            .get_or_create(&ResultLabels { result })
            .inc();
        trail
    }
}
