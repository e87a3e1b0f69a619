//! Lookups that join the gateway's buffer of recent events with the stored audit trail: by
//! trace (`/api/v1/traces/{trace_id}`) and by message (`/api/v1/messages/{message_id}`, the
//! question "what happened to this event?").

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::routes::parse_time;
use crate::audit::{ActionView, AuditRecordView, Trail, TrailKey, TrailWindow};
use crate::event::EventView;
use crate::history::{EventFilter, TimeRange};
use crate::problem::Problem;

/// Longest message id looked up, in characters. A producer's id is at most the worker's
/// `max_id_chars` (128 by default); a rejected message's is `topic-partition-offset`, and a
/// topic name is at most 249 characters.
const MAX_MESSAGE_ID_CHARS: usize = 300;

/// What a lookup found, in the buffer and in the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct Found {
    /// Events still in the gateway's buffer, oldest first; at most `max_page`: a trace's first,
    /// a message's latest.
    pub events: Vec<EventView>,
    /// The buffer holds more of them than were returned.
    pub events_truncated: bool,
    /// The stored audit records from the audit-service, oldest first.
    pub audit: Vec<AuditRecordView>,
    /// The audit-service had more records than it returned.
    pub audit_truncated: bool,
    /// Operator actions of the trace, or whose subject is the id looked up.
    pub actions: Vec<ActionView>,
    /// True when the audit half is missing or incomplete; `partial_reason` says why.
    pub partial: bool,
    pub partial_reason: Option<String>,
}

/// A trace: the realtime events of the buffer joined with the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct TraceResponse {
    pub trace_id: String,
    #[serde(flatten)]
    pub found: Found,
}

/// One message's story: every decision taken on it (moves to a retry tier, its outcome, a
/// replay's outcome), from the buffer and from the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageResponse {
    pub message_id: String,
    #[serde(flatten)]
    pub found: Found,
}

/// The window of the audit trail a lookup reads.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TrailQuery {
    /// Audit records whose event happened at or after this time (RFC 3339); by default 24
    /// hours before `to`.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// ... and at or before this time (RFC 3339); by default now. At most 31 days after
    /// `from` (the audit-service's `query.max_range_days`).
    #[param(format = DateTime)]
    pub to: Option<String>,
}

fn normalise_trace_id(text: &str) -> Option<String> {
    let id = text.to_ascii_lowercase();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Why a message id cannot be one the worker wrote, if it cannot.
fn message_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("a message id is not empty".to_owned());
    }
    if id.chars().count() > MAX_MESSAGE_ID_CHARS {
        return Some(format!(
            "a message id is at most {MAX_MESSAGE_ID_CHARS} characters"
        ));
    }
    if id.chars().any(char::is_control) {
        return Some("a message id holds no control characters".to_owned());
    }
    None
}

fn window(query: Result<Query<TrailQuery>, QueryRejection>) -> Result<TrailWindow, Problem> {
    let Query(query) = query.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let window = TrailWindow {
        from: parse_time("from", query.from.as_deref())?,
        to: parse_time("to", query.to.as_deref())?,
    };
    if let (Some(from), Some(to)) = (window.from, window.to)
        && from > to
    {
        return Err(Problem::bad_request("from is after to"));
    }
    Ok(window)
}

/// Joins the buffered events with the audit trail's answer; `None` when neither knows the id.
fn join(
    events: Vec<EventView>,
    events_truncated: bool,
    trail: Trail,
) -> Result<Option<Found>, Problem> {
    let found = match trail {
        Trail::Found {
            records,
            actions,
            truncated,
            stopped_at_deadline,
        } => {
            if events.is_empty() && records.is_empty() && actions.is_empty() {
                return Ok(None);
            }
            Found {
                events,
                events_truncated,
                audit: records,
                audit_truncated: truncated,
                actions,
                partial: stopped_at_deadline,
                partial_reason: stopped_at_deadline.then(|| {
                    "the audit lookup stopped at its deadline; later records may be missing"
                        .to_owned()
                }),
            }
        }
        Trail::Refused(reason) => return Err(Problem::bad_request(reason)),
        Trail::Unavailable(reason) => Found {
            events,
            events_truncated,
            audit: Vec::new(),
            audit_truncated: false,
            actions: Vec::new(),
            partial: true,
            partial_reason: Some(reason.to_owned()),
        },
    };
    Ok(Some(found))
}

