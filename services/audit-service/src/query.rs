//! `AuditQuery` over gRPC: the trail of a trace id or a message id, and stats.
//!
//! A trail lookup asks the in-memory [`Index`] which data objects of the window may hold the
//! id (Bloom filters, one per object), reads only those, and keeps the matching lines. The
//! index is loaded from the `.idx` objects of the window at start-up, grows as this instance
//! stores objects, and is refreshed from RGW every 30 s so objects written by other replicas
//! are found too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use relais_proto::v1::audit_query_server::AuditQuery;
use relais_proto::v1::{
    AuditRecord, OperatorAction, StatsRequest, StatsResponse, TrailRequest, TrailResponse,
    trail_request,
};
use relais_telemetry::shutdown::CancellationToken;
use tonic::{Request, Response, Status};

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
}

/// Loads the index objects of the hours in [from, to].
pub async fn load_index(
    store: &Store,
    index: &Index,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> usize {
    let mut loaded = 0;
    let mut hour = crate::object::hour_of(from);
    while hour <= to {
        match store.list(&store.hour_prefix(hour)).await {
            Ok(keys) => {
                for key in keys.iter().filter(|key| key.ends_with(".idx")) {
                    match store.get(key).await {
                        Ok(bytes) => match IndexEntry::from_bytes(key, &bytes) {
                            Some(entry) => {
                                index.insert(entry);
                                loaded += 1;
                            }
                            None => tracing::warn!(key = %key, "malformed index object ignored"),
                        },
                        Err(error) => {
                            tracing::warn!(key = %key, %error, "cannot read index object")
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list index objects"),
        }
        hour += chrono::Duration::hours(1);
    }
    loaded
}

/// Loads the window at start-up, then refreshes the recent hours until shutdown.
pub async fn maintain_index(
    store: Arc<Store>,
    index: Arc<Index>,
    ready: relais_telemetry::admin::ReadinessCheck,
    shutdown: CancellationToken,
) {
    let now = Utc::now();
    let loaded = load_index(&store, &index, now - WINDOW, now).await;
    tracing::info!(loaded, "lookup index loaded");
    ready.set_ready();
    let mut ticker = tokio::time::interval(Duration::from_secs(30));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Utc::now();
        load_index(&store, &index, now - chrono::Duration::hours(1), now).await;
        index.forget_before(now - WINDOW);
    }
}

fn to_time(value: Option<&relais_proto::Timestamp>) -> Option<DateTime<Utc>> {
    encode::timestamp(value)
}

#[tonic::async_trait]
impl AuditQuery for QueryService {
    async fn get_trail(
        &self,
        request: Request<TrailRequest>,
    ) -> Result<Response<TrailResponse>, Status> {
        let request = request.into_inner();
        let (field, id) = match &request.key {
            Some(trail_request::Key::TraceId(id)) if !id.is_empty() => ("trace_id", id.clone()),
            Some(trail_request::Key::MessageId(id)) if !id.is_empty() => ("message_id", id.clone()),
            _ => return Err(Status::invalid_argument("set trace_id or message_id")),
        };
        let to = to_time(request.to.as_ref()).unwrap_or_else(Utc::now);
        let from = to_time(request.from.as_ref()).unwrap_or(to - WINDOW);
        if from > to {
            return Err(Status::invalid_argument("from is after to"));
        }
        let limit = match request.limit as usize {
            0 => DEFAULT_LIMIT,
            limit => limit.min(MAX_LIMIT),
        };
        let candidates = self.index.candidates(&id, from, to);
        let objects_scanned = candidates.len() as u32;
        let mut records: Vec<AuditRecord> = Vec::new();
        let mut actions: Vec<OperatorAction> = Vec::new();
        let mut seen: BTreeSet<(String, i32, i64)> = BTreeSet::new();
        for chunk in candidates.chunks(READ_CONCURRENCY) {
            let reads =
                futures::future::join_all(chunk.iter().map(|key| self.store.get(key))).await;
            for (key, body) in chunk.iter().zip(reads) {
                let body = body.map_err(|error| {
                    tracing::error!(key = %key, %error, "cannot read data object for a trail");
                    Status::unavailable("the audit store is not reachable")
                })?;
                let needle = id.as_bytes();
                for line in body
                    .split(|byte| *byte == b'\n')
                    .filter(|line| !line.is_empty())
                {
                    // Most lines of a candidate object are other records: skip them before
                    // paying for a JSON parse.
                    if !line.windows(needle.len()).any(|window| window == needle) {
                        continue;
                    }
                    let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
                        continue;
                    };
                    // A record appears once even if an object was rewritten under another key.
                    let audit = (
                        value["audit"]["topic"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        value["audit"]["partition"].as_i64().unwrap_or(0) as i32,
                        value["audit"]["offset"].as_i64().unwrap_or(0),
                    );
                    if crate::actions::is_action(&value) {
                        // An action's subject is looked up as a message id.
                        let key = if field == "message_id" {
                            "subject"
                        } else {
                            field
                        };
                        if value[key].as_str() != Some(id.as_str()) {
                            continue;
                        }
                        let action = crate::actions::action_from_json(&value);
                        let time = to_time(action.at.as_ref());
                        if time.is_none_or(|time| time < from || time > to) || !seen.insert(audit) {
                            continue;
                        }
                        actions.push(action);
                        continue;
                    }
                    if value[field].as_str() != Some(id.as_str()) {
                        continue;
                    }
                    let record = encode::record_from_json(&value);
                    let time = to_time(record.occurred_at.as_ref());
                    if time.is_some_and(|time| time < from || time > to) {
                        continue;
                    }
                    if seen.insert(audit) {
                        records.push(record);
                    }
                }
            }
        }
        records.sort_by_key(|record| record.occurred_at.map(|t| (t.seconds, t.nanos)));
        let truncated = records.len() > limit;
        records.truncate(limit);
        actions.sort_by_key(|action| action.at.map(|t| (t.seconds, t.nanos)));
        actions.truncate(limit);
        Ok(Response::new(TrailResponse {
            records,
            truncated,
            objects_scanned,
            actions,
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
    let mut client = AuditQueryClient::connect(url.clone())
        .await
        .map_err(|error| anyhow::anyhow!("cannot reach audit-service at {url}: {error}"))?;
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
