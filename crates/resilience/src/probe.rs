//! The network probe: the innermost layer, closest to the wire.
//!
//! Per attempt it measures DNS resolution (through [`TimedResolver`], installed as the client's
//! resolver), connection set-up (through [`ConnectTimingLayer`], wrapped around the client's
//! connector), split into TCP connect and the TLS handshake at the moment rustls starts the
//! handshake (marked by the client's session cache, `tls`), time to the response head, and the body transfer, which it reads here (bounded)
//! so the per-attempt timeout covers the whole exchange. It opens the attempt's client span,
//! sends `traceparent` upstream, and writes everything into the attempt's progress record.
//!
//! The resolver and the connector run inside the request's future, so they find the attempt's
//! measurements through a task-local. When hyper finishes a connection in the background (a
//! pooled connection won the race), the task-local is absent and that attempt reports no
//! connect phase, which is exactly what it experienced.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use http::Extensions;
use opentelemetry::trace::TraceContextExt;
use reqwest::{Request, Response, ResponseBuilderExt as _};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::attempt::CallRecord;
use crate::error::ResilienceError;
use crate::excerpt::ResponseExcerpt;

tokio::task_local! {
    static CONNECT_TIMINGS: Arc<ConnectTimings>;
}

#[derive(Debug)]
struct ConnectTimings {
    /// The moment the others are measured from.
    epoch: Instant,
    dns_micros: AtomicU64,
    /// Connection set-up, DNS and the TLS handshake included.
    connect_micros: AtomicU64,
    /// Since `epoch`; zero until each happened.
    connect_started_micros: AtomicU64,
    handshake_started_micros: AtomicU64,
}

impl ConnectTimings {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            dns_micros: AtomicU64::new(0),
            connect_micros: AtomicU64::new(0),
            connect_started_micros: AtomicU64::new(0),
            handshake_started_micros: AtomicU64::new(0),
        }
    }

    /// Microseconds since the epoch, at least 1 so that zero keeps meaning "not yet".
    fn now_micros(&self) -> u64 {
        micros(self.epoch.elapsed()).max(1)
    }

    /// (TCP connect, TLS handshake) of the connection made for this attempt, DNS excluded.
    fn split(&self) -> (Duration, Duration) {
        let dns = self.dns_micros.load(Ordering::Relaxed);
        let total = self.connect_micros.load(Ordering::Relaxed);
        let started = self.connect_started_micros.load(Ordering::Relaxed);
        let handshake = self.handshake_started_micros.load(Ordering::Relaxed);
        let (connect, tls) = split_connect(dns, total, started, handshake);
        (Duration::from_micros(connect), Duration::from_micros(tls))
    }
}

/// Splits connection set-up (`total` µs from `started`, DNS included) at the handshake's
/// start (`handshake`, on the same clock; zero without TLS): (TCP connect without DNS, TLS).
fn split_connect(dns: u64, total: u64, started: u64, handshake: u64) -> (u64, u64) {
    if handshake == 0 || handshake < started || handshake - started > total {
        return (total.saturating_sub(dns), 0);
    }
    let until_handshake = handshake - started;
    (until_handshake.saturating_sub(dns), total - until_handshake)
}

/// Called by the client's TLS session cache when rustls starts a handshake; the first call of
/// an attempt's connection counts.
pub(crate) fn mark_handshake_start() {
    let _ = CONNECT_TIMINGS.try_with(|timings| {
        let now = timings.now_micros();
        let _ = timings.handshake_started_micros.compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    });
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A DNS resolver that reports how long resolution took.
#[derive(Debug, Clone, Default)]
pub(crate) struct TimedResolver {
    /// The addresses a guarded upstream may be connected to (see `destination`).
    pub(crate) guard: Option<crate::destination::GuardedResolver>,
}

impl reqwest::dns::Resolve for TimedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let started = Instant::now();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let _ = CONNECT_TIMINGS.try_with(|timings| {
                timings
                    .dns_micros
                    .store(micros(started.elapsed()), Ordering::Relaxed);
            });
            let addresses = match &guard {
                Some(guard) => guard.filter(addresses)?,
                None => addresses,
            };
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// A tower layer around reqwest's connector that times connection set-up (DNS included; the
/// probe subtracts the DNS share).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConnectTimingLayer;

impl<S> tower::Layer<S> for ConnectTimingLayer {
    type Service = ConnectTiming<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnectTiming { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ConnectTiming<S> {
    inner: S,
}

impl<S, R> tower::Service<R> for ConnectTiming<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let connecting = self.inner.call(request);
        Box::pin(async move {
            let started = Instant::now();
            let _ = CONNECT_TIMINGS.try_with(|timings| {
                timings
                    .connect_started_micros
                    .store(timings.now_micros(), Ordering::Relaxed);
            });
            let result = connecting.await;
            let _ = CONNECT_TIMINGS.try_with(|timings| {
                timings
                    .connect_micros
                    .store(micros(started.elapsed()), Ordering::Relaxed);
            });
            result
        })
    }
}

/// The probe middleware (innermost layer).
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub(crate) upstream: Arc<str>,
    pub(crate) max_response_bytes: usize,
    /// Body bytes kept in the attempt record of an unsuccessful answer.
    pub(crate) excerpt_bytes: usize,
}

