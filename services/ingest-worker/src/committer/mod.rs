//! Writes outcomes and consumed offsets in one Kafka transaction (consume-process-produce).
//!
//! Every `commit_interval`, the contiguous finished prefix of each owned partition is taken
//! from the [`OffsetTracker`], its records are produced inside a transaction together with the
//! offsets that cover them, and the transaction is committed.
//!
//! A failed call is answered as librdkafka classifies its error ([`recovery`]): a retriable one
//! (a commit that timed out may still complete in the background) is made again, never answered
//! with an abort, which could write the batch twice; one that requires an abort aborts the
//! transaction and puts the batch back for the next round; a fatal one leaves the producer
//! unusable, so a new one takes its place ([`producer`]): initialising it settles the old
//! transaction, and the group's committed offsets then say which of the batch it committed
//! ([`settle`]); the rest is put back. Only a producer fenced again and again (another
//! process with this worker's identity) ends the worker.
//!
//! A record the broker refuses for what it is (too large, invalid) is handled alone: if it is a
//! dead-letter copy it is cut to its bare minimum ([`dlq::shrink_refused`]) and the batch is
//! written again at once; nothing else of the batch waits for it.

mod producer;
mod round;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use relais_telemetry::shutdown::CancellationToken;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::consumer::WorkerConsumer;
use crate::dlq;
use crate::metrics::WorkerMetrics;
use crate::records::{OutRecord, Tracker};
use crate::retry::TierTopics;
use crate::tracker::Ready;

pub use producer::{ReplacementBudget, TransactionalProducer};

/// Why a commit round failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("transaction aborted; batch restored for the next round")]
    Aborted(#[source] KafkaError),
    #[error(
        "the transactional producer hit a fatal error, and no new one can take its place (fenced again and again by another instance with this worker_id, or refused by the brokers)"
    )]
    Fatal(#[source] KafkaError),
    #[error(
        "a partition of the batch was revoked during the transaction; its work dropped, the rest restored"
    )]
    Revoked,
    #[error("the broker refuses a record of topic {topic} even at its smallest; batch restored")]
    Refused {
        topic: String,
        #[source]
        error: KafkaError,
    },
    #[error(
        "shutdown while the commit's result was still unknown; the next instance with this transactional id settles it"
    )]
    Unsettled(#[source] KafkaError),
}

impl CommitError {
    /// True when the worker cannot go on committing: no producer, or a commit left unsettled.
    pub fn ends_the_worker(&self) -> bool {
        matches!(self, Self::Fatal(_) | Self::Unsettled(_))
    }
}

/// What to do after a transactional call failed, as librdkafka classifies its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Make the same call again: its outcome is not known yet (a commit that timed out may
    /// complete in the background), and only the call itself can tell.
    RetryCall,
    /// The transaction cannot complete: abort it and put the batch back.
    Abort,
    /// The producer is unusable: a new one must take its place.
    Fatal,
}

/// librdkafka's three flags of a transactional error, in the order that matters: a fatal error
/// may also be flagged retriable, and an abortable one must be aborted even if retriable.
pub fn recovery(fatal: bool, requires_abort: bool, retriable: bool) -> Recovery {
    if fatal {
        Recovery::Fatal
    } else if requires_abort {
        Recovery::Abort
    } else if retriable {
        Recovery::RetryCall
    } else {
        Recovery::Abort
    }
}

fn recovery_of(error: &KafkaError) -> Recovery {
    match error {
        KafkaError::Transaction(inner) => recovery(
            inner.is_fatal(),
            inner.txn_requires_abort(),
            inner.is_retriable(),
        ),
        _ => Recovery::Abort,
    }
}

/// Errors that belong to one record, not to the transaction or the connection.
fn refuses_the_record(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
    )
}

/// Where a record sits in a batch: ready partition, message, record.
#[derive(Debug, Clone, Copy)]
struct RecordIndex {
    ready: usize,
    message: usize,
    record: usize,
}

