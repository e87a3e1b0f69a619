//! Server spans for gRPC services, per the OpenTelemetry RPC conventions: one span per call,
//! named `{service}/{method}`, a child of the caller's trace context from the request metadata
//! (gRPC metadata are HTTP/2 headers). Add it to a tonic server with
//! `Server::builder().layer(GrpcServerSpans)`.

use std::task::{Context, Poll};

use tracing::Instrument as _;
use tracing::instrument::Instrumented;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The layer: every call through it runs inside its server span.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcServerSpans;

impl<S> tower::Layer<S> for GrpcServerSpans {
    type Service = GrpcServerSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerSpan { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcServerSpan<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcServerSpan<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = server_span(request.uri().path(), request.headers());
        // The service may do part of its work before it returns the future.
        let future = span.in_scope(|| self.inner.call(request));
        future.instrument(span)
    }
}

/// The span of one call to `path` (`/package.Service/Method`), parented on the caller's trace.
pub fn server_span(path: &str, headers: &http::HeaderMap) -> tracing::Span {
    let (service, method) = rpc_names(path);
    let span = tracing::info_span!(
        "rpc.server",
        otel.kind = "server",
        otel.name = format!("{service}/{method}"),
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    let _ = span.set_parent(crate::propagation::extract_http(headers));
    span
}

/// `(service, method)` of a gRPC path; the whole path as the service when it has no method.
fn rpc_names(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_and_method_come_from_the_path() {
        assert_eq!(
            rpc_names("/relais.v1.AuditQuery/GetTrail"),
            ("relais.v1.AuditQuery", "GetTrail")
        );
        assert_eq!(rpc_names("/odd"), ("/odd", ""));
    }
}
