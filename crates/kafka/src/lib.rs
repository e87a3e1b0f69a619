//! How every Kafka client of Relais reaches the brokers.
//!
//! Each service's `[kafka.client]` section is a [`KafkaClientConfig`]: the security protocol,
//! TLS (a CA file, a client certificate for mTLS), SASL (SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN)
//! and further librdkafka settings. Every key falls back to a `RELAIS_KAFKA_*` variable, so
//! that tools without a configuration file (loadgen, the e2e verifier) are configured the same
//! way. Secrets are never written inline: a password comes from a file (or, for the SASL
//! password, its variable), is kept out of `Debug` output and error messages, and is handed to
//! librdkafka only.
//!
//! [`KafkaClientConfig::resolve`] checks the section and reads the files once, at start-up, and
//! gives a [`KafkaClient`]; [`access::check_access`] then asks the brokers whether these
//! credentials may read what the service needs, so that a wrong password or a missing ACL ends
//! the start with a clear message instead of a service waiting for ever.

pub mod access;
mod client;
mod config;
pub mod resets;

pub use client::{KafkaClient, bounded_prefetch};
pub use config::{
    KafkaClientConfig, KafkaConfigError, KafkaSasl, KafkaTls, SaslMechanism, SecurityProtocol,
};
