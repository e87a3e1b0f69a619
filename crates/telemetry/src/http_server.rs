//! `http_server_request_duration_seconds` for axum routers, per the OpenTelemetry HTTP server
//! conventions: labelled by method, route template (never the raw path, which would make the
//! label unbounded) and status code, with the OTel recommended buckets.

use std::time::Instant;

use crate::exemplar::{LatencyHistogram, latency_histogram};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The OpenTelemetry recommended buckets for HTTP request durations (seconds).
pub const HTTP_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpServerLabels {
    pub http_request_method: String,
    /// The matched route template, such as `/api/v1/traces/{trace_id}`; `unmatched` for 404s.
    pub http_route: String,
    pub http_response_status_code: u16,
}

/// The request duration histogram; add [`track`] as a router layer.
#[derive(Debug, Clone)]
pub struct HttpServerMetrics {
    duration: Family<HttpServerLabels, LatencyHistogram>,
}

impl HttpServerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let duration = Family::<HttpServerLabels, LatencyHistogram>::new_with_constructor(|| {
            latency_histogram(HTTP_DURATION_BUCKETS.into_iter())
        });
        registry.register(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests, by method, route template and status",
            duration.clone(),
        );
        Self { duration }
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.duration
            .get_or_create(&HttpServerLabels {
                http_request_method: method.to_owned(),
                http_route: route.to_owned(),
                http_response_status_code: status,
            })
            .observe(seconds, crate::exemplar::current(), None);
    }
}

/// Middleware: `axum::middleware::from_fn_with_state(metrics, track)`.
pub async fn track(
    State(metrics): State<HttpServerMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
