//! realtime-gateway metrics. Every label value comes from a fixed set.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use relais_telemetry::exemplar::{LatencyHistogram, latency_histogram};
use relais_telemetry::http_server::HttpServerMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    pub http: HttpServerMetrics,
    pub events_consumed: Counter,
    pub events_rejected: Family<ReasonLabels, Counter>,
    /// Partitions whose log started again under the gateway (see `history::Inserted`).
    pub events_log_restarts: Family<TopicLabels, Counter>,
    pub history_events: Gauge,
    pub consumer_lag: Gauge,
    pub ws_connections: Gauge,
    pub ws_messages_sent: Counter,
    /// Events a client did not get: it lagged (and was disconnected) or its write failed.
    pub ws_messages_dropped: Family<ReasonLabels, Counter>,
    pub ws_lagged_disconnects: Counter,
    pub ws_gaps: Counter,
    pub ws_replayed: Counter,
    /// From decision at the worker to the frame handed to a client's socket.
    pub ws_delivery_latency: LatencyHistogram,
    pub grpc_streams: Gauge,
    pub worker_reports: Counter,
    pub audit_queries: Family<ResultLabels, Counter>,
    pub auth_failures: Family<ReasonLabels, Counter>,
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            http: HttpServerMetrics::register(registry),
            events_consumed: Counter::default(),
            events_rejected: Family::default(),
            events_log_restarts: Family::default(),
            history_events: Gauge::default(),
            consumer_lag: Gauge::default(),
            ws_connections: Gauge::default(),
            ws_messages_sent: Counter::default(),
            ws_messages_dropped: Family::default(),
            ws_lagged_disconnects: Counter::default(),
            ws_gaps: Counter::default(),
            ws_replayed: Counter::default(),
            ws_delivery_latency: latency_histogram(exponential_buckets(0.001, 2.0, 16)),
            grpc_streams: Gauge::default(),
            worker_reports: Counter::default(),
            audit_queries: Family::default(),
            auth_failures: Family::default(),
        };
        let gateway = registry.sub_registry_with_prefix("relais_gateway");
        gateway.register(
            "events_consumed",
            "Events read from relais.events and taken in",
            metrics.events_consumed.clone(),
        );
        gateway.register(
            "events_rejected",
            "Records on relais.events that were not taken in, by reason",
            metrics.events_rejected.clone(),
        );
        gateway.register(
            "events_log_restarts",
            "Partitions of relais.events whose log started again under the gateway (the topic deleted and created again, or a partition truncated): its offsets start below those taken in",
            metrics.events_log_restarts.clone(),
        );
        gateway.register(
            "history_events",
            "Events held in the recent-event buffer",
            metrics.history_events.clone(),
        );
        gateway.register(
            "consumer_lag",
            "Records on relais.events not yet read by this replica",
            metrics.consumer_lag.clone(),
        );
        gateway.register(
            "ws_connections",
            "Open WebSocket connections",
            metrics.ws_connections.clone(),
        );
        gateway.register(
            "ws_messages_sent",
            "Event frames written to WebSocket clients",
            metrics.ws_messages_sent.clone(),
        );
        gateway.register(
            "ws_messages_dropped",
            "Event frames a WebSocket client did not get, by reason",
            metrics.ws_messages_dropped.clone(),
        );
        gateway.register(
            "ws_lagged_disconnects",
            "WebSocket clients disconnected because they fell too far behind",
            metrics.ws_lagged_disconnects.clone(),
        );
        gateway.register(
            "ws_gaps",
            "Resumes that could not replay everything missed (a gap notice was sent)",
            metrics.ws_gaps.clone(),
        );
        gateway.register(
            "ws_replayed",
            "Event frames replayed to resuming WebSocket clients",
            metrics.ws_replayed.clone(),
        );
        gateway.register_with_unit(
            "ws_delivery_latency",
            "From the worker's decision to the frame written to a WebSocket client",
            prometheus_client::registry::Unit::Seconds,
            metrics.ws_delivery_latency.clone(),
        );
        gateway.register(
            "grpc_streams",
            "Open WorkerReport streams",
            metrics.grpc_streams.clone(),
        );
        gateway.register(
            "worker_reports",
            "WorkerStatus messages received",
            metrics.worker_reports.clone(),
        );
        gateway.register(
            "audit_queries",
            "GetTrail calls to the audit-service, by result",
            metrics.audit_queries.clone(),
        );
        gateway.register(
            "auth_failures",
            "Requests refused by authentication, authorisation or the rate limit, by reason",
            metrics.auth_failures.clone(),
        );
        // Every label value at zero, so a thing that has not happened yet reads as 0, not as
        // a missing series.
        for reason in [
            crate::event::EventRejection::Undecodable,
            crate::event::EventRejection::MissingTraceId,
            crate::event::EventRejection::MissingDecisionTime,
        ] {
            let _ = metrics.events_rejected.get_or_create(&ReasonLabels {
                reason: reason.as_label(),
            });
        }
        let _ = metrics
            .ws_messages_dropped
            .get_or_create(&ReasonLabels { reason: "lagged" });
        for result in ["ok", "unavailable", "timeout", "error"] {
            let _ = metrics
                .audit_queries
                .get_or_create(&ResultLabels { result });
        }
        for reason in ["missing", "invalid", "forbidden", "rate_limited"] {
            let _ = metrics
                .auth_failures
                .get_or_create(&ReasonLabels { reason });
        }
        metrics
    }
}
