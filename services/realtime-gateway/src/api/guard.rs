//! Authentication, authorisation and the rate limit, in front of every protected route.
//!
//! The token comes from `Authorization: Bearer <token>`. Browsers cannot set headers on a
//! WebSocket handshake, so `/ws` also accepts it as the subprotocol `relais.bearer.<token>`
//! offered beside `relais.v1` (the gateway answers with `relais.v1` only, so the token is
//! never echoed). Tokens in query strings are refused on purpose: URLs end up in logs.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::auth::{Principal, Role};
use crate::metrics::ReasonLabels;
use crate::problem::Problem;

pub const BEARER_SUBPROTOCOL_PREFIX: &str = "relais.bearer.";

fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|protocol| protocol.trim().strip_prefix(BEARER_SUBPROTOCOL_PREFIX))
}

fn refuse(state: &AppState, reason: &'static str, problem: Problem) -> Response {
    state
        .metrics
        .auth_failures
        .get_or_create(&ReasonLabels { reason })
        .inc();
    problem.into_response()
}

/// Middleware for every protected route: a known token, within its rate limit.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = presented_token(request.headers()) else {
        return unauthorized(&state, "missing", "a bearer token is required");
    };
    let Some(principal) = state.tokens.authenticate(token) else {
        return unauthorized(&state, "invalid", "the bearer token is not valid");
    };
    if let Err(wait) = state.limiter.check(&principal) {
        let mut response = refuse(
            &state,
            "rate_limited",
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "this token's request rate limit is exhausted; retry later",
            )
            .with_type("rate-limited"),
        );
        let seconds = wait.as_secs().max(1);
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

fn unauthorized(state: &AppState, reason: &'static str, detail: &str) -> Response {
    let mut response = refuse(
        state,
        reason,
        Problem::new(StatusCode::UNAUTHORIZED, detail).with_type("unauthorized"),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"relais\""),
    );
    response
}

/// Middleware for routes that change state: the caller must be an admin.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let is_admin = request
        .extensions()
        .get::<Principal>()
        .is_some_and(|principal| principal.role >= Role::Admin);
    if !is_admin {
        return refuse(
            &state,
            "forbidden",
            Problem::new(StatusCode::FORBIDDEN, "this route needs the admin role")
                .with_type("forbidden"),
        );
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_header_or_the_subprotocol() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("relais.v1, relais.bearer.abc"),
        );
        assert_eq!(presented_token(&headers), Some("abc"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(presented_token(&headers), Some("xyz"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(presented_token(&headers), None);
    }
}
