//! Steering the pipeline: upstream states (`/api/v1/upstreams`, and disabling or re-enabling
//! one), and DLQ replay jobs (`/api/v1/admin/replays`). Every change names the token that made
//! it in the audit trail.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use relais_operator::replay::{ReplayRequest, Selection};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::routes::parse_time;
use crate::auth::Principal;
use crate::problem::Problem;
use crate::replays::ReplayJob;
use crate::upstreams::ChangeError;

/// One upstream: its state in the control topic and what the workers report.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamView {
    pub name: String,
    /// False while disabled: its messages wait, nothing of them is dead-lettered.
    pub enabled: bool,
    /// Why it was last changed: `http_410` (a worker was answered 410) or `operator`; absent
    /// when it never was.
    pub reason: Option<String>,
    pub detail: Option<String>,
    /// `worker:{id}` or `token:{name}`.
    pub changed_by: Option<String>,
    pub changed_at: Option<String>,
    /// Workers that hold its deliveries now, and why (`unauthorized`, `disabled`).
    pub held_by: Vec<HeldBy>,
    /// Over the connected workers: messages waiting for it, and deliveries in flight.
    pub queued: u64,
    pub in_flight: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeldBy {
    pub worker_id: String,
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamsResponse {
    pub upstreams: Vec<UpstreamView>,
}

fn unavailable() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the upstream control topic has not been read yet; try again shortly",
    )
    .with_type("control-unavailable")
}

/// Every upstream the control topic or a connected worker knows.
fn upstream_views(state: &AppState) -> Option<BTreeMap<String, UpstreamView>> {
    let controls = state.upstreams.states()?;
    let workers = state.workers.list(SystemTime::now());
    let names: BTreeSet<String> = controls
        .keys()
        .cloned()
        .chain(
            workers
                .iter()
                .flat_map(|worker| worker.circuits.iter().map(|c| c.upstream.clone())),
        )
        .collect();
    Some(
        names
            .into_iter()
            .map(|name| {
                let control = controls.get(&name);
                let held_by = workers
                    .iter()
                    .filter(|worker| worker.connected)
                    .flat_map(|worker| {
                        worker
                            .circuits
                            .iter()
                            .filter(|c| c.upstream == name)
                            .filter_map(|c| {
                                c.held.clone().map(|reason| HeldBy {
                                    worker_id: worker.worker_id.clone(),
                                    reason,
                                })
                            })
                    })
                    .collect();
                let (queued, in_flight) = workers
                    .iter()
                    .filter(|worker| worker.connected)
                    .flat_map(|worker| worker.circuits.iter().filter(|c| c.upstream == name))
                    .fold((0u64, 0u64), |(queued, in_flight), c| {
                        (
                            queued + u64::from(c.queued),
                            in_flight + u64::from(c.in_flight),
                        )
                    });
                let view = UpstreamView {
                    name: name.clone(),
                    enabled: control.is_none_or(|c| c.enabled),
                    reason: control.map(|c| c.reason.clone()),
                    detail: control.map(|c| c.detail.clone()),
                    changed_by: control.map(|c| c.changed_by.clone()),
                    changed_at: control.map(|c| c.changed_at.clone()),
                    held_by,
                    queued,
                    in_flight,
                };
                (name, view)
            })
            .collect(),
    )
}

#[utoipa::path(
    get,
    path = "/api/v1/upstreams",
    tag = "upstreams",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every upstream, enabled or not, with the workers holding it", body = UpstreamsResponse),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The control topic has not been read yet", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn upstreams(State(state): State<AppState>) -> Result<Json<UpstreamsResponse>, Problem> {
    let views = upstream_views(&state).ok_or_else(unavailable)?;
    Ok(Json(UpstreamsResponse {
        upstreams: views.into_values().collect(),
    }))
}

/// Why an operator changes an upstream; kept in the audit trail.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamChange {
    /// At most 1000 characters.
    #[schema(max_length = 1000)]
    pub note: Option<String>,
}

const MAX_NOTE: usize = 1000;

