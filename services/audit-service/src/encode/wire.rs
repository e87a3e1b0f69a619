//! Audit records read in place from their protobuf bytes: the line is written from the Kafka
//! record itself, its strings borrowed rather than copied into an `AuditRecord` first.
//!
//! It accepts and refuses exactly what prost's `AuditRecord::decode` accepts and refuses (the
//! tests hold the two to it on arbitrary bytes), as the protobuf encoding says: fields in any
//! order; a field seen twice keeps its last value, or for a message merges the two; every
//! element of a repeated field kept; unknown fields and groups skipped; nesting at most 100
//! deep.

use std::fmt;

use relais_proto::Timestamp;
use relais_proto::v1::ProbeTimings;

use super::view::{AttemptView, PositionView, RecordView, ResponseView, Text};

/// Why bytes are not an audit record: prost's words for the same failure, and the record's
/// field it was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    problem: &'static str,
    field: Option<&'static str>,
}

impl WireError {
    const fn new(problem: &'static str) -> Self {
        Self {
            problem,
            field: None,
        }
    }

    /// The error, found in the record's field `tag` (a field it knows).
    fn in_field(self, tag: u32) -> Self {
        let field = usize::try_from(tag)
            .ok()
            .and_then(|tag| FIELD_NAMES.get(tag).copied());
        Self { field, ..self }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(
                f,
                "failed to decode Protobuf message: AuditRecord.{field}: {}",
                self.problem
            ),
            None => write!(f, "failed to decode Protobuf message: {}", self.problem),
        }
    }
}

impl std::error::Error for WireError {}

/// The record's field names by number, for errors.
const FIELD_NAMES: [&str; 18] = [
    "",
    "message_id",
    "trace_id",
    "span_id",
    "outcome",
    "reason_code",
    "reason_detail",
    "event_type",
    "source",
    "upstream",
    "occurred_at",
    "received_at",
    "decided_at",
    "worker_id",
    "position",
    "attempts",
    "circuit_state",
    "payload_bytes",
];

const INVALID_VARINT: WireError = WireError::new("invalid varint");
const UNDERFLOW: WireError = WireError::new("buffer underflow");
const WRONG_WIRE_TYPE: WireError = WireError::new("invalid wire type");
const END_GROUP_TAG: WireError = WireError::new("unexpected end group tag");
const RECURSION_LIMIT_REACHED: WireError = WireError::new("recursion limit reached");

/// How deep messages and groups may nest below the record: prost's limit, so both refuse the
/// same input.
const RECURSION_LIMIT: u32 = 100;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;
const START_GROUP: u32 = 3;
const END_GROUP: u32 = 4;
const FIXED32: u32 = 5;

impl<'a> RecordView<'a> {
    /// Reads the record encoded in `bytes` into this view, emptied first. On an error the view
    /// holds part of the record and is to be read into again, not used.
    pub fn read(&mut self, bytes: &'a [u8]) -> Result<(), WireError> {
        self.clear();
        let mut fields = Fields {
            rest: bytes,
            depth: RECURSION_LIMIT,
        };
        while let Some((tag, wire)) = fields.key()? {
            self.read_field(&mut fields, tag, wire)
                .map_err(|error| error.in_field(tag))?;
        }
        Ok(())
    }

    fn read_field(
        &mut self,
        fields: &mut Fields<'a>,
        tag: u32,
        wire: u32,
    ) -> Result<(), WireError> {
        match tag {
            1 => self.message_id = fields.string(wire)?,
            2 => self.trace_id = fields.string(wire)?,
            3 => self.span_id = fields.string(wire)?,
            4 => self.outcome = int32(fields.varint(wire)?),
            5 => self.reason_code = fields.string(wire)?,
            6 => self.reason_detail = fields.string(wire)?,
            7 => self.event_type = fields.string(wire)?,
            8 => self.source = fields.string(wire)?,
            9 => self.upstream = fields.string(wire)?,
            10 => read_timestamp(fields.message(wire)?, &mut self.occurred_at)?,
            11 => read_timestamp(fields.message(wire)?, &mut self.received_at)?,
            12 => read_timestamp(fields.message(wire)?, &mut self.decided_at)?,
            13 => self.worker_id = fields.string(wire)?,
            14 => read_position(fields.message(wire)?, &mut self.position)?,
            15 => {
                let mut attempt = AttemptView::default();
                read_attempt(fields.message(wire)?, &mut attempt)?;
                self.attempts.push(attempt);
            }
            16 => self.circuit_state = int32(fields.varint(wire)?),
            17 => self.payload_bytes = fields.varint(wire)?,
            _ => fields.skip(tag, wire)?,
        }
        Ok(())
    }
}

