//! Telemetry and process plumbing shared by every Relais service.
//!
//! A service's `main` calls [`init`] first, which installs:
//! - JSON-line logs where every line carries the `trace_id` and `span_id` of the span it was
//!   logged in ([`logging`]);
//! - an OpenTelemetry tracer behind `tracing`, exporting over OTLP when the standard `OTEL_*`
//!   variables ask for it ([`init`]);
//! - the W3C trace-context propagator used by [`propagation`] to carry context through Kafka
//!   headers, HTTP headers and gRPC metadata.
//!
//! Work done for many messages carries each one's trace context in a task-local scope
//! ([`work`]) rather than a span, when spans are not exported.
//!
//! It then builds its components, registers their metrics in one
//! [`prometheus_client::registry::Registry`], serves it with [`admin`] (`/metrics`, `/healthz`,
//! `/readyz`, never on a public port) and runs until [`shutdown`] says to stop.

pub mod admin;
pub mod exemplar;
pub mod grpc_server;
pub mod http_server;
mod init;
pub mod logging;
pub mod net;
pub mod process;
pub mod propagation;
pub mod secrets;
pub mod shutdown;
pub mod tasks;
pub mod w3c;
pub mod work;

pub use init::{
    TelemetryConfig, TelemetryError, TelemetryGuard, current_trace_id, init, spans_exported,
};
