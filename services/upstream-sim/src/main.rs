//! upstream-sim binary: see the library docs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use prometheus_client::registry::Registry;
use relais_telemetry::TelemetryConfig;
use relais_telemetry::admin::{AdminServer, Readiness};
use relais_telemetry::shutdown::CancellationToken;
use relais_upstream_sim::{app, server, state::SimState};

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
    let mut registry = Registry::default();
    let state = Arc::new(SimState::new(&mut registry, config.key_capacity));
    let readiness = Readiness::default();
    let serving = readiness.register("api_listening");
    let admin = AdminServer::start_with_routes(
        config.admin_addr,
        Arc::new(registry),
        readiness,
        app::admin_router(Arc::clone(&state)),
        shutdown.clone(),
    )
    .await?;

    let router = app::api_router(Arc::clone(&state));
    let listener = server::bind(config.listen)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", config.listen))?;
    let api = tokio::spawn(server::serve(listener, router, state, shutdown.clone()));
    serving.set_ready();
    let result = api.await?;
    admin.join().await;
    result.map_err(|error| anyhow::anyhow!("upstream API on {} failed: {error}", config.listen))
}
