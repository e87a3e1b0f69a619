//! A message's trace and span ids as the records, logs and upstream call carry them.

use opentelemetry::trace::SpanContext;
use relais_telemetry::w3c::Traceparent;

/// Trace id, span id and `traceparent` of a message's span context; a new trace when the
/// context is invalid (tracing switched off), since the trace id is mandatory downstream.
pub(super) fn trace_text(context: &SpanContext) -> (String, String, String) {
    let started;
    let context = if context.is_valid() {
        context
    } else {
        started = relais_telemetry::work::child_of(context);
        &started
    };
    let traceparent =
        Traceparent::new(context.trace_id(), context.span_id(), context.trace_flags());
    (
        traceparent.trace_id().to_owned(),
        traceparent.span_id().to_owned(),
        traceparent.as_str().to_owned(),
    )
}
