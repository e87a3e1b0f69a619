//! loadgen: produces traffic for Relais' benchmarks and tests.
//!
//! - `loadgen audit-records`: synthetic audit records for audit-service ([`audit_records`]);
//! - `loadgen ingress --scenario FILE`: ingress traffic from a scenario ([`ingress`]);
//! - `loadgen ws-fanout`: pipeline events to a gateway watched by many WebSocket clients, with
//!   the delivered rate and the produce-to-receipt latency ([`fanout`]);
//! - `loadgen http-post`: the worker's HTTP client alone against an upstream ([`http_post`]);
//! - `loadgen bare-worker`: the worker's consume, POST and transactional outcome records with
//!   nothing of Relais around them ([`bare_worker`]).

mod audit_records;
mod bare_worker;
mod fanout;
mod http_post;
mod ingress;

use anyhow::Context as _;
use clap::Parser;

// The worker's allocator, so `http-post` measures the worker's HTTP client as it runs there
// (its layers allocate per call, and allocators differ most on exactly that).
#[global_allocator]
static ALLOCATOR: relais_alloc::Allocator = relais_alloc::Allocator;

#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Args {
    #[arg(
        long,
        env = "RELAIS_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    kafka_bootstrap: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Produce synthetic audit records (as the worker writes them) to a topic.
    AuditRecords {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Event times spread evenly over this many past hours, ending now.
        #[arg(long, default_value_t = 4)]
        hours: u64,
        /// Every this many records share one trace id (as retries and replays do).
        #[arg(long, default_value_t = 1)]
        records_per_trace: u64,
    },
    /// Ingress traffic from a scenario file (rates, phases, message mix, faults).
    Ingress(ingress::IngressArgs),
    /// Fan-out: many WebSocket clients on a gateway while events are produced at a rate.
    WsFanout(fanout::FanoutArgs),
    /// HTTP POSTs through the worker's client stack (or bare reqwest), as fast as they go.
    HttpPost(http_post::HttpPostArgs),
    /// Kafka → bare HTTP client → two records and the offsets in a transaction, nothing more.
    BareWorker(bare_worker::BareWorkerArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Security settings come from the RELAIS_KAFKA_* variables the services also read.
    let kafka = relais_kafka::KafkaClientConfig::default()
        .resolve(&args.kafka_bootstrap)
        .context("Kafka client settings (RELAIS_KAFKA_*)")?;
    match args.command {
        Command::AuditRecords {
            topic,
            count,
            hours,
            records_per_trace,
        } => audit_records::run(&kafka, &topic, count, hours, records_per_trace.max(1)).await,
        Command::Ingress(ingress) => ingress::run(&kafka, ingress).await,
        Command::WsFanout(fanout) => fanout::run(&kafka, fanout).await,
        Command::HttpPost(http_post) => http_post::run(http_post).await,
        Command::BareWorker(bare) => bare_worker::run(&kafka, bare).await,
    }
}
