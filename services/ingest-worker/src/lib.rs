//! ingest-worker: consumes `relais.ingress`, normalises and validates each event, delivers it
//! to its upstream through the resilience layer, and writes exactly one outcome per message
//! (`relais.audit`, `relais.events`, and `relais.dlq` for anything not delivered) in the same
//! Kafka transaction as the consumed offsets.
//!
//! - [`config`]: the configuration file and command line;
//! - [`pipeline`]: the whole flow at a glance, and the commit loop;
//! - [`consumer`]: the ingress consumer's rebalance callbacks;
//! - [`dispatch`]: reading the ingress topic and the retry tiers, with backpressure;
//! - [`schedule`]: a queue and an in-flight limit per upstream, order per key;
//! - [`process`]: deciding one message;
//! - [`retry`], [`tiers`], [`parked`]: retry tiers, reading them, and key order across them;
//! - [`hold`]: holding an upstream that refuses everyone (401, 403) or is disabled (410);
//! - [`control`]: the upstream control topic, which disables and re-enables upstreams;
//! - [`records`]: the records an outcome produces;
//! - [`dlq`]: dead-letter copies bounded whatever was read;
//! - [`tracker`]: which outcomes may be committed (the contiguous prefix per partition);
//! - `lag`: the lag published as metrics and to the gateway;
//! - [`committer`]: the transaction itself.
//!
//! Replaying dead letters (`ingest-worker replay-dlq`) lives in [`relais_operator::replay`],
//! shared with the gateway's admin API.

pub mod committer;
pub mod concurrency;
pub mod config;
pub mod consumer;
pub mod control;
pub mod dispatch;
pub mod dlq;
pub mod hold;
mod lag;
pub mod metrics;
pub mod parked;
pub mod pipeline;
pub mod process;
pub mod read_gate;
pub mod records;
pub mod resets;
pub mod retry;
pub mod schedule;
pub mod status;
pub mod tiers;
pub mod tracker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use relais_kafka::resets::{ResetMetrics, ResetWatch};
use relais_resilience::{ResilienceMetrics, UpstreamClient};
use relais_telemetry::admin::{AdminServer, Readiness};
use relais_telemetry::shutdown::{self, CancellationToken, TaskTracker};
use relais_telemetry::tasks::{TaskDied, essential};

use crate::committer::{Committer, ReplacementBudget, TransactionalProducer};
use crate::config::{Args, WorkerConfig};
use crate::consumer::{WorkerConsumer, WorkerContext};
use crate::metrics::WorkerMetrics;
use crate::parked::ParkedKeys;
use crate::process::{Processor, RetryTiers, Upstream};
use crate::records::OutputTopics;
use crate::records::Tracker;
pub use crate::tiers::check_retry_topics;
use crate::tiers::{TierAssignment, TierConsumer, WaitingReader};

/// This replica's identity: the flag, or host name and admin port.
pub fn worker_id(args: &Args) -> String {
    args.worker_id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "worker".into());
        format!("{host}-{}", args.admin_addr.port())
    })
}

