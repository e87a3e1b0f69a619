//! The sections of the worker's configuration file other than the upstreams
//! ([`super::upstream`]): Kafka, pipeline, ingress limits, routing, status, DLQ and retry
//! tiers, each with its defaults.

use std::time::Duration;

use serde::Deserialize;

/// How much of an original message its dead-letter copy keeps. Every record the worker writes
/// must stay below the broker's size limit whatever it read; what a copy leaves out is said in
/// its `relais-dlq-truncated`, `relais-dlq-original-bytes` and `relais-dlq-original-sha256`
/// headers, and the untruncated original stays in the ingress topic for its retention.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DlqConfig {
    /// Payload bytes kept. At least `ingress.max_payload_bytes`, so that every valid message
    /// that failed delivery is copied whole and can be replayed.
    pub max_payload_bytes: usize,
    /// Bytes of the original headers kept (names and values added up); later headers are
    /// left out.
    pub max_header_bytes: usize,
    /// Key bytes kept.
    pub max_key_bytes: usize,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_header_bytes: 16 * 1024,
            max_key_bytes: 4 * 1024,
        }
    }
}

impl DlqConfig {
    pub fn limits(&self) -> crate::dlq::DlqLimits {
        crate::dlq::DlqLimits {
            max_payload_bytes: self.max_payload_bytes,
            max_header_bytes: self.max_header_bytes,
            max_key_bytes: self.max_key_bytes,
        }
    }
}

/// librdkafka's default `message.max.bytes`, the producer's own limit on a record.
pub(super) const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room left in a DLQ record for the worker's own headers (reason, detail, position, ...).
pub(super) const DLQ_RECORD_OVERHEAD_BYTES: usize = 16 * 1024;

/// Retry tiers (each upstream's schedule is its `retry_tiers`; see ARCHITECTURE.md).
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Each distinct tier delay has the topic `{topic_prefix}.{delay}` (`relais.retry.5m`),
    /// with as many partitions as the ingress topic.
    pub topic_prefix: String,
    /// A message that has waited this long for its turn (rate limit, a short Retry-After, a
    /// full bulkhead) moves to its next retry tier, freeing its partition's commit position; one
    /// whose upstream is down (circuit open, held) moves at once. For upstreams without tiers
    /// it waits on in memory.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub in_memory_wait: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            topic_prefix: "relais.retry".into(),
            in_memory_wait: Duration::from_secs(5),
        }
    }
}

/// Where this replica streams its status (the realtime-gateway's `WorkerReport` service).
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StatusConfig {
    /// gRPC address of the gateway, such as `http://127.0.0.1:50052`; no reporting when unset.
    pub gateway: Option<String>,
    /// How often a snapshot is sent.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// How the worker reaches the gateway (`https://` for TLS): the CA, a client
    /// certificate, a bearer token; variables `RELAIS_STATUS_*`.
    pub client: relais_grpc::GrpcClientConfig,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            gateway: None,
            interval: Duration::from_secs(2),
            client: relais_grpc::GrpcClientConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Consumer group shared by all worker replicas.
    pub group_id: String,
    pub ingress_topic: String,
    pub audit_topic: String,
    pub events_topic: String,
    pub dlq_topic: String,
    /// The replay ledger (compacted): which DLQ records `replay-dlq` has replayed, so none is
    /// replayed twice whatever filters later runs use.
    pub replay_ledger_topic: String,
    /// Whether each upstream is enabled (compacted, keyed by upstream name): a worker disables
    /// an upstream that answered 410, an operator re-enables it through the gateway.
    pub control_topic: String,
    /// A replica that misses heartbeats this long loses its partitions.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub session_timeout: Duration,
    /// An open transaction of a dead replica is aborted by the broker after this long (unless
    /// the replica comes back first and fences it).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub transaction_timeout: Duration,
    /// Limit of one blocking transactional call (send offsets, commit, abort). A commit that
    /// runs out is not aborted: it may complete in the background, so it is asked again until
    /// its result is known.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub transaction_call_timeout: Duration,
    /// Ingress records fetched ahead of the dispatcher, in KiB (librdkafka's
    /// `queued.max.messages.kbytes`, counted compressed). librdkafka keeps each fetched batch
    /// decompressed until its last record is read, so this is the largest share of the
    /// worker's memory that is not messages in progress; too small, and the upstreams' queues
    /// run dry while paused partitions are fetched again (docs/performance.md).
    pub prefetch_kbytes: u32,
    /// The longest commit metadata the worker writes, in bytes: the offsets of messages
    /// finished behind an unfinished one, committed ahead of the offset (docs/ingest-worker.md,
    /// "Guarantees"). 1,024 names any offsets within about 6,000 of the committed one. At most
    /// the brokers' `offset.metadata.max.bytes` (4,096 by default): a broker that refuses the
    /// metadata fails the transaction, and the worker halves this limit and commits again.
    /// 0: nothing committed ahead (what finished behind an unfinished message waits for it).
    pub offset_metadata_max_bytes: usize,
    /// How every Kafka client of the worker reaches the brokers (TLS, SASL, further
    /// librdkafka settings), the same section in every service.
    pub client: relais_kafka::KafkaClientConfig,
}

