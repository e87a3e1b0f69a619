//! Cutting a partition's records into objects, deterministically.
//!
//! An object is a run of consecutive records of one partition, named after its first record's
//! offset and its records' hour: `{prefix}/dt=YYYY-MM-DD/hour=HH/{topic}+{partition}+{start:020}`.
//! Offsets are committed only after an object is stored, and each partition has at most one
//! object stored-but-not-committed at a time, so after a crash the partition is re-read from
//! the start of exactly that object. Why each rotation rule keeps "a restart writes the same
//! keys with the same content":
//!
//! - **records**: the count since the object's first record is a function of the input.
//! - **bytes**: the encoded size of each line is a function of the record and its position
//!   (the encoding is deterministic: fixed field order, no wall-clock values).
//! - **hour boundary**: a record whose event hour differs from the object's closes it; the hour
//!   comes from the record, never from the clock.
//! - **a bad record** closes the open object before it is quarantined: a function of the input.
//! - **a log that starts again**: a record whose offset is not after the open object's last
//!   (the topic was deleted and created again, or a partition truncated, under the running
//!   service) closes it: a function of the input.
//! - **idle partition** (no record for `idle`) and **buffer pressure** (the pipeline closes the
//!   largest open objects when the buffer is full) depend on time, not only on the input. They
//!   are still safe: the re-read after a crash starts at the uncommitted object's first offset,
//!   so the first object written after the restart has the *same key* and overwrites it,
//!   whatever its end. Later objects were never stored (one uncommitted object per partition),
//!   so nothing else can be left behind.
//!
//! Two things keep those rules true when a partition moves or a commit fails:
//!
//! - **No stale writer.** The next owner of a partition rewrites its uncommitted object under
//!   the same key, perhaps with another end, and commits past it. An upload of the previous
//!   owner still retrying (RGW down for it) would then replace that object and lose the
//!   records the new owner committed. Of the three ways to prevent it (fencing each write by
//!   assignment generation, conditional writes, cancelling), conditional writes cannot tell a
//!   legitimate rewrite after a crash from a stale one, and a generation in the key would
//!   break "a restart writes the same keys". So the revoke callback cancels the partition's
//!   upload and waits until it has stopped before the partition is handed on, and an upload
//!   starts only under the partition's current generation (`pipeline::assignment`). What is
//!   left: a PUT whose body RGW had fully received when the connection was dropped may still
//!   be applied by RGW; that happens as the request is handled, before the next owner has
//!   re-read and cut the partition, unless RGW itself holds a received request longer than a
//!   rebalance.
//! - **No second uncommitted object.** A partition's next item is stored only after the
//!   commit of the previous one succeeded; a failed commit is tried again with backoff and the
//!   partition waits (`pipeline::partition`).

use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use tokio::time::Instant;

use crate::index::IdHash;

mod chunks;
mod ndjson;
mod writer;

pub use chunks::ChunkPool;
pub use ndjson::Ndjson;
pub use writer::{Line, PartitionWriter, hour_of};

/// When to close an object.
#[derive(Debug, Clone)]
pub struct RotationPolicy {
    pub max_records: usize,
    /// Uncompressed NDJSON bytes, newlines included: an object holds no more, unless its one
    /// line alone is larger.
    pub max_bytes: usize,
    pub idle: Duration,
}

/// An object's content and identity, ready to store.
#[derive(Debug, Clone)]
pub struct DataObject {
    pub partition: i32,
    pub start_offset: i64,
    /// Last offset covered (the commit goes to `end_offset + 1`).
    pub end_offset: i64,
    /// The hour every record of the object belongs to.
    pub hour: DateTime<Utc>,
    pub records: usize,
    pub ndjson: Ndjson,
    /// The trace and message id of each record, for the lookup index.
    pub ids: Vec<IdHash>,
    /// Trace contexts of the first records, for the links of the span that stores the object.
    pub links: Vec<opentelemetry::trace::SpanContext>,
    /// When its first record arrived (for the oldest-unflushed-age metric).
    pub first_arrival: Instant,
}

/// Links kept per object: enough to find the traces, bounded so a span stays small.
pub const MAX_LINKS: usize = 32;

/// A record that could not be decoded, kept as it was.
#[derive(Debug, Clone)]
pub struct QuarantinedRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub error: String,
    pub first_arrival: Instant,
}

/// What goes to RGW, in partition order.
#[derive(Debug, Clone)]
pub enum Pending {
    Data(DataObject),
    Quarantine(QuarantinedRecord),
}

