//! One NDJSON line per audit record, with stable field names (see docs/audit-objects.md).
//!
//! The line is written field by field rather than derived, so renaming a Rust field can never
//! silently rename a stored field: these names are a contract with every reader of the trail.

mod json;
mod line;
mod read;
mod time;
mod view;
mod wire;

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use relais_proto::Timestamp;

pub(crate) use json::{JsonObject, Key, key};
pub use line::RecordLine;
pub(crate) use read::parse_time;
pub use read::record_from_json;
pub use time::timestamp;
pub use view::{AttemptView, PositionView, RecordView, ResponseView, Text};
pub use wire::WireError;

/// Where the audit record itself was read from (the `relais.audit` position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPosition<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl AuditPosition<'_> {
    /// `{"topic", "partition", "offset"}` under `key`: where a record was read (ingress or
    /// audit topic).
    pub(crate) fn write(&self, key: Key, line: &mut JsonObject<'_>) {
        PositionView {
            topic: Text::of(self.topic),
            partition: self.partition,
            offset: self.offset,
        }
        .write(key, line);
    }
}

/// The time a record is filed under: its event time (`occurred_at`), else the Kafka record's
/// timestamp. Never the wall clock, so the same input always lands under the same key.
pub fn record_time(
    occurred_at: Option<&Timestamp>,
    kafka_timestamp: Option<SystemTime>,
) -> DateTime<Utc> {
    timestamp(occurred_at)
        .or_else(|| kafka_timestamp.map(DateTime::<Utc>::from))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Kafka's millisecond timestamp as a `SystemTime`.
pub fn kafka_time(millis: Option<i64>) -> Option<SystemTime> {
    let millis = u64::try_from(millis?).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(millis))
}
