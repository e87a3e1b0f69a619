//! Fault scenarios under load, each followed by the verifier.
//!
//! A scenario starts a fresh stack of processes (its own topics and bucket), sends steady
//! traffic with loadgen, applies one fault in the middle of it, waits until the pipeline has
//! caught up, and then proves with [`crate::verify`] that every message has exactly one
//! outcome in RGW and that the DLQ holds exactly what it should. Alongside: the peak consumer
//! lag, how long recovery took after the fault ended, and each service's peak RSS.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relais_test_support::{KafkaTestEnv, RgwTestEnv};
use serde::Serialize;

use crate::verify::{Verdict, verify};
use crate::{ProcessStack, StackOptions, binary, free_port, repository_root};

/// One fault, applied while the load runs.
#[derive(Debug, Clone, Serialize)]
pub enum Fault {
    /// kill -9 of each service in turn (worker, audit-service, gateway, upstream-sim),
    /// `rounds` times, each restarted two seconds later.
    KillEach { rounds: u32 },
    /// radosgw stopped for this long.
    RgwDown(Duration),
    /// The Kafka broker stopped for this long, then started again. Longer than the worker's
    /// delivery timeout (22.5 s by default), the open transaction's records time out and
    /// librdkafka gives up the transactional producer: the worker must make a new one.
    BrokerDown(Duration),
    /// The upstream refuses connections for this long.
    UpstreamDown(Duration),
    /// Two upstreams: a third of the events go to `billing`, which refuses connections for
    /// this long while the default upstream stays healthy. Its messages wait in retry tiers;
    /// the default upstream's rate must hold.
    BillingDown(Duration),
    /// The upstream answers with a p99 of about 3 s (log-normal, median 300 ms) for this long.
    SlowUpstream(Duration),
    /// Workers scaled 1 → 3 → 1.
    ScaleWorkers,
    /// Two audit-service instances; radosgw stops for `outage`, and a quarter into it one
    /// instance freezes (SIGSTOP) for `freeze`, longer than its session: its partitions move to
    /// the other while its uploads are still retrying, then it thaws and takes some back.
    AuditFrozenDuringRgwOutage { outage: Duration, freeze: Duration },
    /// The upstream answers 302 for this long (the events must be FAILED, not delivered by a
    /// followed redirect), a 1.2 MB record compressed below the broker's limit arrives (it
    /// must be rejected without holding anything up), then the broker restarts while the
    /// worker commits.
    RedirectPoisonRestart(Duration),
}

/// A scenario: a fault under `rate` messages per second for `seconds`.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub fault: Fault,
    pub rate: u64,
    pub seconds: u64,
    /// Everything secured: Kafka through the TLS listeners (SCRAM-SHA-512, mutual TLS, PLAIN
    /// over TLS), gRPC with TLS and tokens (see `StackOptions::secured`).
    pub secured: bool,
}

/// What a scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub plan: Plan,
    pub verdict: Verdict,
    /// `relais_audit_records_written_total` agrees with the records in RGW (None when the
    /// audit-service was killed, which loses its in-memory counter by design).
    pub counters_agree: Option<bool>,
    pub peak_worker_lag: f64,
    /// From the end of the fault (or of the load, if later) until lag and buffers are empty.
    pub recovery_seconds: f64,
    pub peak_rss_bytes: BTreeMap<String, u64>,
    /// The outcomes the fault must leave (FAILED for the redirect window, REJECTED for the
    /// poison record) are there; None when the fault expects nothing in particular.
    pub fault_outcomes_seen: Option<bool>,
    /// Deliveries per second to the healthy (default) upstream before the other upstream
    /// failed and while it was down (for [`Fault::BillingDown`]).
    pub healthy_rates: Option<(f64, f64)>,
}

impl Outcome {
    /// For [`Fault::BillingDown`]: whether the healthy upstream kept at least 90 % of its rate
    /// while the other was down.
    pub fn healthy_rate_held(&self) -> Option<bool> {
        self.healthy_rates
            .map(|(before, during)| during >= 0.9 * before)
    }
}

/// Peak lag and RSS, sampled while a scenario runs.
#[derive(Debug, Default)]
struct Watch {
    peak_lag: f64,
    peak_rss: BTreeMap<String, u64>,
}

impl Watch {
    async fn sample(&mut self, stack: &ProcessStack) {
        let mut lag = 0.0;
        for worker in &stack.workers {
            lag += worker.metric_sum("relais_worker_consumer_lag").await;
        }
        self.peak_lag = self.peak_lag.max(lag);
        for (job, services) in stack.services() {
            for service in services {
                if let Some(rss) = service.peak_rss_bytes() {
                    let peak = self.peak_rss.entry(job.to_owned()).or_default();
                    *peak = (*peak).max(rss);
                }
            }
        }
    }
}