/// How one attempt at writing a batch ended.
#[derive(Debug)]
enum RoundError {
    /// Records were refused for what they are (the broker refuses a whole produce batch, so
    /// innocent neighbours of the culprit may be among them).
    Refused(Vec<RecordIndex>, KafkaError),
    Abort(KafkaError),
    Fatal(KafkaError),
    Revoked,
    Unsettled(KafkaError),
}

pub struct Committer {
    pub producer: TransactionalProducer,
    /// How often the producer may be replaced before the worker gives up on it.
    pub replacements: ReplacementBudget,
    pub consumer: Arc<WorkerConsumer>,
    pub tracker: Arc<Tracker>,
    /// The topics whose offsets are committed: the ingress topic and the retry tiers.
    pub topics: TierTopics,
    pub max_batch: usize,
    /// Limit of each blocking transactional call; a call that runs out is classified like any
    /// other error (a timed-out commit is retriable).
    pub call_timeout: Duration,
    pub metrics: WorkerMetrics,
    /// Once cancelled, a commit whose result is unknown is no longer retried.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("topics", &self.topics)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

/// Waits between retries of one transactional call.
const CALL_RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Retries of a call that keeps failing retriably, except the commit itself, whose result must
/// be learnt; beyond this the transaction is aborted.
const MAX_CALL_RETRIES: u32 = 20;

impl Committer {
    /// Commits everything that is ready, in rounds of at most `max_batch` outcomes. Returns how
    /// many messages were committed.
    pub async fn commit_ready(&mut self) -> Result<usize, CommitError> {
        let mut committed = 0;
        loop {
            let mut batch = self.tracker.take_ready(self.max_batch);
            if batch.is_empty() {
                return Ok(committed);
            }
            let count: usize = batch.iter().map(|ready| ready.outputs.len()).sum();
            loop {
                // A span of its own (a transaction holds many messages' outcomes, of many
                // traces): the transaction duration's exemplars point at it.
                let span = tracing::info_span!(
                    "commit transaction",
                    otel.kind = "producer",
                    relais.messages = count
                );
                let started = Instant::now();
                let result = self.commit_batch(&batch).instrument(span.clone()).await;
                span.in_scope(|| {
                    self.metrics
                        .record_transaction(result.is_ok(), started.elapsed());
                });
                let failure = match result {
                    Ok(()) => {
                        committed += self.committed(&batch);
                        break;
                    }
                    Err(failure) => self.after_abort(failure).await,
                };
                match failure {
                    RoundError::Refused(refused, error) => {
                        // The largest refused record that can still be cut is the likeliest
                        // culprit; one at a time, so its neighbours stay whole.
                        let largest = refused
                            .iter()
                            .copied()
                            .filter(|index| {
                                dlq::can_shrink(
                                    &batch[index.ready].outputs[index.message].1[index.record],
                                )
                            })
                            .max_by_key(|index| {
                                batch[index.ready].outputs[index.message].1[index.record].size()
                            });
                        let Some(index) = largest else {
                            let topic = refused
                                .first()
                                .map(|index| {
                                    batch[index.ready].outputs[index.message].1[index.record]
                                        .topic
                                        .to_string()
                                })
                                .unwrap_or_default();
                            self.metrics.record_refused(&topic);
                            self.tracker.restore(batch);
                            return Err(CommitError::Refused { topic, error });
                        };
                        let ready = &mut batch[index.ready];
                        let (partition, (offset, records)) =
                            (ready.partition.partition, &mut ready.outputs[index.message]);
                        let record = &mut records[index.record];
                        self.metrics.record_refused(&record.topic);
                        dlq::shrink_refused(record);
                        tracing::warn!(
                            %error,
                            topic = %record.topic,
                            partition,
                            offset = *offset,
                            "the broker refused a dead-letter copy; writing it without its payload"
                        );
                    }
                    RoundError::Abort(error) => {
                        self.tracker.restore(batch);
                        if error.rdkafka_error_code()
                            == Some(RDKafkaErrorCode::OffsetMetadataTooLarge)
                            && let Some(limit) = self.tracker.shrink_metadata_limit()
                        {
                            // Taken again at once, naming less ahead of the offsets.
                            self.metrics.offset_metadata_limit.set(limit as i64);
                            tracing::warn!(
                                %error,
                                limit,
                                "the broker refused the commit metadata; writing at most this many bytes from now on (set kafka.offset_metadata_max_bytes to the brokers' offset.metadata.max.bytes)"
                            );
                            break;
                        }
                        return Err(CommitError::Aborted(error));
                    }
                    RoundError::Revoked => {
                        // The partitions still owned keep their work (restore skips the
                        // revoked ones): dropping it would let a later batch commit offsets
                        // past messages that never got their outcome.
                        self.tracker.restore(batch);
                        return Err(CommitError::Revoked);
                    }
                    RoundError::Fatal(error) => {
                        self.replace_producer(error).await?;
                        let split = settle::split_by_commit(
                            &self.consumer,
                            &self.topics,
                            batch,
                            &self.shutdown,
                        )
                        .await
                        .map_err(CommitError::Unsettled)?;
                        committed += self.committed(&split.committed);
                        self.tracker.restore(split.not_committed);
                        break;
                    }
                    RoundError::Unsettled(error) => return Err(CommitError::Unsettled(error)),
                }
            }
        }
    }

