//! The command line: the deployment-specific values (brokers, identity, ports), each flag also
//! read from its `RELAIS_*` variable, and the subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Command line; every flag also reads its `RELAIS_*` environment variable.
#[derive(Debug, clap::Parser)]
#[command(name = "ingest-worker", version, about)]
pub struct Args {
    /// The configuration file (TOML). Without one, the defaults plus one upstream named
    /// `default` at `--upstream-url` are used.
    #[arg(long, env = "RELAIS_WORKER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Kafka bootstrap servers.
    #[arg(long, env = "RELAIS_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap: String,

    /// Identity of this replica. It names the transactional producer, so it must be stable
    /// across restarts of the same replica (a restart then fences its predecessor at once)
    /// and unique among live replicas. Defaults to the host name and admin port.
    #[arg(long, env = "RELAIS_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Admin endpoint (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "RELAIS_ADMIN_ADDR", default_value = "127.0.0.1:9101")]
    pub admin_addr: SocketAddr,

    /// gRPC address of the realtime-gateway to stream status to (overrides the file).
    #[arg(long, env = "RELAIS_GATEWAY_GRPC")]
    pub gateway: Option<String>,

    /// `production` refuses placeholder and development secrets and tokens shorter than 32
    /// characters (exit 64).
    #[arg(
        long,
        env = "RELAIS_PROFILE",
        value_enum,
        default_value_t,
        global = true
    )]
    pub profile: relais_telemetry::secrets::Profile,

    /// Base URL of the `default` upstream when no configuration file names upstreams.
    #[arg(
        long,
        env = "RELAIS_UPSTREAM_URL",
        default_value = "http://127.0.0.1:8090"
    )]
    pub upstream_url: String,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the pipeline (the default).
    Run,
    /// Move dead-lettered records back to the ingress topic for another try. Each record is
    /// replayed at most once (the replay ledger remembers); filters combine with AND, a
    /// repeated filter with OR.
    ReplayDlq {
        /// Only records with this reason code (repeatable).
        #[arg(long = "reason")]
        reasons: Vec<String>,
        /// Only records routed to this upstream (repeatable).
        #[arg(long = "upstream")]
        upstreams: Vec<String>,
        /// Only records with this message id (repeatable).
        #[arg(long = "message-id")]
        message_ids: Vec<String>,
        /// Only records dead-lettered at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Only records dead-lettered before this time (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// Count what would be replayed without writing anything.
        #[arg(long)]
        dry_run: bool,
        /// Who runs the replay, recorded in the ledger beside each replayed record.
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
    },
}

impl Command {
    /// The replay asked for, if this is `replay-dlq`.
    pub fn replay_request(&self) -> Option<relais_operator::replay::ReplayRequest> {
        let Self::ReplayDlq {
            reasons,
            upstreams,
            message_ids,
            from,
            to,
            limit,
            dry_run,
            by,
        } = self
        else {
            return None;
        };
        Some(relais_operator::replay::ReplayRequest {
            job: relais_operator::replay::new_job_id(),
            selection: relais_operator::replay::Selection {
                reasons: reasons.clone(),
                upstreams: upstreams.clone(),
                message_ids: message_ids.clone(),
                from: from.map(Into::into),
                to: to.map(Into::into),
            },
            limit: *limit,
            dry_run: *dry_run,
            requested_by: by.clone(),
        })
    }
}
