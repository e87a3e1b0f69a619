//! Reading the retry tiers ([`crate::retry`]).
//!
//! The tier topics are read by a second consumer that is assigned by hand, never by the group:
//! whoever owns ingress partition `p` also reads partition `p` of every tier, because that is
//! where the messages of `p` wait, and the key order of `p` is kept by one replica
//! ([`crate::parked`]). Its offsets are committed in the same transactions as the ingress
//! offsets, with the group's metadata, so a zombie is fenced as before.
//!
//! A tier partition whose head is not due yet is paused, its head kept aside, and resumed at
//! the due time ([`DueHeads`]). When a partition is assigned, the records waiting in its tiers are
//! read once, keys only, to rebuild its key order state ([`load_parked`]); its messages wait
//! until then.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use relais_kafka::resets::ResetWatch;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{ConfigError, WorkerConfig};
use crate::parked::{LoadRequest, ParkedKeys};
use crate::records::Inbound;
use crate::records::Tracker;
use crate::retry::TierTopics;
use crate::tracker::SourcePartition;

mod waiting;

pub use waiting::{WaitingReader, load_parked};

pub type TierConsumer = StreamConsumer<ResetWatch>;

/// Tier records read before they were due and kept in memory, per retry topic (written by the
/// dispatcher, read by the lag reporter).
pub type KeptRecords = Arc<std::sync::Mutex<BTreeMap<String, i64>>>;

/// Partitions whose waiting records are still to be read.
pub type LoadRequests = mpsc::Sender<LoadRequest>;

/// What the rebalance callbacks need to give tier partitions to the owner of the ingress
/// partition of the same number.
#[derive(Clone)]
pub struct TierAssignment {
    pub consumer: Arc<TierConsumer>,
    pub topics: TierTopics,
    pub parked: Arc<ParkedKeys>,
    pub loads: LoadRequests,
}

impl std::fmt::Debug for TierAssignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierAssignment")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl TierAssignment {
    /// Ingress partition `partition` was assigned under `generation`: its tier partitions
    /// follow it, and its key order state and what was recorded ahead of its committed
    /// offsets are to be loaded (without tiers, only the latter, unless the caller read it:
    /// `recorded_ahead_known`).
    pub fn assigned(
        &self,
        tracker: &Tracker,
        partition: i32,
        generation: u64,
        recorded_ahead_known: bool,
    ) {
        let read = self.parked.assigned(partition, generation);
        if !self.topics.is_empty() {
            let mut list = TopicPartitionList::new();
            for (index, topic, _) in self.topics.tiers() {
                tracker.assign(SourcePartition {
                    topic: index,
                    partition,
                });
                let _ = list.add_partition_offset(topic, partition, Offset::Stored);
            }
            if let Err(error) = self.consumer.incremental_assign(&list) {
                tracing::error!(%error, partition, "cannot assign the retry tier partitions");
            }
        }
        // Without tiers only what was recorded ahead of the committed offset is to be read
        // ([`crate::tracker::ahead`]), which the caller may know already.
        if self.topics.is_empty() && recorded_ahead_known {
            self.parked.load(&read, []);
            return;
        }
        if self.loads.try_send(read).is_err() {
            tracing::error!(
                partition,
                "the retry loader is gone; the partition stays waiting"
            );
        }
    }

    /// The tier topics' indexes.
    pub fn topic_indexes(&self) -> Vec<crate::tracker::TopicIndex> {
        self.topics.tiers().map(|(index, _, _)| index).collect()
    }

    /// Ingress partition `partition` was revoked: so are its tier partitions.
    pub fn revoked(&self, tracker: &Tracker, partition: i32) {
        self.parked.revoked(partition);
        if self.topics.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (index, topic, _) in self.topics.tiers() {
            tracker.revoke(SourcePartition {
                topic: index,
                partition,
            });
            list.add_partition(topic, partition);
        }
        if let Err(error) = self.consumer.incremental_unassign(&list) {
            tracing::warn!(%error, partition, "cannot unassign the retry tier partitions");
        }
    }
}

/// Tier records fetched ahead, in KiB: they are read at their due times, a few at a time.
const TIER_PREFETCH_KBYTES: u32 = 1024;

