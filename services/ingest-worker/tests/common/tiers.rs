//! Worker configurations with retry tiers, against an upstream that fails fast.

use std::time::Duration;

use relais_ingest_worker::config::{PipelineConfig, WorkerConfig};
use relais_resilience::UpstreamPolicy;
use relais_resilience::policy::{CircuitPolicy, RetryPolicyConfig};
use relais_test_support::unique_name;

use super::{Topics, worker_config};

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Fails fast against a dead upstream: few attempts, a circuit that opens soon.
pub fn quick_policy() -> UpstreamPolicy {
    UpstreamPolicy {
        attempt_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(250),
        circuit: CircuitPolicy {
            minimum_calls: 5,
            open_duration: secs(1),
            half_open_calls: 2,
            ..CircuitPolicy::default()
        },
        retry: RetryPolicyConfig {
            max_attempts: 2,
            base_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            ..RetryPolicyConfig::default()
        },
        ..UpstreamPolicy::default()
    }
}

/// A worker configuration whose upstreams fail fast and wait in `tiers`, one second in
/// memory.
pub fn config_with_tiers(
    topics: &Topics,
    upstream: std::net::SocketAddr,
    tiers: &[Duration],
) -> WorkerConfig {
    let mut config = worker_config(
        topics,
        &unique_name("it-group"),
        upstream,
        quick_policy(),
        PipelineConfig::default(),
        None,
    );
    for upstream in config.upstreams.values_mut() {
        *upstream = upstream.clone().with_retry_tiers(tiers);
    }
    config.retry.in_memory_wait = secs(1);
    config
}
