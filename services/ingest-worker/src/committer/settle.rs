//! What a round cut short by a fatal producer error left behind. Once a new producer has
//! settled the old one's transaction, the group's committed offsets say whether it committed:
//! the transaction wrote each partition's offset and the metadata naming what was recorded
//! ahead of it, so finding exactly those (or more) means its records are written.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer as _;
use rdkafka::error::KafkaError;
use relais_telemetry::shutdown::CancellationToken;

use crate::consumer::WorkerConsumer;
use crate::records::OutRecord;
use crate::retry::TierTopics;
use crate::tracker::{Ready, ahead};

/// Limit of one read of the committed offsets.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait between reads that failed (the group coordinator still loading, or away).
const READ_BACKOFF: Duration = Duration::from_secs(1);

/// Whether the round that wrote `commit_offset` and `recorded_ahead` for a partition was
/// committed, given the offset and metadata the group now holds for it. Rounds only move a
/// partition forward, and each writes something new (a later offset or more recorded ahead),
/// so holding at least what the round wrote means the round committed.
pub(super) fn landed(
    commit_offset: i64,
    recorded_ahead: &BTreeSet<i64>,
    committed: Option<(i64, &str)>,
) -> bool {
    committed.is_some_and(|(offset, metadata)| {
        offset > commit_offset
            || (offset == commit_offset
                && recorded_ahead.is_subset(&ahead::decode(offset, metadata)))
    })
}

/// Splits a cut-short round into what its transaction committed and what it did not, reading
/// the group's committed offsets until the group answers (only once no transaction on these
/// partitions is pending, so the answer is settled) or `shutdown`.
pub(super) async fn split_by_commit(
    consumer: &Arc<WorkerConsumer>,
    topics: &TierTopics,
    batch: Vec<Ready<Vec<OutRecord>>>,
    shutdown: &CancellationToken,
) -> Result<Split, KafkaError> {
    let mut asked = TopicPartitionList::new();
    for ready in &batch {
        if let Some(topic) = topics.name(ready.partition.topic) {
            asked.add_partition(topic, ready.partition.partition);
        }
    }
    let committed = loop {
        let (consumer, asked) = (Arc::clone(consumer), asked.clone());
        let read =
            tokio::task::spawn_blocking(move || consumer.committed_offsets(asked, READ_TIMEOUT))
                .await
                .unwrap_or(Err(KafkaError::Canceled));
        match read {
            Ok(committed) => break committed,
            Err(error) if shutdown.is_cancelled() => return Err(error),
            Err(error) => {
                tracing::warn!(%error, "cannot read the committed offsets yet; asking again");
                tokio::time::sleep(READ_BACKOFF).await;
            }
        }
    };
    let mut split = Split::default();
    for ready in batch {
        let held = topics
            .name(ready.partition.topic)
            .and_then(|topic| committed.find_partition(topic, ready.partition.partition))
            .and_then(|element| {
                let offset = element.offset().to_raw()?;
                Some((offset, element.metadata().to_owned()))
            });
        let held = held
            .as_ref()
            .map(|(offset, metadata)| (*offset, metadata.as_str()));
        if landed(ready.commit_offset, &ready.recorded_ahead, held) {
            split.committed.push(ready);
        } else {
            split.not_committed.push(ready);
        }
    }
    Ok(split)
}

/// A cut-short round, split by [`split_by_commit`].
#[derive(Default)]
pub(super) struct Split {
    pub(super) committed: Vec<Ready<Vec<OutRecord>>>,
    pub(super) not_committed: Vec<Ready<Vec<OutRecord>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(offsets: &[i64]) -> BTreeSet<i64> {
        offsets.iter().copied().collect()
    }

    #[test]
    fn a_round_that_moved_the_offset_landed_when_the_group_holds_its_offset() {
        let none = BTreeSet::new();
        assert!(landed(100, &none, Some((100, ""))));
        assert!(!landed(100, &none, Some((90, ""))), "the round before it");
        assert!(!landed(100, &none, None), "nothing committed yet");
    }

    #[test]
    fn a_round_that_recorded_ahead_landed_only_with_what_it_named() {
        let ahead = set(&[103, 107]);
        let written = ahead::encode(100, &ahead);
        assert!(landed(100, &ahead, Some((100, &written))));
        // The same offset from an earlier round that named less ahead of it.
        let earlier = ahead::encode(100, &set(&[103]));
        assert!(!landed(100, &ahead, Some((100, &earlier))));
        assert!(!landed(100, &ahead, Some((100, ""))));
    }

    #[test]
    fn a_group_already_past_the_round_means_it_is_written() {
        assert!(landed(100, &set(&[103]), Some((120, ""))));
    }
}
