//! A resolved client configuration: librdkafka settings, with the secrets kept apart.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// A secret value: never printed, handed to librdkafka only.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: String) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to reach Kafka: the bootstrap servers, the security settings of `[kafka.client]` and
/// any further librdkafka settings. Every client of a service starts from [`Self::config`].
#[derive(Debug, Clone)]
pub struct KafkaClient {
    settings: BTreeMap<String, String>,
    secrets: BTreeMap<&'static str, Secret>,
}

impl KafkaClient {
    pub(crate) fn new(
        settings: BTreeMap<String, String>,
        secrets: BTreeMap<&'static str, Secret>,
    ) -> Self {
        Self { settings, secrets }
    }

    /// Plain text to `bootstrap`, with nothing else set (development and tests; a service
    /// resolves its `[kafka.client]` instead).
    pub fn plaintext(bootstrap: &str) -> Self {
        let settings = BTreeMap::from([
            ("bootstrap.servers".to_owned(), bootstrap.to_owned()),
            ("security.protocol".to_owned(), "plaintext".to_owned()),
        ]);
        Self::new(settings, BTreeMap::new())
    }

    /// The bootstrap servers.
    pub fn bootstrap(&self) -> &str {
        self.setting("bootstrap.servers").unwrap_or_default()
    }

    /// A setting that is not a secret.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    /// Hands each secret (by its librdkafka name) to `check`, for start-up rules such as the
    /// production profile's; the first refusal is returned.
    pub fn check_secrets(
        &self,
        check: impl Fn(&str, &str) -> Result<(), String>,
    ) -> Result<(), String> {
        self.secrets
            .iter()
            .try_for_each(|(key, Secret(value))| check(key, value))
    }

    /// The librdkafka configuration, secrets included: to create clients with, never to log
    /// (`ClientConfig`'s `Debug` prints every value).
    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        for (key, Secret(value)) in &self.secrets {
            config.set(*key, value);
        }
        config
    }

    /// A consumer configuration for reading topics by assignment: it commits and stores no
    /// offsets (the group id is required by librdkafka, never used) and sees committed
    /// transactions only.
    pub fn reader(&self) -> ClientConfig {
        let mut config = self.config();
        config
            .set("group.id", "relais-operator-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed");
        config
    }
}

/// How long librdkafka waits before fetching again for a partition whose prefetch was full.
/// Its default, a second, suits its own 64 MiB prefetch; a prefetch of a few MiB empties in a
/// fraction of that, and the partition would then sit idle for the rest of the second.
const FETCH_QUEUE_BACKOFF_MS: &str = "20";

/// Bounds a consumer's prefetch to `kbytes` (librdkafka's `queued.max.messages.kbytes`,
/// counted as fetched, so compressed) and refills it as soon as it has room.
pub fn bounded_prefetch(config: &mut ClientConfig, kbytes: u32) -> &mut ClientConfig {
    config
        .set("queued.max.messages.kbytes", kbytes.to_string())
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
}
