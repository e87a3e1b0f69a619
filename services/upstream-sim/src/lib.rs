//! upstream-sim: the "external API" of Relais for development, demos and tests.
//!
//! It accepts deliveries on any path and counts them per `Idempotency-Key`, so a test can tell
//! how many duplicates reached the upstream. Faults (latency distributions, 5xx mixes, 429 with
//! `Retry-After`, hangs, connection resets, full outages) are set at run time through the admin
//! API; see [`app`] for the routes and [`faults::Faults`] for the configuration.

pub mod app;
pub mod faults;
pub mod server;
pub mod state;
pub mod store;
