//! The ingress event schema (version 1): parsing, normalisation and validation.
//!
//! Producers write JSON objects to `relais.ingress`:
//!
//! ```json
//! {"id": "order-42", "type": "Order.Created", "occurred_at": "2026-11-27T10:00:00+01:00",
//!  "source": "shop", "route": "orders", "data": {"total": 12.5}}
//! ```
//!
//! [`Normaliser::normalise`] turns those bytes into an [`IngressEvent`] or a [`Rejection`]:
//! strings trimmed, `type` lower-cased, `occurred_at` in UTC, `data` defaulting to `{}`, and
//! every limit checked. Each rejection has a [`RejectReason`] whose [`RejectReason::code`] is
//! stable: it is written into DLQ headers and audit records and counted in metrics, so dashboards
//! and replay filters can rely on it.
//!
//! No input can make it panic (property tests and a fuzz target check that); it allocates in
//! proportion to the input, which is bounded by [`Limits::max_payload_bytes`] before parsing.

mod checks;
mod fields;
mod normalise;
mod reason;
mod rfc3339;

pub use normalise::{IngressEvent, Limits, Normaliser, Rejection};
pub use reason::RejectReason;

/// The schema version this crate understands.
pub const SCHEMA_VERSION: u64 = 1;
