//! Crashes and rebalances: kill -9 of a worker process under load, and a second worker joining
//! then the first leaving. Still exactly one outcome per message, none lost.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use relais_ingest_worker::config::PipelineConfig;
use relais_proto::v1::Outcome;
use relais_resilience::UpstreamPolicy;
use relais_test_support::{KafkaTestEnv, ScratchDir, unique_name};
use serde_json::json;

/// The worker binary as a child process, configured through a file and the environment.
struct WorkerProcess {
    child: Child,
    admin: SocketAddr,
    /// Its configuration file, removed after the process.
    _config: ScratchDir,
}

impl WorkerProcess {
    fn spawn(
        kafka: &KafkaTestEnv,
        topics: &Topics,
        group: &str,
        worker_id: &str,
        upstream: SocketAddr,
        log: &std::path::Path,
    ) -> Self {
        Self::spawn_with(
            kafka,
            topics,
            group,
            worker_id,
            upstream,
            log,
            "retry_tiers = []",
            &[],
        )
    }

    /// Like [`Self::spawn`], with `upstream_settings` in the upstream's section and `env` added
    /// to the process's environment.
    #[allow(clippy::too_many_arguments)]
    fn spawn_with(
        kafka: &KafkaTestEnv,
        topics: &Topics,
        group: &str,
        worker_id: &str,
        upstream: SocketAddr,
        log: &std::path::Path,
        upstream_settings: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let admin = free_port();
        let folder = ScratchDir::new("worker-config");
        let config = folder.write(
            "worker.toml",
            &format!(
                r#"
                [kafka]
                group_id = "{group}"
                ingress_topic = "{}"
                audit_topic = "{}"
                events_topic = "{}"
                dlq_topic = "{}"
                control_topic = "{}"
                [retry]
                topic_prefix = "{}"
                in_memory_wait = "1s"
                [upstreams.default]
                url = "http://{upstream}"
                allowed_networks = ["loopback"]
                {upstream_settings}
                "#,
                topics.ingress,
                topics.audit,
                topics.events,
                topics.dlq,
                topics.control,
                topics.retry_prefix
            ),
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ingest-worker"))
            .env("RELAIS_KAFKA_BOOTSTRAP", kafka.bootstrap())
            .env("RELAIS_WORKER_CONFIG", &config)
            .env("RELAIS_WORKER_ID", worker_id)
            .env("RELAIS_ADMIN_ADDR", admin.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            admin,
            _config: folder,
        }
    }

    async fn wait_for_metric(&self, name: &str, at_least: f64, within: Duration) {
        relais_test_support::AdminMetrics::new(self.admin)
            .wait_for_at_least(name, at_least, within)
            .await;
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_minus_nine_under_load_then_restart_keeps_exactly_one_outcome() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    sim.set_faults(json!({"latency": {"kind": "uniform", "min_ms": 1, "max_ms": 10}}))
        .await;
    let topics = Topics::create(&kafka, 6).await;
    let total = 6000;
    produce(&kafka, &topics.ingress, &valid_events("k", total, 1000)).await;

    let group = unique_name("it-group");
    let id = unique_name("crash-worker");
    let logs = ScratchDir::new(&id);
    let log = logs.file("worker.log");
    let mut first = WorkerProcess::spawn(&kafka, &topics, &group, &id, sim.api, &log);
    first
        .wait_for_metric(
            "relais_worker_committed_messages_total",
            1500.0,
            Duration::from_secs(120),
        )
        .await;
    first.child.kill().unwrap(); // SIGKILL: no drain, no commit, an open transaction left behind
    first.child.wait().unwrap();
    let before_restart = sim.deliveries().await["accepted"].as_u64().unwrap();

    // Same identity: the new instance fences the dead one and aborts its open transaction.
    let second = WorkerProcess::spawn(&kafka, &topics, &group, &id, sim.api, &log);
    all_delivered_once(&kafka, &topics, total).await;

    let upstream = sim.deliveries().await;
    let duplicates = upstream["duplicate_deliveries"].as_u64().unwrap();
    assert_eq!(
        upstream["distinct_keys"].as_u64().unwrap() as usize,
        total,
        "nothing lost upstream"
    );
    // Only what was in flight at the kill can be delivered twice: at most the upstream's
    // deliveries in flight, the batch being committed and the one finished behind it.
    let pipeline = PipelineConfig::default();
    let in_flight_bound =
        (UpstreamPolicy::default().bulkhead.max_concurrent + 2 * pipeline.max_batch) as u64;
    assert!(
        duplicates <= in_flight_bound,
        "{duplicates} duplicates > {in_flight_bound}"
    );
    eprintln!(
        "kill -9: {before_restart} accepted before the restart, {duplicates} duplicate deliveries upstream"
    );
    drop(second);
}

/// kill -9 while each partition's hot key is far behind its cold keys: what finished behind
/// the hot key's waiting messages was committed ahead of the offset in the rounds before the
/// kill, so the restarted worker sends none of it again; only what was in flight at the kill
/// and what finished in the last round, not yet committed, is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_minus_nine_behind_a_waiting_key_sends_again_only_what_was_in_flight() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    // 50 ms a call: each partition's 150 hot messages take 7.5 s, its 150 cold ones about one.
    sim.set_faults(json!({"latency": {"kind": "fixed", "ms": 50}}))
        .await;
    let topics = Topics::create(&kafka, 2).await;
    let messages = hot_and_cold(2, 300);
    let total = messages.len();
    produce_to_partitions(&kafka, &topics.ingress, &messages).await;

    let group = unique_name("it-group");
    let id = unique_name("crash-worker");
    let logs = ScratchDir::new(&id);
    let log = logs.file("worker.log");
    let in_flight = 16;
    let settings =
        format!("retry_tiers = []\nmax_in_flight = {in_flight}\nadaptive_concurrency = false");
    let spawn =
        || WorkerProcess::spawn_with(&kafka, &topics, &group, &id, sim.api, &log, &settings, &[]);
    let mut first = spawn();
    first
        .wait_for_metric(
            "relais_worker_outcomes_ahead_total",
            250.0,
            Duration::from_secs(60),
        )
        .await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let before_restart = sim.deliveries().await["accepted"].as_u64().unwrap();

    let second = spawn();
    all_delivered_once(&kafka, &topics, total).await;
    second
        .wait_for_metric(
            "relais_worker_recorded_skipped_total",
            200.0,
            Duration::from_secs(10),
        )
        .await;
    let seen = sim.deliveries().await;
    assert_eq!(seen["distinct_keys"], total, "nothing lost: {seen}");
    assert_eq!(seen["ordered_events"], total, "{seen}");
    assert_eq!(seen["order_violations"], 0, "{seen}");
    // In flight at the kill, and finished in the round after the last commit (100 ms: at most
    // two calls of 50 ms a slot).
    let duplicates = seen["duplicate_deliveries"].as_u64().unwrap();
    eprintln!("kill -9 behind a waiting key: {duplicates} of {total} sent twice");
    assert!(
        duplicates <= 3 * in_flight,
        "{duplicates} sent twice, {before_restart} accepted before the kill: {seen}"
    );
    drop(second);
}

/// The dispatcher, an essential task, dies under load (a debug build's injected panic): the
/// worker must not linger half-alive. It exits non-zero with the reason, having committed only
/// what it handled, and the restarted worker finishes with exactly one outcome per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_dispatcher_stops_the_worker_non_zero_and_loses_nothing() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    // About 2,000 messages/s: still busy when the dispatcher dies.
    sim.set_faults(json!({"latency": {"kind": "uniform", "min_ms": 20, "max_ms": 40}}))
        .await;
    let topics = Topics::create(&kafka, 6).await;
    let total = 20_000;
    produce(&kafka, &topics.ingress, &valid_events("d", total, 2000)).await;

