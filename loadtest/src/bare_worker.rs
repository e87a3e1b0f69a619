//! `loadgen bare-worker`: the worker's work with nothing of Relais around it, as the floor the
//! worker's CPU per message is measured against.
//!
//! It reads the ingress topic in a consumer group (`read_committed`, the worker's prefetch),
//! POSTs each message's payload with a bare reqwest client (a fixed number in flight), and for
//! every message writes two records (each carrying the payload and, as the worker's, no key)
//! in a transaction with the consumed offsets: the worker's consume-process-produce with the
//! same librdkafka settings and the same guarantee that an offset is committed only with its
//! outcome records. No
//! normalising, routing, resilience layers, metrics or tracing. `make bench` runs it in the
//! worker's turns, so the worker's CPU per message over this one's says what Relais itself
//! costs, at whatever speed the machine has in that hour.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long the run may go without committing anything before it gives up.
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// The limit of each transactional call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub(crate) struct BareWorkerArgs {
    /// The topic to read (the worker's ingress topic).
    #[arg(long)]
    topic: String,
    /// Consumer group; a new one reads the topic from its start.
    #[arg(long)]
    group: String,
    /// Where the first record of each message goes (the worker's audit record).
    #[arg(long)]
    audit_topic: String,
    /// Where the second goes (the worker's realtime event).
    #[arg(long)]
    events_topic: String,
    /// Base URL of the upstream.
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "/events")]
    path: String,
    /// Deliveries in flight (the worker's bulkhead in the benchmark).
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Stop once this many messages are committed.
    #[arg(long)]
    messages: u64,
    /// The worker's defaults: a transaction every 100 ms of at most 1,000 messages.
    #[arg(long, default_value_t = 100)]
    commit_interval_ms: u64,
    #[arg(long, default_value_t = 1000)]
    max_batch: usize,
    #[arg(long, default_value_t = 1024)]
    prefetch_kbytes: u32,
}

/// A message whose delivery has been answered.
struct Handled {
    message: OwnedMessage,
    succeeded: bool,
}

pub(crate) async fn run(
    kafka: &relais_kafka::KafkaClient,
    args: BareWorkerArgs,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let consumer: StreamConsumer = relais_kafka::bounded_prefetch(
        kafka
            .config()
            .set("group.id", &args.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky"),
        args.prefetch_kbytes,
    )
    .create()
    .context("cannot create the consumer")?;
    consumer.subscribe(&[&args.topic])?;
    let consumer = Arc::new(consumer);
    // The worker's producer settings.
    let producer: FutureProducer = kafka
        .config()
        .set(
            "transactional.id",
            format!("relais-bare-worker-{}", args.group),
        )
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .context("cannot create the producer")?;
    blocking(&producer, |producer| {
        producer.init_transactions(CALL_TIMEOUT)
    })
    .await?;

    let (client, url) = crate::http_post::bare_client(&args.url, &args.path, args.concurrency)?;

    let (handled, mut to_commit) = mpsc::channel::<Handled>(args.concurrency * 4);
    let reader = tokio::spawn(read_and_deliver(
        Arc::clone(&consumer),
        client,
        url,
        args.concurrency,
        handled,
    ));

    let started = Instant::now();
    let (mut committed, mut failed) = (0_u64, 0_u64);
    let mut last_progress = Instant::now();
    let mut batch = Vec::with_capacity(args.max_batch);
    let mut tick = tokio::time::interval(Duration::from_millis(args.commit_interval_ms));
    while committed < args.messages {
        tick.tick().await;
        // As the worker: every interval, everything answered, in rounds of at most max_batch.
        loop {
            while batch.len() < args.max_batch {
                match to_commit.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        reader.await??;
                        bail!("the reader stopped before {} messages", args.messages);
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            failed += batch.iter().filter(|handled| !handled.succeeded).count() as u64;
            commit(&producer, &consumer, &args, &batch).await?;
            committed += batch.len() as u64;
            last_progress = Instant::now();
            batch.clear();
        }
        if last_progress.elapsed() > STALL_LIMIT {
            bail!("nothing to commit for {STALL_LIMIT:?} after {committed} messages");
        }
    }
    reader.abort();
    let seconds = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "messages": committed,
        "failed": failed,
        "seconds": seconds,
        "messages_per_second": committed as f64 / seconds,
    });
    writeln!(std::io::stdout().lock(), "{summary}")?;
    Ok(())
}

/// Reads messages and POSTs each, `concurrency` at a time. Deliveries finish in any order;
/// they are handed on in the order they were read, so the committed offsets never pass a
/// message still in flight.
async fn read_and_deliver(
    consumer: Arc<StreamConsumer>,
    client: reqwest::Client,
    url: reqwest::Url,
    concurrency: usize,
    handled: mpsc::Sender<Handled>,
) -> anyhow::Result<()> {
    let mut in_flight = FuturesOrdered::new();
    loop {
        tokio::select! {
            biased;
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                if handled.send(answer).await.is_err() {
                    return Ok(());
                }
            }
            message = consumer.recv(), if in_flight.len() < concurrency => {
                let message = message.context("cannot read the topic")?.detach();
                let (client, url) = (client.clone(), url.clone());
                in_flight.push_back(async move {
                    let succeeded = post(&client, url, &message).await;
                    Handled { message, succeeded }
                });
            }
        }
    }
}

/// One delivery; true when the upstream answered 2xx and its body was read.
async fn post(client: &reqwest::Client, url: reqwest::Url, message: &OwnedMessage) -> bool {
    let body = Bytes::copy_from_slice(message.payload().unwrap_or_default());
    let key = format!("{}-{}", message.partition(), message.offset());
    crate::http_post::post_bare(client, url, &key, body).await
}

/// Two records per message and the offsets after the batch, in one transaction.
async fn commit(
    producer: &FutureProducer,
    consumer: &StreamConsumer,
    args: &BareWorkerArgs,
    batch: &[Handled],
) -> anyhow::Result<()> {
    blocking(producer, |producer| producer.begin_transaction()).await?;
    let mut deliveries = Vec::with_capacity(batch.len() * 2);
    let mut next_offsets = HashMap::new();
    for Handled { message, .. } in batch {
        let payload = message.payload().unwrap_or_default();
        for topic in [&args.audit_topic, &args.events_topic] {
            let record = FutureRecord::<(), _>::to(topic).payload(payload);
            let delivery = producer
                .send_result(record)
                .map_err(|(error, _)| error)
                .context("cannot enqueue a record")?;
            deliveries.push(delivery);
        }
        next_offsets.insert(message.partition(), message.offset() + 1);
    }
    for delivery in deliveries {
        delivery
            .await
            .context("delivery cancelled")?
            .map_err(|(error, _)| error)
            .context("a record was not written")?;
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in next_offsets {
        offsets.add_partition_offset(&args.topic, partition, Offset::Offset(offset))?;
    }
    let metadata = consumer.group_metadata().context("no group metadata yet")?;
    blocking(producer, move |producer| {
        producer.send_offsets_to_transaction(&offsets, &metadata, CALL_TIMEOUT)
    })
    .await?;
    blocking(producer, |producer| {
        producer.commit_transaction(CALL_TIMEOUT)
    })
    .await
}

/// rdkafka's transactional calls block; they run off the runtime's threads, as in the worker.
async fn blocking<F>(producer: &FutureProducer, call: F) -> anyhow::Result<()>
where
    F: FnOnce(&FutureProducer) -> rdkafka::error::KafkaResult<()> + Send + 'static,
{
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || call(&producer))
        .await
        .context("a transactional call panicked")?
        .context("a transactional call failed")
}