/// A field of a message seen again merges into what the earlier ones gave.
fn read_timestamp(mut fields: Fields<'_>, into: &mut Option<Timestamp>) -> Result<(), WireError> {
    let time = into.get_or_insert_default();
    while let Some((tag, wire)) = fields.key()? {
        match tag {
            1 => time.seconds = fields.varint(wire)? as i64,
            2 => time.nanos = int32(fields.varint(wire)?),
            _ => fields.skip(tag, wire)?,
        }
    }
    Ok(())
}

fn read_position<'a>(
    mut fields: Fields<'a>,
    into: &mut Option<PositionView<'a>>,
) -> Result<(), WireError> {
    let position = into.get_or_insert_default();
    while let Some((tag, wire)) = fields.key()? {
        match tag {
            1 => position.topic = fields.string(wire)?,
            2 => position.partition = int32(fields.varint(wire)?),
            3 => position.offset = fields.varint(wire)? as i64,
            _ => fields.skip(tag, wire)?,
        }
    }
    Ok(())
}

fn read_attempt<'a>(
    mut fields: Fields<'a>,
    attempt: &mut AttemptView<'a>,
) -> Result<(), WireError> {
    while let Some((tag, wire)) = fields.key()? {
        match tag {
            1 => attempt.number = fields.varint(wire)? as u32,
            2 => read_timestamp(fields.message(wire)?, &mut attempt.started_at)?,
            3 => attempt.status_code = fields.varint(wire)? as u32,
            4 => attempt.error_type = fields.string(wire)?,
            5 => attempt.timeout = int32(fields.varint(wire)?),
            6 => read_timings(fields.message(wire)?, &mut attempt.timings)?,
            7 => attempt.request_bytes = fields.varint(wire)?,
            8 => attempt.response_bytes = fields.varint(wire)?,
            9 => attempt.backoff_ms = fields.varint(wire)?,
            10 => read_response(fields.message(wire)?, &mut attempt.response)?,
            _ => fields.skip(tag, wire)?,
        }
    }
    Ok(())
}

fn read_timings(mut fields: Fields<'_>, into: &mut Option<ProbeTimings>) -> Result<(), WireError> {
    let timings = into.get_or_insert_default();
    while let Some((tag, wire)) = fields.key()? {
        let slot = match tag {
            1 => &mut timings.dns_us,
            2 => &mut timings.connect_us,
            3 => &mut timings.tls_us,
            4 => &mut timings.time_to_first_byte_us,
            5 => &mut timings.transfer_us,
            6 => &mut timings.total_us,
            _ => {
                fields.skip(tag, wire)?;
                continue;
            }
        };
        *slot = fields.varint(wire)?;
    }
    Ok(())
}

fn read_response<'a>(
    mut fields: Fields<'a>,
    into: &mut Option<ResponseView<'a>>,
) -> Result<(), WireError> {
    let response = into.get_or_insert_default();
    while let Some((tag, wire)) = fields.key()? {
        match tag {
            1 => response.headers.push(read_header(fields.message(wire)?)?),
            2 => response.body = fields.string(wire)?,
            3 => response.body_truncated = fields.varint(wire)? != 0,
            _ => fields.skip(tag, wire)?,
        }
    }
    Ok(())
}

fn read_header(mut fields: Fields<'_>) -> Result<(Text<'_>, Text<'_>), WireError> {
    let (mut name, mut value) = (Text::default(), Text::default());
    while let Some((tag, wire)) = fields.key()? {
        match tag {
            1 => name = fields.string(wire)?,
            2 => value = fields.string(wire)?,
            _ => fields.skip(tag, wire)?,
        }
    }
    Ok((name, value))
}

