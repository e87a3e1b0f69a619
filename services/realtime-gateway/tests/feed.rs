//! The WebSocket feed against the real broker: resume after a disconnect misses nothing and
//! repeats nothing; a slow client is dropped while a fast one keeps its latency; a resume
//! beyond the history gets an explicit gap notice; what clients send is read safely; a client
//! that stops answering pings is told and dropped.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Produces `total` events at `per_second`, in 20 ms steps, from `first`.
async fn produce_at_rate(
    kafka: &relais_test_support::KafkaTestEnv,
    topic: &str,
    first: u64,
    total: u64,
    per_second: u64,
) {
    let producer = producer(kafka);
    let step = Duration::from_millis(20);
    let per_step = (per_second / 50).max(1);
    let mut next = first;
    let mut ticker = tokio::time::interval(step);
    while next < first + total {
        ticker.tick().await;
        let end = (next + per_step).min(first + total);
        let events: Vec<_> = (next..end).map(|i| pipeline_event(&delivered(i))).collect();
        produce(&producer, topic, &events).await;
        next = end;
    }
}

/// What a client keeps: the position it would resume from, and what it received.
#[derive(Default)]
struct Client {
    position: BTreeMap<i64, i64>,
    received: Vec<String>,
    replayed: Option<u64>,
    gaps: Vec<Value>,
    latencies_ms: Vec<f64>,
}

impl Client {
    fn adopt(&mut self, ids: &Value) {
        for id in ids.as_array().unwrap() {
            let (partition, offset) = id.as_str().unwrap().split_once(':').unwrap();
            let (partition, offset) = (partition.parse().unwrap(), offset.parse().unwrap());
            let known = self.position.entry(partition).or_insert(offset);
            *known = (*known).max(offset);
        }
    }

    fn resume(&self) -> String {
        self.position
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn take(&mut self, frame: &Value) {
        match frame["type"].as_str().unwrap() {
            "welcome" | "position" => self.adopt(&frame["position"]),
            "replayed" => {
                self.replayed = frame["count"].as_u64();
                self.adopt(&frame["position"]);
            }
            "gap" => self
                .gaps
                .extend(frame["gaps"].as_array().unwrap().iter().cloned()),
            "event" => {
                self.adopt(&Value::Array(vec![frame["id"].clone()]));
                self.received
                    .push(frame["event"]["message_id"].as_str().unwrap().to_owned());
                let decided = chrono::DateTime::parse_from_rfc3339(
                    frame["event"]["decided_at"].as_str().unwrap(),
                )
                .unwrap();
                let age = SystemTime::now()
                    .duration_since(SystemTime::from(decided))
                    .unwrap_or_default();
                self.latencies_ms.push(age.as_secs_f64() * 1000.0);
            }
            other => panic!("unexpected frame {other}: {frame}"),
        }
    }
}

async fn read_until(feed: &mut Feed, client: &mut Client, deadline: Instant, wanted: usize) {
    while client.received.len() < wanted && Instant::now() < deadline {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(frame)) =
            tokio::time::timeout(remaining, feed.next_frame(Duration::from_secs(60))).await
        else {
            return;
        };
        client.take(&frame);
    }
}

