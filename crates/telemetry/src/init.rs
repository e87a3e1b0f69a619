//! Installs logging and tracing for a process.

use opentelemetry::trace::{TraceId, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::logging::{JsonFormat, SpanFieldsUnused};

/// What [`init`] needs to know about the process.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` of the traces unless `OTEL_SERVICE_NAME` overrides it.
    pub service_name: &'static str,
    /// Version reported as `service.version`.
    pub service_version: &'static str,
    /// Log filter when `RUST_LOG` is not set (for example `info`).
    pub default_log_filter: &'static str,
}

/// Why telemetry could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    #[error("cannot build the OTLP span exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
}

/// Keeps the tracer provider alive; [`TelemetryGuard::shutdown`] flushes buffered spans.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl TelemetryGuard {
    /// Whether spans leave the process (an OTLP endpoint is configured).
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes and stops span export. The SDK blocks while it flushes, so this runs on the
    /// blocking pool instead of stalling a runtime worker during shutdown.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = result {
            tracing::warn!(%error, "trace export did not shut down cleanly");
        }
    }
}

/// Installs JSON logs, the tracer and the W3C propagator for this process.
///
/// Span export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
/// is set, unless `OTEL_TRACES_EXPORTER=none`. Without export, spans still get real trace and
/// span ids: they appear in logs and are propagated downstream, so correlation never depends
/// on a collector being present.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    crate::propagation::install_w3c();

    let service_name =
        std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| config.service_name.to_owned());
    let resource = Resource::builder()
        .with_service_name(service_name)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            config.service_version,
        ))
        .build();

    let exporting = otlp_export_requested();
    SPANS_EXPORTED.store(exporting, std::sync::atomic::Ordering::Relaxed);
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if exporting {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(TelemetryError::Exporter)?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(config.service_name);

    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(value)?,
        _ => EnvFilter::try_new(config.default_log_filter)?,
    };
    subscriber(tracer, filter, std::io::stdout)
        .try_init()
        .map_err(TelemetryError::AlreadyInstalled)?;

    Ok(TelemetryGuard {
        provider,
        exporting,
    })
}

/// The layers every service logs and traces through, writing log lines to `writer`.
///
/// Each layer has its own filter: RUST_LOG quiets the logs without also switching off the
/// spans that carry trace context between services (a disabled span has no trace id).
///
/// The pipelines open a span per message and per attempt, so what each span costs matters.
/// Trace ids are read through the span (`OpenTelemetrySpanExt`), never from OpenTelemetry's
/// thread-local context, so activating that context on every poll is switched off; so are
/// thread attributes (a string per span) and busy/idle timing (a clock read per poll).
fn subscriber<W>(
    tracer: opentelemetry_sdk::trace::SdkTracer,
    log_filter: EnvFilter,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_context_activation(false)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_filter(LevelFilter::INFO),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonFormat)
                .fmt_fields(SpanFieldsUnused)
                .with_writer(writer)
                .with_filter(log_filter),
        )
}

static SPANS_EXPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True when this process exports spans: work that only exists to be seen in a trace (a span
/// per record of a batch, say) can be skipped when nobody will see it.
pub fn spans_exported() -> bool {
    SPANS_EXPORTED.load(std::sync::atomic::Ordering::Relaxed)
}

fn otlp_export_requested() -> bool {
    let exporter_disabled = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
    let endpoint_set = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()));
    endpoint_set && !exporter_disabled
}

/// Trace id of the work in hand (the current `tracing` span's, see `work`), if it belongs to a
/// valid trace.
pub fn current_trace_id() -> Option<TraceId> {
    let span_context = crate::work::span_context();
    span_context.is_valid().then(|| span_context.trace_id())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanContext, TraceContextExt as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::*;

    /// Collects what the log layer writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The only test in this crate that installs a subscriber, and it installs it for the whole
    /// process as `init` does: a scoped one (`with_default`) hides the current span from the
    /// formatter, which a service never sees.
    #[test]
    fn a_log_line_carries_its_span_name_and_trace_ids_but_not_the_span_fields() {
        let provider = SdkTracerProvider::builder().build();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = subscriber(provider.tracer("test"), EnvFilter::new("info"), move || {
            writer.clone()
        });
        tracing::subscriber::set_global_default(subscriber).unwrap();
        let span = tracing::info_span!("process", messaging.kafka.offset = 42);
        let entered = span.enter();
        let ids = span.context().span().span_context().clone();
        let (trace_id, span_id) = (ids.trace_id().to_string(), ids.span_id().to_string());
        tracing::info!(partition = 3, "message not delivered");
        tracing::debug!("below the filter");
        drop(entered);
        // Work without a span of its own (a message while spans are not exported) logs with
        // the ids of the span context in its scope.
        let work = crate::work::child_of(&SpanContext::empty_context());
        crate::work::sync_scope(work.clone(), || tracing::warn!("no span, in scope"));

        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let logged: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(logged.len(), 2, "{text}");
        let scoped = &logged[1];
        assert_eq!(scoped["message"], "no span, in scope");
        assert_eq!(scoped["trace_id"], work.trace_id().to_string().as_str());
        assert_eq!(scoped["span_id"], work.span_id().to_string().as_str());
        assert!(scoped.get("span").is_none());
        let line = &logged[0];
        assert_eq!(line["message"], "message not delivered");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["partition"], 3);
        assert_eq!(line["span"], "process");
        assert_eq!(line["trace_id"], trace_id.as_str());
        assert_eq!(line["span_id"], span_id.as_str());
        assert_ne!(trace_id, TraceId::INVALID.to_string());
        assert!(line.get("messaging.kafka.offset").is_none());
    }
}
