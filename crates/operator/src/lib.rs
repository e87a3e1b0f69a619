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

/// How to reach Kafka (the services' resolved `[kafka.client]`).
pub use relais_kafka::KafkaClient;