fn scenario_file(dir: &std::path::Path, plan: &Plan) -> PathBuf {
    let path = dir.join("load.toml");
    let types = match plan.fault {
        Fault::BillingDown(_) => "\n[types]\n\"order.created\" = 2.0\n\"billing.charged\" = 1.0\n",
        _ => "",
    };
    let text = format!(
        r#"name = "{}"
description = "steady load for a fault scenario"
seed = 17
keys = 500

[mix]
valid = 0.96
malformed_json = 0.01
missing_field = 0.01
bad_timestamp = 0.01
not_an_object = 0.01

{types}
[[phase]]
name = "load"
seconds = {}
rate = {}
"#,
        plan.name, plan.seconds, plan.rate
    );
    std::fs::write(&path, text).expect("load scenario");
    path
}

fn start_load(kafka: &KafkaTestEnv, stack: &ProcessStack, scenario: &std::path::Path) -> Child {
    Command::new(binary("loadgen"))
        .args([
            "--kafka-bootstrap",
            kafka.bootstrap(),
            "ingress",
            "--scenario",
        ])
        .arg(scenario)
        .args(["--topic", &stack.topics.ingress])
        .args(["--sim-admin", &stack.sim_admin()])
        .args(["--admin-addr", &free_port().to_string()])
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(stack.dir.join("loadgen.log"))
                .map_or_else(|_| Stdio::null(), Stdio::from),
        )
        .spawn()
        .expect("loadgen starts")
}

async fn set_faults(stack: &ProcessStack, faults: serde_json::Value) {
    set_faults_of(&stack.sim, faults).await;
}

async fn set_faults_of(sim: &crate::Service, faults: serde_json::Value) {
    let response = reqwest::Client::new()
        .put(format!("http://{}/admin/faults", sim.admin))
        .json(&faults)
        .send()
        .await
        .expect("upstream-sim admin answers");
    assert!(response.status().is_success(), "faults refused");
}

fn infra(command: &str, component: &str) {
    let status = Command::new(repository_root().join("deploy/native/infra.sh"))
        .args([command, component])
        .status()
        .expect("infra.sh");
    assert!(status.success(), "infra.sh {command} {component} failed");
}

