//! `relais.events` deleted and created again under a running gateway: the new log's events
//! reach the live feed and the event list at once, and a resume counts in the new log.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

/// The message ids of the event frames `feed` sends within `within`, until `count` arrived.
async fn event_ids(feed: &mut Feed, count: usize, within: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut ids = Vec::new();
    while ids.len() < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(frame) = feed.next_frame(left).await else {
            break;
        };
        if frame["type"] == "event" {
            ids.push(frame["event"]["message_id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_of_a_topic_created_again_reach_the_feed() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-events", 1).await;
    let gateway = Gateway::for_topic(&kafka, &topic).await;
    let producer = producer(&kafka);
    let old: Vec<_> = (0..300).map(|i| pipeline_event(&delivered(i))).collect();
    produce(&producer, &topic, &old).await;
    eventually(Duration::from_secs(20), "the old log taken in", || async {
        (gateway.metric("relais_gateway_events_consumed_total").await == 300.0).then_some(())
    })
    .await;
    let mut feed = gateway.connect("").await;

    // Created again with the gateway reading it: its offset is past the new log's end, so it
    // starts again at the new log's offset 0, below every offset it had taken in.
    kafka.recreate_topic(&topic, 1).await;
    let new: Vec<_> = (1000..1020)
        .map(|i| pipeline_event(&delivered(i)))
        .collect();
    produce(&producer, &topic, &new).await;
    let live = event_ids(&mut feed, 20, Duration::from_secs(60)).await;
    let expected: Vec<String> = (1000..1020).map(|i| format!("m-{i}")).collect();
    assert_eq!(live, expected, "the new log's events, live, in order");
    let restarts = format!("relais_gateway_events_log_restarts_total{{topic=\"{topic}\"}}");
    assert_eq!(gateway.metric(&restarts).await, 1.0);

    let listed = gateway.get_json("/api/v1/events?limit=5").await;
    let newest = listed["events"][0]["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(newest, "m-1019", "{listed}");

    // A client of the new log resuming from 0:9 is replayed 0:10 to 0:19, not the old log's
    // events of higher offsets.
    let mut resumed = gateway.connect("resume=0:9").await;
    let replayed = event_ids(&mut resumed, 10, Duration::from_secs(10)).await;
    let expected: Vec<String> = (1010..1020).map(|i| format!("m-{i}")).collect();
    assert_eq!(replayed, expected);
    gateway.stop().await;
}
