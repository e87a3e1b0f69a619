//! What operators do to a running pipeline, shared by the ingest-worker (which obeys, and runs
//! replays from its command line) and the realtime-gateway (which offers the same over its admin
//! REST API):
//!
//! - [`replay`]: moving dead letters back to the ingress topic;
//! - [`control`]: the upstream control topic, where an upstream is disabled and re-enabled;
//! - [`actions`]: every such action as a record of the audit trail, naming who did it;
//! - [`headers`]: the headers Relais adds to dead-letter and replayed records.

pub mod actions;
pub mod control;
pub mod headers;
pub mod replay;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// How to reach Kafka: the bootstrap servers and any further librdkafka settings (security,
/// timeouts) the deployment gives.
#[derive(Debug, Clone, Default)]
pub struct KafkaClient {
    pub bootstrap: String,
    pub settings: BTreeMap<String, String>,
}

impl KafkaClient {
    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.settings {
            config.set(key, value);
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
