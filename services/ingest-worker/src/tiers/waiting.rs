//! What waits in the tiers of a newly assigned partition, read once to rebuild its key order
//! state before its messages go on ([`load_parked`]).
//!
//! Partition `p` waits in partition `p` of every tier topic. When the ingress topic gains
//! partitions while the worker runs, the tier topics may not have them yet: the new
//! partitions' messages then wait (nothing is lost, nothing moved to a partition that does not
//! exist), the worker reports not ready naming the topic to grow, and the read is tried again
//! until an operator has added the partitions. A partition whose read fails never holds up the
//! others.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::client::Client;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer as _;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use relais_telemetry::admin::ReadinessCheck;
use relais_telemetry::shutdown::CancellationToken;
use relais_telemetry::tasks::sleep_until;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::committer::TransactionalProducer;
use crate::parked::{InMemory, LoadRequest, ParkedKeys};
use crate::records::Tracker;
use crate::retry::{RetryState, TierTopics, owned_headers};
use crate::tracker::{INGRESS, RecordedAhead, SourcePartition, TopicIndex, ahead};

/// A partition's tier state still to read, as it was asked.
#[derive(Debug)]
struct PendingLoad {
    request: LoadRequest,
    at: Instant,
    failures: u32,
}

/// How long a read that failed `failures` times in a row waits before the next: from a second,
/// doubling, to half a minute.
fn retry_delay(failures: u32) -> Duration {
    let doubled = Duration::from_secs(1).saturating_mul(1 << failures.saturating_sub(1).min(5));
    doubled.min(Duration::from_secs(30))
}

/// What `/readyz` says while partitions wait for tier partitions that do not exist.
fn missing_reason(missing: &BTreeMap<i32, String>) -> Option<String> {
    let (_, first) = missing.first_key_value()?;
    Some(match missing.len() {
        1 => first.clone(),
        more => format!("{first} (and {} more partitions)", more - 1),
    })
}

fn report_missing(ready: &ReadinessCheck, missing: &BTreeMap<i32, String>) {
    match missing_reason(missing) {
        Some(reason) => ready.set_not_ready(reason),
        None => ready.set_ready(),
    }
}

/// Loads the key order state of each assigned partition, reading what waits in its tiers;
/// until then the partition's messages wait. A failed read is tried again, with backoff, while
/// the partition is still owned under the same assignment; `ready` is false while a partition
/// waits for a tier partition that does not exist.
///
/// A second read of a partition (its state went stale, [`crate::parked`]) counts the tier
/// records the worker holds in memory, and reads the tiers from where the worker reads next.
pub async fn load_parked(
    mut requests: mpsc::Receiver<LoadRequest>,
    loader: WaitingReader,
    tracker: Arc<Tracker>,
    parked: Arc<ParkedKeys>,
    ready: ReadinessCheck,
    shutdown: CancellationToken,
) {
    let mut pending: Vec<PendingLoad> = Vec::new();
    // Partitions waiting for a tier partition, with what to do about it.
    let mut missing: BTreeMap<i32, String> = BTreeMap::new();
    ready.set_ready();
    loop {
        pending.retain(|load| {
            let LoadRequest {
                partition,
                generation,
                ..
            } = load.request;
            tracker.generation(SourcePartition::ingress(partition)) == Some(generation)
        });
        let before = missing.len();
        missing.retain(|partition, _| {
            pending
                .iter()
                .any(|load| load.request.partition == *partition)
        });
        if missing.len() < before {
            report_missing(&ready, &missing);
        }
        let next = pending.iter().map(|load| load.at).min();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            request = requests.recv() => match request {
                Some(request) => {
                    // A later read of a partition replaces one not yet done.
                    pending.retain(|load| load.request.partition != request.partition);
                    pending.push(PendingLoad { request, at: Instant::now(), failures: 0 });
                }
                None => return,
            },
            _ = sleep_until(next), if next.is_some() => {
                let Some(index) = pending.iter().enumerate().min_by_key(|(_, load)| load.at).map(|(index, _)| index) else {
                    continue;
                };
                let mut load = pending.swap_remove(index);
                let reader = loader.clone();
                let in_memory = load.request.in_memory.clone();
                let started = Instant::now();
                let partition = load.request.partition;
                let read = tokio::task::spawn_blocking(move || reader.read(partition, in_memory))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|result| result);
                match read {
                    Ok(Loaded { waiting, recorded_ahead }) => {
                        let count = waiting.len();
                        // What earlier owners recorded ahead is known before the partition's
                        // messages go on (a second read finds only this worker's own).
                        if load.request.round == 0 {
                            let named: usize = recorded_ahead.iter().map(|(_, _, offsets)| offsets.len()).sum();
                            if tracker.recorded_ahead(partition, load.request.generation, recorded_ahead)
                                && named > 0
                            {
                                tracing::info!(
                                    partition,
                                    recorded_ahead = named,
                                    "outcomes were committed ahead of the offset before this assignment; those messages are not sent again"
                                );
                            }
                        }
                        if missing.remove(&partition).is_some() {
                            tracing::info!(partition, "the retry tiers have the partition now");
                            report_missing(&ready, &missing);
                        }
                        if parked.load(&load.request, waiting) {
                            tracing::info!(
                                partition,
                                waiting = count,
                                round = load.request.round,
                                took = ?started.elapsed(),
                                "retry tiers read; the partition's messages go on"
                            );
                        }
                    }
                    Err(error) => {
                        load.failures = load.failures.saturating_add(1);
                        load.at = Instant::now() + retry_delay(load.failures);
                        if let Some(absent) = error.downcast_ref::<MissingTierPartition>() {
                            if missing.insert(partition, absent.to_string()).is_none() {
                                tracing::error!(
                                    partition,
                                    error = %absent,
                                    "the partition's messages wait until the retry topic has its partition"
                                );
                            }
                            report_missing(&ready, &missing);
                        } else {
                            tracing::warn!(
                                partition,
                                error = format!("{error:#}"),
                                "cannot read the retry tiers; trying again"
                            );
                        }
                        pending.push(load);
                    }
                }
            }
        }
    }
}

