//! Partitions assigned while an earlier owner's transaction still holds their offsets: the
//! group will not say what is committed until that transaction ends (a crash leaves it open
//! until it times out), so the worker's own read at assignment gives up and the partition's
//! messages wait until a later read settles. Whatever the transaction's end, what the
//! committed offsets then name as recorded ahead is not sent again. Real broker; the earlier
//! owner is a transactional producer of the test's own, so the transaction stays open exactly
//! as long as the test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use relais_ingest_worker::config::PipelineConfig;
use relais_ingest_worker::tracker::ahead;
use relais_proto::v1::AuditRecord;
use relais_resilience::UpstreamPolicy;
use relais_test_support::{KafkaTestEnv, unique_name};

const TOTAL: usize = 20;

/// How an earlier owner's open transaction ends.
enum Ending {
    Aborted,
    Committed,
}

/// The offsets (and what their metadata names ahead) of partition 0 of `topic`.
fn offsets(topic: &str, offset: i64, ahead: &BTreeSet<i64>) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    list.find_partition(topic, 0)
        .unwrap()
        .set_metadata(ahead::encode(offset, ahead));
    list
}

/// A consumer of `group` that never joins it: it commits as an owner gone since, and reads
/// what the group holds as a new owner would (only settled offsets).
fn group_client(kafka: &KafkaTestEnv, group: &str) -> BaseConsumer {
    kafka
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap()
}

/// An earlier owner's transaction, begun and holding `held` for `group`, not ended.
fn open_transaction(
    kafka: &KafkaTestEnv,
    group: &BaseConsumer,
    held: &TopicPartitionList,
) -> BaseProducer {
    let owner: BaseProducer = kafka
        .client_config()
        .set("transactional.id", unique_name("earlier-owner"))
        // Long enough that the broker does not end it before the test does.
        .set("transaction.timeout.ms", "120000")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(30);
    owner.init_transactions(timeout).unwrap();
    owner.begin_transaction().unwrap();
    owner
        .send_offsets_to_transaction(held, &group.group_metadata().unwrap(), timeout)
        .unwrap();
    owner
}

/// The ingress offsets the audit records decide.
fn decided_offsets(records: &[AuditRecord]) -> BTreeSet<i64> {
    records
        .iter()
        .map(|record| record.position.as_ref().unwrap().offset)
        .collect()
}

/// Partition 0 of a one-partition topic holds 20 messages. Settled: offset 0 committed, with
/// 1–9 named as recorded ahead. Then an earlier owner's transaction holds offset 15 (naming
/// nothing) and stays open while a worker is given the partition; it ends as `ending` says.
/// Returns the ingress offsets the worker decided and each message's deliveries.
async fn assigned_while_a_transaction_holds_the_offsets(
    ending: Ending,
) -> (BTreeSet<i64>, Vec<u64>) {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let topics = Topics::create(&kafka, 1).await;
    let group = unique_name("it-group");
    let messages = valid_events("u", TOTAL, TOTAL);
    produce(&kafka, &topics.ingress, &messages).await;

    let client = group_client(&kafka, &group);
    client
        .commit(
            &offsets(&topics.ingress, 0, &(1..=9).collect()),
            CommitMode::Sync,
        )
        .unwrap();
    let owner = open_transaction(
        &kafka,
        &client,
        &offsets(&topics.ingress, 15, &BTreeSet::new()),
    );
    let mut asked = TopicPartitionList::new();
    asked.add_partition(&topics.ingress, 0);
    assert!(
        client
            .committed_offsets(asked, Duration::from_secs(3))
            .is_err(),
        "the group answers while the transaction holds the offsets: the test proves nothing"
    );

    let worker = Worker::start(
        &kafka,
        &topics,
        &group,
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
    );
    worker
        .wait_for_metric("relais_worker_assigned_partitions", 1.0)
        .await;
    // The worker's read at assignment waits 2 s for the group; a little longer, and it has
    // given up while the transaction is still open.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        sim.deliveries().await["requests"],
        0,
        "nothing is sent before the committed offsets settle"
    );
    let timeout = Duration::from_secs(30);
    match ending {
        Ending::Aborted => owner.abort_transaction(timeout).unwrap(),
        Ending::Committed => owner.commit_transaction(timeout).unwrap(),
    }

    let expected = match ending {
        Ending::Aborted => TOTAL - 9,
        Ending::Committed => TOTAL - 15,
    };
    let audit = read_outcomes(&kafka, &topics.audit, expected, Duration::from_secs(120)).await;
    assert_exactly_once(&audit, expected);
    let mut deliveries = Vec::new();
    for (_, payload) in &messages {
        let event: serde_json::Value = serde_json::from_slice(payload).unwrap();
        let id = event["id"].as_str().unwrap();
        let counts = reqwest::get(format!("http://{}/admin/deliveries/{id}", sim.admin))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        deliveries.push(counts["received"].as_u64().unwrap_or(0));
    }
    worker.stop().await;
    (decided_offsets(&audit), deliveries)
}

/// The transaction is aborted (as the broker does once a crashed owner's times out): the
/// settled offset stands, so 0 and 10–19 are sent, once each, and 1–9 never.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_transaction_leaves_the_settled_offsets_and_their_names() {
    let (decided, deliveries) =
        assigned_while_a_transaction_holds_the_offsets(Ending::Aborted).await;
    let expected: BTreeSet<i64> = std::iter::once(0).chain(10..20).collect();
    assert_eq!(decided, expected);
    for (offset, received) in deliveries.iter().enumerate() {
        let want = u64::from(expected.contains(&(offset as i64)));
        assert_eq!(
            *received, want,
            "deliveries of the message at offset {offset}"
        );
    }
}

/// The transaction commits (an earlier owner finishing late): its offset stands, so 15–19 are
/// sent, once each, and nothing before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_transaction_moves_the_offset_before_anything_is_sent() {
    let (decided, deliveries) =
        assigned_while_a_transaction_holds_the_offsets(Ending::Committed).await;
    assert_eq!(decided, (15..20).collect());
    for (offset, received) in deliveries.iter().enumerate() {
        let want = u64::from(offset >= 15);
        assert_eq!(
            *received, want,
            "deliveries of the message at offset {offset}"
        );
    }
}
