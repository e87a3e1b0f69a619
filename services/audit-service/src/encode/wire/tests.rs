//! The reader held to prost: property tests on arbitrary, field-shaped, cut, changed and
//! concatenated bytes, and hand-made cases for every wire type and limit.

use proptest::prelude::*;
use prost::Message as _;
use relais_proto::v1::{self, AuditRecord};

use super::fields::{END_GROUP, FIXED32, FIXED64, LENGTH_DELIMITED, START_GROUP, VARINT};
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
            |((number, started_at, status_code, error_type, timeout), timings, sizes, response)| {
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