/// Waits until `load` has ended, sampling meanwhile; returns when it ended.
async fn sample_until_done(load: &mut Child, stack: &ProcessStack, watch: &mut Watch) -> Instant {
    loop {
        if let Ok(Some(status)) = load.try_wait() {
            assert!(
                status.success(),
                "loadgen failed (see its log in {})",
                stack.dir.display()
            );
            return Instant::now();
        }
        watch.sample(stack).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn sleep_sampling(stack: &ProcessStack, watch: &mut Watch, duration: Duration) {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        watch.sample(stack).await;
        tokio::time::sleep(Duration::from_millis(500).min(until - Instant::now())).await;
    }
}

/// Deliveries upstream-sim has accepted so far.
async fn accepted(sim: &crate::Service) -> f64 {
    let Ok(response) = reqwest::get(format!("http://{}/admin/deliveries", sim.admin)).await else {
        return 0.0;
    };
    let deliveries: serde_json::Value = response.json().await.unwrap_or_default();
    deliveries["accepted"].as_f64().unwrap_or(0.0)
}

/// Runs one scenario on a fresh stack and verifies it.
pub async fn run(kafka: &KafkaTestEnv, rgw: &RgwTestEnv, plan: Plan) -> Outcome {
    let options = StackOptions {
        billing_upstream: matches!(plan.fault, Fault::BillingDown(_)),
        audit_instances: match plan.fault {
            Fault::AuditFrozenDuringRgwOutage { .. } => 2,
            _ => 1,
        },
        secured: if plan.secured {
            Some(relais_test_support::secured_kafka().await)
        } else {
            None
        },
        ..StackOptions::default()
    };
    let mut stack = ProcessStack::start(kafka, rgw, None, options).await;
    let scenario = scenario_file(&stack.dir, &plan);
    let mut watch = Watch::default();
    let mut healthy_rates = None;
    let load_started = Instant::now();
    let mut load = start_load(kafka, &stack, &scenario);
    let total = Duration::from_secs(plan.seconds);
    let mut audit_killed = false;
    // Faults start a quarter into the load, when the pipeline is in its stride.
    sleep_sampling(&stack, &mut watch, total / 4).await;
    match &plan.fault {
        Fault::KillEach { rounds } => {
            let step = total / 2 / (rounds * 4).max(1);
            for _ in 0..*rounds {
                for index in 0..4 {
                    let service = match index {
                        0 => &mut stack.workers[0],
                        1 => {
                            audit_killed = true;
                            &mut stack.audit
                        }
                        2 => &mut stack.gateway,
                        _ => &mut stack.sim,
                    };
                    service.kill();
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    service.start_again();
                    sleep_sampling(
                        &stack,
                        &mut watch,
                        step.saturating_sub(Duration::from_secs(2)),
                    )
                    .await;
                }
            }
        }
        Fault::RgwDown(duration) => {
            let outage = rgw.stop_gateway();
            sleep_sampling(&stack, &mut watch, *duration).await;
            outage.end();
        }
        Fault::BrokerDown(duration) => {
            infra("down", "kafka");
            sleep_sampling(&stack, &mut watch, *duration).await;
            infra("up", "kafka");
        }
        Fault::UpstreamDown(duration) => {
            set_faults(&stack, serde_json::json!({"outage": true})).await;
            sleep_sampling(&stack, &mut watch, *duration).await;
            set_faults(&stack, serde_json::json!({})).await;
        }
        Fault::BillingDown(duration) => {
            let billing = stack.billing_sim.as_ref().expect("a billing upstream");
            let before = accepted(&stack.sim).await / load_started.elapsed().as_secs_f64();
            set_faults_of(billing, serde_json::json!({"outage": true})).await;
            let (start, at_start) = (Instant::now(), accepted(&stack.sim).await);
            sleep_sampling(&stack, &mut watch, *duration).await;
            let during = (accepted(&stack.sim).await - at_start) / start.elapsed().as_secs_f64();
            set_faults_of(billing, serde_json::json!({})).await;
            healthy_rates = Some((before, during));
        }
        Fault::SlowUpstream(duration) => {
            set_faults(
                &stack,
                serde_json::json!({"latency": {"kind": "log_normal", "median_ms": 300.0, "sigma": 1.0}}),
            )
            .await;
            sleep_sampling(&stack, &mut watch, *duration).await;
            set_faults(&stack, serde_json::json!({})).await;
        }
        Fault::RedirectPoisonRestart(duration) => {
            set_faults(
                &stack,
                serde_json::json!({"redirect": {"ratio": 1.0, "status": 302}}),
            )
            .await;
            produce_poison(kafka, &stack.topics.ingress).await;
            sleep_sampling(&stack, &mut watch, *duration).await;
            set_faults(&stack, serde_json::json!({})).await;
            infra("down", "kafka");
            sleep_sampling(&stack, &mut watch, Duration::from_secs(5)).await;
            infra("up", "kafka");
        }
        Fault::AuditFrozenDuringRgwOutage { outage, freeze } => {
            let stopped = rgw.stop_gateway();
            sleep_sampling(&stack, &mut watch, *outage / 4).await;
            let pid = stack.audit.pid().expect("the audit-service runs");
            signal(pid, "STOP");
            sleep_sampling(&stack, &mut watch, *freeze).await;
            signal(pid, "CONT");
            sleep_sampling(
                &stack,
                &mut watch,
                outage.saturating_sub(*outage / 4 + *freeze),
            )
            .await;
            stopped.end();
        }
        Fault::ScaleWorkers => {
            stack.add_worker().await;
            stack.add_worker().await;
            sleep_sampling(&stack, &mut watch, total / 3).await;
            stack.remove_worker();
            stack.remove_worker();
        }
    }
    let fault_ended = Instant::now();
    let load_ended = sample_until_done(&mut load, &stack, &mut watch).await;
    let recovery_from = fault_ended.max(load_ended);

    // Caught up: worker lag and the audit-service's lag and buffer all zero, twice in a row
    // (lag gauges refresh every few seconds), read from every service and with every ingress
    // partition held by a worker (see `ProcessStack::backlog`).
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut quiet = 0;
    while quiet < 2 {
        assert!(
            Instant::now() < deadline,
            "{}: not caught up 5 minutes after the load; logs in {}",
            plan.name,
            stack.dir.display()
        );
        watch.sample(&stack).await;
        let backlog = stack.backlog().await;
        let ready = stack.audit_ready().await;
        quiet = if backlog == Some(0.0) && ready {
            quiet + 1
        } else {
            0
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let recovery_seconds = recovery_from.elapsed().as_secs_f64();

    let verdict = verify(kafka, rgw, &stack.topics, &stack.bucket).await;
    let counters_agree = if audit_killed {
        None
    } else {
        let written = stack
            .audit_metric_sum("relais_audit_records_written_total")
            .await;
        Some(written as u64 == verdict.stored_records)
    };
    let fault_outcomes_seen = match plan.fault {
        Fault::RedirectPoisonRestart(_) => Some(["FAILED", "REJECTED"].iter().all(|outcome| {
            verdict
                .outcomes
                .get(*outcome)
                .is_some_and(|count| *count > 0)
        })),
        _ => None,
    };
    let outcome = Outcome {
        fault_outcomes_seen,
        healthy_rates,
        plan,
        verdict,
        counters_agree,
        peak_worker_lag: watch.peak_lag,
        recovery_seconds,
        peak_rss_bytes: watch.peak_rss,
    };
    stack.stop();
    outcome
}

/// One JSON event of 1.2 MB, compressed with lz4 to a few KB so the broker takes it although it
/// is above every client's default record limit.
async fn produce_poison(kafka: &KafkaTestEnv, topic: &str) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka
        .client_config()
        .set("compression.type", "lz4")
        .set("message.max.bytes", "4194304")
        .create()
        .expect("poison producer");
    let payload = format!(
        r#"{{"id":"poison","type":"order.created","occurred_at":"2026-12-01T00:00:00Z","source":"e2e","data":{{"blob":"{}"}}}}"#,
        "x".repeat(1_200_000)
    );
    producer
        .send(
            FutureRecord::to(topic).key("poison").payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("the broker takes the compressed poison record");
}

/// The report table, in Markdown.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | messages | lost | duplicated | dead-lettered | DLQ mismatches | audit object errors | counters agree | peak lag | recovery s | peak RSS MiB (worker / audit / gateway / sim) | healthy upstream msg/s (before / during) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for outcome in outcomes {
        let rss = |job: &str| {
            outcome
                .peak_rss_bytes
                .get(job)
                .map_or("-".to_owned(), |bytes| {
                    format!("{:.0}", *bytes as f64 / 1_048_576.0)
                })
        };
        let v = &outcome.verdict;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {} / {} / {} / {} | {} |\n",
            outcome.plan.name,
            v.messages,
            v.lost,
            v.duplicated,
            v.dead_lettered,
            v.dlq_mismatches,
            v.audit_object_errors,
            outcome
                .counters_agree
                .map_or("n/a (killed)".to_owned(), |agree| agree.to_string()),
            outcome.peak_worker_lag,
            outcome.recovery_seconds,
            rss("ingest-worker"),
            rss("audit-service"),
            rss("realtime-gateway"),
            rss("upstream-sim"),
            outcome
                .healthy_rates
                .map_or("-".to_owned(), |(before, during)| format!(
                    "{before:.0} / {during:.0}"
                )),
        ));
    }
    out
}