#[async_trait::async_trait]
impl Middleware for Probe {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let call = CallRecord::of(extensions);
        let resend_count = call.lock().current.number;
        // A client span per attempt when spans leave the process. Without export nobody can
        // see it, and building it (attributes, URL formatting, the OpenTelemetry layer) cost
        // about a third of this stack's throughput (`loadgen http-post`): the attempt then
        // sends the caller's trace with a parent id of its own, and builds no span.
        let (span, caller) = if relais_telemetry::spans_exported() {
            let span = tracing::info_span!(
                "http.client",
                otel.name = %request.method(),
                otel.kind = "client",
                http.request.method = %request.method(),
                server.address = request.url().host_str().unwrap_or_default(),
                server.port = request.url().port_or_known_default().unwrap_or_default(),
                url.full = %request.url(),
                http.request.resend_count = resend_count,
                relais.upstream = %self.upstream,
                http.response.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            );
            let context = span.context().span().span_context().clone();
            (span, context)
        } else {
            let caller = relais_telemetry::work::span_context();
            (
                tracing::Span::none(),
                relais_telemetry::work::unexported_child(&caller),
            )
        };
        relais_telemetry::propagation::inject_http(&caller, request.headers_mut());
        let request_bytes = request
            .body()
            .and_then(reqwest::Body::as_bytes)
            .map_or(0, |body| body.len() as u64);
        {
            let mut call = call.lock();
            let progress = &mut call.current;
            progress.started = Some(Instant::now());
            progress.started_at = Some(SystemTime::now());
            progress.request_bytes = request_bytes;
            progress.exemplar = relais_telemetry::exemplar::of_span(&caller);
        }

        let connect = Arc::new(ConnectTimings::new());
        let started = Instant::now();
        let limits = BodyLimits {
            max: self.max_response_bytes,
            excerpt: self.excerpt_bytes,
        };
        // The request is handed on here, so the futures wrapped around the exchange below
        // hold the boxed call beneath, not another copy of the request; nothing runs before
        // the exchange polls it, inside the connection timings' scope.
        let sending = next.run(request, extensions);
        let exchange = async {
            let response = sending.await;
            record_connect(&call, &connect);
            let response = response?;
            let head_at = started.elapsed();
            call.lock().current.timings.time_to_first_byte = head_at;
            read_bounded(response, limits, &call, started, head_at).await
        };
        let result = CONNECT_TIMINGS
            .scope(Arc::clone(&connect), exchange)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(response) => {
                span.record("http.response.status_code", response.status().as_u16());
            }
            Err(error) => {
                span.record(
                    "error.type",
                    crate::error::transport_error(error).error_type(),
                );
            }
        }
        result
    }
}

fn record_connect(call: &CallRecord, connect: &ConnectTimings) {
    let dns = Duration::from_micros(connect.dns_micros.load(Ordering::Relaxed));
    let (tcp, tls) = connect.split();
    let timings = &mut call.lock().current.timings;
    timings.dns = dns;
    timings.connect = tcp;
    timings.tls = tls;
}

#[cfg(test)]
mod tests {
    use super::split_connect;

    #[test]
    fn connection_set_up_splits_at_the_handshake() {
        // Connect started at 100 µs, DNS took 20, the handshake began at 400, all done 900 µs
        // after the start: TCP 280 µs, TLS 600 µs.
        assert_eq!(split_connect(20, 900, 100, 400), (280, 600));
        // No handshake (plain HTTP): all of it is connect.
        assert_eq!(split_connect(20, 900, 100, 0), (880, 0));
        // A mark from another connection (before this one started, or after it ended) is not
        // this connection's handshake.
        assert_eq!(split_connect(0, 900, 100, 50), (900, 0));
        assert_eq!(split_connect(0, 900, 100, 2000), (900, 0));
    }
}

#[derive(Debug, Clone, Copy)]
struct BodyLimits {
    /// Largest body read; a larger one fails the attempt.
    max: usize,
    /// Bytes kept in the excerpt of an unsuccessful answer.
    excerpt: usize,
}

/// Reads the body up to its limit, then rebuilds the response around the bytes read. An
/// unsuccessful answer leaves its excerpt in the attempt's record, even when its body was too
/// large to read whole.
async fn read_bounded(
    mut response: Response,
    limits: BodyLimits,
    call: &CallRecord,
    started: Instant,
    head_at: Duration,
) -> reqwest_middleware::Result<Response> {
    let mut body = BytesMut::new();
    let keep_excerpt = !response.status().is_success();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limits.max {
            if keep_excerpt {
                let mut excerpt =
                    ResponseExcerpt::capture(response.headers(), &body, limits.excerpt);
                excerpt.body_truncated = true;
                call.lock().current.response = Some(excerpt);
            }
            return Err(ResilienceError::ResponseTooLarge { limit: limits.max }.into_middleware());
        }
        body.extend_from_slice(&chunk);
        call.lock().current.response_bytes = body.len() as u64;
    }
    if keep_excerpt {
        call.lock().current.response = Some(ResponseExcerpt::capture(
            response.headers(),
            &body,
            limits.excerpt,
        ));
    }
    {
        let timings = &mut call.lock().current.timings;
        let total = started.elapsed();
        timings.transfer = total.saturating_sub(head_at);
        timings.total = total;
    }
    // With its URL: without one, reqwest parses a placeholder URL for every response.
    let mut rebuilt = http::Response::builder()
        .status(response.status())
        .version(response.version())
        .url(response.url().clone())
        .body(body.freeze())
        .map_err(|error| reqwest_middleware::Error::Middleware(error.into()))?;
    *rebuilt.headers_mut() = std::mem::take(response.headers_mut());
    Ok(Response::from(rebuilt))
}
