//! One partition's open object: which object each line goes to (the rotation rules of the
//! module above), and its text, copied in line by line or handed over as a whole run.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::{ChunkPool, DataObject, MAX_LINKS, Ndjson, RotationPolicy};
use crate::index::IdHash;

/// What an object needs of a record besides its encoded line: where it is, its hour, what the
/// index and the object's span take of it.
#[derive(Debug, Clone)]
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

impl DataObject {
    /// Counts a line whose text was added: its offset, ids and trace link.
    fn add(&mut self, line: Line) {
        self.end_offset = line.offset;
        self.records += 1;
        self.ids.extend_from_slice(&line.ids);
        if self.links.len() < MAX_LINKS
            && let Some(context) = line.context
        {
            self.links.push(context);
        }
    }
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

    /// Appends a record's encoded line (`text`, with its newline), copied; returns the object
    /// it closed first, if the line did not fit.
    pub fn push(&mut self, line: Line, text: &[u8], now: Instant) -> Option<DataObject> {
        self.last_arrival = now;
        let hour = hour_of(line.time);
        let closed = match &self.open {
            Some(open)
                if open.hour != hour
                    || line.offset <= open.end_offset
                    || open.records >= self.policy.max_records
                    || open.ndjson.len() + text.len() > self.policy.max_bytes =>
            {
                self.open.take()
            }
            _ => None,
        };
        let open = self.open_for(&line, now);
        open.ndjson.push_text(text);
        open.add(line);
        closed
    }

    /// Whether a run of `count` lines, with `times` in order and `bytes` of text, would all go
    /// to the open object (or all to one new object) by the rotation rules, closing nothing: then
    /// [`push_whole`](Self::push_whole) gives the objects that pushing each line would.
    pub fn takes_whole(
        &self,
        positions: impl Iterator<Item = (i64, DateTime<Utc>)>,
        count: usize,
        bytes: usize,
    ) -> bool {
        let mut positions = positions.map(|(offset, time)| (offset, hour_of(time)));
        let (hour, records, held, mut last_offset) = match &self.open {
            Some(open) => (open.hour, open.records, open.ndjson.len(), open.end_offset),
            None => match positions.next() {
                Some((offset, first)) => (first, 0, 0, offset),
                None => return false,
            },
        };
        records + count <= self.policy.max_records
            && held + bytes <= self.policy.max_bytes
            && positions.all(|(offset, line_hour)| {
                let follows = offset > last_offset;
                last_offset = offset;
                follows && line_hour == hour
            })
    }

    /// Appends a run that [`takes_whole`](Self::takes_whole) accepted: `text` (the lines in
    /// order, each with its newline) becomes part of the object without being copied.
    pub fn push_whole(&mut self, lines: impl Iterator<Item = Line>, text: Vec<u8>, now: Instant) {
        self.last_arrival = now;
        for line in lines {
            self.open_for(&line, now).add(line);
        }
        if let Some(open) = &mut self.open {
            open.ndjson.adopt_text(text);
        }
    }

