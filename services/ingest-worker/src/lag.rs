//! The lag the worker publishes every few seconds: each assigned ingress partition's (metric
//! and the status report to the gateway), and what waits in each retry topic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use relais_telemetry::shutdown::CancellationToken;

use crate::consumer::{WorkerConsumer, WorkerContext};
use crate::metrics::{self, WorkerMetrics};
use crate::status;
use crate::tiers::{self, TierConsumer};

/// Publishes each assigned partition's lag, and what waits in each retry topic, every few
/// seconds.
pub(crate) async fn report_lag(
    consumer: Arc<WorkerConsumer>,
    tier_consumer: Arc<TierConsumer>,
    kept: tiers::KeptRecords,
    metrics: WorkerMetrics,
    lags: status::LagSnapshot,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let consumer = Arc::clone(&consumer);
        let current = tokio::task::spawn_blocking(move || partition_lags(&consumer))
            .await
            .unwrap_or_default();
        let tier_consumer = Arc::clone(&tier_consumer);
        let waiting = tokio::task::spawn_blocking(move || tier_waiting(&tier_consumer))
            .await
            .unwrap_or_default();
        let kept = kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        metrics.retry_waiting.clear();
        for (topic, unread) in waiting {
            let count = unread + kept.get(&topic).copied().unwrap_or(0);
            metrics
                .retry_waiting
                .get_or_create(&metrics::TopicLabels { topic })
                .set(count);
        }
        metrics.consumer_lag.clear();
        for (partition, committed, high) in &current {
            metrics
                .consumer_lag
                .get_or_create(&metrics::PartitionLabels {
                    partition: *partition,
                })
                .set((high - committed).max(0));
        }
        *lags
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = current;
    }
}

/// Records not yet read in each retry topic, over the assigned partitions: from the consumer's
/// position, which passes the transactions' commit markers (from the committed offset, a
/// partition written in transactions never looks empty).
fn tier_waiting(consumer: &TierConsumer) -> BTreeMap<String, i64> {
    let Ok(assignment) = consumer.assignment() else {
        return BTreeMap::new();
    };
    let committed = consumer
        .committed_offsets(assignment.clone(), Duration::from_secs(2))
        .unwrap_or(assignment);
    let positions = consumer.position().ok();
    let mut waiting = BTreeMap::new();
    for element in committed.elements() {
        let read_to = positions
            .as_ref()
            .and_then(|positions| positions.find_partition(element.topic(), element.partition()))
            .and_then(|position| position.offset().to_raw())
            .filter(|offset| *offset >= 0);
        let Ok((low, high)) =
            consumer.fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(2))
        else {
            continue;
        };
        let position = read_to
            .or_else(|| element.offset().to_raw().filter(|offset| *offset >= 0))
            .unwrap_or(low);
        *waiting.entry(element.topic().to_owned()).or_insert(0) += (high - position).max(0);
    }
    waiting
}

/// (partition, committed offset, high watermark) of each assigned partition.
fn partition_lags(consumer: &StreamConsumer<WorkerContext>) -> Vec<(i32, i64, i64)> {
    let Ok(assignment) = consumer.assignment() else {
        return Vec::new();
    };
    let committed = consumer
        .committed_offsets(assignment.clone(), Duration::from_secs(2))
        .unwrap_or(assignment);
    committed
        .elements()
        .iter()
        .filter_map(|element| {
            let (low, high) = consumer
                .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(2))
                .ok()?;
            let position = element
                .offset()
                .to_raw()
                .filter(|offset| *offset >= 0)
                .unwrap_or(low);
            Some((element.partition(), position, high))
        })
        .collect()
}
