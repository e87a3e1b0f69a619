//! The life of a service process, shared by every binary so their `main`s stay thin:
//! telemetry first, then typed configuration (invalid configuration exits with code 64 and
//! clap's explanation, never a panic), then the service runs until SIGTERM/SIGINT, then a
//! bounded drain and a flush of buffered spans.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::shutdown::{self, CancellationToken, TaskTracker};
use crate::{TelemetryConfig, TelemetryGuard};

/// EX_USAGE from sysexits.h: the configuration was invalid.
pub const EXIT_CONFIG: u8 = 64;
/// EX_SOFTWARE: telemetry could not be installed.
const EXIT_TELEMETRY: u8 = 70;
/// EX_NOPERM: Kafka refused the credentials or certificates, or an ACL is missing.
pub const EXIT_KAFKA_ACCESS: u8 = 77;
/// How long the start-up check waits for brokers to answer before the service goes on without
/// the answer (it then waits for them as it always did).
const KAFKA_CHECK_DEADLINE: Duration = Duration::from_secs(10);

/// What a running service holds on to: the shutdown signal and the tasks to drain.
#[derive(Debug)]
pub struct Process {
    /// Cancelled on SIGTERM or SIGINT; every long-running task watches it.
    pub shutdown: CancellationToken,
    /// Tasks spawned here are waited for (with a deadline) when the process stops.
    pub tasks: TaskTracker,
    telemetry: TelemetryGuard,
}

/// Installs telemetry, parses the configuration `C` from arguments and environment, and
/// starts listening for shutdown signals. Exits the process on failure.
pub fn start<C: clap::Parser>(telemetry: &TelemetryConfig) -> (C, Process) {
    let guard = crate::init(telemetry).unwrap_or_else(|error| {
        eprintln!(
            "{}: cannot start telemetry: {error}",
            telemetry.service_name
        );
        std::process::exit(i32::from(EXIT_TELEMETRY));
    });
    let config = C::try_parse().unwrap_or_else(|error| {
        let code = if error.use_stderr() { EXIT_CONFIG } else { 0 };
        let _ = error.print();
        std::process::exit(i32::from(code));
    });
    let shutdown = CancellationToken::new();
    shutdown::cancel_on_signal(shutdown.clone());
    let process = Process {
        shutdown,
        tasks: TaskTracker::new(),
        telemetry: guard,
    };
    (config, process)
}

impl Process {
    /// Runs `service` to completion, then drains the tracked tasks within `drain_timeout` and
    /// flushes telemetry. A service error is logged with its whole cause chain.
    pub async fn run<F>(self, drain_timeout: Duration, service: F) -> ExitCode
    where
        F: Future<Output = anyhow::Result<()>>,
    {
        let result = service.await;
        // Whatever ended the service, every other task must stop too.
        self.shutdown.cancel();
        shutdown::drain(&self.tasks, drain_timeout).await;
        let code = match &result {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "stopped on error");
                ExitCode::FAILURE
            }
        };
        self.telemetry.shutdown().await;
        code
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration in {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
}

/// Reads a TOML configuration file, or the defaults when there is none. Unknown fields are
/// the configuration type's business (`deny_unknown_fields`).
pub fn load_toml<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigFileError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigFileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Resolves `[kafka.client]` for `bootstrap` and asks the brokers for what the service
/// `needs`. Invalid settings (and, in the production `profile`, placeholder secrets) exit with
/// [`EXIT_CONFIG`], refused credentials or certificates and
/// missing ACLs with [`EXIT_KAFKA_ACCESS`], each with the reason; brokers that do not answer in
/// time are logged, and the service starts and waits for them as it would without the check.
pub async fn check_kafka(
    service: &str,
    config: &relais_kafka::KafkaClientConfig,
    bootstrap: &str,
    needs: relais_kafka::access::Needs,
    profile: crate::secrets::Profile,
) -> Result<relais_kafka::KafkaClient, ExitCode> {
    let client = config
        .resolve(bootstrap)
        .map_err(|error| config_error_exit(service, &error))?;
    client
        .check_secrets(|key, value| {
            crate::secrets::check(
                &format!("kafka.client ({key})"),
                value,
                crate::secrets::SecretKind::Credential,
                profile,
            )
        })
        .map_err(|reason| {
            eprintln!("{service}: {reason}");
            ExitCode::from(EXIT_CONFIG)
        })?;
    let checked = client.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        relais_kafka::access::check_access(&checked, &needs, KAFKA_CHECK_DEADLINE)
    })
    .await;
    match verdict {
        Ok(Ok(())) => {
            tracing::info!(
                brokers = client.bootstrap(),
                security_protocol = client.setting("security.protocol").unwrap_or_default(),
                sasl_user = client.setting("sasl.username").unwrap_or_default(),
                "Kafka access checked"
            );
            Ok(client)
        }
        Ok(Err(error)) if error.is_fatal() => {
            tracing::error!(%error, "stopping: Kafka access");
            eprintln!("{service}: {error}");
            Err(ExitCode::from(EXIT_KAFKA_ACCESS))
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "starting without an answer from Kafka; waiting for it");
            Ok(client)
        }
        Err(error) => {
            tracing::warn!(%error, "the Kafka access check did not finish");
            Ok(client)
        }
    }
}

/// Prints a configuration error with its whole cause chain and returns EX_USAGE (64): the
/// process has not started anything yet, so exiting is all there is to do.
pub fn config_error_exit(service: &str, error: &dyn std::error::Error) -> ExitCode {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    eprintln!("{service}: {message}");
    ExitCode::from(EXIT_CONFIG)
}
