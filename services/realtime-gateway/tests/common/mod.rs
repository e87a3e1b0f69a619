//! A gateway in this test process, reading its own `relais.events` topic on the real broker.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // shared by several test binaries

pub mod stack;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use relais_proto::v1::{self, PipelineEvent};
use relais_realtime_gateway::auth::{Role, Tokens};
use relais_realtime_gateway::config::{Args, GatewayConfig};
use relais_telemetry::shutdown::CancellationToken;
use relais_test_support::KafkaTestEnv;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

pub const VIEWER_TOKEN: &str = "viewer-token-0123456789";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789ab";

pub fn init_telemetry() {
    relais_test_support::install_crypto_provider();
    static TELEMETRY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let guard = relais_telemetry::init(&relais_telemetry::TelemetryConfig {
            service_name: "realtime-gateway-test",
            service_version: "0",
            default_log_filter: "warn",
        })
        .unwrap();
        std::mem::forget(guard);
    });
}

pub struct Gateway {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    running: Option<relais_realtime_gateway::Running>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Gateway {
    pub async fn start(kafka: &KafkaTestEnv, mut config: GatewayConfig, audit_url: &str) -> Self {
        init_telemetry();
        isolate_worker_topics(kafka, &mut config).await;
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let args = Args {
            config: None,
            kafka_bootstrap: kafka.bootstrap().to_owned(),
            http_addr: any,
            grpc_addr: any,
            admin_addr: any,
            audit_url: audit_url.to_owned(),
            tokens_file: None,
            tokens: None,
            profile: Default::default(),
        };
        let mut tokens = Tokens::default();
        tokens
            .add("test-viewer", Role::Viewer, VIEWER_TOKEN)
            .unwrap();
        tokens.add("test-admin", Role::Admin, ADMIN_TOKEN).unwrap();
        let shutdown = CancellationToken::new();
        let running = relais_realtime_gateway::start(&args, config, tokens, shutdown.clone())
            .await
            .unwrap();
        let gateway = Self {
            http: running.bound.http,
            grpc: running.bound.grpc,
            admin: running.bound.admin,
            shutdown,
            running: Some(running),
        };
        gateway.wait_ready().await;
        gateway
    }

    /// A gateway reading `topic`, with a config fit for tests.
    pub async fn for_topic(kafka: &KafkaTestEnv, topic: &str) -> Self {
        Self::start(kafka, test_config(topic), "http://127.0.0.1:1").await
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = reqwest::get(format!("http://{}/readyz", self.http))
                .await
                .is_ok_and(|response| response.status() == 200);
            if ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway not ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), running.join())
                .await
                .unwrap()
                .unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = reqwest::Client::new().get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path, Some(VIEWER_TOKEN)).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// A metric's value (see `AdminMetrics::read`: strict about the endpoint and the name).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        relais_test_support::AdminMetrics::new(self.admin)
            .read(name_and_labels)
            .await
    }

    /// Opens the feed with `query` (such as `resume=0:4`), the token as a subprotocol.
    pub async fn connect(&self, query: &str) -> Feed {
        self.try_connect_as(VIEWER_TOKEN, query)
            .await
            .unwrap_or_else(|status| panic!("handshake refused with HTTP {status}"))
    }

    /// Opens the feed as `token`; the HTTP status when the handshake is refused.
    pub async fn try_connect_as(&self, token: &str, query: &str) -> Result<Feed, u16> {
        let url = format!("ws://{}/ws?{query}", self.http);
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&format!("relais.v1, relais.bearer.{token}")).unwrap(),
        );
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, response)) => {
                assert_eq!(
                    response.headers()["sec-websocket-protocol"],
                    "relais.v1",
                    "the token is never echoed back"
                );
                Ok(Feed { socket })
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(error) => panic!("WebSocket handshake failed: {error}"),
        }
    }
}

