//! `loadgen ws-fanout`: N WebSocket clients on the gateway's feed while pipeline events are
//! produced to its topic at a fixed rate. Each event carries its production time as
//! `decided_at`, so a client's receipt time minus it is the latency from produce to receipt.
//!
//! Prints one JSON line: clients connected, events produced, frames expected and received,
//! frames delivered per second, latency quantiles, and clients the gateway disconnected.
//!
//! `--target centrifugo` runs the same measurement against Centrifugo (the peer of `make
//! bench`): its Kafka consumer in publication-data mode publishes each record's JSON payload
//! to the channel named in the `centrifugo-channels` header, and the clients speak its JSON
//! protocol (connect, subscribe, pushes).

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use relais_proto::v1::{CircuitState, Outcome, PipelineEvent};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Debug, clap::Args)]
pub(crate) struct FanoutArgs {
    /// The gateway's (or Centrifugo's) HTTP address, such as 127.0.0.1:8080.
    #[arg(long)]
    gateway: String,
    /// A viewer token of the gateway (not used with Centrifugo).
    #[arg(long, env = "RELAIS_TOKEN", hide_env_values = true, default_value = "")]
    token: String,
    /// Who fans out: realtime-gateway, or Centrifugo for comparison.
    #[arg(long, value_enum, default_value_t = Target::Relais)]
    target: Target,
    /// The gateway's events topic.
    #[arg(long, default_value = "relais.events")]
    topic: String,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Events produced per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    Relais,
    Centrifugo,
}

/// The Centrifugo channel the events are published to.
const CENTRIFUGO_CHANNEL: &str = "relais-events";

/// Latency histogram buckets per doubling: 32, so that a quantile is within 2.2 % of the
/// latency it stands for. With the gateway's own 8 (9 % wide), two systems' p99s one bucket
/// apart could not be told from two that were equal.
const BUCKETS_PER_DOUBLING: usize = 32;

/// Buckets from 1 µs up to about two minutes; a latency beyond counts in the last.
const BUCKETS: usize = BUCKETS_PER_DOUBLING * 27;

fn bucket(micros: u64) -> usize {
    if micros <= 1 {
        return 0;
    }
    ((BUCKETS_PER_DOUBLING as f64 * (micros as f64).log2()).ceil() as usize).min(BUCKETS - 1)
}

fn bucket_upper_ms(index: usize) -> f64 {
    (index as f64 / BUCKETS_PER_DOUBLING as f64).exp2() / 1000.0
}

#[derive(Default)]
struct Tally {
    received: AtomicU64,
    disconnected: AtomicU64,
    histogram: Vec<AtomicU64>,
}

fn decided_at_micros(frame: &str) -> Option<u64> {
    // Cheaper than parsing every frame of every client: the field is fixed-format RFC 3339.
    let start = frame.find("\"decided_at\":\"")? + 14;
    let text = frame.get(start..start + 27)?;
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u64::try_from(time.timestamp_micros()).ok()
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The clients share the cores with the server under test, so they must cost little: the
/// library's default 128 KiB read buffer, zero-filled before every read, would make the load
/// tool itself a large share of the machine.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 * 1024)
}

