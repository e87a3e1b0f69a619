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

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use tokio::time::Instant;

use crate::index::IdHash;

mod chunks;
mod ndjson;

pub use chunks::ChunkPool;
pub use ndjson::Ndjson;

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

/// What an object needs of a record besides its encoded line: where it is, its hour, what the
/// index and the object's span take of it.
#[derive(Debug)]
pub struct Line {
    pub offset: i64,
    pub time: DateTime<Utc>,
    /// The record's trace id and message id (an operator action's trace id and subject).
    pub ids: [IdHash; 2],
    /// The record's own trace context (from its `traceparent` header), if valid.
    pub context: Option<opentelemetry::trace::SpanContext>,
}

/// The open object of one partition.
#[derive(Debug)]
pub struct PartitionWriter {
    partition: i32,
    policy: RotationPolicy,
    open: Option<DataObject>,
    last_arrival: Instant,
    chunks: Arc<ChunkPool>,
}

/// The hour a time belongs to.
pub fn hour_of(time: DateTime<Utc>) -> DateTime<Utc> {
    // Arithmetic on the seconds: asked once per record, and chrono's field setters each go
    // through the calendar.
    let start = time.timestamp().div_euclid(3600) * 3600;
    DateTime::from_timestamp(start, 0).unwrap_or(time)
}

impl PartitionWriter {
    pub fn new(partition: i32, policy: RotationPolicy, chunks: Arc<ChunkPool>) -> Self {
        Self {
            partition,
            policy,
            open: None,
            last_arrival: Instant::now(),
            chunks,
        }
    }

    /// Records and bytes in the open object.
    pub fn open_size(&self) -> (usize, usize) {
        self.open
            .as_ref()
            .map_or((0, 0), |object| (object.records, object.ndjson.len()))
    }

    pub fn first_arrival(&self) -> Option<Instant> {
        self.open.as_ref().map(|object| object.first_arrival)
    }

    /// Appends a record's encoded line (`json`, without its newline); returns the object it
    /// closed first, if the line did not fit.
    pub fn push(&mut self, line: Line, json: &[u8], now: Instant) -> Option<DataObject> {
        self.last_arrival = now;
        let hour = hour_of(line.time);
        let closed = match &self.open {
            Some(open)
                if open.hour != hour
                    || open.records >= self.policy.max_records
                    || open.ndjson.len() + json.len() + 1 > self.policy.max_bytes =>
            {
                self.open.take()
            }
            _ => None,
        };
        let open = self.open.get_or_insert_with(|| DataObject {
            partition: self.partition,
            start_offset: line.offset,
            end_offset: line.offset,
            hour,
            records: 0,
            ndjson: Ndjson::pooled(Arc::clone(&self.chunks)),
            ids: Vec::new(),
            links: Vec::new(),
            first_arrival: now,
        });
        open.end_offset = line.offset;
        open.records += 1;
        open.ndjson.push_line(json);
        open.ids.extend_from_slice(&line.ids);
        if open.links.len() < MAX_LINKS
            && let Some(context) = line.context
        {
            open.links.push(context);
        }
        closed
    }

    /// Closes the open object (before a quarantined record, or at shutdown).
    pub fn close(&mut self) -> Option<DataObject> {
        self.open.take()
    }

    /// When the open object has waited the idle time for another record; `None` when no
    /// object is open.
    pub fn idle_deadline(&self) -> Option<Instant> {
        self.open
            .as_ref()
            .map(|_| self.last_arrival + self.policy.idle)
    }

    /// Closes the open object if no record arrived for the idle time.
    pub fn close_if_idle(&mut self, now: Instant) -> Option<DataObject> {
        if self.idle_deadline().is_some_and(|deadline| now >= deadline) {
            return self.open.take();
        }
        None
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

/// The partition and first offset a data key names (see [`data_key`]); None for other keys.
pub fn data_key_position(key: &str) -> Option<(i32, i64)> {
    let name = key.rsplit('/').next()?;
    let stem = name.split_once(".ndjson")?.0;
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
    use chrono::TimeZone;

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
            data_key_position("audit/quarantine/relais.audit+3+00000000000000000042.bin"),
            None
        );
    }

    #[test]
    fn a_time_belongs_to_the_hour_that_starts_at_or_before_it() {
        let at = |secs: i64, nanos: u32| DateTime::from_timestamp(secs, nanos).unwrap();
        let hour = Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap();
        assert_eq!(hour_of(hour), hour);
        assert_eq!(hour_of(hour + chrono::Duration::nanoseconds(1)), hour);
        assert_eq!(
            hour_of(
                hour + chrono::Duration::seconds(3599) + chrono::Duration::nanoseconds(999_999_999)
            ),
            hour
        );
        assert_eq!(
            hour_of(hour + chrono::Duration::seconds(3600)),
            hour + chrono::Duration::hours(1)
        );
        // Before 1970 the hour still starts before the time, not after it.
        assert_eq!(hour_of(at(-1, 500)), at(-3600, 0));
        assert_eq!(hour_of(at(-3600, 0)), at(-3600, 0));
    }

