//! Trace context survives a real Kafka round trip: the consumer's span joins the producer's
//! trace through the `traceparent` header, exactly as ingest-worker continues a producer's trace.

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use relais_telemetry::propagation::{extract_kafka, inject_kafka};
use relais_test_support::unique_name;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn trace_id_is_the_same_on_both_sides_of_kafka() {
    let kafka = relais_test_support::kafka().await;
    let topic = kafka.create_topic("it-trace", 1).await;

    // The same tracing stack the services install, without export (ids are still real).
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("it")));
    let _guard = tracing::subscriber::set_default(subscriber);

    // Producer side: a span, its context injected into the record's headers.
    let producer_span = tracing::info_span!("publish");
    let producer_context = producer_span.context();
    let producer_trace_id = producer_context.span().span_context().trace_id();
    assert!(producer_context.span().span_context().is_valid());
    let headers = inject_kafka(&producer_context, OwnedHeaders::new());
    let producer: FutureProducer = kafka.client_config().create().expect("producer");
    producer
        .send(
            FutureRecord::to(&topic)
                .key("order-1")
                .payload("{}")
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(error, _)| panic!("produce: {error}"));

    // Consumer side: a fresh process would see only the bytes on the wire.
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", unique_name("it-trace"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30 s")
        .expect("consume");

    let wire_header = message
        .headers()
        .and_then(|headers| headers.iter().find(|header| header.key == "traceparent"))
        .and_then(|header| header.value)
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .expect("traceparent header on the record");
    assert!(
        wire_header.starts_with(&format!("00-{producer_trace_id}-")),
        "W3C traceparent carries the producer's trace id: {wire_header}"
    );

    let remote = extract_kafka(message.headers());
    let consumer_span = tracing::info_span!("process");
    let _ = consumer_span.set_parent(remote);
    let consumer_context = consumer_span.context();
    let consumer_span_context = consumer_context.span().span_context().clone();
    assert_eq!(consumer_span_context.trace_id(), producer_trace_id);
    assert_ne!(
        consumer_span_context.span_id(),
        producer_context.span().span_context().span_id(),
        "the consumer has its own span in the same trace"
    );
}