async fn client(
    target: Target,
    gateway: String,
    token: String,
    tally: Arc<Tally>,
    connected: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (mut socket, _) = match target {
        Target::Relais => {
            let mut request = format!("ws://{gateway}/ws").into_client_request()?;
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&format!("relais.v1, relais.bearer.{token}"))?,
            );
            tokio_tungstenite::connect_async_with_config(request, Some(client_config()), false)
                .await?
        }
        Target::Centrifugo => {
            let (mut socket, response) = tokio_tungstenite::connect_async_with_config(
                format!("ws://{gateway}/connection/websocket"),
                Some(client_config()),
                false,
            )
            .await?;
            socket
                .send(Message::text(r#"{"id":1,"connect":{}}"#))
                .await?;
            socket
                .send(Message::text(format!(
                    r#"{{"id":2,"subscribe":{{"channel":"{CENTRIFUGO_CHANNEL}"}}}}"#
                )))
                .await?;
            (socket, response)
        }
    };
    let mut welcomed = false;
    // Counted per client, added to the shared histogram once at the end.
    let mut local = vec![0u32; BUCKETS];
    let mut received = 0u64;
    loop {
        let next = tokio::time::timeout(Duration::from_millis(500), socket.next()).await;
        let message = match next {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(_)) | None) => {
                tally.disconnected.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(_) => continue,
        };
        let Message::Text(text) = message else {
            continue;
        };
        match target {
            Target::Relais => {
                if !welcomed {
                    welcomed = true;
                    connected.add_permits(1);
                    continue;
                }
                if !text.starts_with("{\"type\":\"event\"") {
                    continue;
                }
                received += 1;
                if let Some(decided) = decided_at_micros(&text) {
                    local[bucket(now_micros().saturating_sub(decided))] += 1;
                }
            }
            // One WebSocket frame may carry several newline-separated replies and pushes.
            Target::Centrifugo => {
                for reply in text.split('\n') {
                    if reply == "{}" {
                        // Server ping: answer, or Centrifugo closes the connection.
                        socket.send(Message::text("{}")).await?;
                    } else if !welcomed && reply.starts_with("{\"id\":2,") {
                        welcomed = true;
                        connected.add_permits(1);
                    } else if reply.starts_with("{\"push\":") && reply.contains("\"pub\":") {
                        received += 1;
                        if let Some(decided) = decided_at_micros(reply) {
                            local[bucket(now_micros().saturating_sub(decided))] += 1;
                        }
                    }
                }
            }
        }
    }
    tally.received.fetch_add(received, Ordering::Relaxed);
    for (total, count) in tally.histogram.iter().zip(local) {
        total.fetch_add(u64::from(count), Ordering::Relaxed);
    }
    Ok(())
}

/// The event as JSON with the fields the gateway's frames carry, for Centrifugo to publish as
/// it is (it does not decode protobuf).
fn centrifugo_payload(event: &PipelineEvent) -> Vec<u8> {
    let rfc3339 = |time: Option<relais_proto::Timestamp>| {
        time.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    };
    serde_json::to_vec(&serde_json::json!({
        "id": event.message_id,
        "trace_id": event.trace_id,
        "span_id": event.span_id,
        "outcome": "DELIVERED",
        "event_type": event.event_type,
        "upstream": event.upstream,
        "worker_id": event.worker_id,
        "decided_at": rfc3339(event.decided_at),
        "occurred_at": rfc3339(event.occurred_at),
        "attempts": event.attempts,
        "last_status_code": event.last_status_code,
        "delivery_latency_us": event.delivery_latency_us,
        "circuit_state": "CLOSED",
    }))
    .unwrap_or_default()
}

fn quantile(histogram: &[u64], q: f64) -> Option<f64> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    histogram.iter().enumerate().find_map(|(index, count)| {
        seen += count;
        (seen >= rank).then(|| bucket_upper_ms(index))
    })
}