/// The short suite (part of `make test`) and the full one (`make e2e`).
pub fn plans(full: bool) -> Vec<Plan> {
    let plan = |name: &str, fault: Fault, rate: u64, seconds: u64| Plan {
        name: name.to_owned(),
        fault,
        rate,
        seconds,
        secured: false,
    };
    if full {
        vec![
            plan(
                "kill -9 each service, 3 rounds",
                Fault::KillEach { rounds: 3 },
                300,
                150,
            ),
            plan(
                "radosgw down 60 s",
                Fault::RgwDown(Duration::from_secs(60)),
                300,
                120,
            ),
            plan(
                "Kafka broker down 30 s",
                Fault::BrokerDown(Duration::from_secs(30)),
                300,
                120,
            ),
            plan(
                "upstream down 60 s",
                Fault::UpstreamDown(Duration::from_secs(60)),
                300,
                120,
            ),
            plan(
                "two upstreams, billing down 3 min",
                Fault::BillingDown(Duration::from_secs(180)),
                300,
                240,
            ),
            plan(
                "slow upstream (p99 3 s) 60 s",
                Fault::SlowUpstream(Duration::from_secs(60)),
                300,
                120,
            ),
            plan("workers 1 → 3 → 1", Fault::ScaleWorkers, 300, 90),
            plan(
                "audit partitions move during a radosgw outage",
                Fault::AuditFrozenDuringRgwOutage {
                    outage: Duration::from_secs(90),
                    freeze: Duration::from_secs(30),
                },
                300,
                120,
            ),
            plan(
                "upstream 302 for 15 s, a 1.2 MB record, broker restart",
                Fault::RedirectPoisonRestart(Duration::from_secs(15)),
                300,
                90,
            ),
            Plan {
                secured: true,
                ..plan(
                    "everything secured (SCRAM, mTLS, gRPC TLS + tokens), kill -9 each service",
                    Fault::KillEach { rounds: 1 },
                    300,
                    90,
                )
            },
        ]
    } else {
        vec![
            plan(
                "kill -9 each service",
                Fault::KillEach { rounds: 1 },
                150,
                40,
            ),
            plan(
                "upstream down 10 s",
                Fault::UpstreamDown(Duration::from_secs(10)),
                150,
                30,
            ),
            plan("workers 1 → 3 → 1", Fault::ScaleWorkers, 150, 40),
        ]
    }
}

/// Sends `kill -{name}` to a process (STOP freezes it, CONT thaws it).
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid} failed");
}