/// A consumer for the tier topics: assigned by hand (no group membership), reading committed
/// records only, its positions taken from the group's committed offsets; its offset resets go
/// to `resets`.
pub fn tier_consumer(
    mut client: ClientConfig,
    group_id: &str,
    client_id: &str,
    resets: ResetWatch,
) -> anyhow::Result<TierConsumer> {
    relais_kafka::resets::watched(&mut client)
        .set("group.id", group_id)
        .set("client.id", format!("{client_id}-retry"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    relais_kafka::bounded_prefetch(&mut client, TIER_PREFETCH_KBYTES)
        .create_with_context(resets)
        .context("cannot create the retry tier consumer")
}

/// Tier partitions paused until their head is due, each with the records read before the
/// pause took effect (in offset order, the head first). Due times are on the monotonic clock,
/// so that a wall clock jumping back while records wait does not lengthen their wait.
#[derive(Debug, Default)]
pub struct DueHeads {
    heads: BTreeMap<SourcePartition, VecDeque<(Instant, Inbound)>>,
}

impl DueHeads {
    /// Keeps `record` until `due`, behind what its partition keeps already (records of an
    /// earlier assignment are dropped: the new owner reads them again). The caller pauses the
    /// partition.
    pub fn keep(&mut self, record: Inbound, due: Instant) {
        let queue = self.heads.entry(record.source()).or_default();
        if queue
            .front()
            .is_some_and(|(_, front)| front.generation != record.generation)
        {
            queue.clear();
        }
        queue.push_back((due, record));
    }

    pub fn is_waiting(&self, source: SourcePartition) -> bool {
        self.heads.contains_key(&source)
    }

    /// The records `source` keeps.
    pub fn records(&self, source: SourcePartition) -> impl Iterator<Item = &Inbound> {
        self.heads
            .get(&source)
            .into_iter()
            .flatten()
            .map(|(_, record)| record)
    }

    /// When the next head is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heads
            .values()
            .filter_map(|queue| queue.front().map(|(due, _)| *due))
            .min()
    }

    /// The records due by now, in offset order per partition; the partitions whose records
    /// are all taken are to be resumed.
    pub fn take_due(&mut self) -> (Vec<Inbound>, Vec<SourcePartition>) {
        let now = Instant::now();
        let (mut due, mut emptied) = (Vec::new(), Vec::new());
        for (source, queue) in &mut self.heads {
            while queue.front().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, record)) = queue.pop_front() {
                    due.push(record);
                }
            }
            if queue.is_empty() {
                emptied.push(*source);
            }
        }
        for source in &emptied {
            self.heads.remove(source);
        }
        (due, emptied)
    }

    /// Records kept, per tier topic.
    pub fn kept_per_topic(&self, topics: &TierTopics) -> BTreeMap<String, i64> {
        let mut kept = BTreeMap::new();
        for (source, queue) in &self.heads {
            if let Some(name) = topics.name(source.topic) {
                *kept.entry(name.to_owned()).or_insert(0) += queue.len() as i64;
            }
        }
        kept
    }

    /// Per tier topic, how long its oldest kept head has waited since it moved there.
    pub fn oldest_per_topic(&self, topics: &TierTopics) -> BTreeMap<String, Duration> {
        let now = Instant::now();
        let mut oldest = BTreeMap::new();
        for (source, queue) in &self.heads {
            let (Some((due, _)), Some(name), Some(delay)) = (
                queue.front(),
                topics.name(source.topic),
                topics.delay(source.topic),
            ) else {
                continue;
            };
            // It moved there about its tier's delay before it is due.
            let age = (now + delay).saturating_duration_since(*due);
            let entry = oldest.entry(name.to_owned()).or_insert(age);
            *entry = (*entry).max(age);
        }
        oldest
    }
}

/// How long a tier record read at `now` waits: until its due time, cut to its tier's delay
/// after it was written, and never longer than that delay from now (see [`wait_until`]).
/// `None` for a record that is not a tier record.
pub fn wait_of(inbound: &Inbound, topics: &TierTopics, now: SystemTime) -> Option<Duration> {
    let state = inbound.retry_state()?;
    let delay = topics.delay(inbound.topic_index)?;
    let (due, cut) = crate::retry::effective_due(state.due, inbound.timestamp, delay);
    if cut {
        tracing::warn!(
            topic = %inbound.topic,
            partition = inbound.partition,
            offset = inbound.offset,
            "a retry record's due time lies beyond its tier's delay; cut to it"
        );
    }
    Some(wait_until(due, now, delay))
}

/// The wait until `due` (wall time) from `now`, at most `delay`: a due time further away than
/// its tier's delay comes from a wall clock that jumped back since the record was written (or
/// ran ahead where it was written). The wait is then measured on the monotonic clock
/// ([`DueHeads`]), which no clock change moves.
pub fn wait_until(due: SystemTime, now: SystemTime, delay: Duration) -> Duration {
    due.duration_since(now).unwrap_or_default().min(delay)
}

