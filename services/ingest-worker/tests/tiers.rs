//! Retry tiers against the real broker and upstream-sim: messages that wait for a sick upstream
//! leave their ingress partitions (which commit on), pass through the tiers while it is down,
//! and are delivered once, in order per key, when it returns; past the last tier they are
//! dead-lettered; a record in a tier topic that the worker did not write gets an outcome.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use relais_ingest_worker::config::{RouteRule, UpstreamConfig};
use relais_ingest_worker::retry::RetryState;
use relais_proto::v1::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sick_upstreams_messages_leave_the_partitions_and_return_through_the_tiers_in_order() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let healthy = Sim::start().await;
    // Nothing listens here until the test starts b's simulator: connections are refused.
    let sick_address = free_port();
    let topics = Topics::create(&kafka, 3).await;
    // b comes back while its messages wait in the third tier. The fourth is the margin: a
    // message due before b is up (or before its circuit has closed again) waits there, and
    // is not dead-lettered however slow the machine.
    let tiers = [secs(1), secs(2), secs(5), secs(30)];
    let mut config = config_with_tiers(&topics, healthy.api, &tiers);
    config.upstreams = BTreeMap::from([
        (
            "a".to_owned(),
            UpstreamConfig {
                policy: quick_policy(),
                allowed_networks: vec!["loopback".into()],
                ..UpstreamConfig::at(format!("http://{}", healthy.api))
            }
            .with_retry_tiers(&tiers),
        ),
        (
            "b".to_owned(),
            UpstreamConfig {
                policy: quick_policy(),
                allowed_networks: vec!["loopback".into()],
                ..UpstreamConfig::at(format!("http://{sick_address}"))
            }
            .with_retry_tiers(&tiers),
        ),
    ]);
    config.routing.default_upstream = "a".into();
    config.routing.rules = vec![RouteRule {
        type_prefix: "b.".into(),
        upstream: "b".into(),
    }];
    create_retry_topics(&kafka, &topics, &config).await;
    let worker = Worker::start_config(&kafka, config);

    // Interleaved: two for a, one for b, over 50 keys each (four messages per key of b).
    let for_a = ordered_events("a", "order.created", 400, 50);
    let for_b = ordered_events("b", "b.created", 200, 50);
    let messages = interleave(for_a, for_b);
    produce(&kafka, &topics.ingress, &messages).await;

    // a's outcomes are committed while b refuses every connection: b's messages hold nothing.
    let a_outcomes = read_outcomes(&kafka, &topics.audit, 400, secs(30)).await;
    assert!(
        a_outcomes
            .iter()
            .all(|record| record.upstream == "a" && record.outcome == Outcome::Delivered as i32)
    );

    // b's messages move up the tiers; once some reached the third, every ingress partition
    // has committed to its end (nothing of b holds an ingress offset).
    let moves = retry_events_until(&kafka, &topics.events, secs(60), |events| {
        events
            .iter()
            .any(|event| event.retry_scheduled.as_ref().unwrap().tier == 2)
    })
    .await;
    let moved: BTreeSet<&str> = moves
        .iter()
        .map(|event| event.message_id.as_str())
        .collect();
    assert!(
        moves
            .iter()
            .all(|event| event.upstream == "b" && event.outcome == Outcome::Unspecified as i32)
    );
    let tiers_seen: BTreeSet<u32> = moves
        .iter()
        .map(|event| event.retry_scheduled.as_ref().unwrap().tier)
        .collect();
    assert_eq!(
        tiers_seen,
        BTreeSet::from([0, 1, 2]),
        "through two tiers into the third"
    );
    assert!(moved.len() >= 50, "b's messages moved: {}", moved.len());
    let deadline = Instant::now() + secs(20);
    loop {
        let mut lag = 0.0;
        for partition in 0..3 {
            lag += worker
                .metric(&format!(
                    "relais_worker_consumer_lag{{partition=\"{partition}\"}}"
                ))
                .await;
        }
        if lag == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ingress partitions keep a lag of {lag} while b's messages wait in tiers"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        worker.metric("relais_worker_uncommitted_messages").await < 200.0,
        "b's 200 messages are not all held in memory"
    );

    // b comes back: every message has exactly one outcome, delivered, each key in order.
    let sick = Sim::start_at(sick_address).await;
    let audit = read_outcomes(&kafka, &topics.audit, 600, secs(60)).await;
    assert_exactly_once(&audit, 600);
    assert!(audit.iter().all(|r| r.outcome == Outcome::Delivered as i32));
    for record in audit.iter().filter(|record| record.upstream == "b") {
        let position = record.position.as_ref().unwrap();
        assert_eq!(
            position.topic, topics.ingress,
            "recorded against its ingress position"
        );
    }
    for (name, sim, count) in [("a", &healthy, 400), ("b", &sick, 200)] {
        let seen = sim.deliveries().await;
        assert_eq!(seen["distinct_keys"], count, "{name}: {seen}");
        assert_eq!(seen["ordered_events"], count, "{name}: {seen}");
        assert_eq!(seen["order_violations"], 0, "{name}: {seen}");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_the_last_tier_a_message_is_dead_lettered_as_it_was_sent() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let dead = free_port();
    let topics = Topics::create(&kafka, 2).await;
    let config = config_with_tiers(&topics, dead, &[secs(1)]);
    create_retry_topics(&kafka, &topics, &config).await;
    let worker = Worker::start_config(&kafka, config);
    let messages = valid_events("gone", 20, 5);
    produce(&kafka, &topics.ingress, &messages).await;

    let audit = read_outcomes(&kafka, &topics.audit, 20, secs(60)).await;
    assert_exactly_once(&audit, 20);
    for record in &audit {
        assert_eq!(record.outcome, Outcome::DeadLettered as i32);
        assert_eq!(record.reason_code, "retry_tiers_exhausted");
        assert_eq!(record.position.as_ref().unwrap().topic, topics.ingress);
    }
    let letters = read_exactly(&kafka, &topics.dlq, 20, secs(10), secs(1)).await;
    for letter in &letters {
        assert!(
            letter
                .headers
                .keys()
                .all(|name| !name.starts_with("relais-retry-")),
            "the dead letter is the message as sent: {:?}",
            letter.headers.keys().collect::<Vec<_>>()
        );
        assert_eq!(
            letter.headers["relais-dlq-source-topic"], topics.ingress,
            "and names where it was first read"
        );
    }
    let moves = retry_events_until(&kafka, &topics.events, secs(10), |events| {
        events.len() >= 20
    })
    .await;
    assert!(
        moves
            .iter()
            .all(|event| event.retry_scheduled.as_ref().unwrap().tier == 0)
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tier_record_the_worker_did_not_write_gets_an_outcome() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let topics = Topics::create(&kafka, 1).await;
    let config = config_with_tiers(&topics, sim.api, &[secs(1)]);
    create_retry_topics(&kafka, &topics, &config).await;
    let tier_topic = format!("{}.1s", topics.retry_prefix);
    let worker = Worker::start_config(&kafka, config);

    let payload = |id: &str| {
        format!(
            r#"{{"id":"{id}","type":"order.created","occurred_at":"{}","source":"test","data":{{}}}}"#,
            chrono::Utc::now().to_rfc3339()
        )
    };
    let state = |upstream: &str, due: SystemTime| RetryState {
        tier: 0,
        due,
        upstream: upstream.into(),
        origin_topic: topics.ingress.clone(),
        origin_partition: 0,
        origin_offset: 0,
        first_seen: SystemTime::now(),
        ingress_time: None,
        reason: "test".into(),
    };
    let far_future = SystemTime::UNIX_EPOCH + secs(4_102_444_800); // the year 2100
    let producer: FutureProducer = kafka.client_config().create().unwrap();
    let records = [
        ("no-headers", Vec::<(String, Vec<u8>)>::new()),
        (
            "unknown-upstream",
            state("nowhere", SystemTime::now()).to_headers(),
        ),
        ("far-future", state("default", far_future).to_headers()),
    ];
    for (id, headers) in &records {
        let mut owned = rdkafka::message::OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(rdkafka::message::Header {
                key: name,
                value: Some(value),
            });
        }
        producer
            .send(
                FutureRecord::to(&tier_topic)
                    .partition(0)
                    .key(*id)
                    .payload(&payload(id))
                    .headers(owned),
                secs(10),
            )
            .await
            .unwrap();
    }

    let audit = read_outcomes(&kafka, &topics.audit, 3, secs(30)).await;
    let by_reason: BTreeMap<String, i32> = audit
        .iter()
        .map(|record| (record.reason_code.clone(), record.outcome))
        .collect();
    assert_eq!(
        by_reason,
        BTreeMap::from([
            ("bad_retry_record".to_owned(), Outcome::Rejected as i32),
            ("unknown_route".to_owned(), Outcome::Failed as i32),
            (String::new(), Outcome::Delivered as i32),
        ]),
        "a due time in 2100 is cut to the tier's delay and delivered"
    );
    let rejected = audit
        .iter()
        .find(|record| record.reason_code == "bad_retry_record")
        .unwrap();
    assert_eq!(
        rejected.position.as_ref().unwrap().topic,
        tier_topic,
        "an unreadable tier record is recorded where it was read"
    );
    assert_eq!(sim.deliveries().await["accepted"], 1);
    worker.stop().await;
}

