//! Timestamps as the trail spells them: RFC 3339 in UTC with microseconds, chrono's spelling.

use chrono::{DateTime, Utc};
use relais_proto::Timestamp;

/// Converts a protobuf timestamp to UTC (None when absent or out of range).
pub fn timestamp(value: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    let value = value?;
    DateTime::from_timestamp(value.seconds, u32::try_from(value.nanos).ok()?)
}

/// `value` as a JSON string, `null` when absent or out of range. The common case (years 0 to
/// 9999 outside leap seconds, `YYYY-MM-DDTHH:MM:SS.ffffffZ`) is a constant template whose
/// digits are then written in place: no `String`, and no buffer of its own copied after its
/// bytes were stored one by one (a wide load of bytes just stored stalls). Anything else is
/// chrono's own spelling.
pub(crate) fn write_json(out: &mut Vec<u8>, value: Option<&Timestamp>) {
    let Some(value) = value else {
        out.extend_from_slice(b"null");
        return;
    };
    if let Some(fields) = Fields::of(value) {
        let start = out.len() + 1;
        out.extend_from_slice(b"\"0000-00-00T00:00:00.000000Z\"");
        fields.write(&mut out[start..start + 26]);
        return;
    }
    match timestamp(Some(value)) {
        Some(time) => {
            out.push(b'"');
            let text = time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// The numbers of the fixed-width spelling, computed from the seconds directly (days to a
/// civil date with the usual era arithmetic) rather than through chrono's calendar types.
struct Fields {
    year: u32,
    month: u32,
    day: u32,
    second_of_day: u32,
    micros: u32,
}

impl Fields {
    fn of(value: &Timestamp) -> Option<Self> {
        const SECONDS_PER_DAY: i64 = 86_400;
        let nanos = u32::try_from(value.nanos)
            .ok()
            .filter(|nanos| *nanos < 1_000_000_000)?;
        let days = value.seconds.div_euclid(SECONDS_PER_DAY);
        let second_of_day = value.seconds.rem_euclid(SECONDS_PER_DAY) as u32;
        let (year, month, day) = civil_date(days);
        let year = u32::try_from(year).ok().filter(|year| *year <= 9999)?;
        Some(Self {
            year,
            month,
            day,
            second_of_day,
            micros: nanos / 1_000,
        })
    }

    /// Writes the digits over `text`, `0000-00-00T00:00:00.000000` with its separators.
    fn write(&self, text: &mut [u8]) {
        let mut put = |at: usize, width: usize, mut value: u32| {
            for slot in text[at..at + width].iter_mut().rev() {
                *slot = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, self.year);
        put(5, 2, self.month);
        put(8, 2, self.day);
        put(11, 2, self.second_of_day / 3600);
        put(14, 2, self.second_of_day / 60 % 60);
        put(17, 2, self.second_of_day % 60);
        put(20, 6, self.micros);
    }
}

/// Year, month and day of the proleptic Gregorian calendar `days` after 1970-01-01, counted
/// in 400-year eras of 146,097 days that start on March 1st (so the leap day ends a year).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text written for `value` without its quotes, None for `null`.
    fn written(value: Option<&Timestamp>) -> Option<String> {
        let mut out = Vec::new();
        write_json(&mut out, value);
        let text = String::from_utf8(out).unwrap();
        (text != "null").then(|| serde_json::from_str(&text).unwrap())
    }

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
                assert_eq!(written(Some(&value)), expected, "{seconds} s {nanos} ns");
            }
        }
        assert!(written(None).is_none());
    }

    #[test]
    fn every_day_of_four_centuries_and_their_edges_has_chrono_s_date() {
        use chrono::Datelike as _;
        let eras = (-719_468 - 146_097..-719_468 + 146_097).chain(0..2 * 146_097);
        for days in eras.chain([-1, 0, 1, 2_932_896, 2_932_897]) {
            let date =
                chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(days);
            assert_eq!(
                civil_date(days),
                (i64::from(date.year()), date.month(), date.day()),
                "{days}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_time_is_written_as_chrono_spells_it(
            seconds in -70_000_000_000_i64..260_000_000_000,
            nanos in -5_i32..2_000_000_000,
        ) {
            let value = Timestamp { seconds, nanos };
            let expected = timestamp(Some(&value))
                .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
            proptest::prop_assert_eq!(written(Some(&value)), expected);
        }
    }
}