/// Gives the gateway its own copy of every worker topic the test did not set, so that what a
/// test (or the API fuzzer) does through the admin API never reaches the shared defaults.
async fn isolate_worker_topics(kafka: &KafkaTestEnv, config: &mut GatewayConfig) {
    let defaults = relais_realtime_gateway::config::KafkaConfig::default();
    let topics = &mut config.kafka;
    if topics.control_topic == defaults.control_topic {
        topics.control_topic = kafka
            .create_topic_with("it-control", 1, &[("cleanup.policy", "compact")])
            .await;
    }
    if topics.replay_ledger_topic == defaults.replay_ledger_topic {
        topics.replay_ledger_topic = kafka
            .create_topic_with("it-replays", 1, &[("cleanup.policy", "compact")])
            .await;
    }
    for (topic, default, prefix) in [
        (
            &mut topics.ingress_topic,
            &defaults.ingress_topic,
            "it-ingress",
        ),
        (&mut topics.dlq_topic, &defaults.dlq_topic, "it-dlq"),
        (&mut topics.audit_topic, &defaults.audit_topic, "it-audit"),
    ] {
        if topic == default {
            *topic = kafka.create_topic(prefix, 1).await;
        }
    }
    if topics.worker_group_id == defaults.worker_group_id {
        topics.worker_group_id = relais_test_support::unique_name("it-group");
    }
}

pub async fn post_json(
    gateway: &Gateway,
    path: &str,
    token: &str,
    body: &Value,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(gateway.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

pub fn test_config(topic: &str) -> GatewayConfig {
    let mut config = GatewayConfig::default();
    config.kafka.events_topic = topic.to_owned();
    config.http.rate_limit_per_second = 10_000.0;
    config.http.rate_limit_burst = 10_000.0;
    config.websocket.position_interval = Duration::from_millis(500);
    config
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client of the feed.
pub struct Feed {
    pub socket: Socket,
}

impl Feed {
    /// The next JSON frame (pings and pongs skipped), or None when the connection ended.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(within, self.socket.next())
                .await
                .expect("a frame in time")?;
            match message {
                Ok(tokio_tungstenite::tungstenite::Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).unwrap());
                }
                Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
    }
}

/// A pipeline event as the worker writes it.
pub struct EventSpec<'a> {
    pub index: u64,
    pub upstream: &'a str,
    pub outcome: v1::Outcome,
    pub attempts: u32,
    pub latency_us: u64,
    pub timed_out: bool,
    pub circuit: v1::CircuitState,
}

/// A delivered event to upstream `alpha`.
pub fn delivered(index: u64) -> EventSpec<'static> {
    EventSpec {
        index,
        upstream: "alpha",
        outcome: v1::Outcome::Delivered,
        attempts: 1,
        latency_us: 1500,
        timed_out: false,
        circuit: v1::CircuitState::Closed,
    }
}

pub fn trace_id(index: u64) -> String {
    format!("{:016x}{:016x}", 0x5eed_u64, index + 1)
}

pub fn pipeline_event(spec: &EventSpec<'_>) -> PipelineEvent {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    let timestamp = relais_proto::Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap(),
        nanos: i32::try_from(now.subsec_nanos()).unwrap(),
    };
    PipelineEvent {
        message_id: format!("m-{}", spec.index),
        trace_id: trace_id(spec.index),
        span_id: format!("{:016x}", spec.index + 1),
        outcome: spec.outcome as i32,
        reason_code: String::new(),
        event_type: "order.created".into(),
        upstream: spec.upstream.into(),
        worker_id: "w-test".into(),
        position: None,
        occurred_at: Some(timestamp),
        decided_at: Some(timestamp),
        attempts: spec.attempts,
        last_status_code: 200,
        delivery_latency_us: spec.latency_us,
        timed_out: spec.timed_out,
        circuit_state: spec.circuit as i32,
        retry_scheduled: None,
    }
}

pub fn producer(kafka: &KafkaTestEnv) -> FutureProducer {
    kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .unwrap()
}

/// Produces `events`, keyed by message id, and waits for every acknowledgement.
pub async fn produce(producer: &FutureProducer, topic: &str, events: &[PipelineEvent]) {
    let mut pending = Vec::with_capacity(events.len());
    for event in events {
        let payload = event.encode_to_vec();
        pending.push(
            producer
                .send_result(
                    FutureRecord::to(topic)
                        .key(&event.message_id)
                        .payload(&payload),
                )
                .unwrap(),
        );
    }
    for delivery in pending {
        delivery.await.unwrap().unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Polls `probe` until it returns Some, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