pub(crate) async fn run(kafka: &relais_kafka::KafkaClient, args: FanoutArgs) -> anyhow::Result<()> {
    let tally = Arc::new(Tally {
        histogram: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        ..Tally::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(Semaphore::new(0));
    let mut clients = Vec::with_capacity(args.clients);
    for index in 0..args.clients {
        clients.push(tokio::spawn(client(
            args.target,
            args.gateway.clone(),
            args.token.clone(),
            Arc::clone(&tally),
            Arc::clone(&connected),
            Arc::clone(&stop),
        )));
        // Connect in small waves rather than all at once.
        if index % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let all = u32::try_from(args.clients)?;
    let welcomed = tokio::time::timeout(Duration::from_secs(60), connected.acquire_many(all)).await;
    let connected_clients = if welcomed.is_ok() {
        args.clients
    } else {
        connected.available_permits()
    };

    let producer: FutureProducer = kafka.config().set("linger.ms", "1").create()?;
    let started = Instant::now();
    let step = Duration::from_millis(10);
    let per_step = (args.rate as f64 / 100.0).max(0.0);
    let mut ticker = tokio::time::interval(step);
    let mut produced = 0u64;
    let mut owed = 0.0;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        ticker.tick().await;
        owed += per_step;
        while owed >= 1.0 {
            owed -= 1.0;
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
            let timestamp = relais_proto::Timestamp {
                seconds: i64::try_from(now.as_secs())?,
                nanos: i32::try_from(now.subsec_nanos())?,
            };
            let event = PipelineEvent {
                message_id: format!("fan-{produced}"),
                trace_id: format!("{:032x}", 0xfa_0000_0000u64 + produced + 1),
                span_id: format!("{:016x}", produced + 1),
                outcome: Outcome::Delivered as i32,
                event_type: "order.created".into(),
                upstream: "default".into(),
                worker_id: "loadgen".into(),
                occurred_at: Some(timestamp),
                decided_at: Some(timestamp),
                attempts: 1,
                last_status_code: 200,
                delivery_latency_us: 2000,
                circuit_state: CircuitState::Closed as i32,
                ..PipelineEvent::default()
            };
            let record = FutureRecord::to(&args.topic).key(&event.message_id);
            let payload = match args.target {
                Target::Relais => event.encode_to_vec(),
                Target::Centrifugo => centrifugo_payload(&event),
            };
            let sent = match args.target {
                Target::Relais => producer.send_result(record.payload(&payload)),
                Target::Centrifugo => producer.send_result(record.payload(&payload).headers(
                    OwnedHeaders::new().insert(Header {
                        key: "centrifugo-channels",
                        value: Some(CENTRIFUGO_CHANNEL),
                    }),
                )),
            };
            sent.map_err(|(error, _)| error)?;
            produced += 1;
        }
    }
    producer.flush(Duration::from_secs(10))?;
    let production_seconds = started.elapsed().as_secs_f64();
    // Let the last events arrive, then stop the clients.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    let histogram: Vec<u64> = tally
        .histogram
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .collect();
    let received = tally.received.load(Ordering::Relaxed);
    let expected = produced * connected_clients as u64;
    let summary = serde_json::json!({
        "clients": args.clients,
        "connected": connected_clients,
        "events_produced": produced,
        "frames_expected": expected,
        "frames_received": received,
        "delivered_ratio": if expected == 0 { 0.0 } else { received as f64 / expected as f64 },
        "frames_per_second": received as f64 / production_seconds,
        "latency_p50_ms": quantile(&histogram, 0.50),
        "latency_p99_ms": quantile(&histogram, 0.99),
        "latency_max_bucket_ms": histogram.iter().rposition(|c| *c > 0).map(bucket_upper_ms),
        "disconnected_by_gateway": tally.disconnected.load(Ordering::Relaxed),
    });
    writeln!(std::io::stdout().lock(), "{summary}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_is_within_a_bucket_of_the_latency() {
        for micros in [900_u64, 16_400, 60_100, 65_500, 14_107_900] {
            let mut histogram = vec![0u64; BUCKETS];
            histogram[bucket(micros)] = 100;
            let quantile_ms = quantile(&histogram, 0.99).expect("a count");
            let latency_ms = micros as f64 / 1000.0;
            assert!(quantile_ms >= latency_ms, "{quantile_ms} for {latency_ms}");
            assert!(
                quantile_ms <= latency_ms * 1.022,
                "{quantile_ms} for {latency_ms}"
            );
        }
    }

    #[test]
    fn p99_is_the_latency_below_which_99_percent_fall() {
        let mut histogram = vec![0u64; BUCKETS];
        histogram[bucket(10_000)] = 99;
        histogram[bucket(60_000)] = 1;
        assert!(quantile(&histogram, 0.99).expect("a count") < 10.3);
        histogram[bucket(60_000)] = 2;
        assert!(quantile(&histogram, 0.99).expect("a count") > 60.0);
        assert_eq!(
            bucket(u64::MAX),
            BUCKETS - 1,
            "beyond the range: the last bucket"
        );
        assert_eq!(quantile(&vec![0; BUCKETS], 0.5), None);
    }
}