/// An `int32` (or enum) field: the varint's low 32 bits, as protobuf's encoding defines it.
fn int32(value: u64) -> i32 {
    value as i32
}

/// The fields of one message, read in order. `depth` is how much deeper messages and groups
/// may still nest inside it.
struct Fields<'a> {
    rest: &'a [u8],
    depth: u32,
}

impl<'a> Fields<'a> {
    /// The next field's number and wire type, or None at the end of the message.
    fn key(&mut self) -> Result<Option<(u32, u32)>, WireError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.read_varint()?;
        let key = u32::try_from(key).map_err(|_| WireError::new("invalid key value"))?;
        let (tag, wire) = (key >> 3, key & 0x7);
        if wire > FIXED32 {
            return Err(WireError::new("invalid wire type value"));
        }
        if tag == 0 {
            return Err(WireError::new("invalid tag value: 0"));
        }
        Ok(Some((tag, wire)))
    }

    /// A varint field's value.
    fn varint(&mut self, wire: u32) -> Result<u64, WireError> {
        expect(wire, VARINT)?;
        self.read_varint()
    }

    /// A string field's value, which must be UTF-8.
    fn string(&mut self, wire: u32) -> Result<Text<'a>, WireError> {
        expect(wire, LENGTH_DELIMITED)?;
        Text::new(self.length_delimited()?).ok_or(WireError::new(
            "invalid string value: data is not UTF-8 encoded",
        ))
    }

    /// A message field's own fields, one level deeper.
    fn message(&mut self, wire: u32) -> Result<Fields<'a>, WireError> {
        expect(wire, LENGTH_DELIMITED)?;
        if self.depth == 0 {
            return Err(RECURSION_LIMIT_REACHED);
        }
        Ok(Fields {
            rest: self.length_delimited()?,
            depth: self.depth - 1,
        })
    }

    /// Passes over a field this reader does not know.
    fn skip(&mut self, tag: u32, wire: u32) -> Result<(), WireError> {
        self.skip_at(tag, wire, self.depth)
    }

    fn skip_at(&mut self, tag: u32, wire: u32, depth: u32) -> Result<(), WireError> {
        if depth == 0 {
            return Err(RECURSION_LIMIT_REACHED);
        }
        match wire {
            VARINT => {
                self.read_varint()?;
            }
            FIXED64 => {
                self.take(8)?;
            }
            LENGTH_DELIMITED => {
                self.length_delimited()?;
            }
            START_GROUP => loop {
                let (inner_tag, inner_wire) = self.key()?.ok_or(INVALID_VARINT)?;
                if inner_wire == END_GROUP {
                    if inner_tag != tag {
                        return Err(END_GROUP_TAG);
                    }
                    break;
                }
                self.skip_at(inner_tag, inner_wire, depth - 1)?;
            },
            END_GROUP => return Err(END_GROUP_TAG),
            _ => {
                self.take(4)?;
            }
        }
        Ok(())
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let length = self.read_varint()?;
        let length = usize::try_from(length).map_err(|_| UNDERFLOW)?;
        self.take(length)
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], WireError> {
        if length > self.rest.len() {
            return Err(UNDERFLOW);
        }
        let (taken, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(taken)
    }

    /// A base-128 varint of at most ten bytes whose value fits in 64 bits. Most of a record's
    /// (its keys, its lengths, small numbers) are one byte, read here without the loop.
    #[inline(always)]
    fn read_varint(&mut self) -> Result<u64, WireError> {
        match self.rest.split_first() {
            Some((&byte, rest)) if byte < 0x80 => {
                self.rest = rest;
                Ok(u64::from(byte))
            }
            _ => self.read_long_varint(),
        }
    }

    fn read_long_varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0_u64;
        for (index, &byte) in self.rest.iter().take(10).enumerate() {
            if index == 9 && byte > 1 {
                return Err(INVALID_VARINT);
            }
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte < 0x80 {
                self.rest = &self.rest[index + 1..];
                return Ok(value);
            }
        }
        Err(INVALID_VARINT)
    }
}

