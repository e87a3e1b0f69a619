//! Writes outcomes and consumed offsets in one Kafka transaction (consume-process-produce).
//!
//! Every `commit_interval`, the contiguous finished prefix of each owned partition is taken
//! from the [`OffsetTracker`], its records are produced inside a transaction together with the
//! offsets that cover them, and the transaction is committed. A failed transaction is aborted
//! and its batch put back for the next round, so nothing is written twice or lost. A fatal
//! producer error (fenced by a newer instance with the same transactional id) ends the worker:
//! another process owns this identity now.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::metrics::WorkerMetrics;
use crate::pipeline::WorkerConsumer;
use crate::records::OutRecord;
use crate::tracker::{OffsetTracker, Ready};

/// Limit of each blocking transactional call.
const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub type Tracker = OffsetTracker<Vec<OutRecord>>;

/// Why a commit round failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("transaction failed; batch restored for the next round")]
    Aborted(#[source] KafkaError),
    #[error("the transactional producer hit a fatal error (fenced by a newer instance?)")]
    Fatal(#[source] KafkaError),
    #[error("a partition of the batch was revoked during the transaction; batch dropped")]
    Revoked,
}

pub struct Committer {
    pub producer: FutureProducer,
    pub consumer: Arc<WorkerConsumer>,
    pub tracker: Arc<Tracker>,
    pub ingress_topic: String,
    pub max_batch: usize,
    pub metrics: WorkerMetrics,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("ingress_topic", &self.ingress_topic)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl Committer {
    /// Commits everything that is ready, in rounds of at most `max_batch` outcomes. Returns how
    /// many messages were committed.
    pub async fn commit_ready(&self) -> Result<usize, CommitError> {
        let mut committed = 0;
        loop {
            let batch = self.tracker.take_ready(self.max_batch);
            if batch.is_empty() {
                return Ok(committed);
            }
            let count: usize = batch.iter().map(|ready| ready.outputs.len()).sum();
            let started = Instant::now();
            match self.commit_batch(&batch).await {
                Ok(()) => {
                    self.metrics.record_transaction(true, started.elapsed());
                    self.metrics.committed_messages.inc_by(count as u64);
                    committed += count;
                }
                Err(error) => {
                    self.metrics.record_transaction(false, started.elapsed());
                    self.abort().await;
                    self.tracker.restore(batch);
                    return Err(error);
                }
            }
        }
    }

    async fn commit_batch(&self, batch: &[Ready<Vec<OutRecord>>]) -> Result<(), CommitError> {
        let producer = self.producer.clone();
        blocking(move || producer.begin_transaction())
            .await
            .map_err(classify)?;

        // Enqueue everything first (librdkafka batches it), then wait for every delivery.
        let mut deliveries = Vec::new();
        for ready in batch {
            for (_, records) in &ready.outputs {
                for record in records {
                    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
                    for (name, value) in &record.headers {
                        headers = headers.insert(Header {
                            key: name,
                            value: Some(value),
                        });
                    }
                    let mut future = FutureRecord::to(&record.topic)
                        .payload(&record.payload)
                        .headers(headers);
                    if let Some(key) = &record.key {
                        future = future.key(key);
                    }
                    let delivery = self
                        .producer
                        .send_result(future)
                        .map_err(|(error, _)| CommitError::Aborted(error))?;
                    deliveries.push(delivery);
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(classify(error)),
                Err(_cancelled) => return Err(CommitError::Aborted(KafkaError::Canceled)),
            }
        }

        // Offsets only for partitions still owned under the generation the batch was read
        // with; otherwise another replica may already be redoing them.
        let mut offsets = TopicPartitionList::new();
        for ready in batch {
            if self.tracker.generation(ready.partition) != Some(ready.generation) {
                return Err(CommitError::Revoked);
            }
            offsets
                .add_partition_offset(
                    &self.ingress_topic,
                    ready.partition,
                    Offset::Offset(ready.commit_offset),
                )
                .map_err(CommitError::Aborted)?;
        }
        let metadata: ConsumerGroupMetadata = self
            .consumer
            .group_metadata()
            .ok_or(CommitError::Aborted(KafkaError::NoMessageReceived))?;
        let producer = self.producer.clone();
        blocking(move || {
            producer.send_offsets_to_transaction(&offsets, &metadata, TRANSACTION_CALL_TIMEOUT)?;
            producer.commit_transaction(TRANSACTION_CALL_TIMEOUT)
        })
        .await
        .map_err(classify)
    }

    async fn abort(&self) {
        let producer = self.producer.clone();
        if let Err(error) =
            blocking(move || producer.abort_transaction(TRANSACTION_CALL_TIMEOUT)).await
        {
            // Nothing was open (the failure came before begin) or the producer is fatal; the
            // next begin_transaction tells which.
            tracing::debug!(%error, "abort_transaction");
        }
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

fn classify(error: KafkaError) -> CommitError {
    match &error {
        KafkaError::Transaction(inner) if inner.is_fatal() => CommitError::Fatal(error),
        _ => CommitError::Aborted(error),
    }
}
