//! `loadgen ingress`: ingress traffic from a scenario file.
//!
//! A scenario is a sequence of phases (a rate for some seconds, optionally setting
//! upstream-sim faults when the phase starts) and a message mix: valid events and each kind of
//! invalid input the worker must reject, with keys, sizes and routes. Everything random comes
//! from one seeded generator, so a seed gives the same messages in the same order; ids are
//! `{id_prefix}-{n}`, and the prefix defaults to the seed and the start time so two runs do not
//! collide in the upstream's deduplication.
//!
//! While running it prints a progress line (rate, sent, errors, elapsed) on stderr and serves
//! its own metrics; at the end a summary for people on stderr and one JSON line on stdout.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use relais_telemetry::admin::{AdminServer, Readiness};
use relais_telemetry::shutdown::CancellationToken;
use serde::{Deserialize, Serialize};

#[derive(Debug, clap::Args)]
pub(crate) struct IngressArgs {
    /// The scenario file (TOML; see loadtest/scenarios/).
    #[arg(long)]
    scenario: PathBuf,
    /// Overrides the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Multiplies every phase's rate.
    #[arg(long, default_value_t = 1.0)]
    rate_factor: f64,
    /// Overrides every phase's duration, in seconds.
    #[arg(long)]
    seconds: Option<u64>,
    /// Overrides the scenario's topic.
    #[arg(long)]
    topic: Option<String>,
    /// Message ids are `{id_prefix}-{n}`.
    #[arg(long)]
    id_prefix: Option<String>,
    /// upstream-sim's admin URL, for phases that set faults.
    #[arg(
        long,
        env = "RELAIS_SIM_ADMIN",
        default_value = "http://127.0.0.1:9104"
    )]
    sim_admin: String,
    /// Where loadgen serves its own `/metrics`.
    #[arg(long, env = "RELAIS_ADMIN_ADDR", default_value = "127.0.0.1:9105")]
    admin_addr: SocketAddr,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    summary: Option<PathBuf>,
}

/// The kinds of message a scenario mixes; each invalid kind maps to one worker reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Valid,
    MalformedJson,
    MissingField,
    BadTimestamp,
    InvalidTypeName,
    UnknownRoute,
    NotAnObject,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::MalformedJson => "malformed_json",
            Self::MissingField => "missing_field",
            Self::BadTimestamp => "bad_timestamp",
            Self::InvalidTypeName => "invalid_type_name",
            Self::UnknownRoute => "unknown_route",
            Self::NotAnObject => "not_an_object",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Distinct message keys (entity ids); per-key order is what the worker preserves.
    #[serde(default = "default_keys")]
    pub keys: u64,
    /// Size of the `data` object of valid events, uniformly in this range.
    #[serde(default = "default_payload")]
    pub payload_bytes: [usize; 2],
    /// Event types, weighted.
    #[serde(default = "default_types")]
    pub types: BTreeMap<String, f64>,
    /// `route` values, weighted; an empty name means no `route` field.
    #[serde(default)]
    pub routes: BTreeMap<String, f64>,
    /// Valid events carry their key and their sequence number within it in `data`
    /// (`order_key`, `seq`), so upstream-sim can check that each key arrives in order.
    #[serde(default)]
    pub sequence: bool,
    /// Message kinds, weighted.
    pub mix: BTreeMap<Kind, f64>,
    #[serde(rename = "phase")]
    pub phases: Vec<Phase>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Phase {
    pub name: String,
    pub seconds: u64,
    /// Messages per second.
    pub rate: f64,
    /// upstream-sim faults to set when the phase starts (`{}` clears them).
    pub faults: Option<toml::Value>,
}

fn default_seed() -> u64 {
    42
}
fn default_topic() -> String {
    "relais.ingress".into()
}
fn default_keys() -> u64 {
    1000
}
fn default_payload() -> [usize; 2] {
    [64, 512]
}
fn default_types() -> BTreeMap<String, f64> {
    BTreeMap::from([("order.created".into(), 1.0)])
}