fn expect(wire: u32, expected: u32) -> Result<(), WireError> {
    if wire == expected {
        Ok(())
    } else {
        Err(WRONG_WIRE_TYPE)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message as _;
    use relais_proto::v1::{self, AuditRecord};

    use super::*;

    /// What prost makes of `bytes`, as a view, or None where it refuses them.
    fn by_prost(bytes: &[u8]) -> Option<AuditRecord> {
        AuditRecord::decode(bytes).ok()
    }

    /// The reader and prost agree on `bytes`: both refuse them, or both read the same record.
    fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
        let mut view = RecordView::default();
        let read = view.read(bytes);
        match by_prost(bytes) {
            Some(record) => {
                prop_assert!(
                    read.is_ok(),
                    "prost reads {bytes:?}, the reader says {read:?}"
                );
                prop_assert_eq!(&view, &RecordView::of(&record));
            }
            None => prop_assert!(
                read.is_err(),
                "prost refuses {bytes:?}, the reader reads {view:?}"
            ),
        }
        Ok(())
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z0-9.\\-]{1,12}", any::<String>()]
    }

    /// Zero (a field left out of the encoding) as often as anything else.
    fn number<T: Arbitrary + Default + Clone + 'static>() -> impl Strategy<Value = T> {
        prop_oneof![Just(T::default()), any::<T>()]
    }

    fn time() -> impl Strategy<Value = Option<relais_proto::Timestamp>> {
        proptest::option::of(
            (number::<i64>(), number::<i32>())
                .prop_map(|(seconds, nanos)| relais_proto::Timestamp { seconds, nanos }),
        )
    }

    fn attempt() -> impl Strategy<Value = v1::Attempt> {
        let response = (
            proptest::collection::vec((text(), text()), 0..3),
            text(),
            any::<bool>(),
        )
            .prop_map(|(headers, body, body_truncated)| v1::ResponseExcerpt {
                headers: headers
                    .into_iter()
                    .map(|(name, value)| v1::HeaderValue { name, value })
                    .collect(),
                body,
                body_truncated,
            });
        let timings = proptest::array::uniform6(number::<u64>()).prop_map(|t| v1::ProbeTimings {
            dns_us: t[0],
            connect_us: t[1],
            tls_us: t[2],
            time_to_first_byte_us: t[3],
            transfer_us: t[4],
            total_us: t[5],
        });
        (
            (number::<u32>(), time(), number::<u32>(), text(), -1..6_i32),
            proptest::option::of(timings),
            (number::<u64>(), number::<u64>(), number::<u64>()),
            proptest::option::of(response),
        )
            .prop_map(
                |(
                    (number, started_at, status_code, error_type, timeout),
                    timings,
                    sizes,
                    response,
                )| {
                    v1::Attempt {
                        number,
                        started_at,
                        status_code,
                        error_type,
                        timeout,
                        timings,
                        request_bytes: sizes.0,
                        response_bytes: sizes.1,
                        backoff_ms: sizes.2,
                        response,
                    }
                },
            )
    }

    fn record() -> impl Strategy<Value = AuditRecord> {
        (
            proptest::collection::vec(text(), 9),
            (-1..6_i32, -1..5_i32, number::<u64>()),
            (time(), time(), time()),
            proptest::option::of((text(), number::<i32>(), number::<i64>())),
            proptest::collection::vec(attempt(), 0..3),
        )
            .prop_map(|(texts, numbers, times, position, attempts)| {
                let mut texts = texts.into_iter();
                let mut next = || texts.next().unwrap_or_default();
                AuditRecord {
                    message_id: next(),
                    trace_id: next(),
                    span_id: next(),
                    outcome: numbers.0,
                    reason_code: next(),
                    reason_detail: next(),
                    event_type: next(),
                    source: next(),
                    upstream: next(),
                    occurred_at: times.0,
                    received_at: times.1,
                    decided_at: times.2,
                    worker_id: next(),
                    position: position.map(|(topic, partition, offset)| v1::SourcePosition {
                        topic,
                        partition,
                        offset,
                    }),
                    attempts,
                    circuit_state: numbers.1,
                    payload_bytes: numbers.2,
                }
            })
    }

    /// Bytes that look like fields: keys for the record's numbers (and a few beyond) with every
    /// wire type, followed by a little of anything, so the cases reach past the first key.
    fn field_soup() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            (
                1_u32..20,
                0_u32..8,
                proptest::collection::vec(any::<u8>(), 0..6)
            )
                .prop_map(|(tag, wire, tail)| {
                    let mut bytes = Vec::new();
                    prost::encoding::encode_varint(u64::from(tag << 3 | wire), &mut bytes);
                    bytes.extend(tail);
                    bytes
                }),
            proptest::collection::vec(any::<u8>(), 0..4),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn any_record_prost_writes_is_read_as_prost_reads_it(record in record()) {
            let bytes = record.encode_to_vec();
            let mut view = RecordView::default();
            prop_assert!(view.read(&bytes).is_ok());
            prop_assert_eq!(view, RecordView::of(&record));
        }

        #[test]
        fn two_records_one_after_the_other_merge_as_prost_merges_them(
            first in record(),
            second in record(),
        ) {
            let bytes = [first.encode_to_vec(), second.encode_to_vec()].concat();
            agree(&bytes)?;
        }

        #[test]
        fn a_record_cut_short_or_with_a_byte_changed_is_refused_or_read_as_prost_does(
            record in record(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let bytes = record.encode_to_vec();
            if !bytes.is_empty() {
                let at = at.index(bytes.len());
                agree(&bytes[..at])?;
                let mut changed = bytes.clone();
                changed[at] = byte;
                agree(&changed)?;
                let mut inserted = bytes;
                inserted.insert(at, byte);
                agree(&inserted)?;
            }
        }

        #[test]
        fn any_bytes_are_refused_or_read_as_prost_does(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            agree(&bytes)?;
        }

        #[test]
        fn fields_of_any_number_and_wire_type_are_refused_or_read_as_prost_does(bytes in field_soup()) {
            agree(&bytes)?;
        }
    }

    /// A record with a message id and one attempt, then `extra`.
    fn with(extra: &[u8]) -> Vec<u8> {
        let record = AuditRecord {
            message_id: "m-1".into(),
            attempts: vec![v1::Attempt::default()],
            ..AuditRecord::default()
        };
        [record.encode_to_vec(), extra.to_vec()].concat()
    }

    fn varint(value: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        prost::encoding::encode_varint(value, &mut bytes);
        bytes
    }

    fn key(tag: u32, wire: u32) -> Vec<u8> {
        varint(u64::from(tag << 3 | wire))
    }

    fn field(tag: u32, value: u64) -> Vec<u8> {
        [key(tag, VARINT), varint(value)].concat()
    }

    fn delimited(tag: u32, bytes: &[u8]) -> Vec<u8> {
        [
            key(tag, LENGTH_DELIMITED),
            varint(bytes.len() as u64),
            bytes.to_vec(),
        ]
        .concat()
    }

    fn group(tag: u32, inner: &[u8]) -> Vec<u8> {
        [key(tag, START_GROUP), inner.to_vec(), key(tag, END_GROUP)].concat()
    }

    /// Both refuse `bytes`, or both read the same record from them; true where they read it.
    fn assert_agree(bytes: &[u8]) -> bool {
        let mut view = RecordView::default();
        let read = view.read(bytes);
        let decoded = by_prost(bytes);
        assert_eq!(read.is_ok(), decoded.is_some(), "{bytes:?}: {read:?}");
        if let Some(record) = &decoded {
            assert_eq!(view, RecordView::of(record), "{bytes:?}");
        }
        decoded.is_some()
    }

    #[test]
    fn unknown_fields_and_groups_are_skipped_and_known_ones_of_the_wrong_type_refused() {
        let max = [vec![0xff; 9], vec![0x01]].concat();
        let overflow = [vec![0xff; 9], vec![0x02]].concat();
        let read: Vec<Vec<u8>> = vec![
            [key(30, FIXED32), vec![1, 2, 3, 4]].concat(),
            [key(30, FIXED64), vec![1; 8]].concat(),
            delimited(30, &[0xff, 0xfe]),
            [key(30, VARINT), max.clone()].concat(),
            group(30, &[group(31, &field(1, 1)), field(2, 2)].concat()),
            // A varint written longer than it needs.
            [vec![0x8a, 0x00], varint(1), b"x".to_vec()].concat(),
            // Messages seen twice merge; scalars seen twice keep the last.
            [delimited(10, &field(1, 5)), delimited(10, &field(2, 7))].concat(),
            [
                delimited(14, &delimited(1, b"a")),
                delimited(14, &field(2, 3)),
            ]
            .concat(),
            [field(4, 2), field(4, 1)].concat(),
            // A bool of 2, and an attempt whose response comes in two parts.
            delimited(
                15,
                &[
                    delimited(
                        10,
                        &[delimited(1, &delimited(1, b"h")), field(3, 2)].concat(),
                    ),
                    delimited(10, &delimited(2, b"b")),
                ]
                .concat(),
            ),
        ];
        for case in read {
            assert!(assert_agree(&with(&case)), "{case:?} is read");
        }
        let refused: Vec<Vec<u8>> = vec![
            [key(30, VARINT), overflow].concat(),
            [key(30, START_GROUP), key(31, END_GROUP)].concat(),
            key(30, END_GROUP),
            group(30, &[key(31, START_GROUP), field(1, 1)].concat()),
            field(1, 1),
            delimited(4, b""),
            [key(15, FIXED32), vec![0; 4]].concat(),
            delimited(1, &[0xc3, 0x28]),
            key(1, 6),
            key(1, 7),
            vec![0],
            varint(1 << 35),
            delimited(10, &key(1, VARINT)),
            [key(10, LENGTH_DELIMITED), varint(5), field(1, 1)].concat(),
            [key(30, VARINT), max[..5].to_vec()].concat(),
        ];
        for case in refused {
            assert!(!assert_agree(&with(&case)), "{case:?} is refused");
        }
    }

    #[test]
    fn groups_nested_past_prost_s_limit_are_refused_like_prost_refuses_them() {
        let mut read = Vec::new();
        for depth in [98, 99, 100, 101, 150] {
            let nested = [
                key(30, START_GROUP).repeat(depth),
                key(30, END_GROUP).repeat(depth),
            ];
            read.push(assert_agree(&with(&nested.concat())));
        }
        assert_eq!(read, [true, true, true, false, false]);
    }

    #[test]
    fn an_error_names_the_record_s_field_it_was_found_in() {
        let (not_utf8, stray_end) = (delimited(2, &[0xc3, 0x28]), key(30, END_GROUP));
        let mut view = RecordView::default();
        let error = view.read(&not_utf8).err();
        assert_eq!(
            error.map(|error| error.to_string()).as_deref(),
            Some(
                "failed to decode Protobuf message: AuditRecord.trace_id: \
                 invalid string value: data is not UTF-8 encoded"
            )
        );
        let error = view.read(&stray_end).err();
        assert_eq!(
            error.map(|error| error.to_string()).as_deref(),
            Some("failed to decode Protobuf message: unexpected end group tag")
        );
    }

    #[test]
    fn a_view_read_again_holds_only_the_new_record() {
        let full = AuditRecord {
            message_id: "m-1".into(),
            attempts: vec![v1::Attempt::default(); 3],
            position: Some(v1::SourcePosition::default()),
            ..AuditRecord::default()
        };
        let sparse = AuditRecord {
            trace_id: "t".into(),
            ..AuditRecord::default()
        };
        let (full_bytes, sparse_bytes) = (full.encode_to_vec(), sparse.encode_to_vec());
        let mut view = RecordView::default();
        view.read(&full_bytes).unwrap_or_default();
        assert_eq!(view, RecordView::of(&full));
        view.read(&sparse_bytes).unwrap_or_default();
        assert_eq!(view, RecordView::of(&sparse));
    }
}
