//! The workers' configuration in a stack: their topics, retry tiers and upstreams.

use std::net::SocketAddr;

use crate::Topics;

/// The workers' retry tiers: short enough that the fault scenarios (outages up to a minute)
/// pass through several of them and end delivered.
pub const RETRY_TIERS: [&str; 5] = ["2s", "10s", "30s", "1m", "2m"];

/// The workers' configuration file: the stack's topics, the default upstream and, with
/// `billing`, a second one that takes the `billing.*` events.
pub(crate) fn worker_config_text(
    topics: &Topics,
    group: &str,
    sim_api: SocketAddr,
    billing: Option<SocketAddr>,
    gateway_grpc: SocketAddr,
) -> String {
    format!(
                r#"[kafka]
group_id = "{group}"
ingress_topic = "{ingress}"
audit_topic = "{audit}"
events_topic = "{events}"
dlq_topic = "{dlq}"
control_topic = "{control}"
replay_ledger_topic = "{ledger}"

[retry]
topic_prefix = "{retry_prefix}"
in_memory_wait = "3s"

{default_section}
{billing_section}
[status]
gateway = "http://{gateway_grpc}"
interval = "1s"
"#,
                ingress = topics.ingress,
                audit = topics.audit,
                events = topics.events,
                dlq = topics.dlq,
                control = topics.control,
                ledger = topics.ledger,
                retry_prefix = topics.retry_prefix,
                default_section = upstream_section("default", sim_api),
                billing_section = billing.map_or_else(String::new, |api| {
                    format!(
                        "[routing]\ndefault_upstream = \"default\"\nrules = [{{ type_prefix = \"billing.\", upstream = \"billing\" }}]\n\n{}",
                        upstream_section("billing", api)
                    )
                }),
            )
}

/// One upstream's part of the worker configuration: quick to give up on a dead upstream, with
/// the stack's retry tiers.
fn upstream_section(name: &str, api: SocketAddr) -> String {
    format!(
        r#"[upstreams.{name}]
url = "http://{api}"
path = "/events"
allowed_networks = ["loopback"]
retry_tiers = {RETRY_TIERS:?}

[upstreams.{name}.policy]
attempt_timeout = "1s"
connect_timeout = "250ms"

[upstreams.{name}.policy.retry]
max_attempts = 3
base_backoff = "20ms"
max_backoff = "200ms"

[upstreams.{name}.policy.circuit]
minimum_calls = 10
open_duration = "2s"
half_open_calls = 3
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_configuration_parses_and_validates_with_and_without_billing() {
        let topics = Topics {
            ingress: "i".into(),
            audit: "a".into(),
            events: "e".into(),
            dlq: "d".into(),
            control: "c".into(),
            ledger: "l".into(),
            retry_prefix: "r".into(),
            ingress_partitions: 6,
        };
        let address: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for billing in [None, Some(address)] {
            let text = worker_config_text(&topics, "g", address, billing, address);
            let config: relais_ingest_worker::config::WorkerConfig =
                toml::from_str(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
            config.validate().unwrap();
            assert_eq!(config.upstreams.len(), 1 + usize::from(billing.is_some()));
            assert_eq!(
                config.tier_topics().tiers().count(),
                RETRY_TIERS.len(),
                "one topic per tier"
            );
        }
    }
}
