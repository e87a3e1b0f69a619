//! A message's trace and span ids as the records, logs and upstream call carry them.

use opentelemetry::trace::TraceContextExt;
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
    let mut traceparent = String::with_capacity(55);
    for part in [
        "00-",
        &trace_id,
        "-",
        &span_id,
        if sampled { "-01" } else { "-00" },
    ] {
        traceparent.push_str(part);
    }
    (trace_id, span_id, traceparent)
}

/// Lower-case hex, as W3C writes trace and span ids; without the formatting machinery that
/// `to_string` goes through for every message.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceId};

    use super::hex;

    #[test]
    fn ids_are_written_as_opentelemetry_writes_them() {
        let trace_id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("valid");
        let span_id = SpanId::from_hex("00f067aa0ba902b7").expect("valid");
        assert_eq!(hex(&trace_id.to_bytes()), trace_id.to_string());
        assert_eq!(hex(&span_id.to_bytes()), span_id.to_string());
        assert_eq!(hex(&1_u128.to_be_bytes()), format!("{:032x}", 1_u128));
        assert_eq!(hex(&[]), "");
    }
}