    /// Counts a committed batch and hands it back to the tracker; the messages it held.
    fn committed(&self, batch: &[Ready<Vec<OutRecord>>]) -> usize {
        let count: usize = batch.iter().map(|ready| ready.outputs.len()).sum();
        let ahead = self.tracker.committed(batch);
        self.metrics.outcomes_ahead.inc_by(ahead as u64);
        self.metrics.committed_messages.inc_by(count as u64);
        count
    }

    /// Aborts the transaction a failed round left open. An abort the producer can no longer
    /// make turns the failure into a fatal one.
    async fn after_abort(&self, failure: RoundError) -> RoundError {
        if matches!(failure, RoundError::Fatal(_) | RoundError::Unsettled(_)) {
            return failure;
        }
        match self.abort().await {
            Ok(()) => failure,
            Err(fatal) => RoundError::Fatal(fatal),
        }
    }

    /// Puts a new producer in place of one librdkafka left in a fatal state, unless that has
    /// happened too often lately ([`ReplacementBudget`]).
    async fn replace_producer(&mut self, error: KafkaError) -> Result<(), CommitError> {
        if !self.replacements.spend(Instant::now()) {
            tracing::error!(
                %error,
                "the transactional producer keeps failing fatally (fenced by another instance with this worker_id?); the worker stops"
            );
            return Err(CommitError::Fatal(error));
        }
        tracing::warn!(
            %error,
            "the transactional producer hit a fatal error; a new one takes its place and settles its transaction"
        );
        if let Err(replacing) = self
            .producer
            .replace(self.call_timeout, &self.shutdown)
            .await
        {
            if self.shutdown.is_cancelled() {
                return Err(CommitError::Unsettled(error));
            }
            tracing::error!(%replacing, "cannot make a new transactional producer");
            return Err(CommitError::Fatal(replacing));
        }
        self.metrics.producer_replacements.inc();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_answered_as_librdkafka_classifies_them() {
        // (fatal, requires_abort, retriable)
        assert_eq!(recovery(false, false, true), Recovery::RetryCall);
        assert_eq!(recovery(false, true, false), Recovery::Abort);
        assert_eq!(recovery(false, true, true), Recovery::Abort);
        assert_eq!(recovery(true, false, true), Recovery::Fatal);
        assert_eq!(recovery(true, true, false), Recovery::Fatal);
        assert_eq!(recovery(false, false, false), Recovery::Abort);
    }

    #[test]
    fn only_record_level_errors_single_out_a_record() {
        assert!(refuses_the_record(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(refuses_the_record(RDKafkaErrorCode::InvalidRecord));
        assert!(!refuses_the_record(RDKafkaErrorCode::RequestTimedOut));
        assert!(!refuses_the_record(RDKafkaErrorCode::NotCoordinator));
        assert!(!refuses_the_record(RDKafkaErrorCode::QueueFull));
    }
}
