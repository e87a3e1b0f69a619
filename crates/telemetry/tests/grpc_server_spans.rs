//! A gRPC server span continues the caller's trace. In a test binary of its own: it installs a
//! scoped subscriber, which in the same process as the library's global-subscriber test could
//! leave that test's span without its trace ids (tracing caches callsite interest across
//! dispatchers).

use tracing_opentelemetry::OpenTelemetrySpanExt as _;

#[test]
fn a_call_continues_the_callers_trace() {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing_subscriber::layer::SubscriberExt as _;

    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, || {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        );
        let span =
            relais_telemetry::grpc_server::server_span("/relais.v1.AuditQuery/GetTrail", &headers);
        let context = span.context();
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
    });
}
