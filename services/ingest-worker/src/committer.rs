//! Writes outcomes and consumed offsets in one Kafka transaction (consume-process-produce).
//!
//! Every `commit_interval`, the contiguous finished prefix of each owned partition is taken
//! from the [`OffsetTracker`], its records are produced inside a transaction together with the
//! offsets that cover them, and the transaction is committed.
//!
//! A failed call is answered as librdkafka classifies its error ([`recovery`]): a retriable one
//! (a commit that timed out may still complete in the background) is made again, never answered
//! with an abort, which could write the batch twice; one that requires an abort aborts the
//! transaction and puts the batch back for the next round; a fatal one (fenced by a newer
//! instance with the same transactional id) ends the worker, since another process owns this
//! identity now.
//!
//! A record the broker refuses for what it is (too large, invalid) is handled alone: if it is a
//! dead-letter copy it is cut to its bare minimum ([`dlq::shrink_refused`]) and the batch is
//! written again at once; nothing else of the batch waits for it.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use relais_telemetry::shutdown::CancellationToken;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::consumer::WorkerConsumer;
use crate::dlq;
use crate::metrics::WorkerMetrics;
use crate::records::{OutRecord, Tracker};
use crate::retry::TierTopics;
use crate::tracker::{Ready, ahead};

/// Why a commit round failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("transaction aborted; batch restored for the next round")]
    Aborted(#[source] KafkaError),
    #[error("the transactional producer hit a fatal error (fenced by a newer instance?)")]
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
    /// True when the worker cannot go on committing: fenced, or a commit left unsettled.
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
    /// The producer is unusable: the worker must stop.
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
    pub producer: FutureProducer,
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
    pub async fn commit_ready(&self) -> Result<usize, CommitError> {
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
                match result {
                    Ok(()) => {
                        let ahead = self.tracker.committed(&batch);
                        self.metrics.outcomes_ahead.inc_by(ahead as u64);
                        self.metrics.committed_messages.inc_by(count as u64);
                        committed += count;
                        break;
                    }
                    Err(RoundError::Refused(refused, error)) => {
                        self.abort().await?;
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
                    Err(RoundError::Abort(error)) => {
                        self.abort().await?;
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
                    Err(RoundError::Revoked) => {
                        self.abort().await?;
                        // The partitions still owned keep their work (restore skips the
                        // revoked ones): dropping it would let a later batch commit offsets
                        // past messages that never got their outcome.
                        self.tracker.restore(batch);
                        return Err(CommitError::Revoked);
                    }
                    Err(RoundError::Fatal(error)) => return Err(CommitError::Fatal(error)),
                    Err(RoundError::Unsettled(error)) => {
                        return Err(CommitError::Unsettled(error));
                    }
                }
            }
        }
    }

    async fn commit_batch(&self, batch: &[Ready<Vec<OutRecord>>]) -> Result<(), RoundError> {
        let producer = self.producer.clone();
        self.call("begin_transaction", move || producer.begin_transaction())
            .await?;

        // Enqueue everything first (librdkafka batches it), then wait for every delivery.
        let mut deliveries = Vec::new();
        for (ready_index, ready) in batch.iter().enumerate() {
            for (message_index, (_, records)) in ready.outputs.iter().enumerate() {
                for (record_index, record) in records.iter().enumerate() {
                    let index = RecordIndex {
                        ready: ready_index,
                        message: message_index,
                        record: record_index,
                    };
                    let delivery = self.enqueue(record, index).await?;
                    deliveries.push((index, delivery));
                }
            }
        }
        // Every delivery is awaited, so that all refused records are known at once.
        let mut refused = Vec::new();
        let mut failure = None;
        for (index, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => match error.rdkafka_error_code() {
                    Some(code) if refuses_the_record(code) => {
                        refused.push(index);
                        failure.get_or_insert(error);
                    }
                    _ if recovery_of(&error) == Recovery::Fatal => {
                        return Err(RoundError::Fatal(error));
                    }
                    _ => {
                        failure = Some(error);
                    }
                },
                Err(_cancelled) => {
                    failure = Some(KafkaError::Canceled);
                }
            }
        }
        match (refused.is_empty(), failure) {
            (_, None) => {}
            (false, Some(error)) => return Err(RoundError::Refused(refused, error)),
            (true, Some(error)) => return Err(RoundError::Abort(error)),
        }

        // Offsets only for partitions still owned under the generation the batch was read
        // with; otherwise another replica may already be redoing them.
        let mut offsets = TopicPartitionList::new();
        for ready in batch {
            if self.tracker.generation(ready.partition) != Some(ready.generation) {
                return Err(RoundError::Revoked);
            }
            let Some(topic) = self.topics.name(ready.partition.topic) else {
                return Err(RoundError::Revoked);
            };
            offsets
                .add_partition_offset(
                    topic,
                    ready.partition.partition,
                    Offset::Offset(ready.commit_offset),
                )
                .map_err(RoundError::Abort)?;
            // Without any, no metadata: a commit that passes them clears the list.
            if !ready.recorded_ahead.is_empty()
                && let Some(mut element) = offsets.find_partition(topic, ready.partition.partition)
            {
                element.set_metadata(ahead::encode(ready.commit_offset, &ready.recorded_ahead));
            }
        }
        let metadata: Arc<ConsumerGroupMetadata> = self
            .consumer
            .group_metadata()
            .map(Arc::new)
            .ok_or(RoundError::Abort(KafkaError::NoMessageReceived))?;
        let (producer, timeout) = (self.producer.clone(), self.call_timeout);
        self.call("send_offsets_to_transaction", move || {
            producer.send_offsets_to_transaction(&offsets, &metadata, timeout)
        })
        .await?;
        self.commit().await
    }

    /// Hands one record to the producer, waiting while its queue is full.
    async fn enqueue(
        &self,
        record: &OutRecord,
        index: RecordIndex,
    ) -> Result<rdkafka::producer::DeliveryFuture, RoundError> {
        let deadline = Instant::now() + self.call_timeout;
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_ref()),
                });
            }
            let mut future = FutureRecord::to(&record.topic)
                .payload(&record.payload)
                .headers(headers);
            if let Some(key) = &record.key {
                future = future.key(key);
            }
            if let Some(partition) = record.partition {
                future = future.partition(partition);
            }
            match self.producer.send_result(future) {
                Ok(delivery) => return Ok(delivery),
                Err((error, _)) => match error.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::QueueFull) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Some(code) if refuses_the_record(code) => {
                        return Err(RoundError::Refused(vec![index], error));
                    }
                    _ => return Err(RoundError::Abort(error)),
                },
            }
        }
    }

    /// Commits the open transaction. While the result is unknown (retriable errors, such as a
    /// timeout while the commit goes on in the background) the commit is asked again, however
    /// long that takes: aborting instead could write the batch twice, and moving on could
    /// commit later offsets over an aborted batch. Only shutdown stops the asking, and the
    /// worker then exits: the next instance with this transactional id settles the transaction.
    async fn commit(&self) -> Result<(), RoundError> {
        let mut backoff = CALL_RETRY_BACKOFF;
        loop {
            let (producer, timeout) = (self.producer.clone(), self.call_timeout);
            let error = match blocking(move || producer.commit_transaction(timeout)).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            match recovery_of(&error) {
                Recovery::Fatal => return Err(RoundError::Fatal(error)),
                Recovery::Abort => return Err(RoundError::Abort(error)),
                Recovery::RetryCall => {
                    self.metrics.transaction_call_retries.inc();
                    tracing::warn!(%error, "commit_transaction: result unknown yet; asking again");
                    if self.shutdown.is_cancelled() {
                        return Err(RoundError::Unsettled(error));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Makes a transactional call, again while its error is retriable (a bounded number of
    /// times), and classifies the error it ends with.
    async fn call<F>(&self, name: &'static str, call: F) -> Result<(), RoundError>
    where
        F: Fn() -> Result<(), KafkaError> + Clone + Send + 'static,
    {
        let mut retries = 0;
        loop {
            let error = match blocking(call.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            match recovery_of(&error) {
                Recovery::Fatal => return Err(RoundError::Fatal(error)),
                Recovery::RetryCall
                    if retries < MAX_CALL_RETRIES && !self.shutdown.is_cancelled() =>
                {
                    retries += 1;
                    self.metrics.transaction_call_retries.inc();
                    tracing::debug!(%error, call = name, retries, "retriable; calling again");
                    tokio::time::sleep(CALL_RETRY_BACKOFF).await;
                }
                Recovery::RetryCall | Recovery::Abort => return Err(RoundError::Abort(error)),
            }
        }
    }

    /// Aborts the open transaction (retrying while librdkafka says the abort may succeed).
    async fn abort(&self) -> Result<(), CommitError> {
        for _ in 0..MAX_CALL_RETRIES {
            let (producer, timeout) = (self.producer.clone(), self.call_timeout);
            let Err(error) = blocking(move || producer.abort_transaction(timeout)).await else {
                return Ok(());
            };
            match recovery_of(&error) {
                Recovery::Fatal => return Err(CommitError::Fatal(error)),
                Recovery::RetryCall => tokio::time::sleep(CALL_RETRY_BACKOFF).await,
                // Nothing was open (the failure came before begin): nothing to abort.
                Recovery::Abort => {
                    tracing::debug!(%error, "abort_transaction");
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// rdkafka's transactional calls block the calling thread; keep them off the async workers.
async fn blocking<F>(call: F) -> Result<(), KafkaError>
where
    F: FnOnce() -> Result<(), KafkaError> + Send + 'static,
{
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
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
