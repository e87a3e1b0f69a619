//! audit-service binary: see the library docs.

use std::process::ExitCode;

use relais_audit_service::config::{Args, AuditConfig, Command};
use relais_telemetry::TelemetryConfig;

const TELEMETRY: TelemetryConfig = TelemetryConfig {
    service_name: "audit-service",
    service_version: env!("CARGO_PKG_VERSION"),
    default_log_filter: "info",
};

/// The trail command spawns no tasks of its own; this only bounds the telemetry's shutdown.
const TRAIL_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let (args, process) = relais_telemetry::process::start::<Args>(&TELEMETRY);
    // A gRPC client of a running service: it needs none of the service's own configuration
    // (S3 keys, Kafka), so an operator can run it from anywhere.
    if let Some(Command::Trail {
        url,
        trace_id,
        message_id,
    }) = args.command.clone()
    {
        let lookup = relais_audit_service::query::print_trail(url, trace_id, message_id);
        return process.run(TRAIL_DRAIN_TIMEOUT, lookup).await;
    }
    let config = match AuditConfig::load(&args) {
        Ok(config) => config,
        Err(error) => return relais_telemetry::process::config_error_exit("audit-service", &error),
    };
    let drain_timeout = config.storage.drain_timeout + std::time::Duration::from_secs(5);
    let needs = relais_kafka::access::Needs {
        topics: vec![config.kafka.audit_topic.clone()],
        group: Some(config.kafka.group_id.clone()),
    };
    if let Err(exit) = relais_telemetry::process::check_kafka(
        "audit-service",
        &config.kafka.client,
        &args.kafka_bootstrap,
        needs,
        args.profile,
    )
    .await
    {
        return exit;
    }
    let shutdown = process.shutdown.clone();
    process
        .run(
            drain_timeout,
            relais_audit_service::run(args, config, shutdown),
        )
        .await
}
