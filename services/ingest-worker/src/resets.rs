//! Ingress and retry-tier records Kafka deleted before this worker read them, and logs that
//! went back behind it ([`relais_kafka::resets`]). Such messages get no outcome of their own,
//! so each reset is counted, logged, and written to the audit trail as an operator action of
//! this worker (`kafka.records_deleted` or `kafka.log_rewound`, subject
//! `kafka/{topic}/{partition}`), where an operator looking for the missing messages finds it.
//! A retry tier that lost records makes its partition's key order state stale
//! ([`crate::parked`]).

use std::sync::Arc;

use rdkafka::producer::FutureProducer;
use relais_kafka::resets::{OffsetReset, ResetMetrics, ResetOutcome, next_reset};
use relais_operator::actions;
use relais_proto::v1::OperatorAction;
use relais_telemetry::shutdown::CancellationToken;
use tokio::sync::mpsc;

use crate::consumer::WorkerConsumer;
use crate::parked::ParkedKeys;
use crate::retry::TierTopics;

/// Where each reset is told.
#[allow(missing_debug_implementations)] // the producer has no Debug
pub struct ResetReports {
    pub metrics: ResetMetrics,
    pub producer: FutureProducer,
    pub audit_topic: String,
    pub worker_id: String,
    pub tier_topics: TierTopics,
    pub parked: Arc<ParkedKeys>,
}

/// Measures the resets of the worker's consumers (their watermarks read through `consumer`)
/// and reports each, until shutdown.
pub async fn report_resets(
    mut resets: mpsc::Receiver<OffsetReset>,
    consumer: Arc<WorkerConsumer>,
    reports: ResetReports,
    shutdown: CancellationToken,
) {
    let actor = format!("worker:{}", reports.worker_id);
    loop {
        let (reset, outcome) = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = next_reset(&mut resets, &consumer) => match next {
                Some(measured) => measured,
                None => return,
            },
        };
        reports.metrics.record(&reset, outcome);
        if loses_tier_records(&reset, outcome, &reports.tier_topics)
            && reports.parked.lost_waiting_records(reset.partition)
        {
            tracing::warn!(
                topic = %reset.topic,
                partition = reset.partition,
                "retry tier records were lost before they were read: the partition's messages \
                 wait until its key order state is read again from the tiers"
            );
        }
        if let Some(action) = trail_action(&reset, outcome, &actor) {
            crate::control::write_until_stored(
                &reports.producer,
                None,
                &reports.audit_topic,
                &action,
                &shutdown,
            )
            .await;
        }
    }
}

/// Whether a reset lost records of a retry tier, which the key order state still counts.
fn loses_tier_records(reset: &OffsetReset, outcome: ResetOutcome, topics: &TierTopics) -> bool {
    let is_tier = topics
        .index_of(&reset.topic)
        .is_some_and(|index| topics.delay(index).is_some());
    is_tier && !matches!(outcome, ResetOutcome::WithinLog)
}

/// The operator action that tells the audit trail of a reset that lost or re-read records;
/// none for a reset within the log.
fn trail_action(reset: &OffsetReset, outcome: ResetOutcome, actor: &str) -> Option<OperatorAction> {
    let (action, detail) = match outcome {
        ResetOutcome::DeletedUnread { offsets, log_start } => (
            actions::KAFKA_RECORDS_DELETED,
            format!(
                "offsets {} to {} deleted by Kafka before they were read ({offsets} offsets, \
                 commit markers included): their messages have no outcome; reading went on \
                 at offset {log_start}",
                reset.at,
                log_start - 1,
            ),
        ),
        ResetOutcome::Rewound { log_end, log_start } => (
            actions::KAFKA_LOG_REWOUND,
            format!(
                "the log ends at offset {log_end}, before offset {} where reading was: the \
                 topic was created again or the partition truncated; reading started over at \
                 offset {log_start}",
                reset.at,
            ),
        ),
        ResetOutcome::WithinLog => return None,
    };
    Some(actions::action_now(
        action,
        actions::partition_subject(&reset.topic, reset.partition),
        actor.to_owned(),
        detail,
        String::new(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset() -> OffsetReset {
        OffsetReset {
            topic: "relais.ingress".into(),
            partition: 4,
            at: 100,
        }
    }

    #[test]
    fn deleted_records_are_told_with_their_offsets() {
        let outcome = ResetOutcome::DeletedUnread {
            offsets: 150,
            log_start: 250,
        };
        let action = trail_action(&reset(), outcome, "worker:w-1").unwrap();
        assert_eq!(action.action, "kafka.records_deleted");
        assert_eq!(action.subject, "kafka/relais.ingress/4");
        assert_eq!(action.actor, "worker:w-1");
        assert!(
            action.detail.starts_with("offsets 100 to 249 deleted"),
            "{}",
            action.detail
        );
        assert!(action.detail.contains("at offset 250"), "{}", action.detail);
        assert_eq!(action.trace_id.len(), 32, "a trace id to look it up by");
    }

    #[test]
    fn only_records_lost_from_a_retry_tier_touch_the_key_order_state() {
        let schedule = [std::time::Duration::from_secs(5)];
        let topics = TierTopics::new("relais.ingress", "relais.retry", [&schedule[..]]);
        let tier = OffsetReset {
            topic: "relais.retry.5s".into(),
            ..reset()
        };
        let deleted = ResetOutcome::DeletedUnread {
            offsets: 3,
            log_start: 103,
        };
        let rewound = ResetOutcome::Rewound {
            log_end: 0,
            log_start: 0,
        };
        assert!(loses_tier_records(&tier, deleted, &topics));
        assert!(loses_tier_records(&tier, rewound, &topics));
        assert!(!loses_tier_records(&tier, ResetOutcome::WithinLog, &topics));
        assert!(
            !loses_tier_records(&reset(), deleted, &topics),
            "the ingress topic's messages are not counted there"
        );
    }

    #[test]
    fn a_rewound_log_is_told_and_a_reset_within_the_log_is_not() {
        let outcome = ResetOutcome::Rewound {
            log_end: 20,
            log_start: 0,
        };
        let action = trail_action(&reset(), outcome, "worker:w-1").unwrap();
        assert_eq!(action.action, "kafka.log_rewound");
        assert!(
            action
                .detail
                .contains("ends at offset 20, before offset 100")
        );
        assert!(trail_action(&reset(), ResetOutcome::WithinLog, "worker:w-1").is_none());
    }
}