impl Scenario {
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the scenario {}", path.display()))?;
        let scenario: Self = toml::from_str(&text)
            .with_context(|| format!("invalid scenario {}", path.display()))?;
        anyhow::ensure!(!scenario.phases.is_empty(), "a scenario needs a [[phase]]");
        anyhow::ensure!(
            scenario.mix.values().sum::<f64>() > 0.0,
            "the [mix] weights must not all be zero"
        );
        anyhow::ensure!(
            scenario.payload_bytes[0] <= scenario.payload_bytes[1],
            "payload_bytes is [min, max]"
        );
        for phase in &scenario.phases {
            anyhow::ensure!(
                phase.rate >= 0.0 && phase.rate.is_finite(),
                "phase {}: rate must be >= 0",
                phase.name
            );
        }
        Ok(scenario)
    }
}

/// Picks from weighted choices with one draw.
fn pick<'a, T>(rng: &mut StdRng, weighted: &'a BTreeMap<T, f64>) -> Option<&'a T> {
    let total: f64 = weighted.values().sum();
    if total <= 0.0 {
        return None;
    }
    let mut point = rng.random::<f64>() * total;
    for (choice, weight) in weighted {
        if point < *weight {
            return Some(choice);
        }
        point -= weight;
    }
    weighted.keys().next_back()
}

/// Builds message `index` of the run: (key, payload, kind).
pub(crate) struct Generator {
    scenario: Scenario,
    rng: StdRng,
    id_prefix: String,
    occurred_at: String,
    /// Next sequence number per key (with `sequence`).
    sequences: std::collections::HashMap<String, u64>,
}

impl Generator {
    pub(crate) fn new(scenario: Scenario, seed: u64, id_prefix: String) -> Self {
        Self {
            scenario,
            rng: StdRng::seed_from_u64(seed),
            id_prefix,
            occurred_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sequences: std::collections::HashMap::new(),
        }
    }

    pub(crate) fn refresh_clock(&mut self) {
        self.occurred_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    }

    pub(crate) fn next(&mut self, index: u64) -> (String, Vec<u8>, Kind) {
        let kind = *pick(&mut self.rng, &self.scenario.mix).unwrap_or(&Kind::Valid);
        let key = format!(
            "entity-{}",
            self.rng.random_range(0..self.scenario.keys.max(1))
        );
        let id = format!("{}-{index}", self.id_prefix);
        let event_type = pick(&mut self.rng, &self.scenario.types)
            .cloned()
            .unwrap_or_else(|| "order.created".into());
        let route = pick(&mut self.rng, &self.scenario.routes)
            .cloned()
            .unwrap_or_default();
        let [min, max] = self.scenario.payload_bytes;
        let size = self.rng.random_range(min..=max);
        let filler: String = (0..size)
            .map(|_| char::from(b'a' + self.rng.random_range(0..26u8)))
            .collect();
        let mut event = serde_json::json!({
            "id": id,
            "type": event_type,
            "occurred_at": self.occurred_at,
            "source": "loadgen",
            "data": {"n": index, "filler": filler},
        });
        if !route.is_empty() {
            event["route"] = route.into();
        }
        if self.scenario.sequence && kind == Kind::Valid {
            let next = self.sequences.entry(key.clone()).or_insert(0);
            event["data"]["order_key"] = key.clone().into();
            event["data"]["seq"] = (*next).into();
            *next += 1;
        }
        match kind {
            Kind::Valid => {}
            Kind::MissingField => {
                event.as_object_mut().map(|o| o.remove("source"));
            }
            Kind::BadTimestamp => event["occurred_at"] = "the day before yesterday".into(),
            Kind::InvalidTypeName => event["type"] = "Not A Type!".into(),
            Kind::UnknownRoute => event["route"] = "no-such-upstream".into(),
            Kind::MalformedJson => {
                let text = event.to_string();
                return (key, text.as_bytes()[..text.len() / 2].to_vec(), kind);
            }
            Kind::NotAnObject => return (key, b"[1, 2, 3]".to_vec(), kind),
        }
        (key, event.to_string().into_bytes(), kind)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone)]
struct LoadMetrics {
    sent: Family<KindLabels, Counter>,
    errors: Counter,
    target_rate: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl LoadMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            sent: Family::default(),
            errors: Counter::default(),
            target_rate: Gauge::default(),
        };
        let loadgen = registry.sub_registry_with_prefix("relais_loadgen");
        loadgen.register(
            "messages_sent",
            "Ingress messages acknowledged by Kafka, by kind",
            metrics.sent.clone(),
        );
        loadgen.register(
            "send_errors",
            "Ingress messages Kafka did not acknowledge",
            metrics.errors.clone(),
        );
        loadgen.register(
            "target_rate",
            "The current phase's rate, messages per second",
            metrics.target_rate.clone(),
        );
        metrics
    }
}

