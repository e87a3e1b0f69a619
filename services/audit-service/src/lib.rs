//! audit-service: `relais.audit` → deterministic, partitioned NDJSON objects in Ceph RGW.
//!
//! - [`object`]: cutting partitions into objects, and why the cuts are deterministic;
//! - [`encode`]: the stable JSON line of a record (docs/audit-objects.md);
//! - [`actions`]: the line of an operator action, stored beside the outcomes;
//! - [`store`]: compression and PUT with retries until stored;
//! - [`retention`]: the bucket's lifecycle rules (expiry, incomplete uploads);
//! - [`pipeline`]: consumption, per-partition upload queues, commit after store, backpressure,
//!   and the fence that keeps a revoked partition's upload from landing.

pub mod actions;
pub mod config;
pub mod encode;
pub mod index;
pub mod metrics;
pub mod object;
pub mod pipeline;
pub mod query;
pub mod retention;
pub mod store;

use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use rdkafka::consumer::Consumer;
use relais_kafka::resets::{OffsetReset, ResetMetrics, ResetWatch, next_reset};
use relais_telemetry::admin::{AdminServer, Readiness};
use relais_telemetry::shutdown::CancellationToken;
use relais_telemetry::tasks::EssentialTasks;

use crate::config::{Args, AuditConfig};
use crate::metrics::AuditMetrics;
use crate::pipeline::{Assignment, AuditConsumer, AuditContext, CommitFaults, Pipeline};
use crate::store::Store;

/// Runs the service until `shutdown`.
pub async fn run(
    args: Args,
    config: AuditConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_commit_faults(args, config, shutdown, Arc::default()).await
}

/// [`run`], with commit failures a test can inject through `commit_faults`.
pub async fn run_with_commit_faults(
    args: Args,
    config: AuditConfig,
    shutdown: CancellationToken,
    commit_faults: Arc<CommitFaults>,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = AuditMetrics::register(&mut registry);
    let readiness = Readiness::default();
    let rgw_ready = readiness.register("rgw");
    let kafka_ready = readiness.register("kafka");
    let index_ready = readiness.register("index");
    let commits_ready = readiness.register("commits");
    let tasks_ready = readiness.register("tasks");
    let admin = AdminServer::start(
        args.admin_addr,
        Arc::new(registry),
        readiness,
        shutdown.clone(),
    )
    .await?;

    let store = Arc::new(Store::connect(&args, &config, metrics.clone()).await?);
    if config.retention.manage_lifecycle {
        store.apply_lifecycle(&config.retention).await?;
    }
    rgw_ready.set_ready();
    let index = Arc::new(index::Index::default());
    let mut tasks = EssentialTasks::default();
    tasks.spawn(
        "index",
        query::maintain_index(
            Arc::clone(&store),
            Arc::clone(&index),
            index_ready,
            shutdown.clone(),
        ),
    );
    let grpc_security = config.grpc.resolve().context("grpc")?;
    let grpc = serve_grpc(
        args.grpc_addr,
        &grpc_security,
        query::QueryService::new(
            Arc::clone(&store),
            Arc::clone(&index),
            metrics.clone(),
            config.query.clone(),
        ),
        shutdown.clone(),
    )
    .await?;
    tasks.spawn("grpc", grpc);

    let assignment = Arc::new(Assignment::new(config.storage.put_timeout));
    let kafka = config
        .kafka
        .client
        .resolve(&args.kafka_bootstrap)
        .context("kafka.client")?;
    let mut consumer_config = kafka.config();
    relais_kafka::resets::watched(&mut consumer_config)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Only records of committed worker transactions: an aborted outcome is not an outcome.
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            config.kafka.session_timeout.as_millis().to_string(),
        )
        // 2 MiB per partition and fetch: with librdkafka's 1 MiB the pipeline waited for
        // fetches at about 240k records/s in `make bench`, against about 285k.
        .set("max.partition.fetch.bytes", "2097152");
    let (resets, reset_receiver) = ResetWatch::new();
    // The prefetch is most of the service's memory; see `kafka.prefetch_kbytes`.
    let consumer: AuditConsumer =
        relais_kafka::bounded_prefetch(&mut consumer_config, config.kafka.prefetch_kbytes)
            .create_with_context(AuditContext {
                assignment: Arc::clone(&assignment),
                resets,
            })
            .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[&config.kafka.audit_topic])
        .context("cannot subscribe to the audit topic")?;
    kafka_ready.set_ready();
    commits_ready.set_ready();
    tracing::info!(topic = %config.kafka.audit_topic, bucket = %args.bucket, "audit-service running");

    let consumer = Arc::new(consumer);
    tasks.spawn(
        "lag",
        report_lag(Arc::clone(&consumer), metrics.clone(), shutdown.clone()),
    );
    // Audit records Kafka deleted before they were stored are counted and logged.
    metrics.resets.prepare([config.kafka.audit_topic.as_str()]);
    tasks.spawn(
        "offset resets",
        count_resets(
            reset_receiver,
            Arc::clone(&consumer),
            metrics.resets.clone(),
            shutdown.clone(),
        ),
    );
    // Shutdown may wait this long for the pipeline to store what it holds.
    let drain = config.storage.drain_timeout + std::time::Duration::from_secs(5);
    let pipeline = Pipeline {
        consumer: Arc::clone(&consumer),
        assignment,
        store,
        config,
        metrics,
        index,
        commit_faults,
        store_ready: rgw_ready,
        commits_ready,
    };
    tasks.spawn("pipeline", pipeline.run(shutdown.clone()));
    tasks_ready.set_ready();

    // Until asked to stop, or until a task dies (which stops the rest and fails the process).
    let watched = tasks.watch(&shutdown, &tasks_ready).await;
    tasks.join(drain).await;
    consumer.unsubscribe();
    admin.join().await;
    Ok(watched?)
}

