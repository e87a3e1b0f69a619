//! Routes. The simulated API ([`api_router`], port 8090) takes deliveries on any path; the
//! operator routes ([`admin_router`]) live on the admin port (9104) beside `/metrics`, so they
//! stay reachable while an outage closes the API port.
//!
//! | port | route | what |
//! | --- | --- | --- |
//! | API | `POST /{*path}` | a delivery: faults applied, counted per `Idempotency-Key`, its order checked per `data.order_key` by `data.seq` |
//! | admin | `GET /admin/faults` · `PUT /admin/faults` | read or replace the fault configuration |
//! | admin | `GET /admin/deliveries` | totals, duplicates and order violations included |
//! | admin | `GET /admin/deliveries/{key}` | counts for one key |
//! | admin | `POST /admin/reset` | healthy again, counters cleared |
//! | API | `POST /oauth/token` | with `--oauth-client`: an OAuth2 client-credentials token |
//! | admin | `GET /admin/oauth` · `POST /admin/oauth/revoke` | tokens issued; revoke every token |

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;

use crate::faults::{Action, Faults};
use crate::state::SimState;

/// Marks a response whose connection must be dropped instead of answered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResetConnection;

/// The largest delivery body accepted.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The simulated upstream API.
pub fn api_router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/oauth/token", post(issue_token))
        .route("/{*path}", post(deliver))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The operator routes: faults and delivery counts.
pub fn admin_router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/admin/faults", get(get_faults).put(put_faults))
        .route("/admin/deliveries", get(deliveries))
        .route("/admin/deliveries/{key}", get(delivery))
        .route("/admin/reset", post(reset))
        .route("/admin/oauth", get(oauth_state))
        .route("/admin/oauth/revoke", post(revoke_tokens))
        .with_state(state)
}

async fn deliver(State(state): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = tokio::time::Instant::now();
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    state.store.received(key.as_deref());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
    if let Err(refusal) = state.auth.check(&headers, &body, now) {
        state.metrics.signatures_refused.inc();
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": refusal.to_string() })),
        )
            .into_response();
    }
    let in_progress = state.enter();
    if let Some(limit) = state.concurrency_limit()
        && in_progress.count > limit.max
    {
        state.metrics.observe(
            Action::RateLimit {
                retry_after_secs: limit.retry_after_secs,
            },
            started.elapsed(),
        );
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(
                http::header::RETRY_AFTER,
                limit.retry_after_secs.to_string(),
            )],
            Json(json!({ "error": "too many concurrent requests" })),
        )
            .into_response();
    }
    let _turn = state.turn().await;
    let (latency, action) = state.decide();
    // A zero sleep still waits for the next timer tick (about 1 ms): skip it.
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = match action {
        Action::Accept => {
            let duplicate = state.store.accepted(key.as_deref());
            if duplicate {
                state.metrics.duplicates.inc();
            } else if let Some(mark) = crate::store::OrderMark::of_body(&body)
                && state.store.check_order(mark)
            {
                state.metrics.order_violations.inc();
            }
            (
                StatusCode::OK,
                Json(json!({ "accepted": true, "duplicate": duplicate, "bytes": body.len() })),
            )
                .into_response()
        }
        Action::Error(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(json!({ "error": "injected fault" }))).into_response()
        }
        Action::Redirect(status) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND),
            [(http::header::LOCATION, crate::faults::REDIRECT_LOCATION)],
            Json(json!({ "error": "moved" })),
        )
            .into_response(),
        Action::RateLimit { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [(http::header::RETRY_AFTER, retry_after_secs.to_string())],
            Json(json!({ "error": "rate limited" })),
        )
            .into_response(),
        Action::Hang(duration) => {
            tokio::time::sleep(duration).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Action::Reset => {
            let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
            response.extensions_mut().insert(ResetConnection);
            response
        }
    };
    state.metrics.observe(action, started.elapsed());
    response
}

async fn issue_token(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(issuer) = &state.auth.oauth else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let form = String::from_utf8_lossy(&body);
    match issuer.issue(&headers, &form, std::time::Instant::now()) {
        Ok((token, expires_in)) => Json(json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": expires_in,
        }))
        .into_response(),
        Err((status, error)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            Json(json!({ "error": error })),
        )
            .into_response(),
    }
}

async fn oauth_state(State(state): State<Arc<SimState>>) -> Response {
    match &state.auth.oauth {
        Some(issuer) => Json(json!({ "issued": issuer.issued() })).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn revoke_tokens(State(state): State<Arc<SimState>>) -> StatusCode {
    match &state.auth.oauth {
        Some(issuer) => {
            issuer.revoke_all();
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn get_faults(State(state): State<Arc<SimState>>) -> Json<Faults> {
    Json(state.faults())
}

async fn put_faults(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(faults) => faults,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": error.to_string() })),
            )
                .into_response();
        }
    };
    if let Err(error) = faults.validate() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": error.to_string() })),
        )
            .into_response();
    }
    tracing::info!(faults = %serde_json::to_string(&faults).unwrap_or_default(), "faults changed");
    state.set_faults(faults.clone());
    Json(faults).into_response()
}

async fn deliveries(State(state): State<Arc<SimState>>) -> Response {
    let mut summary = serde_json::to_value(state.store.summary()).unwrap_or_default();
    summary["peak_in_progress"] = state
        .peak_in_progress
        .load(std::sync::atomic::Ordering::Relaxed)
        .into();
    Json(summary).into_response()
}

async fn delivery(State(state): State<Arc<SimState>>, Path(key): Path<String>) -> Response {
    match state.store.key(&key) {
        Some(counts) => Json(counts).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no delivery with this key" })),
        )
            .into_response(),
    }
}

async fn reset(State(state): State<Arc<SimState>>) -> StatusCode {
    state.set_faults(Faults::default());
    state.store.reset();
    state
        .peak_in_progress
        .store(0, std::sync::atomic::Ordering::Relaxed);
    tracing::info!("faults and counters reset");
    StatusCode::NO_CONTENT
}
