//! The native Kafka broker is ready for Relais' exactly-once work: consumer groups,
//! transactions that carry consumer offsets, and read_committed isolation.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use relais_test_support::{KafkaTestEnv, unique_name};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn produce(env: &KafkaTestEnv, topic: &str, count: usize) {
    let producer: FutureProducer = env
        .client_config()
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for index in 0..count {
        let key = format!("key-{index}");
        let payload = format!("payload-{index}");
        producer
            .send(FutureRecord::to(topic).key(&key).payload(&payload), TIMEOUT)
            .await
            .unwrap_or_else(|(error, _)| panic!("produce {index} to {topic}: {error}"));
    }
}

fn consumer(env: &KafkaTestEnv, group: &str, isolation: &str) -> StreamConsumer {
    env.client_config()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer")
}

/// Receives exactly `count` payloads, failing if they do not all arrive within the timeout.
async fn receive(consumer: &StreamConsumer, count: usize) -> Vec<String> {
    let mut payloads = Vec::with_capacity(count);
    while payloads.len() < count {
        let message = tokio::time::timeout(TIMEOUT, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {count} records within {TIMEOUT:?}",
                    payloads.len()
                )
            })
            .expect("consume");
        let payload = message
            .payload_view::<str>()
            .and_then(Result::ok)
            .unwrap_or_default();
        payloads.push(payload.to_owned());
    }
    payloads
}

/// Asserts that nothing more arrives for a while (used after the expected records).
async fn assert_no_more(consumer: &StreamConsumer, wait: Duration) {
    if let Ok(message) = tokio::time::timeout(wait, consumer.recv()).await {
        let message = message.expect("consume");
        panic!(
            "unexpected record at offset {}: {:?}",
            message.offset(),
            message.payload_view::<str>()
        );
    }
}

#[tokio::test]
async fn produce_and_consume_in_a_consumer_group() {
    let env = relais_test_support::kafka().await;
    let topic = env.create_topic("it-group", 3).await;
    produce(&env, &topic, 30).await;

    let group = unique_name("it-group");
    let consumer = consumer(&env, &group, "read_uncommitted");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let received: BTreeSet<String> = receive(&consumer, 30).await.into_iter().collect();
    let expected: BTreeSet<String> = (0..30).map(|i| format!("payload-{i}")).collect();
    assert_eq!(received, expected, "every record exactly once");

    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    let committed = consumer.committed(TIMEOUT).expect("committed offsets");
    let total: i64 = committed
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => offset,
            other => panic!(
                "partition {} has no committed offset: {other:?}",
                element.partition()
            ),
        })
        .sum();
    assert_eq!(
        total, 30,
        "the group's committed offsets cover all 30 records"
    );
}

/// Consume-process-produce: output records and the consumer's offsets commit atomically.
#[tokio::test]
async fn transaction_commits_output_and_consumer_offsets_together() {
    let env = relais_test_support::kafka().await;
    let input = env.create_topic("it-tx-in", 1).await;
    let output = env.create_topic("it-tx-out", 1).await;
    produce(&env, &input, 10).await;

    let group = unique_name("it-tx");
    let source = consumer(&env, &group, "read_committed");
    source.subscribe(&[&input]).expect("subscribe");
    let inputs = receive(&source, 10).await;

    let producer: FutureProducer = env
        .client_config()
        .set("transactional.id", unique_name("it-tx"))
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init transactions");
    producer.begin_transaction().expect("begin");
    for payload in &inputs {
        let processed = payload.to_uppercase();
        producer
            .send(
                FutureRecord::<(), _>::to(&output).payload(&processed),
                TIMEOUT,
            )
            .await
            .unwrap_or_else(|(error, _)| panic!("produce in transaction: {error}"));
    }
    let positions = source.position().expect("consumer position");
    let metadata = source.group_metadata().expect("group metadata");
    producer
        .send_offsets_to_transaction(&positions, &metadata, TIMEOUT)
        .expect("send offsets to transaction");
    producer.commit_transaction(TIMEOUT).expect("commit");

    // The offsets were committed by the transaction, not by the consumer.
    let mut partition = TopicPartitionList::new();
    partition.add_partition(&input, 0);
    let committed = source
        .committed_offsets(partition, TIMEOUT)
        .expect("committed offsets");
    let offset = committed
        .find_partition(&input, 0)
        .map(|element| element.offset());
    assert_eq!(
        offset,
        Some(Offset::Offset(10)),
        "offsets committed in the transaction"
    );

    let reader = consumer(&env, &unique_name("it-tx-read"), "read_committed");
    reader.subscribe(&[&output]).expect("subscribe");
    let outputs = receive(&reader, 10).await;
    assert_eq!(
        outputs,
        (0..10).map(|i| format!("PAYLOAD-{i}")).collect::<Vec<_>>(),
        "committed output, in order"
    );
}

#[tokio::test]
async fn aborted_transaction_is_never_seen_by_read_committed() {
    let env = relais_test_support::kafka().await;
    let topic = env.create_topic("it-abort", 1).await;
    let producer: FutureProducer = env
        .client_config()
        .set("transactional.id", unique_name("it-abort"))
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init transactions");

    producer.begin_transaction().expect("begin");
    for index in 0..5 {
        let payload = format!("aborted-{index}");
        producer
            .send(FutureRecord::<(), _>::to(&topic).payload(&payload), TIMEOUT)
            .await
            .unwrap_or_else(|(error, _)| panic!("produce: {error}"));
    }
    producer.abort_transaction(TIMEOUT).expect("abort");

    producer.begin_transaction().expect("begin");
    producer
        .send(
            FutureRecord::<(), _>::to(&topic).payload("committed"),
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|(error, _)| panic!("produce: {error}"));
    producer.commit_transaction(TIMEOUT).expect("commit");

    let committed_reader = consumer(&env, &unique_name("it-abort-rc"), "read_committed");
    committed_reader.subscribe(&[&topic]).expect("subscribe");
    assert_eq!(receive(&committed_reader, 1).await, ["committed"]);
    assert_no_more(&committed_reader, Duration::from_secs(2)).await;

    // The aborted records were really written: an uncommitted reader sees them.
    let uncommitted_reader = consumer(&env, &unique_name("it-abort-ru"), "read_uncommitted");
    uncommitted_reader.subscribe(&[&topic]).expect("subscribe");
    let everything = receive(&uncommitted_reader, 6).await;
    assert_eq!(
        everything
            .iter()
            .filter(|p| p.starts_with("aborted-"))
            .count(),
        5
    );
}
