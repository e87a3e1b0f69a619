//! realtime-gateway: the live view of the pipeline.
//!
//! - [`intake`]: reads every partition of `relais.events` into
//! - [`history`] (recent events, trace index, the live feed with resume) and
//! - [`stats`] (1, 5 and 15 minute aggregates);
//! - [`workers`]: the `WorkerReport` gRPC service and the registry of worker replicas;
//! - [`audit`]: the `AuditQuery` client for trace lookups;
//! - [`upstreams`] and [`replays`]: what admins steer (upstream states, DLQ replay jobs);
//! - [`api`]: REST `/api/v1` with its OpenAPI document, behind [`auth`], errors as
//!   [`problem`] details, handlers sharing one [`state`];
//! - [`ws`] and [`protocol`]: the WebSocket feed, with [`connections`] capped;
//! - [`dashboard`]: the browser dashboard, embedded in the binary.

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod connections;
pub mod dashboard;
pub mod event;
pub mod history;
pub mod intake;
pub mod metrics;
pub mod problem;
pub mod protocol;
pub mod replays;
pub mod state;
pub mod stats;
pub mod upstreams;
pub mod workers;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use relais_telemetry::admin::{AdminServer, Readiness};
use relais_telemetry::shutdown::CancellationToken;
use relais_telemetry::tasks::{EssentialTasks, TaskDied};

use crate::auth::{RateLimiter, Tokens};
use crate::config::{Args, GatewayConfig};
use crate::history::History;
use crate::intake::{Intake, Sinks};
use crate::metrics::GatewayMetrics;
use crate::replays::ReplayJobs;
use crate::state::AppState;
use crate::stats::Stats;
use crate::upstreams::Upstreams;
use crate::workers::{ReportService, WorkerRegistry};

/// The bound addresses of a running gateway (tests start it on port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    pub bound: Bound,
    task: tokio::task::JoinHandle<Result<(), TaskDied>>,
}

impl Running {
    /// Waits until the gateway has stopped: after its shutdown token was cancelled, or after
    /// one of its tasks died (the error).
    pub async fn join(self) -> anyhow::Result<()> {
        Ok(self.task.await??)
    }
}

