//! A message's trace and span ids as the records, logs and upstream call carry them.

use opentelemetry::trace::{SpanId, TraceContextExt, TraceFlags, TraceId};
use relais_telemetry::w3c::Traceparent;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Trace id, span id and `traceparent` of the current span; a fresh random trace when the
/// span has no valid context (tracing disabled), since the trace id is mandatory downstream.
pub(super) fn current_trace() -> (String, String, String) {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    let traceparent = if span_context.is_valid() {
        Traceparent::new(
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags(),
        )
    } else {
        // Never all zeros, which W3C reserves for "invalid".
        Traceparent::new(
            TraceId::from(rand::random::<u128>() | 1),
            SpanId::from(rand::random::<u64>() | 1),
            TraceFlags::NOT_SAMPLED,
        )
    };
    (
        traceparent.trace_id().to_owned(),
        traceparent.span_id().to_owned(),
        traceparent.as_str().to_owned(),
    )
}
