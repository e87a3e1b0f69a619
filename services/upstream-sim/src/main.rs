//! upstream-sim binary: see the library docs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use relais_telemetry::TelemetryConfig;
use relais_telemetry::shutdown::CancellationToken;

/// Configuration; every flag also reads its `RELAIS_*` environment variable.
#[derive(Debug, Parser)]
#[command(name = "upstream-sim", version, about)]
struct Config {
    /// Address of the simulated API.
    #[arg(long, env = "RELAIS_SIM_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,

    /// Address of the admin endpoint: fault control (`/admin/*`), `/metrics`, health.
    #[arg(long, env = "RELAIS_ADMIN_ADDR", default_value = "127.0.0.1:9104")]
    admin_addr: SocketAddr,

    /// How many distinct Idempotency-Keys are tracked before new ones go uncounted.
    #[arg(long, env = "RELAIS_SIM_KEY_CAPACITY", default_value_t = 2_000_000)]
    key_capacity: usize,

    /// How long shutdown may take, in seconds.
    #[arg(long, env = "RELAIS_DRAIN_TIMEOUT_SECS", default_value_t = 5)]
    drain_timeout_secs: u64,
}

const TELEMETRY: TelemetryConfig = TelemetryConfig {
    service_name: "upstream-sim",
    service_version: env!("CARGO_PKG_VERSION"),
    default_log_filter: "info",
};

#[tokio::main]
async fn main() -> ExitCode {
    let (config, process) = relais_telemetry::process::start::<Config>(&TELEMETRY);
    let drain_timeout = Duration::from_secs(config.drain_timeout_secs);
    let shutdown = process.shutdown.clone();
    process.run(drain_timeout, run(config, shutdown)).await
}

async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    relais_upstream_sim::start(
        config.listen,
        config.admin_addr,
        config.key_capacity,
        shutdown,
    )
    .await?
    .join()
    .await
}