impl Pending {
    pub fn end_offset(&self) -> i64 {
        match self {
            Self::Data(object) => object.end_offset,
            Self::Quarantine(record) => record.offset,
        }
    }

    pub fn records(&self) -> usize {
        match self {
            Self::Data(object) => object.records,
            Self::Quarantine(_) => 1,
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Self::Data(object) => object.ndjson.len(),
            Self::Quarantine(record) => record.payload.len(),
        }
    }

    pub fn first_arrival(&self) -> Instant {
        match self {
            Self::Data(object) => object.first_arrival,
            Self::Quarantine(record) => record.first_arrival,
        }
    }
}

/// The object key of a data object.
pub fn data_key(prefix: &str, topic: &str, object: &DataObject, extension: &str) -> String {
    format!(
        "{prefix}/dt={:04}-{:02}-{:02}/hour={:02}/{topic}+{}+{:020}.{extension}",
        object.hour.year(),
        object.hour.month(),
        object.hour.day(),
        object.hour.hour(),
        object.partition,
        object.start_offset
    )
}

/// The key an item takes when its own key holds an object of another log of the topic (the
/// topic was deleted and created again, or a partition truncated, so the same offsets name
/// other records): `mark`, a function of the item's first record, after the offset, as in
/// `…/relais.audit+3+00000000000000000042~5f3a9c0e12ab34cd.ndjson.gz`. Kafka topic names have
/// no `+` or `~`, so the name's last `+` is the one before the offset.
pub fn second_key(key: &str, mark: &str) -> String {
    let name_start = key.rfind('/').map_or(0, |slash| slash + 1);
    let offset_start = key[name_start..]
        .rfind('+')
        .map_or(name_start, |plus| name_start + plus + 1);
    let offset_end = key[offset_start..]
        .find(['.', '~'])
        .map_or(key.len(), |end| offset_start + end);
    let extension = key[offset_end..]
        .find('.')
        .map_or("", |dot| &key[offset_end + dot..]);
    format!("{}~{mark}{extension}", &key[..offset_end])
}

/// The partition and first offset a data key names (see [`data_key`] and [`second_key`]);
/// None for other keys.
pub fn data_key_position(key: &str) -> Option<(i32, i64)> {
    let name = key.rsplit('/').next()?;
    let stem = name.split_once(".ndjson")?.0;
    let stem = stem.split_once('~').map_or(stem, |(plain, _mark)| plain);
    let mut fields = stem.rsplit('+');
    let start_offset = fields.next()?.parse().ok()?;
    let partition = fields.next()?.parse().ok()?;
    Some((partition, start_offset))
}

/// The key of a quarantined record: by position, so a repeat overwrites.
pub fn quarantine_key(prefix: &str, topic: &str, record: &QuarantinedRecord) -> String {
    format!(
        "{prefix}/quarantine/{topic}+{}+{:020}.bin",
        record.partition, record.offset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_key_names_its_partition_and_first_offset() {
        assert_eq!(
            data_key_position(
                "audit/dt=2026-11-27/hour=10/relais.audit+3+00000000000000000042.ndjson.gz"
            ),
            Some((3, 42))
        );
        assert_eq!(
            data_key_position(
                "audit/dt=2026-11-27/hour=10/relais.audit+3+00000000000000000042~5f3a9c0e12ab34cd.ndjson.gz"
            ),
            Some((3, 42)),
            "a second key"
        );
        assert_eq!(
            data_key_position("audit/quarantine/relais.audit+3+00000000000000000042.bin"),
            None
        );
    }

    #[test]
    fn a_second_key_marks_the_offset_and_keeps_the_extension() {
        assert_eq!(
            second_key(
                "audit/dt=2026-11-27/hour=10/relais.audit+3+00000000000000000042.ndjson.gz",
                "5f3a9c0e12ab34cd"
            ),
            "audit/dt=2026-11-27/hour=10/relais.audit+3+00000000000000000042~5f3a9c0e12ab34cd.ndjson.gz"
        );
        assert_eq!(
            second_key(
                "a.b/quarantine/my.topic-1+0+00000000000000000007.bin",
                "00ff"
            ),
            "a.b/quarantine/my.topic-1+0+00000000000000000007~00ff.bin"
        );
        assert_eq!(
            second_key("audit/t+0+00000000000000000001~aaaa.ndjson.zst", "bbbb"),
            "audit/t+0+00000000000000000001~bbbb.ndjson.zst",
            "a second key's mark is replaced, not added to"
        );
    }
}