/// A tier topic without the partition an ingress partition waits in: the ingress topic has
/// gained partitions the tier topics have not (or a tier topic is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
struct MissingTierPartition {
    topic: String,
    /// The tier topic's partitions now (0: it does not exist).
    partitions: usize,
    partition: i32,
}

impl std::fmt::Display for MissingTierPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            topic,
            partitions,
            partition,
        } = self;
        if *partitions == 0 {
            write!(
                f,
                "retry topic {topic} does not exist, and ingress partition {partition} waits in \
                 it: create it with the ingress topic's partitions"
            )
        } else {
            write!(
                f,
                "retry topic {topic} has {partitions} partitions, and ingress partition \
                 {partition} waits in partition {partition} of it: add partitions to it, as many \
                 as the ingress topic has"
            )
        }
    }
}

impl std::error::Error for MissingTierPartition {}

/// What a partition's read found: (upstream, key, tier) of every waiting record that keeps key
/// order, and per topic (the ingress topic and each tier) the offsets whose outcomes were
/// recorded ahead of the committed offset ([`crate::tracker::ahead`]).
#[derive(Debug, Default)]
pub struct Loaded {
    pub waiting: Vec<(String, Vec<u8>, usize)>,
    pub recorded_ahead: RecordedAhead,
}

/// Reads the records waiting in one partition of every tier: from the group's committed offset
/// to the end.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // ClientConfig's Debug would print credentials
pub struct WaitingReader {
    pub client: ClientConfig,
    /// The producer that writes the moves: the tier topics' partitions are asked through it.
    pub producer: TransactionalProducer,
    pub group_id: String,
    pub ingress_topic: String,
    pub topics: TierTopics,
    /// Upstreams whose order is kept per key (the others need no state).
    pub ordered_upstreams: Arc<HashSet<String>>,
}

/// Longest read of one partition's tiers.
const READ_DEADLINE: Duration = Duration::from_secs(120);