/// Counts the consumer's offset resets (measured and logged by [`next_reset`]) until shutdown.
async fn count_resets(
    mut resets: tokio::sync::mpsc::Receiver<OffsetReset>,
    consumer: Arc<AuditConsumer>,
    metrics: ResetMetrics,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            next = next_reset(&mut resets, &consumer) => match next {
                Some((reset, outcome)) => metrics.record(&reset, outcome),
                None => return,
            },
        }
    }
}

/// Binds `address`; the future returned serves `AuditQuery` and the standard health service
/// until shutdown.
async fn serve_grpc(
    address: std::net::SocketAddr,
    security: &relais_grpc::ServerSecurity,
    service: query::QueryService,
    shutdown: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for gRPC on {address}"))?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<relais_proto::v1::audit_query_server::AuditQueryServer<query::QueryService>>(
        )
        .await;
    tracing::info!(
        address = %listener.local_addr()?,
        callers = security.describe(),
        "AuditQuery gRPC listening"
    );
    let incoming = relais_telemetry::net::grpc_incoming(listener);
    let server = security.server().context("gRPC TLS")?;
    let (require_token, max_request_bytes) =
        (security.require_token(), security.max_request_bytes());
    Ok(async move {
        let served = server
            .layer(relais_telemetry::grpc_server::GrpcServerSpans)
            .layer(require_token)
            .add_service(health)
            .add_service(
                relais_proto::v1::audit_query_server::AuditQueryServer::new(service)
                    .max_decoding_message_size(max_request_bytes),
            )
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "gRPC server stopped");
        }
    })
}

/// Sum over assigned partitions of (high watermark − consumer position), every two seconds:
/// records not yet read. Read records waiting to be stored are `buffer_records`. (The committed
/// offset would be the wrong base: worker transactions leave a commit marker after their last
/// record, which is never "stored" and would show as a lag of one per partition for ever.)
/// With it, how many partitions are assigned: a lag of zero over none (a group rejoining after
/// a broker outage) says nothing.
async fn report_lag(
    consumer: Arc<AuditConsumer>,
    metrics: AuditMetrics,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let assigned = consumer.assignment().map_or(0, |list| list.count());
        metrics.assigned_partitions.set(assigned as i64);
        let consumer = Arc::clone(&consumer);
        let lag = tokio::task::spawn_blocking(move || {
            let timeout = std::time::Duration::from_secs(2);
            let position = consumer.position().ok()?;
            let mut total = 0i64;
            for element in position.elements() {
                let (low, high) = consumer
                    .fetch_watermarks(element.topic(), element.partition(), timeout)
                    .ok()?;
                let next = element
                    .offset()
                    .to_raw()
                    .filter(|offset| *offset >= 0)
                    .unwrap_or(low);
                total += (high - next).max(0);
            }
            Some(total)
        })
        .await;
        if let Ok(Some(lag)) = lag {
            metrics.consumer_lag.set(lag);
        }
    }
}
