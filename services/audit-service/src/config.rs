//! audit-service configuration: a TOML file with defaults for everything, deployment values
//! from flags or `RELAIS_*` variables, and cross-checks at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Command line; every flag also reads its `RELAIS_*` environment variable.
#[derive(Debug, clap::Parser)]
#[command(name = "audit-service", version, about)]
pub struct Args {
    /// The configuration file (TOML); defaults apply without one.
    #[arg(long, env = "RELAIS_AUDIT_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "RELAIS_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap: String,
    /// S3 endpoint of Ceph RGW.
    #[arg(
        long,
        env = "RELAIS_S3_ENDPOINT",
        default_value = "http://127.0.0.1:7480"
    )]
    pub s3_endpoint: String,
    #[arg(long, env = "RELAIS_S3_REGION", default_value = "default")]
    pub s3_region: String,
    /// Required: there is no built-in key.
    #[arg(long, env = "RELAIS_S3_ACCESS_KEY")]
    pub s3_access_key: Option<String>,
    /// Required, here or in `--s3-secret-key-file`.
    #[arg(long, env = "RELAIS_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
    /// A file holding the S3 secret key (a mounted secret).
    #[arg(
        long,
        env = "RELAIS_S3_SECRET_KEY_FILE",
        conflicts_with = "s3_secret_key"
    )]
    pub s3_secret_key_file: Option<PathBuf>,
    /// `production` refuses placeholder and development secrets (exit 64).
    #[arg(long, env = "RELAIS_PROFILE", value_enum, default_value_t)]
    pub profile: relais_telemetry::secrets::Profile,
    #[arg(long, env = "RELAIS_S3_BUCKET", default_value = "relais-audit")]
    pub bucket: String,
    /// Admin endpoint (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "RELAIS_ADMIN_ADDR", default_value = "127.0.0.1:9102")]
    pub admin_addr: SocketAddr,
    /// gRPC endpoint (`AuditQuery`, health).
    #[arg(long, env = "RELAIS_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Run,
    /// Ask a running audit-service for a trail and print it as JSON lines, with the latency.
    /// `--message-id upstream/{name}` or `replay/{job}` gives the operator actions on them.
    Trail {
        /// gRPC URL of the service.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        url: String,
        #[arg(
            long,
            conflicts_with = "message_id",
            required_unless_present = "message_id"
        )]
        trace_id: Option<String>,
        #[arg(long)]
        message_id: Option<String>,
    },
}

/// The S3 user the service writes as.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl Args {
    /// The S3 keys, from the flags, the variables or the secret file; both are required, and
    /// the production profile refuses development values and placeholders.
    pub fn s3_credentials(&self) -> Result<S3Credentials, ConfigError> {
        use relais_telemetry::secrets::{self, SecretKind};
        let missing = || {
            ConfigError::Invalid(
                "S3 credentials are required: RELAIS_S3_ACCESS_KEY and RELAIS_S3_SECRET_KEY (or RELAIS_S3_SECRET_KEY_FILE)".into(),
            )
        };
        let access_key = self
            .s3_access_key
            .clone()
            .filter(|key| !key.is_empty())
            .ok_or_else(missing)?;
        let secret_key = match (&self.s3_secret_key, &self.s3_secret_key_file) {
            (_, Some(path)) => secrets::read_file("RELAIS_S3_SECRET_KEY_FILE", path)
                .map_err(ConfigError::Invalid)?,
            (Some(key), None) if !key.is_empty() => key.clone(),
            _ => return Err(missing()),
        };
        for (what, value) in [
            ("RELAIS_S3_ACCESS_KEY", &access_key),
            ("the S3 secret key", &secret_key),
        ] {
            secrets::check(what, value, SecretKind::Credential, self.profile)
                .map_err(ConfigError::Invalid)?;
        }
        Ok(S3Credentials {
            access_key,
            secret_key,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    pub kafka: KafkaConfig,
    pub objects: ObjectsConfig,
    pub buffer: BufferConfig,
    pub storage: StorageConfig,
    pub retention: RetentionConfig,
    pub query: QueryConfig,
    /// How `AuditQuery` callers are checked: TLS, client certificates, bearer tokens, request
    /// size.
    pub grpc: relais_grpc::GrpcServerConfig,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub group_id: String,
    pub audit_topic: String,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub session_timeout: Duration,
    /// Records fetched ahead of the pipeline, in KiB (librdkafka's `queued.max.messages.kbytes`):
    /// throughput against memory, as librdkafka holds several times this. The measured
    /// trade-off is in docs/audit-service.md, "Memory".
    pub prefetch_kbytes: u32,
    /// How the service reaches the brokers (TLS, SASL, further librdkafka settings), the same
    /// section in every service.
    pub client: relais_kafka::KafkaClientConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            group_id: "relais-audit".into(),
            audit_topic: "relais.audit".into(),
            session_timeout: Duration::from_secs(10),
            prefetch_kbytes: 4 * 1024,
            client: relais_kafka::KafkaClientConfig::default(),
        }
    }
}

/// How records become objects (see `object/mod.rs` for why each rule is deterministic).
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectsConfig {
    /// Key prefix inside the bucket.
    pub prefix: String,
    pub max_records: usize,
    /// Uncompressed NDJSON bytes per object, newlines included.
    pub max_bytes: usize,
    /// A partition with no new record for this long has its open object written.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle: Duration,
    pub compression: Compression,
    /// gzip 0-9 or zstd 1-19; lower is faster. The default, 2, is where gzip's ratio on audit
    /// lines levels off: 3 makes objects 2-3 % smaller for 15-35 % more CPU in gzip.
    pub compression_level: u32,
    /// Objects larger than this (compressed) go up as multipart uploads.
    pub multipart_threshold_bytes: usize,
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        Self {
            prefix: "audit".into(),
            max_records: 20_000,
            max_bytes: 16 * 1024 * 1024,
            idle: Duration::from_secs(5),
            compression: Compression::Gzip,
            compression_level: 2,
            multipart_threshold_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Gzip => "ndjson.gz",
            Self::Zstd => "ndjson.zst",
        }
    }
}

