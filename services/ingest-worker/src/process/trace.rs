//! A message's trace and span ids as the records, logs and upstream call carry them.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId};
use relais_telemetry::w3c::Traceparent;

/// Trace id, span id and `traceparent` of a message's span context; a fresh random trace when
/// the context is invalid (tracing switched off), since the trace id is mandatory downstream.
pub(super) fn trace_text(context: &SpanContext) -> (String, String, String) {
    let traceparent = if context.is_valid() {
        Traceparent::new(context.trace_id(), context.span_id(), context.trace_flags())
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
