//! The admin HTTP endpoint every service serves apart from its public routes:
//! `/metrics` (OpenMetrics text), `/healthz` (liveness) and `/readyz` (readiness).
//!
//! Liveness only says the process answers. Readiness is the conjunction of named checks that
//! the service's components keep up to date (Kafka assigned, RGW reachable, ...), plus
//! "not shutting down", so an orchestrator stops routing to a replica that cannot do its work.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Media type of the OpenMetrics text exposition that prometheus-client writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Named readiness checks, shared between the components that set them and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<BTreeMap<&'static str, CheckState>>>,
}

#[derive(Debug, Clone, Serialize)]
struct CheckState {
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl Readiness {
    /// Adds a check, not ready until its handle says so.
    pub fn register(&self, name: &'static str) -> ReadinessCheck {
        let check = ReadinessCheck {
            name,
            readiness: self.clone(),
        };
        check.set_not_ready("starting");
        check
    }

    /// True when every registered check is ready.
    pub fn is_ready(&self) -> bool {
        self.read().values().all(|state| state.ready)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<&'static str, CheckState>> {
        // A panic while holding the lock cannot leave the map half-written (single inserts), so
        // a poisoned lock is still safe to read.
        self.checks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, name: &'static str, state: CheckState) {
        self.checks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name, state);
    }
}

/// The handle a component uses to report one readiness check.
#[derive(Debug, Clone)]
pub struct ReadinessCheck {
    name: &'static str,
    readiness: Readiness,
}

impl ReadinessCheck {
    pub fn set_ready(&self) {
        self.readiness.set(
            self.name,
            CheckState {
                ready: true,
                reason: None,
            },
        );
    }

    /// Marks the check failing; `reason` is shown on `/readyz` (no secrets in it).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.readiness.set(
            self.name,
            CheckState {
                ready: false,
                reason: Some(reason.into()),
            },
        );
    }
}

#[derive(Debug, Clone)]
struct AdminState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// The admin routes, without a socket (tests call it with `oneshot`).
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            registry,
            readiness,
        })
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut body = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[derive(Serialize)]
struct ReadyBody {
    ready: bool,
    checks: BTreeMap<&'static str, CheckState>,
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let checks = state.readiness.read().clone();
    let ready = checks.values().all(|check| check.ready);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(ReadyBody { ready, checks })).into_response()
}

/// Error starting the admin server.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for the admin endpoint on {address}")]
pub struct BindError {
    address: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// A running admin server.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `address` and serves until `shutdown` is cancelled. Readiness turns false as soon
    /// as shutdown starts, while `/metrics` keeps answering for the final scrape.
    pub async fn start(
        address: SocketAddr,
        registry: Arc<Registry>,
        readiness: Readiness,
        shutdown: CancellationToken,
    ) -> Result<Self, BindError> {
        Self::start_with_routes(address, registry, readiness, Router::new(), shutdown).await
    }

    /// Like [`start`](Self::start), with a service's own operator routes beside the standard
    /// ones (they share the admin port, away from public traffic).
    pub async fn start_with_routes(
        address: SocketAddr,
        registry: Arc<Registry>,
        readiness: Readiness,
        extra: Router,
        shutdown: CancellationToken,
    ) -> Result<Self, BindError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| BindError { address, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| BindError { address, source })?;
        let draining = readiness.register("not_shutting_down");
        draining.set_ready();
        let app = router(registry, readiness).merge(extra);
        let task = tokio::spawn(async move {
            let stop = shutdown.clone();
            let served = axum::serve(crate::net::http_listener(listener), app)
                .with_graceful_shutdown(async move {
                    stop.cancelled().await;
                    draining.set_not_ready("shutting down");
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "admin endpoint stopped");
            }
        });
        tracing::info!(address = %local_addr, "admin endpoint listening");
        Ok(Self { local_addr, task })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the server task to end (after shutdown was requested).
    pub async fn join(self) {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "admin endpoint task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    use super::*;

    async fn get_response(app: Router, path: &str) -> (StatusCode, String, String) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible router");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_with_help_and_eof() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register(
            "relais_test_events",
            "Events seen by the test",
            counter.clone(),
        );
        counter.inc_by(3);
        let app = router(Arc::new(registry), Readiness::default());
        let (status, content_type, body) = get_response(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
        assert!(body.contains("# HELP relais_test_events Events seen by the test."));
        assert!(body.contains("relais_test_events_total 3"));
        assert!(body.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn readiness_follows_every_check() {
        let readiness = Readiness::default();
        let kafka = readiness.register("kafka");
        let rgw = readiness.register("rgw");
        let app = router(Arc::new(Registry::default()), readiness.clone());

        let (status, _, body) = get_response(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(r#""reason":"starting""#), "{body}");

        kafka.set_ready();
        assert!(!readiness.is_ready(), "one check is still failing");
        rgw.set_ready();
        let (status, _, body) = get_response(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");

        rgw.set_not_ready("PUT failed");
        let (status, _, body) = get_response(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("PUT failed"));

        let (status, _, _) = get_response(app, "/healthz").await;
        assert_eq!(status, StatusCode::OK, "liveness ignores readiness");
    }
}