impl WaitingReader {
    /// (upstream, key, tier) of every waiting record of `partition` that keeps key order: from
    /// the committed offsets to the ends, or, for a second read, those `in_memory` and the
    /// rest from where the worker reads next; and what the committed offsets' metadata says
    /// was recorded ahead of them.
    pub fn read(&self, partition: i32, in_memory: Option<InMemory>) -> anyhow::Result<Loaded> {
        let consumer: BaseConsumer = self
            .client
            .clone()
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .create()
            .context("cannot create the retry tier reader")?;
        // Asked through the producer that writes the moves: the answer also updates what it
        // knows of the topic, so that its first move to a partition just added does not fail.
        let producer = self.producer.current();
        for (_, topic, _) in self.topics.tiers() {
            let partitions = tier_partitions(producer.client(), topic)?;
            if usize::try_from(partition).is_ok_and(|partition| partition >= partitions) {
                return Err(MissingTierPartition {
                    topic: topic.to_owned(),
                    partitions,
                    partition,
                }
                .into());
            }
        }
        // The ingress partition is asked too: the group answers only once no transaction that
        // commits offsets of these partitions is pending, so what is read below is settled.
        let mut asked = TopicPartitionList::new();
        asked.add_partition(&self.ingress_topic, partition);
        for (_, topic, _) in self.topics.tiers() {
            asked.add_partition(topic, partition);
        }
        let committed = consumer
            .committed_offsets(asked, Duration::from_secs(15))
            .context("cannot read the committed offsets of the retry tiers")?;
        let topics: Vec<(TopicIndex, &str)> =
            std::iter::once((INGRESS, self.ingress_topic.as_str()))
                .chain(self.topics.tiers().map(|(index, topic, _)| (index, topic)))
                .collect();
        let recorded_ahead = ahead::named_in(&committed, &topics, partition)
            .context("cannot read what the committed offsets name as recorded ahead")?;
        let mut start = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for (_, topic, _) in self.topics.tiers() {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .with_context(|| format!("cannot read the end of {topic}/{partition}"))?;
            let read_next = in_memory
                .as_ref()
                .and_then(|known| known.positions.get(topic).copied());
            let committed = committed
                .find_partition(topic, partition)
                .and_then(|element| element.offset().to_raw())
                .filter(|offset| *offset >= 0);
            let from = first_waiting(read_next.or(committed), low, high);
            if from < high {
                start.add_partition_offset(topic, partition, Offset::Offset(from))?;
                ends.insert(topic.to_owned(), high);
            }
        }
        let mut waiting: Vec<(String, Vec<u8>, usize)> = in_memory
            .map(|known| known.waiting)
            .unwrap_or_default()
            .into_iter()
            .filter(|(upstream, _, _)| self.ordered_upstreams.contains(upstream))
            .collect();
        if ends.is_empty() {
            return Ok(Loaded {
                waiting,
                recorded_ahead,
            });
        }
        consumer.assign(&start)?;
        let deadline = std::time::Instant::now() + READ_DEADLINE;
        while !ends.is_empty() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "reading the retry tiers of partition {partition} took longer than {READ_DEADLINE:?}"
            );
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    let headers = owned_headers(&message);
                    if let (Some(key), Ok(state)) =
                        (message.key(), RetryState::from_headers(&headers))
                        && self.ordered_upstreams.contains(&state.upstream)
                    {
                        waiting.push((state.upstream, key.to_vec(), state.tier));
                    }
                }
                Some(Err(error)) => return Err(error).context("reading the retry tiers"),
                None => {}
            }
            for element in consumer.position()?.elements() {
                if let (Offset::Offset(position), Some(end)) =
                    (element.offset(), ends.get(element.topic()))
                    && position >= *end
                {
                    ends.remove(element.topic());
                }
            }
        }
        Ok(Loaded {
            waiting,
            recorded_ahead,
        })
    }
}

/// The first offset of a tier partition whose record may wait, given the offset reading went
/// on from (committed, or where the worker reads next): that one; the log's start where
/// records were deleted before it (retention, delete-records) or there is none; the start too
/// where the log ends before it (the topic created again: the tier consumer reads the new log
/// from its start).
fn first_waiting(committed: Option<i64>, low: i64, high: i64) -> i64 {
    match committed {
        Some(committed) if committed <= high => committed.max(low),
        _ => low,
    }
}

/// The partitions of `topic` now; 0 when it does not exist.
fn tier_partitions<C: ClientContext>(client: &Client<C>, topic: &str) -> anyhow::Result<usize> {
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    let Some(described) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(0);
    };
    match described.error() {
        None => Ok(described.partitions().len()),
        Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => Ok(0),
        Some(error) => anyhow::bail!("cannot read the metadata of {topic}: {error:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_records_are_read_from_the_committed_offset_within_the_log() {
        assert_eq!(first_waiting(Some(40), 10, 90), 40);
        assert_eq!(first_waiting(Some(90), 10, 90), 90, "nothing waits");
        assert_eq!(first_waiting(None, 10, 90), 10, "nothing committed yet");
        assert_eq!(
            first_waiting(Some(4), 10, 90),
            10,
            "deleted before it was read"
        );
        assert_eq!(
            first_waiting(Some(500), 0, 30),
            0,
            "the topic created again: its new log waits whole"
        );
    }

    #[test]
    fn failed_reads_back_off_from_a_second_to_half_a_minute() {
        let delays: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn readiness_names_the_first_missing_partition_and_counts_the_rest() {
        let mut missing = BTreeMap::new();
        assert_eq!(missing_reason(&missing), None);
        missing.insert(4, "four".to_owned());
        assert_eq!(missing_reason(&missing).as_deref(), Some("four"));
        missing.insert(2, "two".to_owned());
        missing.insert(7, "seven".to_owned());
        assert_eq!(
            missing_reason(&missing).as_deref(),
            Some("two (and 2 more partitions)")
        );
    }

    #[test]
    fn a_missing_tier_partition_says_what_to_do() {
        let grown = MissingTierPartition {
            topic: "relais.retry.5s".into(),
            partitions: 12,
            partition: 14,
        };
        assert_eq!(
            grown.to_string(),
            "retry topic relais.retry.5s has 12 partitions, and ingress partition 14 waits in \
             partition 14 of it: add partitions to it, as many as the ingress topic has"
        );
        let gone = MissingTierPartition {
            partitions: 0,
            ..grown
        };
        assert!(
            gone.to_string()
                .starts_with("retry topic relais.retry.5s does not exist")
        );
    }
}