fn p99(latencies: &mut [f64]) -> f64 {
    latencies.sort_by(f64::total_cmp);
    latencies[((latencies.len() as f64 * 0.99).ceil() as usize).max(1) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_reconnects_with_its_position_misses_nothing_and_gets_nothing_twice() {
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-events", 3).await;
    let gateway = Gateway::for_topic(&kafka, &topic).await;
    const TOTAL: u64 = 12_000;

    let mut steady = gateway.connect("").await;
    let mut flaky = gateway.connect("").await;
    let production = tokio::spawn({
        let topic = topic.clone();
        async move {
            let kafka = relais_test_support::kafka().await;
            produce_at_rate(&kafka, &topic, 0, TOTAL, 1000).await;
        }
    });
    let steady_task = tokio::spawn(async move {
        let mut client = Client::default();
        read_until(
            &mut steady,
            &mut client,
            Instant::now() + Duration::from_secs(60),
            TOTAL as usize,
        )
        .await;
        client
    });

    // The flaky client reads for 3 s, goes away for 5 s, and comes back with its position.
    let mut client = Client::default();
    read_until(
        &mut flaky,
        &mut client,
        Instant::now() + Duration::from_secs(3),
        usize::MAX,
    )
    .await;
    let before = client.received.len();
    assert!(before > 1000, "only {before} events in the first 3 s");
    flaky.close().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut resumed = gateway
        .connect(&format!("resume={}", client.resume()))
        .await;
    read_until(
        &mut resumed,
        &mut client,
        Instant::now() + Duration::from_secs(60),
        TOTAL as usize,
    )
    .await;
    production.await.unwrap();

    let replayed = client.replayed.expect("a replayed frame after the resume");
    assert!(
        replayed >= 4000,
        "about 5 s of events replayed, got {replayed}"
    );
    assert!(
        client.gaps.is_empty(),
        "no gap within the history: {:?}",
        client.gaps
    );
    let unique: BTreeSet<_> = client.received.iter().cloned().collect();
    assert_eq!(client.received.len(), unique.len(), "no event twice");
    assert_eq!(unique.len() as u64, TOTAL, "nothing missed");
    let steady = steady_task.await.unwrap();
    assert_eq!(steady.received.len() as u64, TOTAL);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_client_is_dropped_and_a_fast_one_keeps_its_latency() {
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-events", 3).await;
    let mut config = test_config(&topic);
    // Two seconds of events: the fast client (a debug build sharing a busy machine with the
    // other tests) may stall for a moment without being taken for a slow one; the slow
    // client, which reads nothing, is still cut off by the write timeout.
    config.websocket.client_queue = 2048;
    config.websocket.write_timeout = Duration::from_secs(1);
    let gateway = Gateway::start(&kafka, config, "http://127.0.0.1:1").await;
    const TOTAL: u64 = 10_000;

    // The slow client reads nothing, through a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gateway.http).await.unwrap();
    let mut request = format!("ws://{}/ws", gateway.http)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("relais.v1, relais.bearer.{VIEWER_TOKEN}")).unwrap(),
    );
    let (slow, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let mut fast = gateway.connect("").await;

    let production = tokio::spawn({
        let topic = topic.clone();
        async move {
            let kafka = relais_test_support::kafka().await;
            produce_at_rate(&kafka, &topic, 0, TOTAL, 1000).await;
        }
    });
    let mut client = Client::default();
    read_until(
        &mut fast,
        &mut client,
        Instant::now() + Duration::from_secs(60),
        TOTAL as usize,
    )
    .await;
    production.await.unwrap();
    assert_eq!(
        client.received.len() as u64,
        TOTAL,
        "the fast client got everything"
    );
    // Held back by the slow client, the fast one would wait for its write timeout (1 s).
    let p99 = p99(&mut client.latencies_ms);
    assert!(
        p99 < 500.0,
        "fast client p99 {p99:.1} ms from produce to receipt"
    );

    assert!(
        gateway
            .metric("relais_gateway_ws_lagged_disconnects_total")
            .await
            >= 1.0,
        "the slow client was disconnected"
    );
    // What the slow client finally reads ends with the lag notice or the connection's end.
    let mut slow = Feed { socket: slow };
    let mut last = None;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = slow.next_frame(Duration::from_secs(30)).await {
            last = Some(frame);
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow client's connection was closed");
    if let Some(last) = last
        && last["type"] != "event"
    {
        assert_eq!(last["type"], "lagged", "{last}");
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_beyond_the_history_gets_an_explicit_gap() {
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-events", 1).await;
    let mut config = test_config(&topic);
    config.history.max_events = 50;
    let gateway = Gateway::start(&kafka, config, "http://127.0.0.1:1").await;
    let producer = producer(&kafka);
    let events: Vec<_> = (0..200).map(|i| pipeline_event(&delivered(i))).collect();
    produce(&producer, &topic, &events).await;
    eventually(Duration::from_secs(20), "200 events taken in", || async {
        (gateway.metric("relais_gateway_events_consumed_total").await == 200.0).then_some(())
    })
    .await;

    let mut feed = gateway.connect("resume=0:9").await;
    let mut client = Client::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.replayed.is_none() && Instant::now() < deadline {
        let frame = feed.next_frame(Duration::from_secs(10)).await.unwrap();
        client.take(&frame);
    }
    assert_eq!(client.gaps.len(), 1);
    assert_eq!(client.gaps[0]["partition"], 0);
    assert_eq!(client.gaps[0]["after_offset"], 9);
    assert_eq!(client.gaps[0]["resumes_at_offset"], 150);
    assert_eq!(client.replayed, Some(50));
    assert_eq!(client.received.first().unwrap(), "m-150");
    assert!(gateway.metric("relais_gateway_ws_gaps_total").await >= 1.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_message_longer_than_one_read_is_taken_and_one_beyond_the_limit_ends_the_connection()
 {
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-events", 1).await;
    let gateway = Gateway::start(&kafka, test_config(&topic), "http://127.0.0.1:1").await;
    let producer = producer(&kafka);

    // Ten times what the gateway takes from the socket per read: read whole, then ignored.
    let mut feed = gateway.connect("").await;
    feed.send_text(&"x".repeat(40 * 1024)).await;
    produce(&producer, &topic, &[pipeline_event(&delivered(0))]).await;
    let mut client = Client::default();
    read_until(
        &mut feed,
        &mut client,
        Instant::now() + Duration::from_secs(20),
        1,
    )
    .await;
    assert_eq!(
        client.received,
        ["m-0"],
        "the feed goes on after a long message"
    );

    // Beyond websocket.max_frame_bytes (64 KiB by default) the gateway ends the connection.
    // The send may already see the connection go, so its result is not the point.
    let _ = feed
        .socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            "x".repeat(80 * 1024),
        ))
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while feed.next_frame(Duration::from_secs(5)).await.is_some() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "an oversized message must end the connection"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_pings_stays_and_one_that_does_not_is_told_and_dropped() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-events", 1).await;
    let mut config = test_config(&topic);
    config.websocket.ping_interval = Duration::from_millis(200);
    config.websocket.pong_timeout = Duration::from_millis(700);
    let gateway = Gateway::start(&kafka, config, "http://127.0.0.1:1").await;

    let mut answering = gateway.connect("").await;
    let mut silent = gateway.connect("").await;
    let welcome = silent.next_frame(Duration::from_secs(10)).await.unwrap();
    assert_eq!(welcome["type"], "welcome");

    // Reading answers each ping (the client library queues the pong and sends it with its
    // next read); four times the pong timeout later this client is still served.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(2800);
    while let Ok(message) = tokio::time::timeout_at(until, answering.socket.next()).await {
        match message {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(frame))) => panic!("an answering client was closed: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => panic!("an answering client's connection failed: {error}"),
            None => panic!("an answering client's connection ended"),
        }
    }
    assert!(pings >= 5, "pings every 200 ms, got {pings}");

    // The silent client read nothing meanwhile, so it never answered: it was told why, then
    // dropped. Its bytes are read off the socket as they are, since the client library would
    // first try to send its late pongs into the closed connection.
    let tokio_tungstenite::MaybeTlsStream::Plain(mut stream) = silent.socket.into_inner() else {
        panic!("a plain TCP connection")
    };
    let mut received = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut received),
    )
    .await
    .expect("the gateway ends the connection in time")
    .expect("read");
    let (code, reason) = close_frame(&received).expect("a close frame");
    assert_eq!(code, u16::from(CloseCode::Policy));
    assert_eq!(reason, "no pong");
    eventually(Duration::from_secs(10), "one connection left", || async {
        (gateway.metric("relais_gateway_ws_connections").await == 1.0).then_some(())
    })
    .await;
    // A client closing its side frees its slot as well.
    answering.close().await;
    eventually(Duration::from_secs(10), "no connection left", || async {
        (gateway.metric("relais_gateway_ws_connections").await == 0.0).then_some(())
    })
    .await;
    gateway.stop().await;
}

/// The code and reason of the close frame among the server's frames in `bytes` (server frames
/// are never masked).
fn close_frame(mut bytes: &[u8]) -> Option<(u16, String)> {
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (length, header) = match bytes[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => (
                usize::try_from(u64::from_be_bytes(bytes[2..10].try_into().ok()?)).ok()?,
                10,
            ),
            short => (usize::from(short), 2),
        };
        let payload = bytes.get(header..header + length)?;
        if opcode == 0x8 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
        }
        bytes = &bytes[header + length..];
    }
    None
}
