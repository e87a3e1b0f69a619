//! `loadgen http-post`: the worker's HTTP client alone, POSTing to an upstream as fast as a
//! fixed number of concurrent callers can, without Kafka, records or lanes.
//!
//! `make bench` runs it beside wrk against the same upstream-sim, once with a bare `reqwest`
//! client and once through the worker's whole outbound stack (`relais-resilience`: deadline,
//! bulkhead, circuit breaker, retry, attempt timeout, probe). The three rates split the gap
//! between wrk and the worker into what the HTTP client library costs, what the resilience
//! layers add, and what the rest of the pipeline adds.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use prometheus_client::registry::Registry;
use relais_resilience::{Endpoint, ResilienceMetrics, UpstreamClient, UpstreamPolicy};
use tokio::time::Instant;

/// The same shape and size as the worker's deliveries (and wrk's body in the benchmark).
const BODY: &str = r#"{"id":"bench","type":"order.created","occurred_at":"2026-01-01T00:00:00Z","source":"bench","data":{"n":1,"note":"benchmark payload of typical size"},"schema_version":1}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ClientKind {
    /// A bare reqwest client with the same pool size and `TCP_NODELAY`, built with reqwest's
    /// defaults otherwise: no layers, none of the stack's resolver, TLS or redirect settings.
    Reqwest,
    /// The worker's outbound stack for one upstream, with default policy.
    Resilience,
}

#[derive(Debug, clap::Args)]
pub(crate) struct HttpPostArgs {
    /// Base URL of the upstream, e.g. upstream-sim's API.
    #[arg(long)]
    url: String,
    /// Path the events are POSTed to.
    #[arg(long, default_value = "/events")]
    path: String,
    /// Callers sending at once (and the connection pool's size).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// How long to send.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, value_enum, default_value = "resilience")]
    client: ClientKind,
}

/// Sends for the configured time and prints one JSON line with the rate.
pub(crate) async fn run(args: HttpPostArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sender = Sender::new(&args)?;
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(args.seconds);
    let callers: Vec<_> = (0..args.concurrency)
        .map(|caller| {
            let (sender, sent, failed) = (sender.clone(), Arc::clone(&sent), Arc::clone(&failed));
            tokio::spawn(async move {
                let mut count = 0_u64;
                while Instant::now() < stop_at {
                    let key = format!("http-post-{caller}-{count}");
                    count += 1;
                    if sender.post(&key).await {
                        sent.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.context("a caller panicked")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let sent = sent.load(Ordering::Relaxed);
    let summary = serde_json::json!({
            "client": format!("{:?}", args.client).to_lowercase(),
            "concurrency": args.concurrency,
            "requests": sent,
            "failed": failed.load(Ordering::Relaxed),
            "seconds": seconds,
            "requests_per_second": sent as f64 / seconds,
    });
    writeln!(std::io::stdout().lock(), "{summary}")?;
    Ok(())
}

#[derive(Clone)]
enum Sender {
    Reqwest {
        client: reqwest::Client,
        url: reqwest::Url,
    },
    Resilience {
        client: UpstreamClient,
        endpoint: Endpoint,
    },
}

impl Sender {
    fn new(args: &HttpPostArgs) -> anyhow::Result<Self> {
        match args.client {
            ClientKind::Reqwest => {
                let (client, url) = bare_client(&args.url, &args.path, args.concurrency)?;
                Ok(Self::Reqwest { client, url })
            }
            ClientKind::Resilience => {
                let mut policy = UpstreamPolicy::default();
                policy.bulkhead.max_concurrent = args.concurrency;
                let metrics = ResilienceMetrics::register(&mut Registry::default());
                let client = UpstreamClient::new("load", &args.url, policy, &metrics)?;
                let endpoint = client.endpoint(&args.path)?;
                Ok(Self::Resilience { client, endpoint })
            }
        }
    }

    /// One delivery; true when the upstream answered 2xx.
    async fn post(&self, key: &str) -> bool {
        match self {
            Self::Reqwest { client, url } => post_bare(client, url.clone(), key, BODY).await,
            Self::Resilience { client, endpoint } => client
                .post_json(endpoint, Bytes::from_static(BODY.as_bytes()), key)
                .await
                .succeeded(),
        }
    }
}

/// The bare client, as `http-post --client reqwest` and `bare-worker` both use it: reqwest's
/// defaults with the pool size and `TCP_NODELAY` of the worker's stack. Returns it with the URL
/// `path` names under `base`.
pub(crate) fn bare_client(
    base: &str,
    path: &str,
    pool: usize,
) -> anyhow::Result<(reqwest::Client, reqwest::Url)> {
    let url = reqwest::Url::parse(base)
        .and_then(|base| base.join(path.trim_start_matches('/')))
        .context("invalid --url or --path")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(pool)
        .tcp_nodelay(true)
        .build()?;
    Ok((client, url))
}

/// One JSON POST through the bare client; true when the upstream answered 2xx and its body was
/// read.
pub(crate) async fn post_bare(
    client: &reqwest::Client,
    url: reqwest::Url,
    idempotency_key: &str,
    body: impl Into<reqwest::Body>,
) -> bool {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", idempotency_key)
        .body(body)
        .send()
        .await;
    match response {
        Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
        Err(_) => false,
    }
}