/// Checks that every retry topic exists with at least the ingress topic's partitions (a move
/// is written to the partition its message was read from). A broker that cannot be asked is
/// not a configuration error: the worker starts and fails, or not, as it would without tiers.
pub fn check_retry_topics(
    kafka: &relais_kafka::KafkaClient,
    config: &WorkerConfig,
) -> Result<(), ConfigError> {
    let topics = config.tier_topics();
    if topics.is_empty() {
        return Ok(());
    }
    let consumer: BaseConsumer = match kafka.config().create() {
        Ok(consumer) => consumer,
        Err(_) => return Ok(()),
    };
    let Ok(metadata) = consumer.fetch_metadata(None, Duration::from_secs(10)) else {
        return Ok(());
    };
    let partitions = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == name && topic.error().is_none())
            .map(|topic| topic.partitions().len())
    };
    let Some(ingress) = partitions(&config.kafka.ingress_topic) else {
        return Ok(());
    };
    check_tier_partitions(&topics, ingress, partitions)
}

fn check_tier_partitions(
    topics: &TierTopics,
    ingress: usize,
    partitions: impl Fn(&str) -> Option<usize>,
) -> Result<(), ConfigError> {
    for (_, topic, _) in topics.tiers() {
        match partitions(topic) {
            None => {
                return Err(ConfigError::Invalid(format!(
                    "retry topic {topic} does not exist: create it with the ingress topic's {ingress} partitions (deploy/native/kafka/topics.txt lists the defaults), or set the upstreams' retry_tiers"
                )));
            }
            Some(count) if count < ingress => {
                return Err(ConfigError::Invalid(format!(
                    "retry topic {topic} has {count} partitions, fewer than the ingress topic's {ingress}: a message waits in the partition number it was read from"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_record_waits_until_due_and_never_longer_than_its_tiers_delay() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let delay = Duration::from_secs(300);
        let wait = |due: SystemTime| wait_until(due, now, delay);
        assert_eq!(
            wait(now + Duration::from_secs(120)),
            Duration::from_secs(120)
        );
        assert_eq!(
            wait(now - Duration::from_secs(5)),
            Duration::ZERO,
            "overdue"
        );
        assert_eq!(
            wait(now + Duration::from_secs(3_600)),
            delay,
            "the clock went back an hour since it was written: the delay, not an hour more"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn kept_records_are_due_on_the_monotonic_clock_in_offset_order() {
        let record = |offset| Inbound {
            topic: "relais.retry.5s".into(),
            topic_index: 1,
            partition: 0,
            offset,
            ..crate::records::fixtures::inbound(Vec::new(), b"k", &[])
        };
        let mut heads = DueHeads::default();
        let start = Instant::now();
        heads.keep(record(7), start + Duration::from_secs(5));
        heads.keep(record(8), start + Duration::from_secs(1));
        assert_eq!(
            heads.next_due(),
            Some(start + Duration::from_secs(5)),
            "the head's"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let (due, emptied) = heads.take_due();
        assert!(
            due.is_empty(),
            "the head is not due: nothing behind it goes"
        );
        assert!(emptied.is_empty());
        tokio::time::advance(Duration::from_secs(3)).await;
        let (due, emptied) = heads.take_due();
        let offsets: Vec<i64> = due.iter().map(|record| record.offset).collect();
        assert_eq!(offsets, [7, 8]);
        assert_eq!(emptied.len(), 1);
        assert_eq!(heads.next_due(), None);
    }

    #[test]
    fn every_retry_topic_must_exist_with_the_ingress_partitions() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(300)];
        let topics = TierTopics::new("relais.ingress", "relais.retry", [&schedule[..]]);
        let with = |counts: &'static [(&'static str, usize)]| {
            move |name: &str| {
                counts
                    .iter()
                    .find(|(topic, _)| *topic == name)
                    .map(|(_, count)| *count)
            }
        };
        assert!(
            check_tier_partitions(
                &topics,
                3,
                with(&[("relais.retry.5s", 3), ("relais.retry.5m", 6)])
            )
            .is_ok()
        );
        let missing = check_tier_partitions(&topics, 3, with(&[("relais.retry.5s", 3)]))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("relais.retry.5m does not exist"),
            "{missing}"
        );
        let fewer = check_tier_partitions(
            &topics,
            3,
            with(&[("relais.retry.5s", 2), ("relais.retry.5m", 3)]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            fewer.contains("has 2 partitions, fewer than the ingress topic's 3"),
            "{fewer}"
        );
    }
}
