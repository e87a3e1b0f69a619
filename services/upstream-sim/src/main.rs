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

    /// Standard Webhooks keys every delivery's signature must match, separated by commas:
    /// `whsec_…` (HMAC) or `whpk_…` (Ed25519 public keys). Unset: signatures are not checked.
    #[arg(long, env = "RELAIS_SIM_WEBHOOK_KEYS", hide_env_values = true)]
    webhook_keys: Option<String>,

    /// A header every delivery must carry, as `name=value` (an API key, say).
    #[arg(long, env = "RELAIS_SIM_REQUIRE_HEADER", hide_env_values = true)]
    require_header: Option<String>,

    /// `client_id:client_secret` of the one OAuth2 client: turns on `POST /oauth/token`
    /// (client-credentials grant) and requires its bearer tokens on every delivery.
    #[arg(long, env = "RELAIS_SIM_OAUTH_CLIENT", hide_env_values = true)]
    oauth_client: Option<String>,

    /// Lifetime of the tokens issued, in seconds.
    #[arg(long, env = "RELAIS_SIM_OAUTH_TOKEN_TTL_SECS", default_value_t = 3600)]
    oauth_token_ttl_secs: u64,

    /// How far a delivery's `webhook-timestamp` may be from now, in seconds.
    #[arg(long, env = "RELAIS_SIM_WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    webhook_tolerance_secs: i64,

    /// How long shutdown may take, in seconds.
    /// Serve the API over HTTPS with this certificate (PEM chain)...
    #[arg(long, env = "RELAIS_SIM_TLS_CERTIFICATE_FILE", requires = "tls_key")]
    tls_certificate: Option<std::path::PathBuf>,
    /// ...and this private key (PEM).
    #[arg(long, env = "RELAIS_SIM_TLS_KEY_FILE", requires = "tls_certificate")]
    tls_key: Option<std::path::PathBuf>,
    /// Require a client certificate of this CA (PEM) from every caller: mutual TLS.
    #[arg(
        long,
        env = "RELAIS_SIM_TLS_CLIENT_CA_FILE",
        requires = "tls_certificate"
    )]
    tls_client_ca: Option<std::path::PathBuf>,
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
    let verifier = config
        .webhook_keys
        .as_deref()
        .map(|keys| {
            relais_webhooks::Verifier::new(
                keys.split(',').filter(|key| !key.trim().is_empty()),
                config.webhook_tolerance_secs,
            )
        })
        .transpose()
        .map_err(|error| anyhow::anyhow!("--webhook-keys: {error}"))?;
    let required_header = config
        .require_header
        .as_deref()
        .map(|pair| {
            pair.split_once('=')
                .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--require-header takes name=value"))
        })
        .transpose()?;
    let oauth = config
        .oauth_client
        .as_deref()
        .map(|pair| {
            pair.split_once(':')
                .map(|(id, secret)| {
                    relais_upstream_sim::auth::TokenIssuer::new(
                        id.to_owned(),
                        secret.to_owned(),
                        Duration::from_secs(config.oauth_token_ttl_secs),
                    )
                })
                .ok_or_else(|| anyhow::anyhow!("--oauth-client takes client_id:client_secret"))
        })
        .transpose()?;
    let auth = relais_upstream_sim::auth::AuthChecks {
        required_header,
        verifier,
        oauth,
    };
    let tls = match (config.tls_certificate, config.tls_key) {
        (Some(certificate_file), Some(key_file)) => Some(relais_upstream_sim::tls::ApiTls {
            certificate_file,
            key_file,
            client_ca_file: config.tls_client_ca,
        }),
        _ => None,
    };
    relais_upstream_sim::start_with(
        config.listen,
        config.admin_addr,
        relais_upstream_sim::SimOptions {
            key_capacity: config.key_capacity,
            auth,
            tls,
        },
        shutdown,
    )
    .await?
    .join()
    .await
}
