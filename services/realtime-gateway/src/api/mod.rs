//! The public HTTP port: REST `/api/v1`, WebSocket `/ws`, the dashboard, `/healthz`, `/readyz`.
//!
//! Layers, outermost first: request span (with the caller's W3C trace context) → request
//! duration metric → problem details for every error → panic catcher → CORS allow-list →
//! body size limit; protected routes then pass authentication and the rate limit, and routes
//! that change state also the admin check.

pub mod admin;
pub mod guard;
pub mod lookup;
pub mod routes;
#[cfg(test)]
mod tests;

use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use relais_telemetry::admin::Readiness;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument as _;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

pub use crate::state::AppState;
use crate::{dashboard, ws};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Relais realtime-gateway",
        description = "Live view of the Relais pipeline: aggregates, recent events, traces and \
                       messages joined with the audit trail, worker replicas, circuit breakers and upstreams; \
                       and, for admin tokens, disabling and re-enabling upstreams and DLQ \
                       replay jobs, each recorded in the audit trail with the token's name. \
                       Every route needs a bearer token; errors are RFC 9457 problem details.",
    ),
    paths(
        routes::stats,
        routes::events,
        lookup::trace,
        lookup::message,
        routes::workers,
        routes::forget_worker,
        routes::circuits,
        admin::upstreams,
        admin::enable_upstream,
        admin::disable_upstream,
        admin::start_replay,
        admin::replays,
        admin::replay,
        routes::openapi,
        ws::upgrade,
    ),
    modifiers(&BearerScheme),
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
}

/// Opens a server span per request, child of the caller's trace context if it sent one.
async fn trace_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let span = tracing::info_span!(
        "http.server.request",
        otel.kind = "server",
        otel.name = format!("{} {route}", request.method()),
        http.request.method = %request.method(),
        http.route = %route,
    );
    let parent = relais_telemetry::propagation::extract_http(request.headers());
    let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
    next.run(request).instrument(span).await
}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| origin.parse().ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600))
}

async fn readyz(
    axum::extract::State(readiness): axum::extract::State<Readiness>,
) -> (StatusCode, &'static str) {
    if readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The whole public router.
pub fn router(state: AppState) -> Router {
    let http = &state.config.http;
    let rest = Router::new()
        .route("/api/v1/stats", get(routes::stats))
        .route("/api/v1/events", get(routes::events))
        .route("/api/v1/traces/{trace_id}", get(lookup::trace))
        .route("/api/v1/messages/{message_id}", get(lookup::message))
        .route("/api/v1/workers", get(routes::workers))
        .route("/api/v1/circuits", get(routes::circuits))
        .route("/api/v1/upstreams", get(admin::upstreams))
        .route("/api/v1/openapi.json", get(routes::openapi))
        .merge(
            Router::new()
                .route("/api/v1/workers/{worker_id}", delete(routes::forget_worker))
                .route(
                    "/api/v1/admin/upstreams/{name}/enable",
                    post(admin::enable_upstream),
                )
                .route(
                    "/api/v1/admin/upstreams/{name}/disable",
                    post(admin::disable_upstream),
                )
                .route(
                    "/api/v1/admin/replays",
                    get(admin::replays).post(admin::start_replay),
                )
                .route("/api/v1/admin/replays/{job_id}", get(admin::replay))
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    guard::require_admin,
                )),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            http.request_timeout,
        ));
    let protected =
        rest.route("/ws", get(ws::upgrade))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                guard::authenticate,
            ));
    let public = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz).with_state(state.readiness.clone()))
        .merge(dashboard::router());
    protected
        .merge(public)
        .layer(RequestBodyLimitLayer::new(http.max_body_bytes))
        .layer(cors(&http.cors_origins))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            axum::response::IntoResponse::into_response(crate::problem::Problem::internal())
        }))
        .layer(middleware::from_fn(crate::problem::normalise_errors))
        .layer(middleware::from_fn_with_state(
            state.metrics.http.clone(),
            relais_telemetry::http_server::track,
        ))
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}
