//! The one place where outgoing-call policy lives.
//!
//! Every call to an upstream goes through the same stack, outermost first:
//!
//! 1. **deadline**: the caller's total time, attempts and backoff included;
//! 2. **bulkhead**: at most `max_concurrent` calls in flight, a bounded wait for a slot;
//! 3. **circuit breaker**: an open circuit refuses the call without touching the upstream;
//! 4. **retry**: exponential backoff with full jitter, `Retry-After` honoured (capped), a
//!    retry budget, idempotency-aware; *what* retries is decided by a [`RetryClassifier`];
//! 5. **per-attempt timeout**;
//! 6. **network probe**: DNS, connect, time to first byte, transfer, sizes; the client span
//!    and `traceparent`;
//! 7. the reqwest client.
//!
//! [`UpstreamClient::new`] builds it from an [`UpstreamPolicy`]; every outcome comes back as a
//! [`Delivery`] with the attempt list, why retries stopped, and the circuit state.

mod admission;
mod attempt;
pub mod backoff;
pub mod budget;
pub mod circuit;
pub mod classify;
mod client;
pub mod credentials;
pub mod destination;
mod error;
mod excerpt;
mod layers;
pub mod metrics;
pub mod operation;
pub mod pace;
pub mod policy;
mod probe;
mod redirect;
mod tls;

pub use attempt::{AttemptRecord, PhaseTimings, prost_timestamp};
pub use circuit::{CircuitBreaker, CircuitOpen, CircuitState};
pub use classify::{
    AttemptResult, Decision, RetryClassifier, RetryStop, StatusClassifier, TimeoutKind,
    TransportError,
};
pub use client::{
    BuildError, CallOutcome, ClientOptions, Delivery, Endpoint, Refusal, UpstreamClient,
    UpstreamTls,
};
pub use error::ResilienceError;
pub use excerpt::ResponseExcerpt;
pub use metrics::ResilienceMetrics;
pub use policy::{RateLimitPolicy, RedirectPolicy, UpstreamPolicy};
pub use url::Url;
