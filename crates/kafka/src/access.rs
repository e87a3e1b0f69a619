//! The start-up check: do these credentials get in, and may they see what the service needs?
//!
//! librdkafka retries a refused login for ever, logging it, and a client without the ACL for a
//! topic or group waits the same way; a service would look started and do nothing. The check
//! asks the brokers once, within a deadline, and tells apart what ends the start (credentials
//! or certificates refused, a topic or group the principal may not use) from brokers that are
//! merely not there yet, which the services keep waiting for as before.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use crate::KafkaClient;

/// What a service needs to see. Topics that do not exist are not this check's concern.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    pub topics: Vec<String>,
    /// The consumer group the service commits in, if any.
    pub group: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    /// The brokers refused the credentials or the TLS handshake failed: waiting cannot help.
    #[error("Kafka refused the connection: {0}")]
    Refused(String),
    /// Logged in, but the principal lacks an ACL.
    #[error("Kafka denied access: {0}")]
    NotAuthorized(String),
    /// No answer within the deadline; the brokers may simply not be up yet.
    #[error("Kafka did not answer: {0}")]
    Unreachable(String),
}

impl AccessError {
    /// Whether the service should stop rather than wait.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::Unreachable(_))
    }
}

/// What an error reported by librdkafka says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Credentials or certificates refused, by either side.
    Refused,
    /// A reason worth reporting if nothing better comes (connection refused, a timeout).
    Transient,
    /// A summary with no reason of its own ("1/1 brokers are down").
    Summary,
}

fn verdict(code: Option<RDKafkaErrorCode>, reason: &str) -> Verdict {
    match code {
        Some(
            RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::SSL
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState,
        ) => Verdict::Refused,
        // A TLS alert from the broker (its refusal of our certificate arrives as a failed
        // receive) or our refusal of its certificate.
        Some(RDKafkaErrorCode::BrokerTransportFailure)
            if reason.contains("SSL routines") || reason.contains("SSL handshake failed") =>
        {
            Verdict::Refused
        }
        Some(RDKafkaErrorCode::AllBrokersDown) => Verdict::Summary,
        _ => Verdict::Transient,
    }
}

/// Keeps the first refusal, and the latest reason of any other kind (a summary only when
/// nothing better came).
#[derive(Debug, Default)]
struct Errors {
    refused: Mutex<Option<String>>,
    other: Mutex<Option<String>>,
}

impl ClientContext for Errors {
    fn error(&self, error: KafkaError, reason: &str) {
        match verdict(error.rdkafka_error_code(), reason) {
            Verdict::Refused => keep(&self.refused, reason, Keep::First),
            Verdict::Transient => keep(&self.other, reason, Keep::Latest),
            Verdict::Summary => keep(&self.other, reason, Keep::First),
        }
    }
}

impl ConsumerContext for Errors {}

enum Keep {
    First,
    Latest,
}

fn keep(slot: &Mutex<Option<String>>, reason: &str, which: Keep) {
    let mut kept = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if kept.is_none() || matches!(which, Keep::Latest) {
        *kept = Some(reason.to_owned());
    }
}

fn read(slot: &Mutex<Option<String>>) -> Option<String> {
    slot.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

impl Errors {
    fn refused(&self) -> Option<String> {
        read(&self.refused)
    }

    fn other(&self) -> Option<String> {
        read(&self.other)
    }
}

/// Asks the brokers, within `deadline`, for each needed topic and the group's committed
/// offsets. Blocking: call it from a blocking thread or before the runtime's work begins.
pub fn check_access(
    client: &KafkaClient,
    needs: &Needs,
    deadline: Duration,
) -> Result<(), AccessError> {
    let started = Instant::now();
    let mut config = client.config();
    config
        .set(
            "group.id",
            needs.group.as_deref().unwrap_or("relais-access-check"),
        )
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer<Errors> = config
        .create_with_context(Errors::default())
        .map_err(|error| AccessError::Refused(format!("cannot create a client: {error}")))?;

    for topic in &needs.topics {
        let metadata = loop {
            let remaining = deadline.saturating_sub(started.elapsed());
            let attempt = remaining.min(Duration::from_secs(1));
            match consumer.fetch_metadata(Some(topic), attempt) {
                Ok(metadata) => break metadata,
                Err(error) => {
                    // Serves the error callbacks, which say why.
                    let _ = consumer.poll(Duration::from_millis(50));
                    if let Some(reason) = consumer.context().refused() {
                        return Err(AccessError::Refused(reason));
                    }
                    if started.elapsed() >= deadline {
                        let reason = consumer.context().other().unwrap_or(error.to_string());
                        return Err(AccessError::Unreachable(format!(
                            "{reason} (within {deadline:?}, brokers {})",
                            client.bootstrap()
                        )));
                    }
                }
            }
        };
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        if let Some(error) = found.and_then(|t| t.error()) {
            let code = RDKafkaErrorCode::from(error);
            if code == RDKafkaErrorCode::TopicAuthorizationFailed {
                return Err(AccessError::NotAuthorized(format!(
                    "{} may not describe topic {topic} (grant it the topic's ACLs)",
                    principal(client)
                )));
            }
        }
    }

    if let (Some(group), Some(topic)) = (&needs.group, needs.topics.first()) {
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset(topic, 0, Offset::Invalid)
            .map_err(|error| AccessError::Refused(error.to_string()))?;
        let remaining = deadline
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        match consumer.committed_offsets(partitions, remaining) {
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::GroupAuthorizationFailed)
                ) =>
            {
                return Err(AccessError::NotAuthorized(format!(
                    "{} may not use consumer group {group} (grant it the group's ACLs)",
                    principal(client)
                )));
            }
            Err(error)
                if matches!(
                    error.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::TopicAuthorizationFailed)
                ) =>
            {
                return Err(AccessError::NotAuthorized(format!(
                    "{} may not read topic {topic} in group {group} (grant it the topic's ACLs)",
                    principal(client)
                )));
            }
            // A coordinator still loading, or a topic not created yet, is the services' own
            // business.
            Err(_) => {}
        }
    }
    Ok(())
}

/// Who the brokers see, as far as the client knows it.
fn principal(client: &KafkaClient) -> String {
    match client.setting("sasl.username") {
        Some(name) => format!("the SASL user {name:?}"),
        None if client.setting("ssl.certificate.location").is_some() => {
            "the client certificate's principal".to_owned()
        }
        None => "this client".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_alerts_and_refused_logins_are_refusals_and_outages_are_not() {
        let alert = "ssl://127.0.0.1:9095/bootstrap: Receive failed: error:0A000412:SSL routines::sslv3 alert bad certificate";
        assert_eq!(
            verdict(Some(RDKafkaErrorCode::BrokerTransportFailure), alert),
            Verdict::Refused
        );
        assert_eq!(
            verdict(
                Some(RDKafkaErrorCode::Authentication),
                "SASL authentication error"
            ),
            Verdict::Refused
        );
        assert_eq!(
            verdict(
                Some(RDKafkaErrorCode::BrokerTransportFailure),
                "Connect to ipv4#127.0.0.1:1 failed: Connection refused"
            ),
            Verdict::Transient
        );
        assert_eq!(
            verdict(
                Some(RDKafkaErrorCode::AllBrokersDown),
                "1/1 brokers are down"
            ),
            Verdict::Summary
        );
    }

    #[test]
    fn only_an_unanswered_check_lets_the_service_wait() {
        assert!(AccessError::Refused("x".into()).is_fatal());
        assert!(AccessError::NotAuthorized("x".into()).is_fatal());
        assert!(!AccessError::Unreachable("x".into()).is_fatal());
    }
}