#[utoipa::path(
    get,
    path = "/api/v1/traces/{trace_id}",
    tag = "traces",
    security(("bearer" = [])),
    params(
        ("trace_id" = String, Path, description = "W3C trace id, 32 hex digits", pattern = "^[0-9a-fA-F]{32}$"),
        TrailQuery,
    ),
    responses(
        (status = 200, description = "The trace; `partial` when the audit-service could not be asked or stopped at its deadline", body = TraceResponse),
        (status = 400, description = "Not a trace id, or an invalid window", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Neither the buffer nor the audit trail knows this trace", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn trace(
    State(state): State<AppState>,
    trace_id: Result<Path<String>, PathRejection>,
    query: Result<Query<TrailQuery>, QueryRejection>,
) -> Result<Json<TraceResponse>, Problem> {
    let Path(trace_id) =
        trace_id.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let trace_id = normalise_trace_id(&trace_id)
        .ok_or_else(|| Problem::bad_request("a trace id is 32 hexadecimal digits"))?;
    let window = window(query)?;
    let (buffered, events_truncated) = state.history.trace(&trace_id, state.config.http.max_page);
    let events = buffered
        .iter()
        .map(|entry| entry.event.view.clone())
        .collect();
    let trail = state.audit.trail(TrailKey::Trace(&trace_id), window).await;
    let found = join(events, events_truncated, trail)?
        .ok_or_else(|| Problem::not_found("no event and no audit record carries this trace id"))?;
    Ok(Json(TraceResponse { trace_id, found }))
}

#[utoipa::path(
    get,
    path = "/api/v1/messages/{message_id}",
    tag = "messages",
    security(("bearer" = [])),
    params(
        ("message_id" = String, Path, description = "The message's id: the producer's `id` (the `Idempotency-Key` the upstream received), or `topic-partition-offset` for a message rejected before its id could be read"),
        TrailQuery,
    ),
    responses(
        (status = 200, description = "Every decision on the message still in the buffer and in the audit trail; `partial` when the audit-service could not be asked or stopped at its deadline", body = MessageResponse),
        (status = 400, description = "Not a message id, or an invalid window", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Neither the buffer nor the audit trail knows this message", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn message(
    State(state): State<AppState>,
    message_id: Result<Path<String>, PathRejection>,
    query: Result<Query<TrailQuery>, QueryRejection>,
) -> Result<Json<MessageResponse>, Problem> {
    let Path(message_id) =
        message_id.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    if let Some(problem) = message_id_problem(&message_id) {
        return Err(Problem::bad_request(problem));
    }
    let window = window(query)?;
    let page = state.history.page(
        &EventFilter::message(&message_id),
        TimeRange::default(),
        None,
        state.config.http.max_page,
    );
    // The page is newest first; a story reads oldest first.
    let events = page
        .events
        .iter()
        .rev()
        .map(|entry| entry.event.view.clone())
        .collect();
    let trail = state
        .audit
        .trail(TrailKey::Message(&message_id), window)
        .await;
    let found = join(events, page.next_cursor.is_some(), trail)?
        .ok_or_else(|| Problem::not_found("no event and no audit record of this message"))?;
    Ok(Json(MessageResponse { message_id, found }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_refused_only_when_no_worker_could_have_written_them() {
        for id in [
            "order-1",
            "relais.ingress-3-1042",
            "ünïcødé id with spaces",
            "a/b?c#d%20",
            &"x".repeat(MAX_MESSAGE_ID_CHARS),
        ] {
            assert_eq!(message_id_problem(id), None, "{id}");
        }
        for id in [
            "",
            "line\nbreak",
            "nul\0",
            &"x".repeat(MAX_MESSAGE_ID_CHARS + 1),
        ] {
            assert!(message_id_problem(id).is_some(), "{id:?}");
        }
    }

    #[test]
    fn trace_ids_are_32_hex_digits_in_lower_case() {
        assert_eq!(
            normalise_trace_id("0AF7651916CD43DD8448EB211C80319C").as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(normalise_trace_id("0af7651916cd43dd8448eb211c80319"), None);
        assert_eq!(normalise_trace_id("zaf7651916cd43dd8448eb211c80319c"), None);
    }
}
