//! `occurred_at` as the upstream receives it: RFC 3339 in UTC, written exactly as chrono's
//! serde writes it (`Z`, and a fraction of 0, 3, 6 or 9 digits, the shortest that keeps every
//! nanosecond), but into a buffer on the stack instead of through the formatting machinery,
//! since every delivered message carries one.

use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use serde::{Serialize as _, Serializer};

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`
const LONGEST: usize = 30;

/// Serialises `time` as chrono does; years outside 0000–9999 (which need a sign) go through
/// chrono itself.
pub(crate) fn serialize<S: Serializer>(
    time: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut buffer = [0_u8; LONGEST];
    match write(time, &mut buffer) {
        Some(length) => {
            serializer.serialize_str(std::str::from_utf8(&buffer[..length]).unwrap_or_default())
        }
        None => time.serialize(serializer),
    }
}

/// Writes `time` into `buffer`; the length written, or None for a year that needs a sign.
fn write(time: &DateTime<Utc>, buffer: &mut [u8; LONGEST]) -> Option<usize> {
    let year = time.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut second = time.second();
    let mut nanosecond = time.nanosecond();
    // chrono keeps a leap second as a nanosecond count past one second.
    if nanosecond >= 1_000_000_000 {
        second += 1;
        nanosecond -= 1_000_000_000;
    }
    let mut cursor = Cursor { buffer, length: 0 };
    cursor.digits(year.unsigned_abs(), 4);
    cursor.byte(b'-');
    cursor.digits(time.month(), 2);
    cursor.byte(b'-');
    cursor.digits(time.day(), 2);
    cursor.byte(b'T');
    cursor.digits(time.hour(), 2);
    cursor.byte(b':');
    cursor.digits(time.minute(), 2);
    cursor.byte(b':');
    cursor.digits(second, 2);
    if nanosecond != 0 {
        cursor.byte(b'.');
        if nanosecond.is_multiple_of(1_000_000) {
            cursor.digits(nanosecond / 1_000_000, 3);
        } else if nanosecond.is_multiple_of(1_000) {
            cursor.digits(nanosecond / 1_000, 6);
        } else {
            cursor.digits(nanosecond, 9);
        }
    }
    cursor.byte(b'Z');
    Some(cursor.length)
}

struct Cursor<'a> {
    buffer: &'a mut [u8; LONGEST],
    length: usize,
}

impl Cursor<'_> {
    fn byte(&mut self, byte: u8) {
        self.buffer[self.length] = byte;
        self.length += 1;
    }

    /// `value` in exactly `width` decimal digits, zero-padded (the caller keeps it in range).
    fn digits(&mut self, mut value: u32, width: usize) {
        for place in (0..width).rev() {
            self.buffer[self.length + place] = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.length += width;
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
    use proptest::prelude::*;

    #[derive(serde::Serialize)]
    struct Written(#[serde(serialize_with = "super::serialize")] DateTime<Utc>);

    fn ours(time: DateTime<Utc>) -> String {
        serde_json::to_string(&Written(time)).expect("serialises")
    }

    fn chronos(time: DateTime<Utc>) -> String {
        serde_json::to_string(&time).expect("serialises")
    }

    #[test]
    fn every_kind_of_fraction_is_written_as_chrono_writes_it() {
        let second = Utc.with_ymd_and_hms(2026, 12, 5, 13, 2, 9).unwrap();
        for nanos in [
            0,
            1,
            10,
            999,
            1_000,
            120_000,
            999_000,
            1_000_000,
            500_000_000,
            999_999_999,
        ] {
            let time = second + chrono::Duration::nanoseconds(nanos);
            assert_eq!(ours(time), chronos(time), "{nanos} ns");
        }
        assert_eq!(
            ours(second + chrono::Duration::milliseconds(120)),
            "\"2026-12-05T13:02:09.120Z\""
        );
    }

    #[test]
    fn a_leap_second_and_the_ends_of_the_four_digit_years_are_written_as_chrono_writes_them() {
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|date| date.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .expect("a leap second")
            .and_utc();
        let first = Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap();
        let last = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap();
        let signed = [
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
        ];
        for time in [leap, first, last].into_iter().chain(signed) {
            assert_eq!(ours(time), chronos(time));
        }
        assert_eq!(ours(leap), "\"2016-12-31T23:59:60.500Z\"");
    }

    proptest! {
        #[test]
        fn any_time_is_written_as_chrono_writes_it(
            seconds in -62_167_219_200_i64..253_402_300_800,
            nanos in prop_oneof![
                Just(0_u32),
                (0_u32..1_000).prop_map(|n| n * 1_000_000),
                (0_u32..1_000_000).prop_map(|n| n * 1_000),
                0_u32..1_000_000_000,
            ],
        ) {
            let time = DateTime::from_timestamp(seconds, nanos).expect("in range");
            prop_assert_eq!(ours(time), chronos(time));
        }
    }
}
