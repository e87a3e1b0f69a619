//! `AuditQuery` over gRPC: the trail of a trace id or a message id, and stats.
//!
//! A trail lookup asks the in-memory [`Index`] which data objects of the window may hold the
//! id (Bloom filters, one per object), reads only those, and keeps the matching lines
//! ([`trail`]). Hours older than the index are looked up in their `.idx` objects in RGW. The
//! index is loaded at start-up, grows as this instance stores objects, and is refreshed from
//! RGW so objects written by other replicas are found too ([`refresh`]).
//!
//! Lookups run in the process that ingests, so their cost is bounded: at most
//! `query.max_concurrent_lookups` at once (others wait for a slot until their deadline, then
//! are refused), each within `query.deadline` (or the caller's shorter gRPC deadline), after
//! which it answers with what it has and says the answer is partial.

pub mod refresh;
pub mod trail;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use relais_proto::v1::audit_query_server::AuditQuery;
use relais_proto::v1::{StatsRequest, StatsResponse, TrailRequest, TrailResponse, trail_request};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

pub use self::refresh::maintain_index;
use self::trail::{Collected, Field, TrailQuery};
use crate::config::QueryConfig;
use crate::encode;
use crate::index::{Index, IndexEntry};
use crate::metrics::AuditMetrics;
use crate::store::Store;

/// How far back the index reaches, and the default trail window.
pub const WINDOW: chrono::Duration = chrono::Duration::hours(24);
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;
/// Data objects read at once for one lookup.
const READ_CONCURRENCY: usize = 8;

#[derive(Debug)]
pub struct QueryService {
    pub store: Arc<Store>,
    pub index: Arc<Index>,
    pub metrics: AuditMetrics,
    pub config: QueryConfig,
    /// One permit per lookup that may run at once.
    pub lookups: Arc<Semaphore>,
}

impl QueryService {
    pub fn new(
        store: Arc<Store>,
        index: Arc<Index>,
        metrics: AuditMetrics,
        config: QueryConfig,
    ) -> Self {
        Self {
            lookups: Arc::new(Semaphore::new(config.max_concurrent_lookups)),
            store,
            index,
            metrics,
            config,
        }
    }

    /// The data objects of the window that may hold the id, with their hours: from the index,
    /// and for hours older than it, from their `.idx` objects in RGW (until the deadline).
    async fn candidates(
        &self,
        query: &TrailQuery,
        deadline: Instant,
    ) -> (Vec<(DateTime<Utc>, String)>, bool) {
        let mut candidates = self.index.candidates(&query.id, query.from, query.to);
        let indexed_from = crate::object::hour_of(Utc::now() - WINDOW);
        let mut hour = crate::object::hour_of(query.from);
        while hour < indexed_from && hour <= query.to {
            if Instant::now() >= deadline {
                return (candidates, true);
            }
            let listed =
                tokio::time::timeout_at(deadline, self.store.list(&self.store.hour_prefix(hour)))
                    .await;
            let Ok(Ok(keys)) = listed else {
                return (candidates, true);
            };
            for key in keys.iter().filter(|key| key.ends_with(".idx")) {
                let Ok(Ok(bytes)) = tokio::time::timeout_at(deadline, self.store.get(key)).await
                else {
                    return (candidates, true);
                };
                if let Some(entry) = IndexEntry::from_bytes(key, &bytes)
                    && entry.bloom.may_contain(&query.id)
                {
                    candidates.push((entry.hour, entry.data_key));
                }
            }
            hour += chrono::Duration::hours(1);
        }
        (candidates, false)
    }

    /// Reads the candidates hour by hour until the limit is reached, all are read, or the
    /// deadline passes. Returns the answer, the objects read and whether it is partial.
    async fn look_up(
        &self,
        query: &TrailQuery,
        deadline: Instant,
    ) -> Result<(trail::Answer, u32, bool), Status> {
        let (candidates, mut partial) = self.candidates(query, deadline).await;
        let hours = trail::by_hour(candidates);
        let mut collected = Collected::default();
        let mut objects_read = 0u32;
        let mut hours_left = hours.len();
        'hours: for keys in &hours {
            for chunk in keys.chunks(READ_CONCURRENCY) {
                let reads = futures::future::join_all(chunk.iter().map(|key| self.store.get(key)));
                let Ok(reads) = tokio::time::timeout_at(deadline, reads).await else {
                    partial = true;
                    break 'hours;
                };
                for (key, body) in chunk.iter().zip(reads) {
                    let body = body.map_err(|error| {
                        tracing::error!(key = %key, %error, "cannot read data object for a trail");
                        Status::unavailable("the audit store is not reachable")
                    })?;
                    objects_read += 1;
                    collected.add_object(query, &body);
                }
            }
            hours_left -= 1;
            if collected.has_enough(query.limit) {
                break;
            }
        }
        let stopped_early = hours_left > 0 && !partial;
        Ok((
            collected.answer(query.limit, stopped_early),
            objects_read,
            partial,
        ))
    }
}

fn to_time(value: Option<&relais_proto::Timestamp>) -> Option<DateTime<Utc>> {
    encode::timestamp(value)
}

