//! W3C trace-context (`traceparent`, `tracestate`) through Kafka headers, HTTP headers and gRPC
//! metadata.
//!
//! Every hop in Relais carries the context the same way: the sender injects the context of its
//! current span, the receiver extracts it and makes it the parent of its own span. The globally
//! installed propagator (W3C trace context, set by [`crate::init`]) does the encoding; this module
//! adapts each carrier. Outgoing HTTP calls, one or more for every message, write the same
//! headers directly ([`inject_http`]).

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::SpanContext;
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Adds the context's trace headers to a Kafka record's headers.
pub fn inject_kafka(context: &Context, headers: OwnedHeaders) -> OwnedHeaders {
    let mut injector = KafkaInjector {
        headers: Some(headers),
    };
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut injector);
    });
    injector.headers.unwrap_or_default()
}

/// Makes W3C Trace Context (`traceparent`, `tracestate`) the process's propagator, as every
/// service does at start ([`crate::init`]); tests that read or write headers call it too.
pub fn install_w3c() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
}

/// Reads the trace context from a Kafka record's headers (an empty context when absent).
pub fn extract_kafka<H: Headers + ?Sized>(headers: Option<&H>) -> Context {
    let Some(headers) = headers else {
        return Context::new();
    };
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&KafkaExtractor(headers))
    })
}

/// Reads the trace context from headers already copied out of a Kafka record as
/// (name, value) pairs.
pub fn extract_kafka_pairs(headers: &[(String, Vec<u8>)]) -> Context {
    let extractor = PairsExtractor(
        headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), std::str::from_utf8(value).ok()?)))
            .collect(),
    );
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&extractor))
}

/// Adds a span context's trace headers to outgoing HTTP headers: what the W3C propagator
/// writes, written directly, since the worker does it for every attempt (the propagator
/// formats the header through `format!` behind a global lock). No `tracestate` when the state
/// is empty, no headers at all for an invalid context.
pub fn inject_http(span_context: &SpanContext, headers: &mut http::HeaderMap) {
    if !span_context.is_valid() {
        return;
    }
    let traceparent = crate::w3c::Traceparent::new(
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags(),
    );
    // Hex digits and dashes: always a valid header value.
    if let Ok(value) = http::HeaderValue::from_bytes(traceparent.as_bytes()) {
        headers.insert(http::HeaderName::from_static("traceparent"), value);
    }
    let state = span_context.trace_state().header();
    if !state.is_empty()
        && let Ok(value) = http::HeaderValue::try_from(state)
    {
        headers.insert(http::HeaderName::from_static("tracestate"), value);
    }
}

/// Reads the trace context from incoming HTTP headers.
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HttpExtractor(headers))
    })
}

/// Adds the context's trace headers to outgoing gRPC metadata.
pub fn inject_grpc(context: &Context, metadata: &mut tonic::metadata::MetadataMap) {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut GrpcInjector(metadata));
    });
}

/// Reads the trace context from incoming gRPC metadata.
pub fn extract_grpc(metadata: &tonic::metadata::MetadataMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&GrpcExtractor(metadata))
    })
}

struct KafkaInjector {
    // `OwnedHeaders::insert` consumes and returns the headers, hence the Option dance.
    headers: Option<OwnedHeaders>,
}

impl Injector for KafkaInjector {
    fn set(&mut self, key: &str, value: String) {
        let headers = self.headers.take().unwrap_or_default();
        self.headers = Some(headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        }));
    }
}

struct KafkaExtractor<'a, H: ?Sized>(&'a H);

impl<H: Headers + ?Sized> Extractor for KafkaExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        // Read in place: a record has few headers, and copying them out to look up one or
        // two cost allocations on every record. The last one wins, like a map insert would,
        // if a producer repeated a header.
        let headers = self.0;
        (0..headers.count())
            .rev()
            .map(|index| headers.get(index))
            .find(|header| header.key.eq_ignore_ascii_case(key))
            .and_then(|header| std::str::from_utf8(header.value?).ok())
    }

    fn keys(&self) -> Vec<&str> {
        (0..self.0.count())
            .map(|index| self.0.get(index).key)
            .collect()
    }
}

struct PairsExtractor<'a>(Vec<(&'a str, &'a str)>);

impl Extractor for PairsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .map(|(_, value)| *value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| *name).collect()
    }
}

struct HttpExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct GrpcInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for GrpcInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) else {
            return;
        };
        self.0.insert(key, value);
    }
}

