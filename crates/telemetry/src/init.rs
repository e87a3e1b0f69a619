//! Installs logging and tracing for a process.

use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::logging::JsonFormat;

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
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

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
    // Each layer has its own filter: RUST_LOG quiets the logs without also switching off the
    // spans that carry trace context between services (a disabled span has no trace id).
    tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(LevelFilter::INFO),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonFormat)
                .with_filter(filter),
        )
        .try_init()
        .map_err(TelemetryError::AlreadyInstalled)?;

    Ok(TelemetryGuard {
        provider,
        exporting,
    })
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

/// Trace id of the current `tracing` span, if it belongs to a valid trace.
pub fn current_trace_id() -> Option<TraceId> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id())
}