/// Binds every port and starts every component; returns once they listen.
pub async fn start(
    args: &Args,
    config: GatewayConfig,
    tokens: Tokens,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let mut registry = Registry::default();
    let metrics = GatewayMetrics::register(&mut registry);
    let readiness = Readiness::default();
    let kafka_ready = readiness.register("kafka");
    let tasks_ready = readiness.register("tasks");
    let admin = AdminServer::start(
        args.admin_addr,
        Arc::new(registry),
        readiness.clone(),
        shutdown.clone(),
    )
    .await?;

    let config = Arc::new(config);
    let history = Arc::new(History::new(
        config.history.max_events,
        config.history.max_age,
        config.websocket.client_queue,
    ));
    let stats = Arc::new(Stats::default());
    let workers = Arc::new(WorkerRegistry::new(
        config.workers.stale_after,
        config.workers.forget_after,
        config.workers.max_workers,
    ));
    let (audit_endpoint, audit_token) = config
        .audit
        .client
        .endpoint(
            "audit.client",
            config::AUDIT_CLIENT_ENV_PREFIX,
            &args.audit_url,
        )
        .with_context(|| format!("audit-service at {:?}", args.audit_url))?;
    let audit = audit::AuditClient::new(
        audit_endpoint,
        audit_token,
        config.audit.timeout,
        config.audit.max_records,
        metrics.clone(),
    );

    let kafka = config
        .kafka
        .client
        .resolve(&args.kafka_bootstrap)
        .context("kafka.client")?;
    let intake = Intake::new(
        &kafka,
        &config.kafka.events_topic,
        config.kafka.warm_up,
        config.kafka.metadata_refresh,
        Sinks {
            history: Arc::clone(&history),
            stats: Arc::clone(&stats),
            metrics: metrics.clone(),
        },
    )?;
    let mut tasks = EssentialTasks::default();
    tasks.spawn("intake", intake.run(kafka_ready, shutdown.clone()));

    let upstreams = Arc::new(Upstreams::new(
        &kafka,
        &config.kafka.control_topic,
        &config.kafka.audit_topic,
    )?);
    tasks.spawn(
        "upstream control",
        Arc::clone(&upstreams).follow(kafka.clone(), shutdown.clone()),
    );
    let replays = Arc::new(ReplayJobs::new(
        relais_operator::replay::ReplayTarget {
            kafka,
            dlq_topic: config.kafka.dlq_topic.clone(),
            ingress_topic: config.kafka.ingress_topic.clone(),
            ledger_topic: config.kafka.replay_ledger_topic.clone(),
            transactional_id: relais_operator::replay::ReplayTarget::transactional_id_of(
                &config.kafka.worker_group_id,
            ),
        },
        &config.kafka.audit_topic,
    )?);

    let grpc_listener = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", args.grpc_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let grpc_security = config.grpc.resolve().context("grpc")?;
    tracing::info!(address = %grpc_addr, callers = grpc_security.describe(), "WorkerReport gRPC listening");
    let grpc_server = grpc_security.server().context("gRPC TLS")?;
    tasks.spawn(
        "grpc",
        serve_grpc(
            grpc_server,
            grpc_security,
            grpc_listener,
            ReportService {
                registry: Arc::clone(&workers),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
            },
            shutdown.clone(),
        ),
    );

    let connections = Arc::new(connections::ConnectionSlots::new(
        config.websocket.max_connections,
        config.websocket.max_connections_per_token,
        metrics.ws_connections.clone(),
    ));
    let state = AppState {
        history,
        stats,
        workers,
        audit,
        upstreams,
        replays,
        tokens: Arc::new(tokens),
        limiter: RateLimiter::new(
            config.http.rate_limit_per_second,
            config.http.rate_limit_burst,
        ),
        metrics,
        config: Arc::clone(&config),
        readiness,
        shutdown: shutdown.clone(),
        connections,
        next_connection: Arc::default(),
        openapi: api::openapi_json().into(),
    };
    let http_listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", args.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    let app = api::router(state);
    let stop = shutdown.clone();
    tasks.spawn("http", async move {
        let served = axum::serve(relais_telemetry::net::http_listener(http_listener), app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server stopped");
        }
    });
    tasks_ready.set_ready();
    let bound = Bound {
        http: http_addr,
        grpc: grpc_addr,
        admin: admin.local_addr(),
    };
    tracing::info!(http = %bound.http, grpc = %bound.grpc, admin = %bound.admin, "realtime-gateway running");

    let task = tokio::spawn(async move {
        // Until asked to stop, or until a task dies (which stops the rest).
        let watched = tasks.watch(&shutdown, &tasks_ready).await;
        // WebSocket connections close themselves on the same token; give them a moment.
        tasks.join(Duration::from_secs(5)).await;
        admin.join().await;
        watched
    });
    Ok(Running { bound, task })
}

/// Runs the gateway until `shutdown`.
pub async fn run(
    args: Args,
    config: GatewayConfig,
    tokens: Tokens,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(&args, config, tokens, shutdown).await?.join().await
}

/// Serves `WorkerReport` and the standard health service until shutdown.
async fn serve_grpc(
    server: tonic::transport::Server,
    security: relais_grpc::ServerSecurity,
    listener: tokio::net::TcpListener,
    service: ReportService,
    shutdown: CancellationToken,
) {
    use relais_proto::v1::worker_report_server::WorkerReportServer;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<WorkerReportServer<ReportService>>()
        .await;
    let incoming = relais_telemetry::net::grpc_incoming(listener);
    let served = server
        .layer(relais_telemetry::grpc_server::GrpcServerSpans)
        .layer(security.require_token())
        // A worker that vanished without closing its stream is noticed within 30 s.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health)
        .add_service(
            WorkerReportServer::new(service)
                .max_decoding_message_size(security.max_request_bytes()),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "gRPC server stopped");
    }
}