struct GrpcExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for GrpcExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use rdkafka::message::OwnedHeaders;

    use super::*;

    fn sample_context() -> Context {
        install_w3c();
        let span_context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("valid trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("valid span id"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        Context::new().with_remote_span_context(span_context)
    }

    fn ids(context: &Context) -> (String, String) {
        let span = context.span();
        let span_context = span.span_context();
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    }

    #[test]
    fn kafka_headers_round_trip_the_context_beside_other_headers() {
        let context = sample_context();
        let headers = OwnedHeaders::new().insert(Header {
            key: "relais-schema",
            value: Some("relais.v1.AuditRecord"),
        });
        let headers = inject_kafka(&context, headers);
        let keys: Vec<&str> = (0..headers.count()).map(|i| headers.get(i).key).collect();
        assert!(
            keys.contains(&"relais-schema"),
            "existing header kept: {keys:?}"
        );
        assert!(keys.contains(&"traceparent"), "traceparent added: {keys:?}");
        let extracted = extract_kafka(Some(&headers));
        assert_eq!(ids(&extracted), ids(&context));
    }

    #[test]
    fn kafka_record_without_headers_yields_an_invalid_context() {
        sample_context();
        let extracted = extract_kafka::<OwnedHeaders>(None);
        assert!(!extracted.span().span_context().is_valid());
    }

    #[test]
    fn malformed_traceparent_is_ignored_not_trusted() {
        sample_context();
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some("00-zzzz-not-a-trace-01"),
        });
        let extracted = extract_kafka(Some(&headers));
        assert!(!extracted.span().span_context().is_valid());
    }

    #[test]
    fn http_headers_round_trip_the_context() {
        let context = sample_context();
        let mut headers = http::HeaderMap::new();
        inject_http(context.span().span_context(), &mut headers);
        assert_eq!(
            headers.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(ids(&extract_http(&headers)), ids(&context));
        assert!(
            headers.get("tracestate").is_none(),
            "no empty tracestate header"
        );
    }

    #[test]
    fn http_headers_carry_a_trace_state_that_has_entries() {
        install_w3c();
        let state = TraceState::from_key_value([("vendor", "opaque")]).expect("valid state");
        let context = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("valid trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("valid span id"),
            TraceFlags::default(),
            true,
            state,
        ));
        let mut headers = http::HeaderMap::new();
        inject_http(context.span().span_context(), &mut headers);
        assert_eq!(
            headers.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
        );
        assert_eq!(
            headers.get("tracestate").and_then(|v| v.to_str().ok()),
            Some("vendor=opaque")
        );
        let extracted = extract_http(&headers);
        assert_eq!(
            extracted.span().span_context().trace_state().header(),
            "vendor=opaque"
        );
    }

    #[test]
    fn http_headers_are_what_the_w3c_propagator_writes() {
        use opentelemetry::propagation::TextMapPropagator as _;
        use opentelemetry_sdk::propagation::TraceContextPropagator;
        let state = TraceState::from_key_value([("a", "1"), ("b", "x y")]).expect("valid state");
        let contexts = [
            (TraceFlags::SAMPLED, TraceState::default()),
            (TraceFlags::NOT_SAMPLED, state.clone()),
            (TraceFlags::new(0xff), state),
        ]
        .map(|(flags, state)| {
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_hex("0000000000000000000000000000000a").expect("valid trace id"),
                SpanId::from_hex("f0f067aa0ba902b7").expect("valid span id"),
                flags,
                true,
                state,
            ))
        });
        for context in contexts.iter().chain([&Context::new()]) {
            let mut written = http::HeaderMap::new();
            inject_http(context.span().span_context(), &mut written);
            let mut propagated = std::collections::HashMap::new();
            TraceContextPropagator::new().inject_context(context, &mut propagated);
            propagated.retain(|_, value: &mut String| !value.is_empty());
            let written: std::collections::HashMap<String, String> = written
                .iter()
                .map(|(name, value)| {
                    let value = value.to_str().expect("ASCII").to_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect();
            assert_eq!(written, propagated);
        }
    }

    #[test]
    fn grpc_metadata_round_trips_the_context() {
        let context = sample_context();
        let mut metadata = tonic::metadata::MetadataMap::new();
        inject_grpc(&context, &mut metadata);
        assert_eq!(ids(&extract_grpc(&metadata)), ids(&context));
    }
}
