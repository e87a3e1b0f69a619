//! Partitions whose messages wait behind others of their key: each partition's hot key, one
//! message at a time, behind which its cold keys' messages finish.

use relais_test_support::KafkaTestEnv;

/// `per_partition` messages for each of `partitions` partitions, every other one of the
/// partition's hot key and the rest spread over eight cold keys: the hot key's messages go one
/// at a time, eight times slower than the others, so its later ones wait unstarted while the
/// cold keys' messages behind them finish. Each carries its key and its sequence within the
/// key (`order_key`, `seq`) for upstream-sim's order check.
pub fn hot_and_cold(partitions: i32, per_partition: usize) -> Vec<(i32, String, Vec<u8>)> {
    let now = chrono::Utc::now().to_rfc3339();
    let mut sequences = std::collections::HashMap::<String, usize>::new();
    (0..partitions)
        .flat_map(|partition| (0..per_partition).map(move |index| (partition, index)))
        .map(|(partition, index)| {
            let key = if index % 2 == 0 {
                format!("hot-{partition}")
            } else {
                format!("cold-{partition}-{}", index / 2 % 8)
            };
            let seq = sequences.entry(key.clone()).or_default();
            let payload = format!(
                r#"{{"id":"h-{partition}-{index}","type":"order.created","occurred_at":"{now}","source":"test","data":{{"order_key":"{key}","seq":{seq}}}}}"#
            );
            *seq += 1;
            (partition, key, payload.into_bytes())
        })
        .collect()
}

pub async fn produce_to_partitions(
    kafka: &KafkaTestEnv,
    topic: &str,
    messages: &[(i32, String, Vec<u8>)],
) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::time::Duration;
    let producer: FutureProducer = kafka.client_config().create().unwrap();
    for (partition, key, payload) in messages {
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(*partition)
                    .key(key)
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}