/// The bound on what is held in memory while RGW is slow or down.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BufferConfig {
    /// Records held at once. Room for a full open object on every partition and as many again
    /// being stored: when partitions fill their objects in step, a smaller buffer pauses
    /// consumption at every rotation, and a paused partition's prefetch is dropped and fetched
    /// again.
    pub max_records: usize,
    /// NDJSON bytes held at once (payload bytes for records not yet encoded): the bound on the
    /// buffer's memory.
    pub max_bytes: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_records: 500_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Create the bucket at start-up if it does not exist.
    pub create_bucket: bool,
    /// Limit of one PUT (or one multipart part).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub put_timeout: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub base_backoff: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// How long shutdown may wait for objects still being written.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            create_bucket: true,
            put_timeout: Duration::from_secs(30),
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Trail lookups (`AuditQuery.GetTrail`), which run in the process that ingests.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Lookups running at once; others wait for a slot until their deadline, then are refused.
    pub max_concurrent_lookups: usize,
    /// How long one lookup may take (waiting for a slot included); then it answers with what
    /// it has, marked partial. A caller's shorter gRPC deadline wins.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub deadline: Duration,
    /// The longest window a lookup may ask for.
    pub max_range_days: u32,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            max_concurrent_lookups: 4,
            deadline: Duration::from_secs(10),
            max_range_days: 31,
        }
    }
}

/// The bucket's lifecycle, set by the service at start-up (see `retention`).
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Set the lifecycle rules below on the bucket at start-up (rules of other names are kept).
    /// Off when the bucket's lifecycle is managed elsewhere.
    pub manage_lifecycle: bool,
    /// Audit objects (data, index, quarantine) are deleted by RGW this many days after they
    /// were written; 0 keeps them for ever.
    pub expire_after_days: u32,
    /// Parts of multipart uploads never completed (a crash mid-upload) are deleted after this
    /// many days.
    pub abort_incomplete_uploads_after_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            manage_lifecycle: true,
            expire_after_days: 365,
            abort_incomplete_uploads_after_days: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] relais_telemetry::process::ConfigFileError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Grpc(#[from] relais_grpc::GrpcSecurityError),
}

impl AuditConfig {
    pub fn load(args: &Args) -> Result<Self, ConfigError> {
        let config: Self = relais_telemetry::process::load_toml(args.config.as_deref())?;
        config.validate()?;
        {
            use relais_telemetry::secrets::{SecretKind, rule};
            config
                .grpc
                .resolve()?
                .check_tokens(rule("grpc.tokens_file", SecretKind::Token, args.profile))
                .map_err(ConfigError::Invalid)?;
        }
        args.s3_credentials()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: &str| Err(ConfigError::Invalid(message.to_owned()));
        if !(1..=2_097_151).contains(&self.kafka.prefetch_kbytes) {
            // librdkafka's range for queued.max.messages.kbytes.
            return invalid("kafka.prefetch_kbytes must be between 1 and 2097151");
        }
        let objects = &self.objects;
        if objects.max_records == 0 || objects.max_bytes == 0 {
            return invalid("objects.max_records and objects.max_bytes must be positive");
        }
        if self.buffer.max_records < objects.max_records
            || self.buffer.max_bytes < objects.max_bytes
        {
            return invalid(
                "the buffer must hold at least one full object (buffer.max_* >= objects.max_*)",
            );
        }
        match objects.compression {
            Compression::Gzip if objects.compression_level > 9 => {
                return invalid("gzip levels are 0-9");
            }
            Compression::Zstd if !(1..=19).contains(&objects.compression_level) => {
                return invalid("zstd levels are 1-19");
            }
            _ => {}
        }
        if objects.multipart_threshold_bytes < 5 * 1024 * 1024 {
            return invalid(
                "objects.multipart_threshold_bytes must be at least 5 MiB (the S3 minimum part size)",
            );
        }
        if objects.prefix.is_empty()
            || objects.prefix.starts_with('/')
            || objects.prefix.ends_with('/')
        {
            return invalid("objects.prefix must be non-empty, without leading or trailing '/'");
        }
        if self.query.max_concurrent_lookups == 0 || self.query.deadline.is_zero() {
            return invalid("query.max_concurrent_lookups and query.deadline must be positive");
        }
        if self.retention.abort_incomplete_uploads_after_days == 0 {
            return invalid(
                "retention.abort_incomplete_uploads_after_days must be at least 1 (S3 counts whole days)",
            );
        }
        if self.storage.drain_timeout >= self.kafka.session_timeout * 6 {
            return invalid("storage.drain_timeout is far beyond the group's session timeout");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_typos_are_caught() {
        AuditConfig::default().validate().expect("defaults");
        assert!(toml::from_str::<AuditConfig>("[objects]\nmax_record = 5").is_err());
        let config: AuditConfig =
            toml::from_str("[objects]\ncompression = \"zstd\"\ncompression_level = 25")
                .expect("parses");
        assert!(config.validate().is_err());
        let config: AuditConfig = toml::from_str("[buffer]\nmax_records = 10").expect("parses");
        assert!(
            config.validate().is_err(),
            "a buffer smaller than one object"
        );
    }
}