/// A `grpc-timeout` header value: digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[tonic::async_trait]
impl AuditQuery for QueryService {
    async fn get_trail(
        &self,
        request: Request<TrailRequest>,
    ) -> Result<Response<TrailResponse>, Status> {
        // The caller's deadline (gRPC `grpc-timeout`), if shorter than the service's.
        let caller_deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        let request = request.into_inner();
        let (field, id) = match &request.key {
            Some(trail_request::Key::TraceId(id)) if !id.is_empty() => (Field::TraceId, id.clone()),
            Some(trail_request::Key::MessageId(id)) if !id.is_empty() => {
                (Field::MessageId, id.clone())
            }
            _ => return Err(Status::invalid_argument("set trace_id or message_id")),
        };
        let to = to_time(request.to.as_ref()).unwrap_or_else(Utc::now);
        let from = to_time(request.from.as_ref()).unwrap_or(to - WINDOW);
        if from > to {
            return Err(Status::invalid_argument("from is after to"));
        }
        let max_range = chrono::Duration::days(i64::from(self.config.max_range_days));
        if to - from > max_range {
            return Err(Status::invalid_argument(format!(
                "the window is longer than {} days (query.max_range_days)",
                self.config.max_range_days
            )));
        }
        let limit = match request.limit as usize {
            0 => DEFAULT_LIMIT,
            limit => limit.min(MAX_LIMIT),
        };
        let query = TrailQuery {
            field,
            id,
            from,
            to,
            limit,
        };
        // A tenth of the caller's deadline is left for the answer to reach it.
        let budget = caller_deadline.map_or(self.config.deadline, |caller| {
            (caller - caller / 10).min(self.config.deadline)
        });
        let deadline = Instant::now() + budget;
        let Ok(Ok(_permit)) =
            tokio::time::timeout_at(deadline, Arc::clone(&self.lookups).acquire_owned()).await
        else {
            self.metrics.trail_lookup("rejected");
            return Err(Status::resource_exhausted(
                "too many trail lookups at once; try again",
            ));
        };
        let (answer, objects_scanned, partial) = self.look_up(&query, deadline).await?;
        self.metrics
            .trail_lookup(if partial { "partial" } else { "complete" });
        Ok(Response::new(TrailResponse {
            records: answer.records,
            truncated: answer.truncated,
            objects_scanned,
            actions: answer.actions,
            partial,
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let age = self.metrics.oldest_unflushed_age.get();
        let oldest = (age > 0.0).then(|| {
            let at = std::time::SystemTime::now() - Duration::from_secs_f64(age);
            relais_resilience::prost_timestamp(at)
        });
        Ok(Response::new(StatsResponse {
            objects_written: self.metrics.objects_written.get(),
            records_written: self.metrics.records_written.get(),
            bytes_written: self.metrics.bytes_written.get(),
            records_buffered: u64::try_from(self.metrics.buffer_records.get()).unwrap_or(0),
            consumer_lag: self.metrics.consumer_lag.get(),
            oldest_unflushed: oldest,
        }))
    }
}

/// The `trail` command: one lookup through the gRPC API, printed as JSON lines, then a summary
/// line with the latency (`{"latency_ms": …, "records": …, "objects_scanned": …}`).
pub async fn print_trail(
    url: String,
    trace_id: Option<String>,
    message_id: Option<String>,
) -> anyhow::Result<()> {
    use std::io::Write as _;

    use relais_proto::v1::audit_query_client::AuditQueryClient;

    let key = match (trace_id, message_id) {
        (Some(trace_id), _) => trail_request::Key::TraceId(trace_id),
        (None, Some(message_id)) => trail_request::Key::MessageId(message_id),
        (None, None) => anyhow::bail!("give --trace-id or --message-id"),
    };
    // TLS and the token from the RELAIS_AUDIT_* variables, as the gateway reads them.
    let (endpoint, token) =
        relais_grpc::GrpcClientConfig::default().endpoint("trail", "RELAIS_AUDIT", &url)?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| anyhow::anyhow!("cannot reach audit-service at {url}: {error}"))?;
    let mut client = AuditQueryClient::with_interceptor(channel, token);
    let started = std::time::Instant::now();
    let trail = client
        .get_trail(TrailRequest {
            key: Some(key),
            ..Default::default()
        })
        .await?
        .into_inner();
    let latency = started.elapsed();
    let mut out = std::io::stdout().lock();
    for record in &trail.records {
        let position = encode::AuditPosition {
            topic: "",
            partition: 0,
            offset: 0,
        };
        out.write_all(&encode::RecordLine { record, position }.to_vec())?;
        out.write_all(b"\n")?;
    }
    for action in &trail.actions {
        let position = encode::AuditPosition {
            topic: "",
            partition: 0,
            offset: 0,
        };
        out.write_all(&crate::actions::ActionLine { action, position }.to_vec())?;
        out.write_all(b"\n")?;
    }
    writeln!(
        out,
        "{}",
        serde_json::json!({
            "latency_ms": latency.as_secs_f64() * 1000.0,
            "records": trail.records.len(),
            "actions": trail.actions.len(),
            "objects_scanned": trail.objects_scanned,
            "truncated": trail.truncated,
        })
    )?;
    Ok(())
}