    /// A record's line fields and `size` bytes of encoded line.
    fn line(offset: i64, hour: u32, minute: u32, size: usize) -> (Line, &'static [u8]) {
        const JSON: &[u8] = &[b'x'; 64];
        let line = Line {
            offset,
            time: Utc.with_ymd_and_hms(2026, 11, 27, hour, minute, 0).unwrap(),
            ids: [
                IdHash::of(&format!("t{offset}")),
                IdHash::of(&format!("m{offset}")),
            ],
            context: None,
        };
        (line, &JSON[..size])
    }

    fn writer(max_records: usize, max_bytes: usize) -> PartitionWriter {
        PartitionWriter::new(
            3,
            RotationPolicy {
                max_records,
                max_bytes,
                idle: Duration::from_secs(5),
            },
            Arc::new(ChunkPool::new(0)),
        )
    }

    /// Runs lines through a writer and returns (start, end, records) of every object.
    fn cut(writer: &mut PartitionWriter, lines: Vec<(Line, &[u8])>) -> Vec<(i64, i64, usize)> {
        let now = Instant::now();
        let mut objects: Vec<DataObject> = lines
            .into_iter()
            .filter_map(|(line, json)| writer.push(line, json, now))
            .collect();
        objects.extend(writer.close());
        objects
            .iter()
            .map(|o| (o.start_offset, o.end_offset, o.records))
            .collect()
    }

    #[tokio::test]
    async fn rotation_by_records_bytes_and_hour() {
        let lines = (0..10).map(|i| line(i, 10, i as u32, 10)).collect();
        assert_eq!(
            cut(&mut writer(4, 1000), lines),
            [(0, 3, 4), (4, 7, 4), (8, 9, 2)]
        );
        let lines = (0..10).map(|i| line(i, 10, 0, 10)).collect();
        assert_eq!(
            cut(&mut writer(100, 33), lines),
            [(0, 2, 3), (3, 5, 3), (6, 8, 3), (9, 9, 1)],
            "11 bytes a line, 33 fit"
        );
        let lines = (0..5).map(|i| line(i, 10, 0, 10)).collect();
        assert_eq!(
            cut(&mut writer(100, 32), lines),
            [(0, 1, 2), (2, 3, 2), (4, 4, 1)],
            "a line's newline counts: a third line would make 33 bytes"
        );
        let lines = vec![
            line(0, 10, 59, 1),
            line(1, 11, 0, 1),
            line(2, 11, 30, 1),
            line(3, 10, 59, 1),
        ];
        assert_eq!(
            cut(&mut writer(100, 1000), lines),
            [(0, 0, 1), (1, 2, 2), (3, 3, 1)],
            "one hour per object"
        );
    }

    #[tokio::test]
    async fn the_same_input_gives_the_same_objects_and_keys() {
        let make = || {
            (100..400)
                .map(|i| line(i, 10 + (i as u32 / 150), 0, 7 + (i as usize % 5)))
                .collect::<Vec<_>>()
        };
        let first = cut(&mut writer(64, 500), make());
        let second = cut(&mut writer(64, 500), make());
        assert_eq!(first, second);
        let now = Instant::now();
        let mut w = writer(64, 500);
        let object = make()
            .into_iter()
            .find_map(|(line, json)| w.push(line, json, now))
            .unwrap();
        assert_eq!(
            data_key("audit", "relais.audit", &object, "ndjson.gz"),
            "audit/dt=2026-11-27/hour=10/relais.audit+3+00000000000000000100.ndjson.gz"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_partitions_close_their_object() {
        let mut w = writer(100, 1000);
        assert_eq!(w.idle_deadline(), None, "nothing open");
        let (first, json) = line(0, 10, 0, 1);
        let pushed_at = Instant::now();
        assert!(w.push(first, json, pushed_at).is_none());
        assert_eq!(w.idle_deadline(), Some(pushed_at + Duration::from_secs(5)));
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(w.close_if_idle(Instant::now()).is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        let closed = w.close_if_idle(Instant::now()).expect("idle");
        assert_eq!((closed.start_offset, closed.end_offset), (0, 0));
        assert!(
            w.close_if_idle(Instant::now()).is_none(),
            "nothing open any more"
        );
        assert_eq!(w.idle_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_record_moves_the_idle_deadline() {
        let mut w = writer(100, 1000);
        let (first, json) = line(0, 10, 0, 1);
        assert!(w.push(first, json, Instant::now()).is_none());
        tokio::time::advance(Duration::from_secs(3)).await;
        let (second, json) = line(1, 10, 0, 1);
        let second_at = Instant::now();
        assert!(w.push(second, json, second_at).is_none());
        assert_eq!(w.idle_deadline(), Some(second_at + Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(
            w.close_if_idle(Instant::now()).is_none(),
            "3 s since the last"
        );
    }
}
