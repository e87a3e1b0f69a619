//! Offset resets against the native broker: records deleted before a group read them, and a
//! committed offset beyond the log's end, are each measured and reported, and reading goes on
//! at the log's start.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use relais_kafka::resets::{self, OffsetReset, ResetOutcome, ResetWatch, next_reset};
use relais_test_support::{KafkaTestEnv, unique_name};

const WAIT: Duration = Duration::from_secs(30);

async fn produce(kafka: &KafkaTestEnv, topic: &str, count: usize) {
    let producer: FutureProducer = kafka.client_config().create().expect("producer");
    for index in 0..count {
        let payload = format!("record {index}");
        producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .partition(0)
                    .payload(&payload),
                WAIT,
            )
            .await
            .map_err(|(error, _)| error)
            .expect("delivered");
    }
}

/// Commits `offset` for `group` on the topic's partition 0, as a consumer that had read so far.
fn commit(kafka: &KafkaTestEnv, group: &str, topic: &str, offset: i64) {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, Offset::Offset(offset))
        .expect("offset");
    consumer
        .commit(&offsets, CommitMode::Sync)
        .expect("committed");
}

/// Starts a group member on `topic` with a reset watch, and returns the offset of the first
/// record it reads and what the watch reported.
async fn read_after_reset(
    kafka: &KafkaTestEnv,
    group: &str,
    topic: &str,
) -> (i64, Vec<(OffsetReset, ResetOutcome)>) {
    let (watch, resets) = ResetWatch::new();
    let mut config = kafka.client_config();
    let consumer: Arc<StreamConsumer<ResetWatch>> = Arc::new(
        resets::watched(&mut config)
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create_with_context(watch)
            .expect("consumer"),
    );
    consumer.subscribe(&[topic]).expect("subscribed");
    let reported = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&reported);
    let measuring = Arc::clone(&consumer);
    let watching = tokio::spawn(async move {
        let mut resets = resets;
        while let Some(measured) = next_reset(&mut resets, &measuring).await {
            sink.lock().expect("not poisoned").push(measured);
        }
    });
    let first = tokio::time::timeout(WAIT, consumer.recv())
        .await
        .expect("a record within the wait")
        .expect("readable")
        .offset();
    relais_test_support::wait_until("the reset reported", WAIT, || {
        let reported = Arc::clone(&reported);
        async move { !reported.lock().expect("not poisoned").is_empty() }
    })
    .await;
    watching.abort();
    let reported = reported.lock().expect("not poisoned").clone();
    (first, reported)
}

#[tokio::test(flavor = "multi_thread")]
async fn records_deleted_before_they_were_read_are_counted() {
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("resets-deleted", 1).await;
    let group = unique_name("resets-deleted");
    produce(&kafka, &topic, 100).await;
    commit(&kafka, &group, &topic, 10);
    kafka.delete_records_before(&topic, 0, 60).await;

    let (first, reported) = read_after_reset(&kafka, &group, &topic).await;

    assert_eq!(first, 60, "reading goes on at the log's new start");
    assert_eq!(
        reported,
        vec![(
            OffsetReset {
                topic: topic.clone(),
                partition: 0,
                at: 10
            },
            ResetOutcome::DeletedUnread {
                offsets: 50,
                log_start: 60
            }
        )]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offset_beyond_the_log_end_is_reported_as_a_rewind() {
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("resets-rewound", 1).await;
    let group = unique_name("resets-rewound");
    produce(&kafka, &topic, 20).await;
    // Where the group had read to in a log this one replaced (a topic created again).
    commit(&kafka, &group, &topic, 5_000);

    let (first, reported) = read_after_reset(&kafka, &group, &topic).await;

    assert_eq!(first, 0, "reading starts over at the log's start");
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].0.at, 5_000);
    assert_eq!(
        reported[0].1,
        ResetOutcome::Rewound {
            log_end: 20,
            log_start: 0
        }
    );
}
