//! realtime-gateway binary: see the library docs.

use std::process::ExitCode;

use relais_realtime_gateway::config::{Args, GatewayConfig, load_tokens};
use relais_telemetry::TelemetryConfig;

#[global_allocator]
static ALLOCATOR: relais_alloc::Allocator = relais_alloc::Allocator;

const TELEMETRY: TelemetryConfig = TelemetryConfig {
    service_name: "realtime-gateway",
    service_version: env!("CARGO_PKG_VERSION"),
    default_log_filter: "info",
};

#[tokio::main]
async fn main() -> ExitCode {
    let (args, process) = relais_telemetry::process::start::<Args>(&TELEMETRY);
    let loaded = GatewayConfig::load(&args).and_then(|config| Ok((config, load_tokens(&args)?)));
    let (config, tokens) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            return relais_telemetry::process::config_error_exit("realtime-gateway", &error);
        }
    };
    if let Err(exit) = relais_telemetry::process::check_kafka(
        "realtime-gateway",
        &config.kafka.client,
        &args.kafka_bootstrap,
        config.kafka.needs(),
        args.profile,
    )
    .await
    {
        return exit;
    }
    let shutdown = process.shutdown.clone();
    process
        .run(
            std::time::Duration::from_secs(15),
            relais_realtime_gateway::run(args, config, tokens, shutdown),
        )
        .await
}