/// Events produced to the given ingress partitions, in turn.
async fn produce_to(
    kafka: &relais_test_support::KafkaTestEnv,
    topic: &str,
    prefix: &str,
    partitions: &[i32],
    count: usize,
) {
    let producer: FutureProducer = kafka.client_config().create().unwrap();
    for (index, (key, payload)) in valid_events(prefix, count, 10).into_iter().enumerate() {
        let partition = partitions[index % partitions.len()];
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&key)
                    .payload(&payload)
                    .partition(partition),
                secs(10),
            )
            .await
            .map_err(|(error, _)| error)
            .unwrap();
    }
}

/// Partitions added to the ingress topic while the worker runs, before the retry topics have
/// them: the new partitions' messages wait (no outcome, nothing lost), the others go on, and
/// `/readyz` names the topic to grow; once it has grown, the waiting messages are delivered,
/// each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingress_partitions_added_before_the_retry_topics_have_them_wait_for_them() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let topics = Topics::create(&kafka, 1).await;
    let mut config = config_with_tiers(&topics, sim.api, &[secs(5)]);
    // New partitions are seen within a second instead of librdkafka's five minutes.
    config
        .kafka
        .client
        .settings
        .insert("topic.metadata.refresh.interval.ms".into(), "1000".into());
    let tier_topic = config.tier_topics().tiers().next().unwrap().1.to_owned();
    create_retry_topics(&kafka, &topics, &config).await;
    let worker = Worker::start_config(&kafka, config);
    produce_to(&kafka, &topics.ingress, "first", &[0], 20).await;
    read_outcomes(&kafka, &topics.audit, 20, secs(30)).await;

    kafka.add_partitions(&topics.ingress, 3).await;
    produce_to(&kafka, &topics.ingress, "grown", &[1, 2], 20).await;
    produce_to(&kafka, &topics.ingress, "second", &[0], 10).await;
    let readyz = format!("http://{}/readyz", worker.admin);
    relais_test_support::wait_until(
        "the worker reports the missing partitions",
        secs(60),
        || {
            let readyz = readyz.clone();
            async move {
                let Ok(response) = reqwest::get(&readyz).await else {
                    return false;
                };
                response.status() == 503
                    && response.text().await.is_ok_and(|body| {
                        body.contains("retry-tiers") && body.contains("add partitions to it")
                    })
            }
        },
    )
    .await;
    // Partition 0 goes on; 1 and 2 wait, and nothing of theirs is decided.
    let outcomes = read_outcomes(&kafka, &topics.audit, 30, secs(30)).await;
    assert!(
        outcomes
            .iter()
            .all(|record| record.position.as_ref().unwrap().partition == 0)
    );

    // The upstream fails while the waiting messages go on, so they move to the tier's new
    // partitions; then it heals and they come back.
    sim.set_faults(serde_json::json!({"errors": {"503": 1.0}}))
        .await;
    kafka.add_partitions(&tier_topic, 3).await;
    relais_test_support::wait_until("the worker is ready again", secs(90), || async {
        worker.readyz().await == 200
    })
    .await;
    let metrics = relais_test_support::AdminMetrics::new(worker.admin);
    relais_test_support::wait_until("the grown partitions' messages moved", secs(60), || async {
        metrics
            .scrape()
            .await
            .sum("relais_worker_retries_scheduled_total")
            .is_some_and(|moved| moved >= 20.0)
    })
    .await;
    let reader: rdkafka::consumer::BaseConsumer = kafka.client_config().create().unwrap();
    for partition in [1, 2] {
        relais_test_support::wait_until("moves written to the new partitions", secs(30), || {
            let high = rdkafka::consumer::Consumer::fetch_watermarks(
                &reader,
                &tier_topic,
                partition,
                secs(10),
            )
            .map_or(0, |(_, high)| high);
            async move { high > 0 }
        })
        .await;
    }
    sim.set_faults(serde_json::json!({})).await;
    let outcomes = read_outcomes(&kafka, &topics.audit, 50, secs(60)).await;
    assert_exactly_once(&outcomes, 50);
    assert!(
        outcomes
            .iter()
            .all(|record| record.outcome == Outcome::Delivered as i32)
    );
    worker.stop().await;
}