    /// The open object, opened at `line` if there is none.
    fn open_for(&mut self, line: &Line, now: Instant) -> &mut DataObject {
        self.open.get_or_insert_with(|| DataObject {
            partition: self.partition,
            start_offset: line.offset,
            end_offset: line.offset,
            hour: hour_of(line.time),
            records: 0,
            ndjson: Ndjson::pooled(Arc::clone(&self.chunks)),
            ids: Vec::new(),
            links: Vec::new(),
            first_arrival: now,
        })
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;
    use crate::object::data_key;

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

    /// A record's line fields and its text: `size` bytes of encoded line and a newline.
    fn line(offset: i64, hour: u32, minute: u32, size: usize) -> (Line, &'static [u8]) {
        const TEXT: &[u8] = b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n";
        let line = Line {
            offset,
            time: Utc.with_ymd_and_hms(2026, 11, 27, hour, minute, 0).unwrap(),
            ids: [
                IdHash::of(&format!("t{offset}")),
                IdHash::of(&format!("m{offset}")),
            ],
            context: None,
        };
        (line, &TEXT[TEXT.len() - 1 - size..])
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
        let lines = vec![
            line(7, 10, 0, 1),
            line(8, 10, 0, 1),
            line(0, 10, 0, 1),
            line(1, 10, 0, 1),
        ];
        assert_eq!(
            cut(&mut writer(100, 1000), lines),
            [(7, 8, 2), (0, 1, 2)],
            "a log that starts again (the topic created anew) starts an object"
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

    /// What an object is made of, to compare two ways of making it.
    fn parts(object: &DataObject) -> (i64, i64, usize, Vec<u8>, Vec<IdHash>) {
        (
            object.start_offset,
            object.end_offset,
            object.records,
            object.ndjson.to_vec(),
            object.ids.clone(),
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Runs handed over whole where the writer takes them, line by line where it does not
        /// (as the pipeline applies them), give the objects that pushing every line gives.
        #[test]
        fn runs_taken_whole_give_the_objects_of_lines_pushed_one_by_one(
            shapes in proptest::collection::vec((0..2_u32, 0..30_usize, 0..20_u8), 1..60),
            cuts in proptest::collection::vec(1..12_usize, 1..20),
            max_records in 1..16_usize,
            max_bytes in 1..200_usize,
        ) {
            // Now and then the log starts again at offset 0, as a topic deleted and created
            // again does under a running service.
            let mut next_offset = 0;
            let lines: Vec<(Line, &[u8])> = shapes
                .iter()
                .map(|(hour, size, chance)| {
                    if *chance == 0 {
                        next_offset = 0;
                    }
                    next_offset += 1;
                    line(next_offset - 1, 10 + hour, 0, *size)
                })
                .collect();
            let now = Instant::now();
            let mut one_by_one = writer(max_records, max_bytes);
            let mut expected: Vec<DataObject> = lines
                .iter()
                .filter_map(|(line, text)| one_by_one.push(line.clone(), text, now))
                .collect();
            expected.extend(one_by_one.close());

            let mut in_runs = writer(max_records, max_bytes);
            let mut objects = Vec::new();
            let mut rest = lines.as_slice();
            let mut taken_whole = 0;
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (run, after) = rest.split_at((*cut).min(rest.len()));
                rest = after;
                let bytes = run.iter().map(|(_, text)| text.len()).sum();
                let positions = run.iter().map(|(line, _)| (line.offset, line.time));
                if in_runs.takes_whole(positions, run.len(), bytes) {
                    taken_whole += 1;
                    let text = run.iter().flat_map(|(_, text)| text.iter().copied()).collect();
                    in_runs.push_whole(run.iter().map(|(line, _)| line.clone()), text, now);
                } else {
                    objects.extend(
                        run.iter()
                            .filter_map(|(line, text)| in_runs.push(line.clone(), text, now)),
                    );
                }
            }
            objects.extend(in_runs.close());
            proptest::prop_assert_eq!(
                objects.iter().map(parts).collect::<Vec<_>>(),
                expected.iter().map(parts).collect::<Vec<_>>(),
                "{} runs taken whole", taken_whole
            );
        }
    }

    #[test]
    fn a_run_that_fits_is_taken_whole_and_one_that_does_not_is_refused() {
        let w = writer(4, 100);
        // `count` consecutive offsets from `first`, all in `hour`.
        let run = |first: i64, count: usize, hour: u32| {
            let time = Utc.with_ymd_and_hms(2026, 11, 27, hour, 0, 0).unwrap();
            (first..).take(count).map(move |offset| (offset, time))
        };
        assert!(
            w.takes_whole(run(0, 4, 10), 4, 100),
            "a new object of the run"
        );
        assert!(!w.takes_whole(run(0, 5, 10), 5, 100), "too many records");
        assert!(!w.takes_whole(run(0, 2, 10), 2, 101), "too many bytes");
        assert!(!w.takes_whole(run(0, 0, 10), 0, 0), "nothing to take");
        let mixed = run(0, 1, 10).chain(run(1, 1, 11));
        assert!(!w.takes_whole(mixed, 2, 20), "two hours");
        let rewound = run(5, 1, 10).chain(run(0, 1, 10));
        assert!(!w.takes_whole(rewound, 2, 20), "offsets that go back");

        let mut w = writer(4, 100);
        let (first, text) = line(0, 10, 0, 9);
        assert!(w.push(first, text, Instant::now()).is_none());
        assert!(
            w.takes_whole(run(1, 3, 10), 3, 90),
            "the rest of the open object"
        );
        assert!(!w.takes_whole(run(1, 4, 10), 4, 40), "one record too many");
        assert!(
            !w.takes_whole(run(1, 1, 11), 1, 10),
            "another hour than the open object's"
        );
        assert!(
            !w.takes_whole(run(0, 1, 10), 1, 10),
            "an offset the open object already has"
        );
        let texts = b"aaaa\nbbbb\n".to_vec();
        let lines = [line(1, 10, 1, 4).0, line(2, 10, 2, 4).0];
        w.push_whole(lines.into_iter(), texts, Instant::now());
        let object = w.close().unwrap();
        assert_eq!(
            (object.start_offset, object.end_offset, object.records),
            (0, 2, 3)
        );
        assert_eq!(object.ndjson.to_vec(), b"xxxxxxxxx\naaaa\nbbbb\n");
        assert_eq!(object.ids.len(), 6);
    }
}
