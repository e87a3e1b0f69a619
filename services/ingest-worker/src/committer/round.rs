//! One commit round's calls to the transactional producer: begin, enqueue every record,
//! send the offsets, commit; and the abort that ends a round that cannot commit.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer as _, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use super::{
    CALL_RETRY_BACKOFF, Committer, MAX_CALL_RETRIES, RecordIndex, Recovery, RoundError,
    recovery_of, refuses_the_record,
};
use crate::records::OutRecord;
use crate::tracker::{Ready, ahead};

impl Committer {
    /// Writes one batch: its records and the offsets that cover them, in one transaction.
    pub(super) async fn commit_batch(
        &self,
        batch: &[Ready<Vec<OutRecord>>],
    ) -> Result<(), RoundError> {
        let producer = self.producer.current();
        let beginning = producer.clone();
        self.call("begin_transaction", move || beginning.begin_transaction())
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
                    let delivery = self.enqueue(&producer, record, index).await?;
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
        let timeout = self.call_timeout;
        self.call("send_offsets_to_transaction", move || {
            producer.send_offsets_to_transaction(&offsets, &metadata, timeout)
        })
        .await?;
        self.commit().await
    }

    /// Hands one record to the producer, waiting while its queue is full.
    async fn enqueue(
        &self,
        producer: &FutureProducer,
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
            match producer.send_result(future) {
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
            let (producer, timeout) = (self.producer.current(), self.call_timeout);
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

    /// Aborts the open transaction (retrying while librdkafka says the abort may succeed); the
    /// error when the producer is left in a fatal state.
    pub(super) async fn abort(&self) -> Result<(), KafkaError> {
        for _ in 0..MAX_CALL_RETRIES {
            let (producer, timeout) = (self.producer.current(), self.call_timeout);
            let Err(error) = blocking(move || producer.abort_transaction(timeout)).await else {
                return Ok(());
            };
            match recovery_of(&error) {
                Recovery::Fatal => return Err(error),
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
pub(super) async fn blocking<F>(call: F) -> Result<(), KafkaError>
where
    F: FnOnce() -> Result<(), KafkaError> + Send + 'static,
{
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}
