//! What every handler of the public port can reach.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use relais_telemetry::admin::Readiness;
use relais_telemetry::shutdown::CancellationToken;

use crate::audit::AuditClient;
use crate::auth::{RateLimiter, Tokens};
use crate::config::GatewayConfig;
use crate::connections::ConnectionSlots;
use crate::history::History;
use crate::metrics::GatewayMetrics;
use crate::replays::ReplayJobs;
use crate::stats::Stats;
use crate::upstreams::Upstreams;
use crate::workers::WorkerRegistry;

/// What every handler can reach; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub history: Arc<History>,
    pub stats: Arc<Stats>,
    pub workers: Arc<WorkerRegistry>,
    pub audit: AuditClient,
    pub upstreams: Arc<Upstreams>,
    pub replays: Arc<ReplayJobs>,
    pub tokens: Arc<Tokens>,
    pub limiter: RateLimiter,
    pub metrics: GatewayMetrics,
    pub config: Arc<GatewayConfig>,
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
    /// WebSocket connection slots (the gateway's cap and each token's).
    pub connections: Arc<ConnectionSlots>,
    pub next_connection: Arc<AtomicU64>,
    /// The OpenAPI document, rendered once.
    pub openapi: Arc<str>,
}
