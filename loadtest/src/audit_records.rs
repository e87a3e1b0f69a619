//! `loadgen audit-records`: synthetic `AuditRecord`s straight onto a topic, to measure
//! audit-service (and its trail lookups) at volumes the worker would take minutes to produce.

use std::io::Write as _;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use relais_proto::v1::{Attempt, AuditRecord, Outcome, SourcePosition};

/// The trace id of record `index` (deterministic, so a benchmark knows what to look up).
fn trace_id(index: u64, records_per_trace: u64) -> String {
    format!("{:032x}", 0x5eed_0000_0000u64 + index / records_per_trace)
}

pub(crate) async fn run(
    kafka: &relais_kafka::KafkaClient,
    topic: &str,
    count: u64,
    hours: u64,
    records_per_trace: u64,
) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka
        .config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let span = (hours * 3600) as i64;
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for index in 0..count {
        let record = AuditRecord {
            message_id: format!("load-{index}"),
            trace_id: trace_id(index, records_per_trace),
            span_id: format!("{:016x}", index + 1),
            outcome: if index % 20 == 0 {
                Outcome::DeadLettered
            } else {
                Outcome::Delivered
            } as i32,
            reason_code: if index % 20 == 0 {
                "retries_exhausted".into()
            } else {
                String::new()
            },
            event_type: "order.created".into(),
            source: "loadgen".into(),
            upstream: "default".into(),
            occurred_at: Some(relais_proto::Timestamp {
                seconds: now - span + (index as i64 * span / count.max(1) as i64),
                nanos: 0,
            }),
            worker_id: "loadgen".into(),
            position: Some(SourcePosition {
                topic: "relais.ingress".into(),
                partition: (index % 12) as i32,
                offset: index as i64,
            }),
            attempts: vec![Attempt {
                number: 0,
                status_code: 200,
                ..Attempt::default()
            }],
            payload_bytes: 180,
            ..AuditRecord::default()
        };
        let payload = record.encode_to_vec();
        let delivery = producer
            .send_result(
                FutureRecord::to(topic)
                    .key(&record.message_id)
                    .payload(&payload),
            )
            .map_err(|(error, _)| error)?;
        pending.push_back(delivery);
        // Bounded in flight: wait for the oldest before queueing more.
        if pending.len() >= 100_000
            && let Some(oldest) = pending.pop_front()
        {
            oldest.await?.map_err(|(error, _)| error)?;
        }
    }
    for delivery in pending {
        delivery.await?.map_err(|(error, _)| error)?;
    }
    producer.flush(Duration::from_secs(30))?;
    let elapsed = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "topic": topic,
        "records": count,
        "seconds": elapsed,
        "records_per_second": count as f64 / elapsed,
        "sample_trace_id": trace_id(count / 2, records_per_trace),
        "sample_message_id": format!("load-{}", count / 2),
    });
    writeln!(std::io::stdout().lock(), "{summary}")?;
    Ok(())
}
