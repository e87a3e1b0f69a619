//! Streams this replica's `WorkerStatus` to the realtime-gateway over gRPC.
//!
//! The stream is best effort by design: snapshots go through a small bounded channel and are
//! dropped when it is full, connection attempts are bounded and back off, and nothing here
//! ever waits on the pipeline's behalf. A gateway that is away costs the pipeline nothing;
//! when it comes back, the next snapshot (each one is complete) brings it up to date.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use relais_proto::v1::worker_report_client::WorkerReportClient;
use relais_proto::v1::{PartitionStatus, UpstreamCircuit, WorkerStatus};
use relais_resilience::prost_timestamp;
use relais_telemetry::shutdown::CancellationToken;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::WorkerMetrics;
use crate::process::Upstream;
use crate::records::Tracker;

/// Latest lag per partition, written by the lag reporter and read for each snapshot.
pub type LagSnapshot = Arc<Mutex<Vec<(i32, i64, i64)>>>;

/// What a snapshot is built from.
#[derive(Debug)]
pub struct StatusSource {
    pub worker_id: String,
    pub started_at: SystemTime,
    pub tracker: Arc<Tracker>,
    pub metrics: WorkerMetrics,
    pub upstreams: Vec<Upstream>,
    /// (partition, committed offset, high watermark)
    pub lags: LagSnapshot,
    pub paused: crate::consumer::PausedPartitions,
}

impl StatusSource {
    pub fn snapshot(&self) -> WorkerStatus {
        let paused = self
            .paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let lags = self
            .lags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let partitions: Vec<PartitionStatus> = self
            .tracker
            .partitions()
            .into_iter()
            .filter(|source| source.topic == crate::tracker::INGRESS)
            .map(|source| {
                let partition = source.partition;
                let (committed, high) = lags
                    .iter()
                    .find(|(p, _, _)| *p == partition)
                    .map_or((0, 0), |(_, committed, high)| (*committed, *high));
                PartitionStatus {
                    partition,
                    committed_offset: committed,
                    high_watermark: high,
                    lag: (high - committed).max(0),
                    paused: paused.contains(&source),
                }
            })
            .collect();
        let now_instant = tokio::time::Instant::now();
        let now = SystemTime::now();
        let circuits = self
            .upstreams
            .iter()
            .map(|upstream| {
                let name = upstream.client.name();
                let breaker = upstream.client.breaker();
                let age = now_instant.saturating_duration_since(breaker.since());
                UpstreamCircuit {
                    upstream: upstream.client.name().to_owned(),
                    state: breaker.state().to_proto() as i32,
                    since: Some(prost_timestamp(now.checked_sub(age).unwrap_or(now))),
                    held: upstream
                        .hold
                        .reason()
                        .map(|reason| reason.label().to_owned())
                        .unwrap_or_default(),
                    queued: gauge_u32(&self.metrics.upstream_queued(name)),
                    in_flight: gauge_u32(&self.metrics.upstream_in_flight(name)),
                    concurrency_limit: gauge_u32(&self.metrics.upstream_concurrency_limit(name)),
                }
            })
            .collect();
        WorkerStatus {
            worker_id: self.worker_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: Some(prost_timestamp(self.started_at)),
            reported_at: Some(prost_timestamp(now)),
            total_lag: partitions.iter().map(|p| p.lag).sum(),
            partitions,
            in_flight: u32::try_from(self.tracker.in_flight()).unwrap_or(u32::MAX),
            queue_depth: u32::try_from(self.metrics.queue_depth.get()).unwrap_or(0),
            queue_capacity: u32::try_from(self.metrics.queue_capacity.get()).unwrap_or(0),
            circuits,
        }
    }
}

fn gauge_u32(gauge: &prometheus_client::metrics::gauge::Gauge) -> u32 {
    u32::try_from(gauge.get()).unwrap_or(0)
}

/// Keeps a `Report` stream open to `gateway`, sending a snapshot every `interval`, until
/// shutdown. Reconnects with capped backoff.
pub async fn report(
    source: StatusSource,
    gateway: GatewayAddress,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    // The first failure of a row is a warning (a certificate refused is as silent as a
    // gateway that is away); the retries after it are debug.
    let mut failing = false;
    while !shutdown.is_cancelled() {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            connected = connect(&gateway) => connected,
        };
        let mut client = match connected {
            Ok(client) => client,
            Err(error) => {
                if failing {
                    tracing::debug!(%gateway, error = ?error, "gateway unreachable; status not reported");
                } else {
                    tracing::warn!(%gateway, error = ?error, "gateway unreachable; status not reported until it answers");
                    failing = true;
                }
                sleep_or_stop(backoff, &shutdown).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        failing = false;
        let (sender, receiver) = mpsc::channel::<WorkerStatus>(4);
        let mut call =
            tokio::spawn(async move { client.report(ReceiverStream::new(receiver)).await });
        tracing::info!(%gateway, "reporting status to the gateway");
        let connected_at = Instant::now();
        let mut ticker = tokio::time::interval(interval);
        let ended = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                result = &mut call => break Some(result),
                _ = ticker.tick() => {
                    // Full channel: the gateway is slow; skip this snapshot, the next one is
                    // complete anyway.
                    let _ = sender.try_send(source.snapshot());
                }
            }
        };
        drop(sender);
        match ended {
            None => {
                // Closing the stream lets the gateway see a clean end.
                let _ = tokio::time::timeout(Duration::from_secs(2), call).await;
                return;
            }
            Some(Ok(Err(status)))
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::warn!(%gateway, message = status.message(), "the gateway refused this worker's status reports (status.client: certificate or token)");
                sleep_or_stop(Duration::from_secs(10), &shutdown).await;
            }
            Some(result) => {
                tracing::info!(%gateway, ?result, "status stream ended; reconnecting");
                if connected_at.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(500);
                }
                sleep_or_stop(backoff, &shutdown).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The gateway's `WorkerReport` endpoint (TLS settings included) and the token to send.
#[derive(Debug, Clone)]
pub struct GatewayAddress {
    pub url: String,
    pub endpoint: tonic::transport::Endpoint,
    pub token: relais_grpc::BearerToken,
}

impl std::fmt::Display for GatewayAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

type ReportClient = WorkerReportClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        relais_grpc::BearerToken,
    >,
>;

async fn connect(gateway: &GatewayAddress) -> Result<ReportClient, tonic::transport::Error> {
    let endpoint = gateway
        .endpoint
        .clone()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3600))
        .tcp_nodelay(true);
    Ok(WorkerReportClient::with_interceptor(
        endpoint.connect().await?,
        gateway.token.clone(),
    ))
}

async fn sleep_or_stop(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(duration) => {}
    }
}
