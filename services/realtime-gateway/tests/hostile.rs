//! Input the gateway does not control: one trace id on every event, and hundreds of slow
//! resuming clients on one token. The gateway stays bounded and keeps serving everyone else.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use relais_proto::v1;

/// This process's resident memory (the gateway runs in it), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

fn event(index: u64) -> v1::PipelineEvent {
    pipeline_event(&delivered(index))
}

async fn produce_events(
    gateway: &Gateway,
    kafka: &relais_test_support::KafkaTestEnv,
    topic: &str,
    events: Vec<v1::PipelineEvent>,
) {
    let producer = producer(kafka);
    let total = events.len();
    for chunk in events.chunks(5000) {
        produce(&producer, topic, chunk).await;
    }
    eventually(Duration::from_secs(120), "every event taken in", || async {
        (gateway.metric("relais_gateway_events_consumed_total").await >= total as f64).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_id_on_every_event_is_capped_and_evicted_like_any_other() {
    let kafka = relais_test_support::kafka().await;
    // One partition: arrival order is then production order, so which events the buffer
    // keeps is known exactly. Across partitions it keeps the newest by arrival, and the
    // consumer may read one partition ahead of the other.
    let topic = kafka.create_topic("it-events", 1).await;
    let mut config = test_config(&topic);
    config.history.max_events = 20_000;
    let gateway = Gateway::start(&kafka, config, "http://127.0.0.1:1").await;
    let trace = trace_id(0);
    let events = (0..60_000)
        .map(|index| {
            let mut event = event(index);
            event.trace_id = trace.clone();
            event
        })
        .collect();
    produce_events(&gateway, &kafka, &topic, events).await;

    let answer = gateway.get_json(&format!("/api/v1/traces/{trace}")).await;
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 1000, "capped at http.max_page");
    assert_eq!(answer["events_truncated"], true);
    // The buffer kept the newest 20,000 of the 60,000; the trace lists them oldest first.
    assert_eq!(
        gateway.metric("relais_gateway_history_events").await,
        20_000.0
    );
    let held: Vec<&str> = events
        .iter()
        .map(|event| event["message_id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (40_000..41_000).map(|index| format!("m-{index}")).collect();
    assert_eq!(held, expected);
    // A message is found among the 20,000 by a scan of the buffer; one evicted is not there
    // (and the audit-service, unreachable here, makes the answer partial rather than a 404).
    let message = gateway.get_json("/api/v1/messages/m-59999").await;
    assert_eq!(message["events"].as_array().unwrap().len(), 1, "{message}");
    assert_eq!(message["events"][0]["trace_id"], trace.as_str());
    let evicted = gateway.get_json("/api/v1/messages/m-0").await;
    assert_eq!(evicted["events"], serde_json::json!([]));
    assert_eq!(evicted["partial"], true);
    // Everyone else is still served.
    let page = gateway.get_json("/api/v1/events?limit=5").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 5);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_slow_resuming_clients_on_one_token_are_capped_and_share_the_history() {
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-events", 2).await;
    let mut config = test_config(&topic);
    config.history.max_events = 100_000;
    config.websocket.max_connections_per_token = 200;
    // They stay connected while memory is measured; they never read.
    config.websocket.write_timeout = Duration::from_secs(120);
    config.websocket.pong_timeout = Duration::from_secs(120);
    let gateway = Gateway::start(&kafka, config, "http://127.0.0.1:1").await;
    produce_events(&gateway, &kafka, &topic, (0..100_000).map(event).collect()).await;
    let before = rss_mib();

    // 300 clients of one token, each resuming from the start of the history: 200 are taken,
    // the rest refused with 429, none of them reads.
    let mut slow = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        match gateway.try_connect_as(VIEWER_TOKEN, "resume=0:0,1:0").await {
            Ok(feed) => slow.push(feed),
            Err(status) => {
                assert_eq!(status, 429);
                refused += 1;
            }
        }
    }
    assert_eq!((slow.len(), refused), (200, 100));
    assert_eq!(gateway.metric("relais_gateway_ws_connections").await, 200.0);

    // Another token is not affected: it connects, and live events reach it.
    let mut other = gateway.try_connect_as(ADMIN_TOKEN, "").await.unwrap();
    let welcome = other.next_frame(Duration::from_secs(10)).await.unwrap();
    assert_eq!(welcome["type"], "welcome");
    produce(&producer(&kafka), &topic, &[event(100_000)]).await;
    // Position frames come every half second; the event follows among them.
    let live = loop {
        let frame = other.next_frame(Duration::from_secs(20)).await.unwrap();
        if frame["type"] != "position" {
            break frame;
        }
    };
    assert_eq!(live["event"]["message_id"], "m-100000", "{live}");

    // Each resuming client holds one batch of the history, not a copy of it: 200 copies of
    // 100,000 entries would be about 150 MiB.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = rss_mib() - before;
    eprintln!("200 slow resuming clients: resident memory grew by {grown:.1} MiB");
    assert!(grown < 64.0, "grew by {grown:.1} MiB");

    // A slot is given back when its connection ends.
    drop(slow.pop());
    eventually(Duration::from_secs(10), "a slot given back", || async {
        gateway
            .try_connect_as(VIEWER_TOKEN, "")
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    gateway.stop().await;
}
