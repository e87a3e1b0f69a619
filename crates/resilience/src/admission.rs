//! Admission, the outer part of the outbound stack: the call's deadline, then a bulkhead slot,
//! then the circuit's permission, in that order, before the retry layer runs any attempt.
//!
//! The three are one middleware ([`Admission`]), each a part with its own rule: the chain
//! boxes a future per middleware on every call, and these three only wrap the call beneath
//! them.
//!
//! The deadline has no timer of its own. Every wait beneath it ends by it: the queue for a
//! bulkhead slot, each attempt (whose timer is the earlier of its own limit and the deadline,
//! see `layers.rs`), and the retry's backoff and pace, which never start a wait that would
//! cross it. So one timer per call bounds it, where a timer around the whole call would be a
//! second one for every call that never comes near its deadline.

use std::sync::Arc;
use std::time::Duration;

use http::Extensions;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::attempt::CallRecord;
use crate::circuit::{CallPermit, CircuitBreaker};
use crate::classify::{RetryStop, TimeoutKind};
use crate::error::ResilienceError;
use crate::metrics::{ResilienceMetrics, UpstreamLabels};

type CallResult = reqwest_middleware::Result<Response>;

/// Deadline, bulkhead and circuit gate as one middleware, outermost first.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) deadline: Deadline,
    pub(crate) bulkhead: Bulkhead,
    pub(crate) circuit: CircuitGate,
}

#[async_trait::async_trait]
impl Middleware for Admission {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> CallResult {
        let (deadline, call) = self.deadline.begin(extensions);
        let _slot = match self.bulkhead.enter(deadline).await {
            Ok(slot) => slot,
            Err(NoSlot::Full) => {
                return Err(ResilienceError::BulkheadFull(self.bulkhead.max_wait).into_middleware());
            }
            Err(NoSlot::DeadlinePassed) => {
                call.lock().retry_stop = Some(RetryStop::Deadline);
                return Err(ResilienceError::Timeout(TimeoutKind::Deadline).into_middleware());
            }
        };
        let _pass = self.circuit.pass()?;
        next.run(request, extensions).await
    }
}

/// Outermost: the overall time limit of the call, attempts and backoff included. An attempt
/// that it cuts is recorded with a deadline timeout.
#[derive(Debug)]
pub(crate) struct Deadline {
    pub(crate) deadline: Duration,
}

impl Deadline {
    /// Starts the clock and tells the layers beneath (through the call's record) when it ends.
    fn begin(&self, extensions: &mut Extensions) -> (Instant, CallRecord) {
        let at = Instant::now() + self.deadline;
        let call = CallRecord::of(extensions);
        call.lock().deadline = Some(at);
        (at, call)
    }
}

/// The bulkhead: a bounded number of calls in flight to this upstream. Waiting for a slot is
/// bounded too, by `max_wait` and by the deadline.
#[derive(Debug)]
pub(crate) struct Bulkhead {
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) max_wait: Duration,
    /// This upstream's series, resolved once here rather than looked up on every call.
    pub(crate) in_flight: Gauge,
    pub(crate) rejected: Counter,
}

/// Why a call got no bulkhead slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoSlot {
    /// None freed within `max_wait`.
    Full,
    /// The call's deadline came first.
    DeadlinePassed,
}

impl Bulkhead {
    /// A slot for one call, held until the returned guard drops; refused when none frees
    /// within `max_wait` (counted as rejected) or before the call's `deadline`, whichever
    /// comes first.
    async fn enter(&self, deadline: Instant) -> Result<Slot<'_>, NoSlot> {
        let permit = match self.slots.try_acquire() {
            Ok(permit) => permit,
            // No free slot: queue for one. Only a call that queues arms a timer, and only its
            // future holds one.
            Err(_) => {
                let given_up = Instant::now() + self.max_wait;
                let queued = tokio::time::timeout_at(given_up.min(deadline), self.slots.acquire());
                match Box::pin(queued).await {
                    Ok(Ok(permit)) => permit,
                    Err(_) if deadline < given_up => return Err(NoSlot::DeadlinePassed),
                    // No slot in time, or a closed semaphore (never: it is never closed).
                    _ => {
                        self.rejected.inc();
                        return Err(NoSlot::Full);
                    }
                }
            }
        };
        self.in_flight.inc();
        Ok(Slot {
            _permit: permit,
            in_flight: &self.in_flight,
        })
    }
}

/// A call's bulkhead slot, counted on the in-flight gauge for as long as it lives: the outer
/// deadline can cancel the call at any await, and the guard, not a decrement after it, keeps
/// the gauge true.
#[derive(Debug)]
struct Slot<'a> {
    _permit: SemaphorePermit<'a>,
    in_flight: &'a Gauge,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// The circuit breaker gate: an open circuit refuses the call before anything is sent.
