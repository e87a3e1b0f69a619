//! Exemplars on latency histograms: an observation carries the trace it belongs to, so a slow
//! bucket on a dashboard leads to one trace of it in the trace backend. Only while spans are
//! exported (an exemplar pointing at a trace nobody stored would only mislead).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;

/// `trace_id` of the observation's trace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

/// A latency histogram whose observations may carry their trace.
pub type LatencyHistogram = HistogramWithExemplars<TraceExemplar>;

pub fn latency_histogram(buckets: impl Iterator<Item = f64>) -> LatencyHistogram {
    HistogramWithExemplars::new(buckets)
}

/// The trace of the current span, if it is sampled and spans are exported.
pub fn current() -> Option<TraceExemplar> {
    if !crate::spans_exported() {
        return None;
    }
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    of_span(context.span().span_context())
}

/// The trace of `span`, if it is sampled and spans are exported.
pub fn of_span(span: &opentelemetry::trace::SpanContext) -> Option<TraceExemplar> {
    (crate::spans_exported() && span.is_valid() && span.is_sampled()).then(|| TraceExemplar {
        trace_id: span.trace_id().to_string(),
    })
}

/// A trace id carried as text (W3C: 32 lowercase hex digits, not all zero), while spans are
/// exported.
pub fn of_trace_id(trace_id: &str) -> Option<TraceExemplar> {
    (crate::spans_exported() && is_trace_id(trace_id)).then(|| TraceExemplar {
        trace_id: trace_id.to_owned(),
    })
}

fn is_trace_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && text.bytes().any(|b| b != b'0')
}

/// Observes `value` with the current span's trace as its exemplar.
pub fn observe(histogram: &LatencyHistogram, value: f64) {
    histogram.observe(value, current(), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_w3c_trace_ids_make_exemplars() {
        assert!(is_trace_id("0af7651916cd43dd8448eb211c80319c"));
        assert!(!is_trace_id("00000000000000000000000000000000"));
        assert!(!is_trace_id("0AF7651916CD43DD8448EB211C80319C"));
        assert!(!is_trace_id("short"));
    }
}