/// Runs the pipeline until `shutdown`, then drains within the configured time.
pub async fn run(
    args: Args,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let worker_id = worker_id(&args);
    let kafka = config
        .kafka_client(&args.kafka_bootstrap)
        .context("kafka.client")?;
    let client_config = || kafka.config();
    let mut registry = Registry::default();
    let resilience_metrics = ResilienceMetrics::register(&mut registry);
    let metrics = WorkerMetrics::register(&mut registry);
    metrics.prepare_output_topics(&[
        &config.kafka.audit_topic,
        &config.kafka.events_topic,
        &config.kafka.dlq_topic,
    ]);

    let mut upstreams = BTreeMap::new();
    for (name, upstream) in &config.upstreams {
        let options = upstream
            .client_options()
            .map_err(|reason| anyhow::anyhow!("upstream {name}: {reason}"))?;
        let mut client = UpstreamClient::with_options(
            name,
            &upstream.url,
            upstream.policy.clone(),
            &resilience_metrics,
            options,
        )
        .with_context(|| format!("upstream {name}"))?;
        match upstream
            .credentials(args.profile)
            .map_err(|reason| anyhow::anyhow!("upstream {name}: {reason}"))?
        {
            Some(config::Credentials::Headers(headers)) => {
                client = client.with_headers(headers)?;
            }
            Some(config::Credentials::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            }) => {
                client = client.with_oauth2(&token_url, client_id, client_secret, scope)?;
            }
            None => {}
        }
        if let Some(signer) = upstream
            .signer()
            .map_err(|reason| anyhow::anyhow!("upstream {name}: {reason}"))?
        {
            client = client.with_signer(Arc::new(signer));
        }
        let endpoint = client
            .endpoint(&upstream.path)
            .with_context(|| format!("upstream {name}"))?;
        let hold = Arc::new(hold::UpstreamHold::new(
            name,
            upstream.hold_policy(),
            metrics.upstream_held(name, hold::HoldReason::Unauthorized),
            metrics.upstream_held(name, hold::HoldReason::Disabled),
        ));
        upstreams.insert(
            name.clone(),
            Upstream {
                client,
                endpoint,
                hold,
                ordering: upstream.ordering,
                retry_tiers: upstream.retry_tiers().into(),
                ingress_to_outcome: metrics.ingress_to_outcome(name),
            },
        );
    }

    let tracker: Arc<Tracker> = Arc::new(Tracker::with_metadata_limit(
        config.kafka.offset_metadata_max_bytes,
    ));
    metrics
        .offset_metadata_limit
        .set(tracker.metadata_limit() as i64);
    let tier_topics = config.tier_topics();
    let reset_metrics = ResetMetrics::register(registry.sub_registry_with_prefix("relais_worker"));
    let read_topics = std::iter::once(config.kafka.ingress_topic.as_str())
        .chain(tier_topics.tiers().map(|(_, topic, _)| topic));
    reset_metrics.prepare(read_topics);
    let parked = Arc::new(ParkedKeys::default());
    // Both consumers' offset resets (records deleted before they were read) are reported.
    let (reset_watch, reset_receiver) = ResetWatch::new();
    let tier_consumer: Arc<TierConsumer> = Arc::new(tiers::tier_consumer(
        client_config(),
        &config.kafka.group_id,
        &worker_id,
        reset_watch.clone(),
    )?);
    let producer = TransactionalProducer::create(
        client_config()
            .set("transactional.id", format!("relais-ingest-{worker_id}"))
            .set(
                "transaction.timeout.ms",
                config.kafka.transaction_timeout.as_millis().to_string(),
            )
            .set(
                "message.timeout.ms",
                config.kafka.delivery_timeout().as_millis().to_string(),
            )
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .clone(),
    )
    .context("cannot create the Kafka producer")?;
    let (load_requests, load_receiver) = tokio::sync::mpsc::channel(4096);
    let waiting_reader = WaitingReader {
        client: client_config(),
        producer: producer.clone(),
        group_id: config.kafka.group_id.clone(),
        ingress_topic: config.kafka.ingress_topic.clone(),
        topics: tier_topics.clone(),
        ordered_upstreams: Arc::new(
            config
                .upstreams
                .iter()
                .filter(|(_, upstream)| upstream.ordering == schedule::Ordering::Key)
                .map(|(name, _)| name.clone())
                .collect(),
        ),
    };
    let readiness = Readiness::default();
    // False while partitions wait for retry-topic partitions that do not exist.
    let tiers_ready = readiness.register("retry-tiers");
    let parked_loader = tokio::spawn(tiers::load_parked(
        load_receiver,
        waiting_reader,
        Arc::clone(&tracker),
        Arc::clone(&parked),
        tiers_ready,
        shutdown.clone(),
    ));
    let consumer: WorkerConsumer = relais_kafka::bounded_prefetch(
        relais_kafka::resets::watched(&mut client_config())
            .set("group.id", &config.kafka.group_id)
            .set("client.id", &worker_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                config.kafka.session_timeout.as_millis().to_string(),
            ),
        config.kafka.prefetch_kbytes,
    )
    .create_with_context(WorkerContext {
        tracker: Arc::clone(&tracker),
        tiers: TierAssignment {
            consumer: Arc::clone(&tier_consumer),
            topics: tier_topics.clone(),
            parked: Arc::clone(&parked),
            loads: load_requests.clone(),
        },
        metrics: metrics.clone(),
        resets: reset_watch,
        handover: consumer::Handover {
            timeout: config.pipeline.handover_timeout,
            shutdown: shutdown.clone(),
        },
    })
    .context("cannot create the Kafka consumer")?;
    let consumer = Arc::new(consumer);

    // Also fences an earlier instance with the same identity (a crashed predecessor) and
    // aborts whatever transaction it left open.
    producer
        .init(Duration::from_secs(30))
        .await
        .with_context(|| {
            format!(
                "cannot initialise transactions with Kafka at {}",
                args.kafka_bootstrap
            )
        })?;
    consumer
        .subscribe(&[&config.kafka.ingress_topic])
        .context("cannot subscribe to the ingress topic")?;

    let kafka_ready = readiness.register("kafka");
    kafka_ready.set_ready();
    // Turns false while outcomes cannot be committed (see pipeline::commit_loop).
    let commits_ready = readiness.register("commits");
    commits_ready.set_ready();
    let tasks_ready = readiness.register("tasks");
    tasks_ready.set_ready();
    let admin = AdminServer::start(
        args.admin_addr,
        Arc::new(registry),
        readiness,
        shutdown.clone(),
    )
    .await?;

    // Disabled upstreams are held before the first message is read.
    let control_follower = control::follow(
        kafka.clone(),
        config.kafka.control_topic.clone(),
        upstreams
            .iter()
            .map(|(name, upstream)| (name.clone(), Arc::clone(&upstream.hold)))
            .collect(),
        shutdown.clone(),
    )
    .await?;
    let control_producer: FutureProducer = client_config()
        .set("client.id", format!("{worker_id}-control"))
        .create()
        .context("cannot create the control producer")?;
    let reset_reporter = tokio::spawn(resets::report_resets(
        reset_receiver,
        Arc::clone(&consumer),
        resets::ResetReports {
            metrics: reset_metrics,
            producer: control_producer.clone(),
            audit_topic: config.kafka.audit_topic.clone(),
            worker_id: worker_id.clone(),
            tier_topics: tier_topics.clone(),
            parked: Arc::clone(&parked),
        },
        shutdown.clone(),
    ));
    let (hold_changes, hold_change_receiver) = control::HoldEvents::channel();
    let control_publisher = tokio::spawn(control::publish(
        hold_change_receiver,
        control_producer,
        config.kafka.control_topic.clone(),
        config.kafka.audit_topic.clone(),
        worker_id.clone(),
        shutdown.clone(),
    ));

    let status_upstreams: Vec<Upstream> = upstreams.values().cloned().collect();
    let processor = Arc::new(Processor {
        normaliser: relais_ingress::Normaliser::new(
            config.normaliser_limits(),
            config.upstreams.keys().cloned(),
        ),
        routing: config.routing.clone(),
        upstreams,
        topics: OutputTopics {
            audit: config.kafka.audit_topic.as_str().into(),
            events: config.kafka.events_topic.as_str().into(),
            dlq: config.kafka.dlq_topic.as_str().into(),
        },
        dlq_limits: config.dlq.limits(),
        worker_id: worker_id.clone(),
        fail_fast_when_open: config.pipeline.fail_fast_when_open,
        retry: RetryTiers {
            topics: tier_topics.clone(),
            in_memory_wait: config.retry.in_memory_wait,
            parked: Arc::clone(&parked),
        },
        hold_changes,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    });
    let schedules: BTreeMap<String, schedule::UpstreamSchedule> = config
        .upstreams
        .iter()
        .map(|(name, upstream)| {
            let schedule = schedule::UpstreamSchedule {
                ordering: upstream.ordering,
                max_in_flight: upstream.max_in_flight(),
                adaptive: upstream.adaptive_concurrency,
                limit_gauge: metrics.upstream_concurrency_limit(name),
                knee_gauge: metrics.upstream_concurrency_knee(name),
                max_queued: config.max_queued(upstream),
                queued_gauge: metrics.upstream_queued(name),
                in_flight_gauge: metrics.upstream_in_flight(name),
            };
            (name.clone(), schedule)
        })
        .collect();
    metrics.queue_capacity.set(
        config
            .upstreams
            .values()
            .map(|upstream| config.max_queued(upstream))
            .sum::<usize>() as i64,
    );
    let delivery_tasks = TaskTracker::new();
    let (scheduler, delivery_reports) = schedule::Scheduler::new(
        schedules,
        Arc::clone(&processor),
        Arc::clone(&tracker),
        delivery_tasks.clone(),
    );
    let paused = consumer::PausedPartitions::default();
    let kept = tiers::KeptRecords::default();
    let dispatcher = dispatch::Dispatcher::new(
        dispatch::Sources {
            ingress: Arc::clone(&consumer),
            tiers: Arc::clone(&tier_consumer),
            topics: tier_topics.clone(),
            parked: Arc::clone(&parked),
            loads: load_requests,
            kept: Arc::clone(&kept),
        },
        processor,
        scheduler,
        Arc::clone(&tracker),
        metrics.clone(),
        Arc::clone(&paused),
        dispatch::UncommittedLimits {
            per_partition: config.pipeline.max_uncommitted_per_partition,
            total: config.pipeline.max_uncommitted,
        },
    );
    let dispatcher = tokio::spawn(essential(
        "dispatcher",
        dispatch::dispatch(dispatcher, delivery_reports, shutdown.clone()),
    ));
    let deliveries_done = CancellationToken::new();
    let committer = Committer {
        producer,
        replacements: ReplacementBudget::default(),
        consumer: Arc::clone(&consumer),
        tracker: Arc::clone(&tracker),
        topics: tier_topics.clone(),
        max_batch: config.pipeline.max_batch,
        call_timeout: config.kafka.transaction_call_timeout,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    };
    let mut commits = tokio::spawn(pipeline::commit_loop(
        committer,
        config.pipeline.commit_interval,
        commits_ready,
        deliveries_done.clone(),
    ));
    let lags = status::LagSnapshot::default();
    let lag_reporter = tokio::spawn(lag::report_lag(
        Arc::clone(&consumer),
        Arc::clone(&tier_consumer),
        kept,
        metrics.clone(),
        Arc::clone(&lags),
        shutdown.clone(),
    ));
    let status_gateway = config.status_gateway().context("status.client")?;
    let status_reporter = status_gateway.map(|gateway| {
        let source = status::StatusSource {
            worker_id: worker_id.clone(),
            started_at: std::time::SystemTime::now(),
            tracker: Arc::clone(&tracker),
            metrics: metrics.clone(),
            upstreams: status_upstreams,
            lags,
            paused,
        };
        tokio::spawn(status::report(
            source,
            gateway,
            config.status.interval,
            shutdown.clone(),
        ))
    });
    tracing::info!(worker_id, topic = %config.kafka.ingress_topic, "ingest-worker running");

    // Run until asked to stop, until the committer fails for good, or until the dispatcher
    // dies (then nothing is read any more: the worker must say so and stop, not look ready).
    let mut dispatcher = dispatcher;
    let mut dispatcher_ended = false;
    let mut dispatcher_died = None;
    let fatal = tokio::select! {
        _ = shutdown.cancelled() => None,
        result = &mut commits => Some(result),
        ended = &mut dispatcher => {
            dispatcher_ended = true;
            // Ending on shutdown (both may be ready at once) is a stop, not a death.
            if !shutdown.is_cancelled() {
                let died = TaskDied::of("dispatcher", ended);
                tracing::error!(error = %died, "the dispatcher stopped; the worker stops");
                tasks_ready.set_not_ready(died.to_string());
                dispatcher_died = Some(died);
            }
            None
        }
    };
    shutdown.cancel();
    if !dispatcher_ended {
        let _ = dispatcher.await;
    }
    let drained = shutdown::drain(&delivery_tasks, config.pipeline.drain_timeout).await;
    tracing::info!(
        ?drained,
        in_flight = tracker.in_flight(),
        "deliveries drained; committing what was handled"
    );
    deliveries_done.cancel();
    let committed = match fatal {
        Some(result) => result,
        None => commits.await,
    };
    lag_reporter.abort();
    parked_loader.abort();
    let _ = tokio::time::timeout(Duration::from_secs(3), reset_reporter).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), control_publisher).await;
    let _ = tokio::task::spawn_blocking(move || control_follower.join()).await;
    if let Some(status_reporter) = status_reporter {
        let _ = tokio::time::timeout(Duration::from_secs(3), status_reporter).await;
    }
    admin.join().await;
    // Leaving the group now lets the others take the partitions at once.
    consumer.unsubscribe();
    if let Some(died) = dispatcher_died {
        return Err(died.into());
    }
    match committed {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(error) => Err(error.into()),
    }
}