impl KafkaConfig {
    /// How long the producer tries to deliver a record of a transaction (librdkafka's
    /// `message.timeout.ms`, which otherwise equals `transaction_timeout`). Shorter, so that
    /// records that cannot be delivered (a missing topic, a partition without a leader) fail
    /// the round on the worker's side, which aborts it and tries again, before the
    /// coordinator's own timeout aborts the transaction: librdkafka reports that one as
    /// fencing, which is fatal and costs a new producer.
    pub fn delivery_timeout(&self) -> Duration {
        self.transaction_timeout * 3 / 4
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            group_id: "relais-ingest".into(),
            ingress_topic: "relais.ingress".into(),
            audit_topic: "relais.audit".into(),
            events_topic: "relais.events".into(),
            dlq_topic: "relais.dlq".into(),
            replay_ledger_topic: "relais.dlq-replays".into(),
            control_topic: "relais.upstream-control".into(),
            session_timeout: Duration::from_secs(10),
            transaction_timeout: Duration::from_secs(30),
            transaction_call_timeout: Duration::from_secs(10),
            prefetch_kbytes: 1024,
            offset_metadata_max_bytes: crate::tracker::ahead::DEFAULT_LIMIT,
            client: relais_kafka::KafkaClientConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Messages waiting for each upstream, at most (its deliveries in flight not counted);
    /// beyond, the partition a message came from waits, and pauses if the wait goes on.
    /// Default: 8 × the upstream's `max_in_flight`, at least 256: a queue much shorter than
    /// what the upstream has in flight runs dry while paused partitions are fetched again.
    pub max_queued_per_upstream: Option<usize>,
    /// How often outcomes are committed (one transaction each time).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub commit_interval: Duration,
    /// Outcomes per transaction at most.
    pub max_batch: usize,
    /// While the circuit of an upstream without retry tiers is open: false (default) waits for
    /// it, pausing consumption; true dead-letters at once. (With tiers the message moves to its
    /// next tier at once either way, and is dead-lettered only after the last.)
    pub fail_fast_when_open: bool,
    /// How long shutdown may take: in-flight deliveries finish or are abandoned (and
    /// redelivered later), handled ones are committed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
    /// How long a partition moving to another worker waits for its deliveries in flight to
    /// finish and be committed (those finished behind a message that had not started, ahead
    /// of the offset), so that the next owner does not send them again; what is not committed
    /// by then is read again and sent again by the next owner. The group's rebalance waits as
    /// long. 0 turns the wait off.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub handover_timeout: Duration,
    /// Messages of one partition read and not yet committed, at most; beyond, the partition
    /// pauses until commits catch up (while the transaction coordinator is away, say).
    pub max_uncommitted_per_partition: usize,
    /// Messages read and not yet committed over all partitions, at most. Each holds its outcome
    /// records until committed (about 1 KiB; a dead-letter copy up to dlq.max_payload_bytes).
    pub max_uncommitted: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_queued_per_upstream: None,
            commit_interval: Duration::from_millis(100),
            max_batch: 1000,
            fail_fast_when_open: false,
            drain_timeout: Duration::from_secs(20),
            handover_timeout: Duration::from_secs(5),
            max_uncommitted_per_partition: 5_000,
            max_uncommitted: 20_000,
        }
    }
}

/// Ingress limits (see the `relais-ingress` crate).
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IngressLimits {
    pub max_payload_bytes: usize,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_future_skew: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
}

impl Default for IngressLimits {
    fn default() -> Self {
        let limits = relais_ingress::Limits::default();
        Self {
            max_payload_bytes: limits.max_payload_bytes,
            max_future_skew: limits
                .max_future_skew
                .to_std()
                .unwrap_or(Duration::from_secs(86_400)),
            max_age: limits
                .max_age
                .to_std()
                .unwrap_or(Duration::from_secs(365 * 86_400)),
        }
    }
}

/// Which upstream an event goes to when it does not name one.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    pub default_upstream: String,
    /// First match wins: events whose type starts with `type_prefix` go to `upstream`.
    pub rules: Vec<RouteRule>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            default_upstream: "default".into(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    pub type_prefix: String,
    pub upstream: String,
}
