//! The `/api/v1` handlers. Each one's `#[utoipa::path]` is its entry in the OpenAPI document,
//! next to the code it describes so the two cannot drift apart.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use crate::event::{CircuitState, EventView, Outcome, rfc3339};
use crate::history::{EventFilter, TimeRange};
use crate::problem::Problem;
use crate::stats::Window;
use crate::workers::WorkerView;

/// Sliding-window aggregates.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsResponse {
    pub generated_at: String,
    /// Events held in the recent-event buffer.
    pub history_events: usize,
    /// The 1, 5 and 15 minute windows.
    pub windows: Vec<Window>,
}

#[utoipa::path(
    get,
    path = "/api/v1/stats",
    tag = "stats",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Aggregates over the 1, 5 and 15 minute windows", body = StatsResponse),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stats(State(state): State<AppState>) -> Json<StatsResponse> {
    let now = SystemTime::now();
    Json(StatsResponse {
        generated_at: rfc3339(now),
        history_events: state.history.len(),
        windows: state.stats.windows(now),
    })
}

/// Filters and paging of `/api/v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events routed to this upstream.
    pub upstream: Option<String>,
    pub outcome: Option<Outcome>,
    /// Only events of this type (such as `order.created`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    pub trace_id: Option<String>,
    /// Only the events of this message (its producer's `id`; a rejected message's is
    /// `topic-partition-offset`).
    pub message_id: Option<String>,
    /// Decided at or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Decided before this time (RFC 3339).
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,19}$")]
    pub cursor: Option<String>,
    /// Page size, 1 to the configured maximum (1000 by default); 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    pub events: Vec<EventView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// An optional RFC 3339 query or body field.
pub(super) fn parse_time(name: &str, value: Option<&str>) -> Result<Option<SystemTime>, Problem> {
    value
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(SystemTime::from)
                .map_err(|_| {
                    Problem::bad_request(format!(
                        "{name} must be an RFC 3339 time such as 2026-11-27T08:00:00Z"
                    ))
                })
        })
        .transpose()
}

#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    security(("bearer" = [])),
    params(EventsQuery),
    responses(
        (status = 200, description = "Recent events, newest first", body = EventsPage),
        (status = 400, description = "Invalid filter or paging", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<EventsPage>, Problem> {
    let Query(query) = query.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let max_page = state.config.http.max_page;
    let limit = query
        .limit
        .map_or(100.min(max_page), |limit| limit as usize);
    if limit == 0 || limit > max_page {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {max_page}"
        )));
    }
    let cursor = query
        .cursor
        .as_deref()
        .map(|cursor| {
            cursor.parse::<u64>().map_err(|_| {
                Problem::bad_request("cursor must be a next_cursor from a previous page")
            })
        })
        .transpose()?;
    let range = TimeRange {
        from: parse_time("from", query.from.as_deref())?,
        to: parse_time("to", query.to.as_deref())?,
    };
    let filter = EventFilter::new(
        query.upstream,
        query.outcome,
        query.event_type,
        query.trace_id,
        query.message_id,
    );
    let page = state.history.page(&filter, range, cursor, limit);
    Ok(Json(EventsPage {
        events: page
            .events
            .iter()
            .map(|entry| entry.event.view.clone())
            .collect(),
        next_cursor: page.next_cursor.map(|cursor| cursor.to_string()),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkersResponse {
    pub workers: Vec<WorkerView>,
}

#[utoipa::path(
    get,
    path = "/api/v1/workers",
    tag = "workers",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every worker replica that reported its status", body = WorkersResponse),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn workers(State(state): State<AppState>) -> Json<WorkersResponse> {
    Json(WorkersResponse {
        workers: state.workers.list(SystemTime::now()),
    })
}

#[utoipa::path(
    delete,
    path = "/api/v1/workers/{worker_id}",
    tag = "workers",
    security(("bearer" = [])),
    params(("worker_id" = String, Path, description = "The worker to forget")),
    responses(
        (status = 204, description = "Forgotten; it reappears if it reports again"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such worker", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn forget_worker(
    State(state): State<AppState>,
    worker_id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let Path(worker_id) =
        worker_id.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    if state.workers.forget(&worker_id) {
        tracing::info!(worker = %worker_id, "worker forgotten by an operator");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found("no worker with this id"))
    }
}

/// One upstream's circuit breaker, across the workers.
#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitView {
    pub upstream: String,
    /// The most severe state among connected workers (open > half-open > closed); from the
    /// latest event when no connected worker reports this upstream.
    pub state: CircuitState,
    pub workers: Vec<WorkerCircuitState>,
    /// Waiting work for this upstream over the connected workers: messages queued, and
    /// deliveries in flight (waits for an open circuit or a hold included).
    pub queued: u64,
    pub in_flight: u64,
    /// The circuit state on the latest event for this upstream, and its decision time.
    pub last_event_state: Option<CircuitState>,
    pub last_event_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerCircuitState {
    pub worker_id: String,
    pub state: CircuitState,
    pub since: Option<String>,
    /// Why this worker holds the upstream's deliveries: `unauthorized` (401/403) or
    /// `disabled` (410, or an operator); absent when not held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    pub queued: u32,
    pub in_flight: u32,
    /// This worker's in-flight limit for the upstream.
    pub concurrency_limit: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitsResponse {
    pub circuits: Vec<CircuitView>,
}

#[utoipa::path(
    get,
    path = "/api/v1/circuits",
    tag = "circuits",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Circuit state per upstream", body = CircuitsResponse),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn circuits(State(state): State<AppState>) -> Json<CircuitsResponse> {
    let mut by_upstream: BTreeMap<String, CircuitView> = BTreeMap::new();
    let view = |upstream: &str| CircuitView {
        upstream: upstream.to_owned(),
        state: CircuitState::Unknown,
        workers: Vec::new(),
        queued: 0,
        in_flight: 0,
        last_event_state: None,
        last_event_at: None,
    };
    for worker in state.workers.list(SystemTime::now()) {
        if !worker.connected || worker.stale {
            continue;
        }
        for circuit in worker.circuits {
            let entry = by_upstream
                .entry(circuit.upstream.clone())
                .or_insert_with(|| view(&circuit.upstream));
            entry.state = entry.state.max(circuit.state);
            entry.queued += u64::from(circuit.queued);
            entry.in_flight += u64::from(circuit.in_flight);
            entry.workers.push(WorkerCircuitState {
                worker_id: worker.worker_id.clone(),
                state: circuit.state,
                since: circuit.since,
                held: circuit.held,
                queued: circuit.queued,
                in_flight: circuit.in_flight,
                concurrency_limit: circuit.concurrency_limit,
            });
        }
    }
    for (upstream, seen) in state.stats.circuits() {
        let entry = by_upstream
            .entry(upstream.clone())
            .or_insert_with(|| view(&upstream));
        if entry.workers.is_empty() {
            entry.state = seen.state;
        }
        entry.last_event_state = Some(seen.state);
        entry.last_event_at = Some(rfc3339(seen.at));
    }
    Json(CircuitsResponse {
        circuits: by_upstream.into_values().collect(),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "This document", content_type = "application/json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        state.openapi.to_string(),
    )
        .into_response()
}
