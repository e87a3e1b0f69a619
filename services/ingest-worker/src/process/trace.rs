//! A message's trace and span ids as the records, logs and upstream call carry them.

use opentelemetry::trace::TraceContextExt;
use relais_telemetry::w3c::{hex, traceparent_of_hex};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Trace id, span id and `traceparent` of the current span; a fresh random trace when the
/// span has no valid context (tracing disabled), since the trace id is mandatory downstream.
pub(super) fn current_trace() -> (String, String, String) {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    let (trace_id, span_id, sampled) = if span_context.is_valid() {
        (
            hex(&span_context.trace_id().to_bytes()),
            hex(&span_context.span_id().to_bytes()),
            span_context.is_sampled(),
        )
    } else {
        (
            // Never all zeros, which W3C reserves for "invalid".
            hex(&(rand::random::<u128>() | 1).to_be_bytes()),
            hex(&(rand::random::<u64>() | 1).to_be_bytes()),
            false,
        )
    };
    let traceparent = traceparent_of_hex(&trace_id, &span_id, sampled);
    (trace_id, span_id, traceparent)
}