/// Kafka's acknowledgements, counted and exported.
struct Tally {
    acknowledged: u64,
    errors: u64,
    metrics: LoadMetrics,
}

impl Tally {
    fn account(&mut self, kind: Kind, acknowledged: bool) {
        if acknowledged {
            self.acknowledged += 1;
            self.metrics
                .sent
                .get_or_create(&KindLabels { kind: kind.label() })
                .inc();
        } else {
            self.errors += 1;
            self.metrics.errors.inc();
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct PhaseSummary {
    name: String,
    seconds: f64,
    target_rate: f64,
    sent: u64,
    achieved_rate: f64,
}

async fn set_faults(sim_admin: &str, faults: &toml::Value) -> anyhow::Result<()> {
    let body = serde_json::to_value(faults)?;
    let response = reqwest::Client::new()
        .put(format!("{sim_admin}/admin/faults"))
        .timeout(Duration::from_secs(5))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach upstream-sim at {sim_admin}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "upstream-sim refused the faults: {}",
        response.text().await.unwrap_or_default()
    );
    Ok(())
}

pub(crate) async fn run(
    kafka: &relais_kafka::KafkaClient,
    args: IngressArgs,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut scenario = Scenario::load(&args.scenario)?;
    if let Some(topic) = &args.topic {
        scenario.topic.clone_from(topic);
    }
    let seed = args.seed.unwrap_or(scenario.seed);
    let id_prefix = args.id_prefix.clone().unwrap_or_else(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("lg{seed}-{started}")
    });
    let mut registry = Registry::default();
    let metrics = LoadMetrics::register(&mut registry);
    let shutdown = CancellationToken::new();
    relais_telemetry::shutdown::cancel_on_signal(shutdown.clone());
    let admin = AdminServer::start(
        args.admin_addr,
        Arc::new(registry),
        Readiness::default(),
        shutdown.child_token(),
    )
    .await
    .ok();

    let producer: FutureProducer = kafka
        .config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .context("cannot create the Kafka producer")?;
    let topic = scenario.topic.clone();
    let phases = scenario.phases.clone();
    let mut generator = Generator::new(scenario.clone(), seed, id_prefix.clone());
    let interactive = std::io::stderr().is_terminal();
    let _ = writeln!(
        std::io::stderr().lock(),
        "{}: {} (seed {seed}, ids {id_prefix}-N, topic {topic})",
        scenario.name,
        scenario.description
    );
    let started = Instant::now();
    let mut index = 0u64;
    let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut tally = Tally {
        acknowledged: 0,
        errors: 0,
        metrics: metrics.clone(),
    };
    let mut pending = FuturesUnordered::new();
    let mut summaries = Vec::new();
    const MAX_IN_FLIGHT: usize = 100_000;

    'phases: for phase in &phases {
        if let Some(faults) = &phase.faults {
            set_faults(&args.sim_admin, faults).await?;
        }
        let seconds = args.seconds.unwrap_or(phase.seconds);
        let rate = phase.rate * args.rate_factor;
        metrics.target_rate.set(rate);
        let phase_started = Instant::now();
        let phase_first = index;
        let mut owed = 0.0;
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        let mut last_progress = Instant::now();
        while phase_started.elapsed() < Duration::from_secs(seconds) {
            tokio::select! {
                _ = shutdown.cancelled() => break 'phases,
                _ = ticker.tick() => {}
            }
            owed += rate / 100.0;
            generator.refresh_clock();
            while owed >= 1.0 && pending.len() < MAX_IN_FLIGHT {
                owed -= 1.0;
                let (key, payload, kind) = generator.next(index);
                index += 1;
                *by_kind.entry(kind.label()).or_default() += 1;
                let producer = producer.clone();
                let topic = topic.clone();
                pending.push(async move {
                    let record = FutureRecord::to(&topic).key(&key).payload(&payload);
                    (
                        kind,
                        producer
                            .send(record, Timeout::After(Duration::from_secs(30)))
                            .await
                            .is_ok(),
                    )
                });
            }
            // Collect what Kafka acknowledged without waiting for the rest.
            while let Some(Some((kind, ok))) = futures::FutureExt::now_or_never(pending.next()) {
                tally.account(kind, ok);
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                let elapsed = started.elapsed().as_secs_f64();
                let line = format!(
                    "[{} {:>3}/{}s] rate {:>8.1}/s  sent {:>9}  errors {:>5}  elapsed {:>5.0}s",
                    phase.name,
                    phase_started.elapsed().as_secs(),
                    seconds,
                    (index - phase_first) as f64 / phase_started.elapsed().as_secs_f64(),
                    tally.acknowledged,
                    tally.errors,
                    elapsed
                );
                let mut stderr = std::io::stderr().lock();
                if interactive {
                    let _ = write!(stderr, "\r{line}");
                } else {
                    let _ = writeln!(stderr, "{line}");
                }
            }
        }
        let phase_seconds = phase_started.elapsed().as_secs_f64();
        summaries.push(PhaseSummary {
            name: phase.name.clone(),
            seconds: phase_seconds,
            target_rate: rate,
            sent: index - phase_first,
            achieved_rate: (index - phase_first) as f64 / phase_seconds.max(1e-9),
        });
    }
    while let Some((kind, ok)) = pending.next().await {
        tally.account(kind, ok);
    }
    let Tally {
        acknowledged,
        errors,
        ..
    } = tally;
    producer.flush(Duration::from_secs(30))?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "scenario": scenario.name,
        "seed": seed,
        "topic": topic,
        "id_prefix": id_prefix,
        "sent": acknowledged,
        "errors": errors,
        "by_kind": by_kind,
        "seconds": seconds,
        "achieved_rate": acknowledged as f64 / seconds.max(1e-9),
        "phases": summaries,
    });
    let mut stderr = std::io::stderr().lock();
    if interactive {
        let _ = writeln!(stderr);
    }
    let _ = writeln!(
        stderr,
        "\n{}: {} messages in {:.1} s ({:.1}/s), {} errors",
        scenario.name,
        acknowledged,
        seconds,
        acknowledged as f64 / seconds.max(1e-9),
        errors
    );
    for (kind, count) in &by_kind {
        let _ = writeln!(stderr, "  {kind:<18} {count:>9}");
    }
    drop(stderr);
    if let Some(path) = &args.summary {
        std::fs::write(path, format!("{summary}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    writeln!(std::io::stdout().lock(), "{summary}")?;
    shutdown.cancel();
    if let Some(admin) = admin {
        admin.join().await;
    }
    anyhow::ensure!(
        errors == 0,
        "{errors} messages were not acknowledged by Kafka"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        toml::from_str(
            r#"
            name = "t"
            keys = 10
            [mix]
            valid = 0.5
            malformed_json = 0.1
            missing_field = 0.1
            bad_timestamp = 0.1
            invalid_type_name = 0.1
            not_an_object = 0.1
            [[phase]]
            name = "p"
            seconds = 1
            rate = 10
            "#,
        )
        .unwrap()
    }

    #[test]
    fn a_seed_gives_the_same_messages() {
        let mut a = Generator::new(scenario(), 7, "x".into());
        let mut b = Generator::new(scenario(), 7, "x".into());
        b.occurred_at.clone_from(&a.occurred_at);
        for index in 0..200 {
            assert_eq!(a.next(index), b.next(index));
        }
    }

    #[test]
    fn the_mix_follows_its_weights_and_every_kind_is_what_it_says() {
        let limits = relais_ingress::Limits::default();
        let normaliser = relais_ingress::Normaliser::new(limits, ["default".to_owned()]);
        let mut generator = Generator::new(scenario(), 1, "m".into());
        let mut valid = 0;
        for index in 0..2000 {
            let (_, payload, kind) = generator.next(index);
            let accepted = normaliser.normalise(&payload, chrono::Utc::now()).is_ok();
            assert_eq!(
                accepted,
                kind == Kind::Valid,
                "{kind:?}: {}",
                String::from_utf8_lossy(&payload)
            );
            valid += u32::from(accepted);
        }
        assert!(
            (900..1100).contains(&valid),
            "{valid} valid of 2000 at weight 0.5"
        );
    }

    /// `make load SCENARIO=name` takes any file of loadtest/scenarios: each one must load.
    #[test]
    fn every_shipped_scenario_loads() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path
                .extension()
                .is_some_and(|extension| extension == "toml")
            {
                Scenario::load(&path).unwrap_or_else(|error| panic!("{error:#}"));
                loaded += 1;
            }
        }
        assert!(
            loaded >= 5,
            "only {loaded} scenarios in {}",
            folder.display()
        );
    }
}