async fn change_upstream(
    state: AppState,
    principal: Principal,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<Option<UpstreamChange>>, JsonRejection>,
    enabled: bool,
) -> Result<Json<UpstreamView>, Problem> {
    let Path(name) = name.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let change = match body {
        Ok(Json(change)) => change.unwrap_or_default(),
        // No body at all (or `null`) is a change without a note.
        Err(JsonRejection::MissingJsonContentType(_)) => UpstreamChange::default(),
        Err(rejection) => return Err(Problem::bad_request(rejection.body_text())),
    };
    let note = change.note.unwrap_or_default();
    if note.chars().count() > MAX_NOTE {
        return Err(Problem::bad_request(format!(
            "note must be at most {MAX_NOTE} characters"
        )));
    }
    let known = upstream_views(&state).ok_or_else(unavailable)?;
    if !known.contains_key(&name) {
        return Err(Problem::not_found(
            "no upstream with this name is known to the workers or the control topic",
        ));
    }
    let actor = format!("token:{}", principal.name);
    let trace_id = request_trace_id();
    match state
        .upstreams
        .set(&name, enabled, &actor, &note, trace_id)
        .await
    {
        Ok(_) => {}
        Err(ChangeError::NotLoaded) => return Err(unavailable()),
        Err(ChangeError::Kafka(error)) => {
            tracing::error!(upstream = %name, error = format!("{error:#}"), "upstream change failed");
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{error:#}"),
            ));
        }
    }
    tracing::info!(upstream = %name, enabled, by = %actor, "upstream changed by an operator");
    upstream_views(&state)
        .and_then(|mut views| views.remove(&name))
        .map(Json)
        .ok_or_else(unavailable)
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/upstreams/{name}/enable",
    tag = "upstreams",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The upstream")),
    request_body(content = Option<UpstreamChange>, description = "Optional note for the audit trail"),
    responses(
        (status = 200, description = "Enabled: every worker resumes its deliveries", body = UpstreamView),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upstream", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka cannot take the change now", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn enable_upstream(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<Option<UpstreamChange>>, JsonRejection>,
) -> Result<Json<UpstreamView>, Problem> {
    change_upstream(state, principal, name, body, true).await
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/upstreams/{name}/disable",
    tag = "upstreams",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The upstream")),
    request_body(content = Option<UpstreamChange>, description = "Optional note for the audit trail"),
    responses(
        (status = 200, description = "Disabled: every worker holds its messages until it is enabled", body = UpstreamView),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upstream", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka cannot take the change now", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn disable_upstream(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<Option<UpstreamChange>>, JsonRejection>,
) -> Result<Json<UpstreamView>, Problem> {
    change_upstream(state, principal, name, body, false).await
}

/// Which dead letters to replay. Filters combine with AND, the values of one filter with OR;
/// no filter selects every dead letter not replayed before.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayJobRequest {
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub reasons: Vec<String>,
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub upstreams: Vec<String>,
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub message_ids: Vec<String>,
    /// Dead-lettered at or after (RFC 3339).
    #[schema(format = DateTime)]
    pub from: Option<String>,
    /// Dead-lettered before (RFC 3339); a `to` not after `from` selects nothing.
    #[schema(format = DateTime)]
    pub to: Option<String>,
    /// Stop after this many replayed records.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub limit: Option<u64>,
    /// Count what would be replayed, write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A whole number, written as JSON allows: `548` or `548.0` (JSON Schema counts both as
/// integers). A fraction, a negative or a number beyond `u64` is refused.
fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(whole) = number.as_u64() {
        return Ok(Some(whole));
    }
    number
        .as_f64()
        .filter(|value| value.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(value))
        .map(|value| Some(value as u64))
        .ok_or_else(|| serde::de::Error::custom(format!("{number} is not a whole number")))
}

/// The trace id of the request being served (empty without one: the action then gets its own).
fn request_trace_id() -> String {
    relais_telemetry::current_trace_id()
        .map(|id| id.to_string())
        .unwrap_or_default()
}

/// Values per filter, at most.
const MAX_FILTER_VALUES: usize = 1000;
/// Largest `limit` (the schema says so too).
const MAX_LIMIT: u64 = 1_000_000_000;

/// The replay a request asks for, checked.
fn replay_request(request: ReplayJobRequest) -> Result<ReplayRequest, Problem> {
    for (name, values) in [
        ("reasons", &request.reasons),
        ("upstreams", &request.upstreams),
        ("message_ids", &request.message_ids),
    ] {
        if values.len() > MAX_FILTER_VALUES {
            return Err(Problem::bad_request(format!(
                "{name}: at most {MAX_FILTER_VALUES} values"
            )));
        }
    }
    let from = parse_time("from", request.from.as_deref())?;
    let to = parse_time("to", request.to.as_deref())?;
    if request
        .limit
        .is_some_and(|limit| !(1..=MAX_LIMIT).contains(&limit))
    {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    Ok(ReplayRequest {
        selection: Selection {
            reasons: request.reasons,
            upstreams: request.upstreams,
            message_ids: request.message_ids,
            from,
            to,
        },
        limit: request.limit,
        dry_run: request.dry_run,
        ..ReplayRequest::default()
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/replays",
    tag = "replays",
    security(("bearer" = [])),
    request_body = ReplayJobRequest,
    responses(
        (status = 202, description = "Started; follow it at the Location", body = ReplayJob),
        (status = 400, description = "Invalid selection", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A replay is running", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn start_replay(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<ReplayJobRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(body) = body.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let request = replay_request(body)?;
    let trace_id = request_trace_id();
    let job = state
        .replays
        .start(request, &format!("token:{}", principal.name), trace_id)
        .map_err(|busy| Problem::new(StatusCode::CONFLICT, busy.to_string()).with_type("busy"))?;
    let location = format!("/api/v1/admin/replays/{}", job.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(job),
    )
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayJobsResponse {
    /// Newest first; the latest 50.
    pub jobs: Vec<ReplayJob>,
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/replays",
    tag = "replays",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The replay jobs this gateway ran, newest first", body = ReplayJobsResponse),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replays(State(state): State<AppState>) -> Json<ReplayJobsResponse> {
    Json(ReplayJobsResponse {
        jobs: state.replays.list(),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/replays/{job_id}",
    tag = "replays",
    security(("bearer" = [])),
    params(("job_id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, with its counts so far", body = ReplayJob),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job here", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    job_id: Result<Path<String>, PathRejection>,
) -> Result<Json<ReplayJob>, Problem> {
    let Path(job_id) = job_id.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    state
        .replays
        .get(&job_id)
        .map(Json)
        .ok_or_else(|| Problem::not_found("no replay job with this id on this gateway"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_is_a_whole_number_however_it_is_written() {
        let limit = |json: &str| {
            serde_json::from_str::<ReplayJobRequest>(json).map(|request| request.limit)
        };
        assert_eq!(limit(r#"{"limit": 548}"#).unwrap(), Some(548));
        assert_eq!(limit(r#"{"limit": 548.0}"#).unwrap(), Some(548));
        assert_eq!(limit(r#"{"limit": null}"#).unwrap(), None);
        assert_eq!(limit("{}").unwrap(), None);
        assert!(limit(r#"{"limit": 1.5}"#).is_err());
        assert!(limit(r#"{"limit": -3}"#).is_err());
        assert!(limit(r#"{"limit": "7"}"#).is_err());
    }

    #[test]
    fn a_replay_request_is_checked() {
        let ok = replay_request(ReplayJobRequest {
            reasons: vec!["http_410".into()],
            from: Some("2026-12-01T00:00:00Z".into()),
            to: Some("2026-12-02T00:00:00Z".into()),
            ..ReplayJobRequest::default()
        })
        .unwrap();
        assert_eq!(ok.selection.reasons, ["http_410"]);
        assert!(ok.selection.from.is_some() && ok.selection.to.is_some());
        let refused = |request: ReplayJobRequest| replay_request(request).unwrap_err().status;
        assert_eq!(
            refused(ReplayJobRequest {
                from: Some("yesterday".into()),
                ..ReplayJobRequest::default()
            }),
            400
        );
        assert_eq!(
            refused(ReplayJobRequest {
                limit: Some(0),
                ..ReplayJobRequest::default()
            }),
            400
        );
        assert_eq!(
            refused(ReplayJobRequest {
                message_ids: vec![String::new(); MAX_FILTER_VALUES + 1],
                ..ReplayJobRequest::default()
            }),
            400
        );
    }
}
