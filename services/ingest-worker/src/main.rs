//! ingest-worker binary: see the library docs.

use std::io::Write as _;
use std::process::ExitCode;

use relais_ingest_worker::config::{Args, Command, WorkerConfig};
use relais_telemetry::TelemetryConfig;

/// The pipeline allocates per message (records, headers, spans); mimalloc's thread-local free
/// lists made the worker benchmark about 10 % faster than glibc malloc (`make bench`).
#[global_allocator]
static ALLOCATOR: relais_alloc::Allocator = relais_alloc::Allocator;

const TELEMETRY: TelemetryConfig = TelemetryConfig {
    service_name: "ingest-worker",
    service_version: env!("CARGO_PKG_VERSION"),
    default_log_filter: "info",
};

#[tokio::main]
async fn main() -> ExitCode {
    let (args, process) = relais_telemetry::process::start::<Args>(&TELEMETRY);
    let config = match WorkerConfig::load(&args) {
        Ok(config) => config,
        Err(error) => return relais_telemetry::process::config_error_exit("ingest-worker", &error),
    };
    let kafka = match relais_telemetry::process::check_kafka(
        "ingest-worker",
        &config.kafka.client,
        &args.kafka_bootstrap,
        config.kafka_needs(),
        args.profile,
    )
    .await
    {
        Ok(kafka) => kafka,
        Err(exit) => return exit,
    };
    if matches!(args.command, Some(Command::Run) | None) {
        let (checked_kafka, checked) = (kafka.clone(), config.clone());
        let topics = tokio::task::spawn_blocking(move || {
            relais_ingest_worker::check_retry_topics(&checked_kafka, &checked)
        })
        .await;
        if let Ok(Err(error)) = topics {
            return relais_telemetry::process::config_error_exit("ingest-worker", &error);
        }
    }
    let drain_timeout = config.pipeline.drain_timeout + std::time::Duration::from_secs(5);
    match &args.command {
        Some(command @ Command::ReplayDlq { .. }) => {
            let request = command.replay_request().unwrap_or_default();
            process
                .run(drain_timeout, async move {
                    let summary = relais_operator::replay::replay(
                        &config.replay_target(kafka),
                        &request,
                        &|_| {},
                    )
                    .await?;
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "{}", serde_json::to_string_pretty(&summary)?)?;
                    Ok(())
                })
                .await
        }
        Some(Command::Run) | None => {
            let shutdown = process.shutdown.clone();
            process
                .run(
                    drain_timeout,
                    relais_ingest_worker::run(args, config, shutdown),
                )
                .await
        }
    }
}