    let group = unique_name("it-group");
    let id = unique_name("dying-worker");
    let logs = ScratchDir::new(&id);
    let log = logs.file("worker.log");
    let mut first = WorkerProcess::spawn_with(
        &kafka,
        &topics,
        &group,
        &id,
        sim.api,
        &log,
        "retry_tiers = []",
        &[(relais_telemetry::tasks::KILL_TASK_ENV, "dispatcher@4000")],
    );
    // It runs until the dispatcher dies, then drains and stops.
    let status =
        relais_test_support::wait_for_exit(&mut first.child, Duration::from_secs(90)).await;
    assert!(!status.success(), "exit status {status}");
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(
        written.contains("task dispatcher stopped before shutdown"),
        "the reason is logged: {written}"
    );
    let delivered_before = sim.deliveries().await["distinct_keys"].as_u64().unwrap();
    assert!(
        delivered_before > 0 && delivered_before < total as u64,
        "it died under load: {delivered_before} of {total} delivered"
    );

    let second = WorkerProcess::spawn(&kafka, &topics, &group, &id, sim.api, &log);
    let audit = read_outcomes(&kafka, &topics.audit, total, Duration::from_secs(120)).await;
    assert_exactly_once(&audit, total);
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));
    assert_eq!(
        sim.deliveries().await["distinct_keys"].as_u64().unwrap() as usize,
        total,
        "nothing lost upstream"
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_the_partitions_and_one_leaving_loses_nothing() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    // Slow enough (16 in flight, 20 ms each: about 800 messages/s) that the first worker is
    // still busy when the second has joined.
    sim.set_faults(json!({"latency": {"kind": "fixed", "ms": 20}}))
        .await;
    let topics = Topics::create(&kafka, 6).await;
    let total = 8000;
    let group = unique_name("it-group");
    let config = || {
        let mut config = worker_config(
            &topics,
            &group,
            sim.api,
            UpstreamPolicy::default(),
            PipelineConfig::default(),
            None,
        );
        fixed_in_flight(&mut config, 16);
        config
    };
    let first = Worker::start_config(&kafka, config());
    // A key each: no message waits for an earlier one of its key, so a partition's messages
    // start in offset order and those in flight when it moves are a committable prefix.
    produce(&kafka, &topics.ingress, &valid_events("t", total, total)).await;

    first
        .wait_for_metric("relais_worker_committed_messages_total", 500.0)
        .await;
    let second = Worker::start_config(&kafka, config());
    second
        .wait_for_metric("relais_worker_assigned_partitions", 1.0)
        .await;
    let shared_first = first.metric("relais_worker_assigned_partitions").await;
    let shared_second = second.metric("relais_worker_assigned_partitions").await;
    assert_eq!(
        shared_first + shared_second,
        6.0,
        "the partitions are split: {shared_first} + {shared_second}"
    );

    let handovers = "relais_worker_handovers_total";
    assert!(
        first
            .metric(&format!("{handovers}{{result=\"committed\"}}"))
            .await
            >= 1.0,
        "the first worker handed over the partitions it gave up"
    );
    assert_eq!(
        first
            .metric(&format!("{handovers}{{result=\"timed_out\"}}"))
            .await,
        0.0
    );

    first.stop().await; // graceful: drains, commits what it handled, leaves the group
    let audit = audit_records(
        &read_exactly(
            &kafka,
            &topics.audit,
            total,
            Duration::from_secs(180),
            Duration::from_secs(3),
        )
        .await,
    );
    assert_exactly_once(&audit, total);
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));
    let seen = sim.deliveries().await;
    assert_eq!(
        seen["duplicate_deliveries"], 0,
        "the partitions moved with their deliveries in flight committed, none sent twice: {seen}"
    );
    assert!(
        second
            .metric("relais_worker_committed_messages_total")
            .await
            > 0.0
    );
    assert_eq!(
        second.metric("relais_worker_assigned_partitions").await,
        6.0,
        "the survivor took over"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_minus_nine_while_messages_wait_in_retry_tiers_loses_nothing_and_keeps_key_order() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    // Nothing listens here until the upstream comes back: connections are refused.
    let upstream = free_port();
    let topics = Topics::create(&kafka, 3).await;
    let upstream_settings = r#"retry_tiers = ["1s", "2s", "4s", "8s"]
                [upstreams.default.policy]
                attempt_timeout = "500ms"
                connect_timeout = "250ms"
                [upstreams.default.policy.retry]
                max_attempts = 2
                base_backoff = "20ms"
                max_backoff = "100ms"
                [upstreams.default.policy.circuit]
                minimum_calls = 5
                open_duration = "1s"
                half_open_calls = 2"#;
    let mut tiers_config = worker_config(
        &topics,
        "unused",
        upstream,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
        None,
    );
    for settings in tiers_config.upstreams.values_mut() {
        *settings = settings.clone().with_retry_tiers(&[
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(4),
            Duration::from_secs(8),
        ]);
    }
    create_retry_topics(&kafka, &topics, &tiers_config).await;
    let total = 300;
    produce(
        &kafka,
        &topics.ingress,
        &ordered_events("kill", "order.created", total, 30),
    )
    .await;

    let group = unique_name("it-group");
    let id = unique_name("tier-worker");
    let logs = ScratchDir::new(&id);
    let log = logs.file("worker.log");
    let mut first = WorkerProcess::spawn_with(
        &kafka,
        &topics,
        &group,
        &id,
        upstream,
        &log,
        upstream_settings,
        &[],
    );
    // Every message has moved at least once, and some have moved up a tier.
    retry_events_until(&kafka, &topics.events, Duration::from_secs(60), |events| {
        let moved: std::collections::BTreeSet<&str> = events
            .iter()
            .map(|event| event.message_id.as_str())
            .collect();
        moved.len() == total
            && events
                .iter()
                .any(|event| event.retry_scheduled.as_ref().unwrap().tier >= 1)
    })
    .await;
    first.child.kill().unwrap(); // SIGKILL while the messages wait in the tiers
    first.child.wait().unwrap();

    let sim = Sim::start_at(upstream).await;
    let second = WorkerProcess::spawn_with(
        &kafka,
        &topics,
        &group,
        &id,
        upstream,
        &log,
        upstream_settings,
        &[],
    );
    let audit = read_outcomes(&kafka, &topics.audit, total, Duration::from_secs(90)).await;
    assert_exactly_once(&audit, total);
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));
    let seen = sim.deliveries().await;
    assert_eq!(seen["distinct_keys"], total, "nothing lost: {seen}");
    assert_eq!(seen["duplicate_deliveries"], 0, "nothing twice: {seen}");
    assert_eq!(seen["ordered_events"], total, "{seen}");
    assert_eq!(
        seen["order_violations"], 0,
        "the restarted worker rebuilt which keys wait in the tiers: {seen}"
    );
    drop(second);
}
