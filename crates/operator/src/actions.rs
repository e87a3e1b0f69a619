//! Operator actions in the audit trail: who disabled or re-enabled an upstream, who replayed
//! which dead letters. They travel on the audit topic beside the message outcomes, marked by
//! the `relais-schema` header, and audit-service stores them in the same objects.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use relais_proto::v1::OperatorAction;

/// The header that names a record's message type; absent on an `AuditRecord`.
pub const SCHEMA_HEADER: &str = "relais-schema";
/// Its value on an operator action.
pub const OPERATOR_ACTION_SCHEMA: &str = "relais.v1.OperatorAction";

pub const UPSTREAM_DISABLED: &str = "upstream.disabled";
pub const UPSTREAM_ENABLED: &str = "upstream.enabled";
/// A worker holds an upstream that answered 401/403 (a trial call per pause).
pub const UPSTREAM_HELD: &str = "upstream.held";
/// ... and released it: the upstream answered otherwise.
pub const UPSTREAM_RELEASED: &str = "upstream.released";
pub const REPLAY_STARTED: &str = "replay.started";
pub const REPLAY_FINISHED: &str = "replay.finished";
/// Kafka deleted records of a partition before a service read them (retention).
pub const KAFKA_RECORDS_DELETED: &str = "kafka.records_deleted";
/// A partition's log ended before a service's offset: the topic created again, or truncated.
pub const KAFKA_LOG_REWOUND: &str = "kafka.log_rewound";

/// The subject of an action on an upstream.
pub fn upstream_subject(name: &str) -> String {
    format!("upstream/{name}")
}

/// The subject of an action on a replay job.
pub fn replay_subject(job: &str) -> String {
    format!("replay/{job}")
}

/// The subject of an action on a Kafka partition.
pub fn partition_subject(topic: &str, partition: i32) -> String {
    format!("kafka/{topic}/{partition}")
}

/// An action done now. `trace_id` is the W3C trace id of the request that caused it; a fresh
/// one is made when it is empty, so that the record can always be looked up by trace.
pub fn action_now(
    action: &str,
    subject: String,
    actor: String,
    detail: String,
    trace_id: String,
) -> OperatorAction {
    let at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    OperatorAction {
        action_id: uuid::Uuid::new_v4().to_string(),
        action: action.to_owned(),
        subject,
        actor,
        detail,
        at: Some(relais_proto::Timestamp {
            seconds: i64::try_from(at.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(at.subsec_nanos()).unwrap_or(0),
        }),
        trace_id: if is_trace_id(&trace_id) {
            trace_id
        } else {
            uuid::Uuid::new_v4().simple().to_string()
        },
    }
}

fn is_trace_id(value: &str) -> bool {
    value.len() == 32
        && value
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && value.bytes().any(|b| b != b'0')
}

/// Whether a record of the audit topic with these headers is an operator action.
pub fn is_operator_action(headers: Option<&impl Headers>) -> bool {
    headers.is_some_and(|headers| {
        headers.iter().any(|header| {
            header.key == SCHEMA_HEADER && header.value == Some(OPERATOR_ACTION_SCHEMA.as_bytes())
        })
    })
}

/// Limit of writing one action.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes an action to the audit topic and waits until the broker has it.
pub async fn record(
    producer: &FutureProducer,
    audit_topic: &str,
    action: &OperatorAction,
) -> anyhow::Result<()> {
    use prost::Message as _;
    let payload = action.encode_to_vec();
    let headers = OwnedHeaders::new().insert(Header {
        key: SCHEMA_HEADER,
        value: Some(OPERATOR_ACTION_SCHEMA),
    });
    producer
        .send(
            FutureRecord::to(audit_topic)
                .key(&action.subject)
                .payload(&payload)
                .headers(headers),
            WRITE_TIMEOUT,
        )
        .await
        .map_err(|(error, _)| error)
        .with_context(|| format!("cannot write the operator action to {audit_topic}"))?;
    tracing::info!(
        action = %action.action,
        subject = %action.subject,
        actor = %action.actor,
        "operator action recorded in the audit trail"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_always_has_a_trace_id_and_keeps_a_valid_one() {
        let kept = "4bf92f3577b34da6a3ce929d0e0e4736".to_owned();
        let action = action_now(
            UPSTREAM_ENABLED,
            upstream_subject("billing"),
            "token:alice".into(),
            String::new(),
            kept.clone(),
        );
        assert_eq!(action.trace_id, kept);
        assert_eq!(action.subject, "upstream/billing");
        for bad in [
            "",
            "00000000000000000000000000000000",
            "4BF92F3577B34DA6A3CE929D0E0E4736",
        ] {
            let made = action_now(
                UPSTREAM_ENABLED,
                String::new(),
                String::new(),
                String::new(),
                bad.into(),
            );
            assert!(
                is_trace_id(&made.trace_id),
                "{bad:?} replaced by {}",
                made.trace_id
            );
        }
    }

    #[test]
    fn only_the_schema_header_marks_an_action() {
        let marked = OwnedHeaders::new().insert(Header {
            key: SCHEMA_HEADER,
            value: Some(OPERATOR_ACTION_SCHEMA),
        });
        assert!(is_operator_action(Some(&marked)));
        let other = OwnedHeaders::new().insert(Header {
            key: SCHEMA_HEADER,
            value: Some("relais.v1.AuditRecord"),
        });
        assert!(!is_operator_action(Some(&other)));
        assert!(!is_operator_action(None::<&OwnedHeaders>));
    }
}