#[derive(Debug)]
pub(crate) struct CircuitGate {
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) upstream: Arc<str>,
    pub(crate) metrics: ResilienceMetrics,
}

impl CircuitGate {
    /// The circuit's permission for one call, given back when it drops; refused while the
    /// circuit is open.
    fn pass(&self) -> Result<CallPermit, reqwest_middleware::Error> {
        self.breaker.try_acquire().map_err(|open| {
            self.metrics
                .circuit_rejected
                .get_or_create(&UpstreamLabels {
                    upstream: self.upstream.to_string(),
                })
                .inc();
            ResilienceError::CircuitOpen(open).into_middleware()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback server that accepts connections and never answers.
    async fn silent_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        address
    }

    fn bulkhead(slots: &Arc<Semaphore>, in_flight: &Gauge, rejected: &Counter) -> Arc<Bulkhead> {
        Arc::new(Bulkhead {
            slots: Arc::clone(slots),
            max_wait: Duration::from_secs(1),
            in_flight: in_flight.clone(),
            rejected: rejected.clone(),
        })
    }

    /// A call through the bulkhead to a server that never answers, under a far deadline.
    async fn call(bulkhead: Arc<Bulkhead>, address: std::net::SocketAddr) -> CallResult {
        let client = reqwest::Client::new();
        let url = format!("http://{address}/");
        let far = Instant::now() + Duration::from_secs(3600);
        let Ok(_slot) = bulkhead.enter(far).await else {
            return Err(ResilienceError::BulkheadFull(bulkhead.max_wait).into_middleware());
        };
        Ok(client.get(url).send().await?)
    }

    /// A bulkhead of one slot, held by a call to a server that never answers.
    struct Full {
        address: std::net::SocketAddr,
        bulkhead: Arc<Bulkhead>,
        in_flight: Gauge,
        rejected: Counter,
        holder: tokio::task::JoinHandle<CallResult>,
    }

    async fn full_bulkhead() -> Full {
        let address = silent_server().await;
        let slots = Arc::new(Semaphore::new(1));
        let (in_flight, rejected) = (Gauge::default(), Counter::default());
        let bulkhead = bulkhead(&slots, &in_flight, &rejected);
        let holder = tokio::spawn(call(Arc::clone(&bulkhead), address));
        while slots.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Full {
            address,
            bulkhead,
            in_flight,
            rejected,
            holder,
        }
    }

    /// A deadline before the end of `max_wait` ends the queueing at the deadline: the call
    /// is out of time, not refused by a full bulkhead.
    #[tokio::test(start_paused = true)]
    async fn a_queued_call_waits_no_longer_than_its_deadline() {
        let full = full_bulkhead().await;
        let queued_at = Instant::now();
        let deadline = queued_at + Duration::from_millis(300);
        let refused = full.bulkhead.enter(deadline).await.map(|_| ());
        assert_eq!(refused, Err(NoSlot::DeadlinePassed));
        assert_eq!(queued_at.elapsed(), Duration::from_millis(300));
        assert_eq!(full.rejected.get(), 0, "out of time is not a full bulkhead");
        assert_eq!(full.in_flight.get(), 1);
        full.holder.abort();
    }

    /// With every slot taken, a call queues for at most `max_wait`: refused and counted after
    /// it, let through when a slot frees within it.
    #[tokio::test(start_paused = true)]
    async fn a_full_bulkhead_queues_a_call_up_to_its_wait() {
        let Full {
            address,
            bulkhead,
            in_flight,
            rejected,
            holder,
        } = full_bulkhead().await;

        let queued_at = Instant::now();
        let error = call(Arc::clone(&bulkhead), address).await.unwrap_err();
        assert!(matches!(
            crate::error::refusal(&error),
            Some(ResilienceError::BulkheadFull(_))
        ));
        assert!(queued_at.elapsed() >= Duration::from_secs(1));
        assert_eq!(rejected.get(), 1);

        let queued = tokio::spawn(call(Arc::clone(&bulkhead), address));
        tokio::time::sleep(Duration::from_millis(500)).await;
        holder.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(in_flight.get(), 1, "the queued call took the freed slot");
        assert_eq!(rejected.get(), 1);
        queued.abort();
    }

    /// A call cancelled while it waits for its answer (as the deadline does) gives back its
    /// slot and its count.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_call_leaves_the_bulkhead_as_it_found_it() {
        let address = silent_server().await;
        let slots = Arc::new(Semaphore::new(2));
        let in_flight = Gauge::default();
        let bulkhead = bulkhead(&slots, &in_flight, &Counter::default());
        for _ in 0..3 {
            let call = call(Arc::clone(&bulkhead), address);
            let cancelled = tokio::time::timeout(Duration::from_secs(5), call).await;
            assert!(
                cancelled.is_err(),
                "the call was cancelled by the outer timeout"
            );
            assert_eq!(in_flight.get(), 0);
            assert_eq!(slots.available_permits(), 2);
        }
    }
}
