//! Timestamps as the trail spells them: RFC 3339 in UTC with microseconds, chrono's spelling.

use chrono::{DateTime, Utc};
use relais_proto::Timestamp;

/// Converts a protobuf timestamp to UTC (None when absent or out of range).
pub fn timestamp(value: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    let value = value?;
    DateTime::from_timestamp(value.seconds, u32::try_from(value.nanos).ok()?)
}

/// A timestamp's text, written without building a `String` in the common case: a line has a
/// few timestamps and the service writes hundreds of thousands of lines a second.
pub(crate) enum Rfc3339 {
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, for years 0 to 9999 outside leap seconds.
    Fixed([u8; 27]),
    /// Anything else, in chrono's own spelling.
    Other(String),
}

impl Rfc3339 {
    /// The text of `value`, or None when it is absent or out of range.
    pub(crate) fn of(value: Option<&Timestamp>) -> Option<Self> {
        let time = timestamp(value)?;
        Some(fixed(&time).map_or_else(
            || Self::Other(time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            Self::Fixed,
        ))
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Only ASCII digits and separators are ever written.
            Self::Fixed(text) => std::str::from_utf8(text).unwrap_or_default(),
            Self::Other(text) => text,
        }
    }
}

fn fixed(time: &DateTime<Utc>) -> Option<[u8; 27]> {
    use chrono::{Datelike as _, Timelike as _};
    let year = u32::try_from(time.year())
        .ok()
        .filter(|year| *year <= 9999)?;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for index in (at..at + width).rev() {
            text[index] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, time.month());
    put(8, 2, time.day());
    put(11, 2, time.hour());
    put(14, 2, time.minute());
    put(17, 2, time.second());
    put(20, 6, nanos / 1_000);
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_as_chrono_spells_them() {
        let seconds = [
            -62_167_219_200, // 0000-01-01
            -1,
            0,
            951_782_400, // 2000-02-29
            1_764_720_000,
            4_102_444_799,
            253_402_300_799, // 9999-12-31T23:59:59
            253_402_300_800, // 10000-01-01: chrono's spelling
            -62_167_219_201, // before year 0
            1_483_228_799,   // a leap second's second, with nanos beyond a second below
            i64::MAX,        // out of range
        ];
        let nanos = [
            0,
            1,
            999,
            1_000,
            123_456_789,
            999_999_999,
            1_500_000_000,
            -1,
        ];
        for seconds in seconds {
            for nanos in nanos {
                let value = Timestamp { seconds, nanos };
                let expected = timestamp(Some(&value))
                    .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
                let written = Rfc3339::of(Some(&value));
                assert_eq!(
                    written.as_ref().map(Rfc3339::as_str),
                    expected.as_deref(),
                    "{seconds} s {nanos} ns"
                );
            }
        }
        assert!(Rfc3339::of(None).is_none());
    }
}
