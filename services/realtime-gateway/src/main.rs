//! realtime-gateway: REST API, WebSocket feed and live dashboard over `relais.events`; receives the
//! workers' `WorkerReport` streams.
//!
//! So far the binary is the shared process skeleton only: telemetry, typed configuration, the
//! admin endpoint and a bounded graceful shutdown. The gateway is built on it
//! (see the open issues); until then it serves `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use prometheus_client::registry::Registry;
use relais_telemetry::TelemetryConfig;
use relais_telemetry::admin::{AdminServer, Readiness};
use relais_telemetry::shutdown::CancellationToken;

/// Configuration; every flag also reads its `RELAIS_*` environment variable.
#[derive(Debug, Parser)]
#[command(name = "realtime-gateway", version, about)]
struct Config {
    /// Address of the admin endpoint (`/metrics`, `/healthz`, `/readyz`). Keep it off public
    /// interfaces; containers bind 0.0.0.0 on their internal network.
    #[arg(long, env = "RELAIS_ADMIN_ADDR", default_value = "127.0.0.1:9103")]
    admin_addr: SocketAddr,

    /// How long shutdown may take before the process exits anyway, in seconds.
    #[arg(long, env = "RELAIS_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    drain_timeout_secs: u64,
}

const TELEMETRY: TelemetryConfig = TelemetryConfig {
    service_name: "realtime-gateway",
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
    let registry = Arc::new(Registry::with_prefix("relais"));
    let admin = AdminServer::start(
        config.admin_addr,
        registry,
        Readiness::default(),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(admin = %admin.local_addr(), "started");
    shutdown.cancelled().await;
    admin.join().await;
    Ok(())
}
