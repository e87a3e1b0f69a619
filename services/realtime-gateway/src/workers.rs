//! The worker replicas, as their `WorkerReport` streams describe them.
//!
//! Each worker keeps one client stream open and sends a complete `WorkerStatus` every few
//! seconds. The registry keeps the latest one per worker with the time it arrived; a worker
//! whose stream ended stays listed (disconnected, then stale) until it is forgotten, so an
//! operator sees that a replica went away instead of it silently vanishing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use relais_proto::v1::worker_report_server::WorkerReport;
use relais_proto::v1::{ReportAck, WorkerStatus};
use relais_telemetry::shutdown::CancellationToken;
use serde::Serialize;
use utoipa::ToSchema;

use crate::event::{CircuitState, rfc3339, system_time};
use crate::metrics::GatewayMetrics;

const MAX_WORKER_ID_LEN: usize = 128;

#[derive(Debug, Clone)]
struct WorkerEntry {
    status: WorkerStatus,
    last_seen: SystemTime,
    open_streams: u32,
}

/// One worker replica.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkerView {
    pub worker_id: String,
    pub version: String,
    pub started_at: Option<String>,
    /// When the gateway last received this worker's status (RFC 3339).
    pub last_seen: String,
    pub last_seen_seconds_ago: f64,
    /// A status stream from this worker is open now.
    pub connected: bool,
    /// Not heard from for longer than the configured staleness bound.
    pub stale: bool,
    pub in_flight: u32,
    pub queue_depth: u32,
    pub queue_capacity: u32,
    pub total_lag: i64,
    pub partitions: Vec<PartitionView>,
    pub circuits: Vec<WorkerCircuit>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionView {
    pub partition: i32,
    pub committed_offset: i64,
    pub high_watermark: i64,
    pub lag: i64,
    pub paused: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkerCircuit {
    pub upstream: String,
    pub state: CircuitState,
    pub since: Option<String>,
    /// Why the worker holds the upstream's deliveries: `unauthorized` (it answered 401/403) or
    /// `disabled` (it answered 410, or an operator disabled it); absent when not held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// Messages waiting for this upstream in this worker, deliveries in flight to it, and the
    /// in-flight limit in force.
    pub queued: u32,
    pub in_flight: u32,
    pub concurrency_limit: u32,
}

/// What one status may make the gateway keep. A worker owns at most as many partitions as the
/// ingress topic has and reports one circuit per upstream; beyond these bounds a status is
/// cut, so that no caller can make the gateway hold more than about
/// `workers.max_workers` × 1 MiB whatever it sends.
const MAX_PARTITIONS_PER_STATUS: usize = 4096;
const MAX_CIRCUITS_PER_STATUS: usize = 1024;
const MAX_TEXT_BYTES: usize = 256;

/// `status` within the bounds above (lists cut, long texts cut at a character boundary).
fn bounded(mut status: WorkerStatus) -> WorkerStatus {
    fn cut(text: &mut String) {
        if text.len() > MAX_TEXT_BYTES {
            let mut end = MAX_TEXT_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
    }
    status.partitions.truncate(MAX_PARTITIONS_PER_STATUS);
    status.circuits.truncate(MAX_CIRCUITS_PER_STATUS);
    cut(&mut status.version);
    for circuit in &mut status.circuits {
        cut(&mut circuit.upstream);
        cut(&mut circuit.held);
    }
    status
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Accepted,
    /// The registry is full of live workers.
    Full,
}

/// The latest status of every worker.
#[derive(Debug)]
pub struct WorkerRegistry {
    workers: Mutex<HashMap<String, WorkerEntry>>,
    stale_after: Duration,
    forget_after: Duration,
    max_workers: usize,
}

impl WorkerRegistry {
    pub fn new(stale_after: Duration, forget_after: Duration, max_workers: usize) -> Self {
        Self {
            workers: Mutex::default(),
            stale_after,
            forget_after,
            max_workers,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WorkerEntry>> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_stale(&self, entry: &WorkerEntry, now: SystemTime) -> bool {
        now.duration_since(entry.last_seen).unwrap_or_default() > self.stale_after
    }

    /// Records a status; `first_of_stream` counts the stream as open.
    pub fn update(
        &self,
        status: WorkerStatus,
        first_of_stream: bool,
        now: SystemTime,
    ) -> Admission {
        let mut workers = self.lock();
        workers.retain(|_, entry| {
            entry.open_streams > 0
                || now.duration_since(entry.last_seen).unwrap_or_default() < self.forget_after
        });
        if !workers.contains_key(&status.worker_id) && workers.len() >= self.max_workers {
            // Make room by forgetting the longest-silent worker that is gone.
            let oldest_gone = workers
                .iter()
                .filter(|(_, entry)| entry.open_streams == 0)
                .min_by_key(|(_, entry)| entry.last_seen)
                .map(|(id, _)| id.clone());
            match oldest_gone {
                Some(id) => {
                    workers.remove(&id);
                }
                None => return Admission::Full,
            }
        }
        let entry = workers
            .entry(status.worker_id.clone())
            .or_insert_with(|| WorkerEntry {
                status: WorkerStatus::default(),
                last_seen: now,
                open_streams: 0,
            });
        entry.status = bounded(status);
        entry.last_seen = now;
        if first_of_stream {
            entry.open_streams += 1;
        }
        Admission::Accepted
    }

    /// A stream that sent statuses for `worker_id` ended.
    pub fn stream_ended(&self, worker_id: &str) {
        if let Some(entry) = self.lock().get_mut(worker_id) {
            entry.open_streams = entry.open_streams.saturating_sub(1);
        }
    }

    /// Forgets a worker (an operator's call, for a replica that is gone for good).
    pub fn forget(&self, worker_id: &str) -> bool {
        self.lock().remove(worker_id).is_some()
    }

    pub fn list(&self, now: SystemTime) -> Vec<WorkerView> {
        let workers = self.lock();
        let mut views: Vec<WorkerView> = workers
            .values()
            .map(|entry| {
                let status = &entry.status;
                WorkerView {
                    worker_id: status.worker_id.clone(),
                    version: status.version.clone(),
                    started_at: status
                        .started_at
                        .as_ref()
                        .and_then(system_time)
                        .map(rfc3339),
                    last_seen: rfc3339(entry.last_seen),
                    last_seen_seconds_ago: now
                        .duration_since(entry.last_seen)
                        .unwrap_or_default()
                        .as_secs_f64(),
                    connected: entry.open_streams > 0,
                    stale: self.is_stale(entry, now),
                    in_flight: status.in_flight,
                    queue_depth: status.queue_depth,
                    queue_capacity: status.queue_capacity,
                    total_lag: status.total_lag,
                    partitions: status
                        .partitions
                        .iter()
                        .map(|p| PartitionView {
                            partition: p.partition,
                            committed_offset: p.committed_offset,
                            high_watermark: p.high_watermark,
                            lag: p.lag,
                            paused: p.paused,
                        })
                        .collect(),
                    circuits: status
                        .circuits
                        .iter()
                        .map(|c| WorkerCircuit {
                            upstream: c.upstream.clone(),
                            state: CircuitState::from_proto(c.state),
                            since: c.since.as_ref().and_then(system_time).map(rfc3339),
                            held: Some(c.held.clone()).filter(|held| !held.is_empty()),
                            queued: c.queued,
                            in_flight: c.in_flight,
                            concurrency_limit: c.concurrency_limit,
                        })
                        .collect(),
                }
            })
            .collect();
        views.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        views
    }
}

/// The `WorkerReport` gRPC service.
#[derive(Debug, Clone)]
pub struct ReportService {
    pub registry: Arc<WorkerRegistry>,
    pub metrics: GatewayMetrics,
    pub shutdown: CancellationToken,
}

/// Keeps the open-stream gauge true however the call ends.
struct StreamGuard<'a> {
    metrics: &'a GatewayMetrics,
    registry: &'a WorkerRegistry,
    worker_id: Option<String>,
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.metrics.grpc_streams.dec();
        if let Some(worker_id) = &self.worker_id {
            self.registry.stream_ended(worker_id);
        }
    }
}

#[tonic::async_trait]
impl WorkerReport for ReportService {
    async fn report(
        &self,
        request: tonic::Request<tonic::Streaming<WorkerStatus>>,
    ) -> Result<tonic::Response<ReportAck>, tonic::Status> {
        let mut stream = request.into_inner();
        self.metrics.grpc_streams.inc();
        let mut guard = StreamGuard {
            metrics: &self.metrics,
            registry: &self.registry,
            worker_id: None,
        };
        let mut received = 0u64;
        loop {
            // A silent peer is cut by the server's HTTP/2 keepalive, so this wait is bounded.
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                next = stream.message() => next,
            };
            let status = match next {
                Ok(Some(status)) => status,
                Ok(None) => break,
                Err(error) => {
                    // A message above grpc.max_request_bytes, or a stream cut by the peer:
                    // either way the caller is told.
                    tracing::debug!(%error, worker = ?guard.worker_id, "status stream broke");
                    return Err(error);
                }
            };
            if status.worker_id.is_empty() || status.worker_id.len() > MAX_WORKER_ID_LEN {
                return Err(tonic::Status::invalid_argument(
                    "worker_id must be 1 to 128 characters",
                ));
            }
            if guard
                .worker_id
                .as_ref()
                .is_some_and(|id| *id != status.worker_id)
            {
                return Err(tonic::Status::invalid_argument(
                    "one stream reports one worker",
                ));
            }
            let first = guard.worker_id.is_none();
            let worker_id = status.worker_id.clone();
            match self.registry.update(status, first, SystemTime::now()) {
                Admission::Accepted => {}
                Admission::Full => {
                    return Err(tonic::Status::resource_exhausted(
                        "the gateway tracks as many workers as it is configured for",
                    ));
                }
            }
            if first {
                tracing::info!(worker = %worker_id, "worker status stream opened");
                guard.worker_id = Some(worker_id);
            }
            received += 1;
            self.metrics.worker_reports.inc();
        }
        tracing::info!(worker = ?guard.worker_id, received, "worker status stream closed");
        Ok(tonic::Response::new(ReportAck { received }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str) -> WorkerStatus {
        WorkerStatus {
            worker_id: id.into(),
            ..WorkerStatus::default()
        }
    }

    #[test]
    fn a_status_is_cut_to_what_one_worker_may_make_the_gateway_keep() {
        let huge = WorkerStatus {
            worker_id: "w".into(),
            version: "é".repeat(400),
            partitions: vec![relais_proto::v1::PartitionStatus::default(); 10_000],
            circuits: vec![
                relais_proto::v1::UpstreamCircuit {
                    upstream: "u".repeat(1000),
                    ..Default::default()
                };
                2_000
            ],
            ..WorkerStatus::default()
        };
        let kept = bounded(huge);
        assert_eq!(kept.partitions.len(), MAX_PARTITIONS_PER_STATUS);
        assert_eq!(kept.circuits.len(), MAX_CIRCUITS_PER_STATUS);
        assert!(kept.version.len() <= MAX_TEXT_BYTES && kept.version.starts_with('é'));
        assert_eq!(kept.circuits[0].upstream.len(), MAX_TEXT_BYTES);
    }

    #[test]
    fn workers_are_listed_until_forgotten_and_the_registry_stays_bounded() {
        let registry = WorkerRegistry::new(Duration::from_secs(10), Duration::from_secs(60), 2);
        let now = SystemTime::now();
        assert_eq!(registry.update(status("a"), true, now), Admission::Accepted);
        assert_eq!(registry.update(status("b"), true, now), Admission::Accepted);
        // Both connected: no room for a third.
        assert_eq!(registry.update(status("c"), true, now), Admission::Full);
        registry.stream_ended("a");
        let later = now + Duration::from_secs(20);
        let listed = registry.list(later);
        assert_eq!(listed.len(), 2);
        assert!(!listed[0].connected && listed[0].stale);
        // "a" is gone, so it makes room for "c".
        assert_eq!(
            registry.update(status("c"), true, later),
            Admission::Accepted
        );
        let ids: Vec<_> = registry
            .list(later)
            .into_iter()
            .map(|w| w.worker_id)
            .collect();
        assert_eq!(ids, ["b", "c"]);
        assert!(registry.forget("b"));
        assert!(!registry.forget("b"));
    }

    /// `WorkerReport` served and called over an in-memory connection: the gRPC surface
    /// without a socket or a broker.
    #[tokio::test]
    async fn a_report_stream_over_grpc_registers_the_worker_and_is_acknowledged() {
        use relais_proto::v1::worker_report_client::WorkerReportClient;
        use relais_proto::v1::worker_report_server::WorkerReportServer;

        let registry = Arc::new(WorkerRegistry::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
            10,
        ));
        let service = ReportService {
            registry: Arc::clone(&registry),
            metrics: GatewayMetrics::register(&mut prometheus_client::registry::Registry::default()),
            shutdown: CancellationToken::new(),
        };
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(WorkerReportServer::new(service))
                .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(server_io))),
        );
        let mut client_io = Some(client_io);
        let channel = tonic::transport::Endpoint::from_static("http://in-memory")
            .connect_with_connector(tower::service_fn(move |_| {
                let io = client_io.take();
                async move {
                    io.map(hyper_util::rt::TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("one connection only"))
                }
            }))
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let reports = futures::stream::iter([status("w-1"), status("w-1"), status("w-1")]);
        let ack = WorkerReportClient::new(channel)
            .report(reports)
            .await
            .unwrap_or_else(|status| panic!("{status}"))
            .into_inner();
        assert_eq!(ack.received, 3);
        let listed = registry.list(SystemTime::now());
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].worker_id, "w-1");
        server.abort();
    }
}
