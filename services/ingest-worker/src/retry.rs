//! Retry tiers: a message whose next try is minutes or hours away leaves its ingress partition
//! for a retry topic, in the same transaction as the offset it frees, and comes back when due.
//!
//! Each upstream has a schedule of tiers (`retry_tiers = ["5s", "5m", …]`). Tier `n` of a
//! schedule is a delay; every distinct delay has one topic (`{topic_prefix}.{delay}`), with the
//! ingress topic's partitions, written to the partition the message was read from. All records
//! of a topic wait the same delay, so each partition is ordered by due time and its head is the
//! next one due. What a tier record is travels in `relais-retry-*` headers beside the original
//! bytes and headers ([`RetryState`]).
//!
//! This module holds the pure parts: the topic table, the header codec and the due-time rules.
//! Reading the tiers is in [`crate::tiers`], key order across tiers in [`crate::parked`].

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::tracker::{INGRESS, TopicIndex};

/// The delays of the default schedule, after the delivery platforms' (5 s, 5 min, 30 min, 2 h,
/// 5 h, 10 h, 10 h): about 28 hours in all before a message is dead-lettered.
pub const DEFAULT_TIERS: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Most tiers in one schedule.
pub const MAX_TIERS: usize = 16;

/// Shortest and longest delay of a tier.
pub const MIN_TIER_DELAY: Duration = Duration::from_secs(1);
pub const MAX_TIER_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// A record's headers as owned pairs, the form [`RetryState::from_headers`] reads (a header
/// without a value is empty).
pub fn owned_headers(message: &impl rdkafka::Message) -> Vec<(String, Vec<u8>)> {
    use rdkafka::message::Headers as _;
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub mod headers {
    /// Index of the tier in the upstream's schedule (0 is the first tier).
    pub const TIER: &str = "relais-retry-tier";
    /// When the record is due, in milliseconds since the Unix epoch.
    pub const DUE: &str = "relais-retry-due";
    pub const UPSTREAM: &str = "relais-retry-upstream";
    /// Where the message was first read: its one outcome is recorded against this position.
    pub const ORIGIN_TOPIC: &str = "relais-retry-origin-topic";
    pub const ORIGIN_PARTITION: &str = "relais-retry-origin-partition";
    pub const ORIGIN_OFFSET: &str = "relais-retry-origin-offset";
    /// When a worker first read the message (milliseconds since the Unix epoch).
    pub const FIRST_SEEN: &str = "relais-retry-first-seen";
    /// The ingress record's own timestamp, if it had one (milliseconds since the Unix epoch).
    pub const INGRESS_TIME: &str = "relais-retry-ingress-time";
    /// Why it moved the last time (a reason code).
    pub const REASON: &str = "relais-retry-reason";

    pub const ALL: [&str; 9] = [
        TIER,
        DUE,
        UPSTREAM,
        ORIGIN_TOPIC,
        ORIGIN_PARTITION,
        ORIGIN_OFFSET,
        FIRST_SEEN,
        INGRESS_TIME,
        REASON,
    ];
}

/// The topics the worker reads: the ingress topic, then one per distinct tier delay, ascending.
#[derive(Debug, Clone)]
pub struct TierTopics {
    ingress: String,
    /// (delay, topic), ascending by delay; [`TopicIndex`] `n` is entry `n - 1`.
    tiers: Vec<(Duration, String)>,
}

impl TierTopics {
    /// The topics for every delay of `schedules`, named `{prefix}.{delay}`.
    pub fn new<'a>(
        ingress: &str,
        prefix: &str,
        schedules: impl IntoIterator<Item = &'a [Duration]>,
    ) -> Self {
        let delays: BTreeSet<Duration> = schedules.into_iter().flatten().copied().collect();
        Self {
            ingress: ingress.to_owned(),
            tiers: delays
                .into_iter()
                .map(|delay| (delay, format!("{prefix}.{}", delay_name(delay))))
                .collect(),
        }
    }

    /// True when no upstream has tiers: the worker reads the ingress topic only.
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// The retry topics, ascending by delay, with their indexes.
    pub fn tiers(&self) -> impl Iterator<Item = (TopicIndex, &str, Duration)> {
        self.tiers
            .iter()
            .enumerate()
            .map(|(index, (delay, topic))| (index as TopicIndex + 1, topic.as_str(), *delay))
    }

    pub fn name(&self, index: TopicIndex) -> Option<&str> {
        match index {
            INGRESS => Some(&self.ingress),
            _ => self
                .tiers
                .get(usize::from(index) - 1)
                .map(|(_, topic)| topic.as_str()),
        }
    }

    pub fn index_of(&self, topic: &str) -> Option<TopicIndex> {
        if topic == self.ingress {
            return Some(INGRESS);
        }
        self.tiers
            .iter()
            .position(|(_, name)| name == topic)
            .map(|position| position as TopicIndex + 1)
    }

    /// The delay of a retry topic.
    pub fn delay(&self, index: TopicIndex) -> Option<Duration> {
        (index != INGRESS)
            .then(|| {
                self.tiers
                    .get(usize::from(index) - 1)
                    .map(|(delay, _)| *delay)
            })
            .flatten()
    }

    /// The topic of a delay.
    pub fn of_delay(&self, delay: Duration) -> Option<TopicIndex> {
        self.tiers
            .iter()
            .position(|(tier_delay, _)| *tier_delay == delay)
            .map(|position| position as TopicIndex + 1)
    }
}

/// A delay as a topic name part: the largest unit that divides it exactly (`5s`, `30m`, `10h`,
/// `1d`, `1500ms`), never with spaces or dots.
pub fn delay_name(delay: Duration) -> String {
    let millis = delay.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis >= size && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// Checks one upstream's schedule.
pub fn validate_schedule(tiers: &[Duration]) -> Result<(), String> {
    if tiers.len() > MAX_TIERS {
        return Err(format!("at most {MAX_TIERS} retry tiers"));
    }
    if let Some(delay) = tiers
        .iter()
        .find(|delay| **delay < MIN_TIER_DELAY || **delay > MAX_TIER_DELAY)
    {
        return Err(format!(
            "retry tier {delay:?} is outside {MIN_TIER_DELAY:?}..={MAX_TIER_DELAY:?}"
        ));
    }
    if tiers.windows(2).any(|pair| pair[1] < pair[0]) {
        return Err("retry tiers must not decrease".into());
    }
    Ok(())
}

/// What a tier record says about its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryState {
    /// Index in the upstream's schedule.
    pub tier: usize,
    pub due: SystemTime,
    pub upstream: String,
    pub origin_topic: String,
    pub origin_partition: i32,
    pub origin_offset: i64,
    pub first_seen: SystemTime,
    pub ingress_time: Option<SystemTime>,
    pub reason: String,
}

impl RetryState {
    /// The `relais-retry-*` headers.
    pub fn to_headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![
            (headers::TIER, self.tier.to_string()),
            (headers::DUE, unix_millis(self.due).to_string()),
            (headers::UPSTREAM, self.upstream.clone()),
            (headers::ORIGIN_TOPIC, self.origin_topic.clone()),
            (headers::ORIGIN_PARTITION, self.origin_partition.to_string()),
            (headers::ORIGIN_OFFSET, self.origin_offset.to_string()),
            (
                headers::FIRST_SEEN,
                unix_millis(self.first_seen).to_string(),
            ),
            (headers::REASON, self.reason.clone()),
        ];
        if let Some(time) = self.ingress_time {
            out.push((headers::INGRESS_TIME, unix_millis(time).to_string()));
        }
        out.into_iter()
            .map(|(name, value)| (name.to_owned(), value.into_bytes()))
            .collect()
    }

    /// Reads the `relais-retry-*` headers; the error names the first one missing or unreadable.
    pub fn from_headers(record_headers: &[(String, Vec<u8>)]) -> Result<Self, String> {
        let text = |name: &str| -> Result<&str, String> {
            let value = record_headers
                .iter()
                .rev()
                .find(|(header, _)| header == name)
                .map(|(_, value)| value)
                .ok_or_else(|| format!("header {name} is missing"))?;
            std::str::from_utf8(value).map_err(|_| format!("header {name} is not UTF-8"))
        };
        fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
            value
                .parse()
                .map_err(|_| format!("header {name} is not a number: {value:?}"))
        }
        let time = |name: &str| -> Result<SystemTime, String> {
            let millis: u64 = number(name, text(name)?)?;
            SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_millis(millis))
                .ok_or_else(|| format!("header {name} is out of range"))
        };
        let upstream = text(headers::UPSTREAM)?.to_owned();
        if upstream.is_empty() {
            return Err(format!("header {} is empty", headers::UPSTREAM));
        }
        Ok(Self {
            tier: number(headers::TIER, text(headers::TIER)?)?,
            due: time(headers::DUE)?,
            upstream,
            origin_topic: text(headers::ORIGIN_TOPIC)?.to_owned(),
            origin_partition: number(headers::ORIGIN_PARTITION, text(headers::ORIGIN_PARTITION)?)?,
            origin_offset: number(headers::ORIGIN_OFFSET, text(headers::ORIGIN_OFFSET)?)?,
            first_seen: time(headers::FIRST_SEEN)?,
            ingress_time: match text(headers::INGRESS_TIME) {
                Ok(_) => Some(time(headers::INGRESS_TIME)?),
                Err(_) => None,
            },
            reason: text(headers::REASON).unwrap_or_default().to_owned(),
        })
    }
}

/// Headers of a record without the `relais-retry-*` ones: the message as it was sent.
pub fn original_headers(record_headers: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    record_headers
        .iter()
        .filter(|(name, _)| !headers::ALL.contains(&name.as_str()))
        .cloned()
        .collect()
}

/// When a tier record may go: its due time, but never later than its delay after it was written
/// (a due time from a skewed clock or a forged header must not park a message for years).
/// The flag tells whether the due time was cut.
pub fn effective_due(
    due: SystemTime,
    written: Option<SystemTime>,
    delay: Duration,
) -> (SystemTime, bool) {
    match written.and_then(|written| written.checked_add(delay)) {
        Some(latest) if due > latest => (latest, true),
        _ => (due, false),
    }
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn delays_name_their_topics_in_the_largest_exact_unit() {
        assert_eq!(delay_name(secs(5)), "5s");
        assert_eq!(delay_name(secs(300)), "5m");
        assert_eq!(delay_name(secs(90)), "90s");
        assert_eq!(delay_name(secs(36_000)), "10h");
        assert_eq!(delay_name(secs(86_400)), "1d");
        assert_eq!(delay_name(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn one_topic_per_distinct_delay_in_ascending_order() {
        let orders = DEFAULT_TIERS;
        let billing = [secs(1), secs(5)];
        let topics = TierTopics::new(
            "relais.ingress",
            "relais.retry",
            [&orders[..], &billing[..]],
        );
        let names: Vec<&str> = topics.tiers().map(|(_, name, _)| name).collect();
        assert_eq!(
            names,
            [
                "relais.retry.1s",
                "relais.retry.5s",
                "relais.retry.5m",
                "relais.retry.30m",
                "relais.retry.2h",
                "relais.retry.5h",
                "relais.retry.10h"
            ]
        );
        assert_eq!(topics.index_of("relais.ingress"), Some(INGRESS));
        assert_eq!(topics.of_delay(secs(5)), Some(2));
        assert_eq!(topics.name(2), Some("relais.retry.5s"));
        assert_eq!(topics.delay(2), Some(secs(5)));
        assert_eq!(topics.delay(INGRESS), None);
        assert_eq!(topics.index_of("elsewhere"), None);
        assert!(TierTopics::new("i", "r", [&[][..]]).is_empty());
    }

    #[test]
    fn schedules_are_checked() {
        assert!(
            validate_schedule(&DEFAULT_TIERS).is_ok(),
            "equal delays may repeat"
        );
        assert!(validate_schedule(&[]).is_ok(), "no tiers: wait in memory");
        assert!(validate_schedule(&[secs(60), secs(5)]).is_err());
        assert!(validate_schedule(&[Duration::from_millis(10)]).is_err());
        assert!(validate_schedule(&[secs(30 * 86_400)]).is_err());
        assert!(validate_schedule(&[secs(5); 17]).is_err());
    }

    #[test]
    fn headers_round_trip_and_name_what_is_wrong() {
        let at = |millis| SystemTime::UNIX_EPOCH + Duration::from_millis(millis);
        let state = RetryState {
            tier: 2,
            due: at(1_700_000_005_000),
            upstream: "billing".into(),
            origin_topic: "relais.ingress".into(),
            origin_partition: 4,
            origin_offset: 9_001,
            first_seen: at(1_700_000_000_000),
            ingress_time: Some(at(1_699_999_999_000)),
            reason: "circuit_open".into(),
        };
        let mut record = vec![("traceparent".to_owned(), b"00-x".to_vec())];
        record.extend(state.to_headers());
        assert_eq!(RetryState::from_headers(&record), Ok(state.clone()));
        assert_eq!(
            original_headers(&record),
            [("traceparent".to_owned(), b"00-x".to_vec())]
        );

        let without_due: Vec<_> = record
            .iter()
            .filter(|(name, _)| name != headers::DUE)
            .cloned()
            .collect();
        let error = RetryState::from_headers(&without_due).unwrap_err();
        assert!(error.contains(headers::DUE), "{error}");
        let mut bad_tier = record.clone();
        bad_tier.push((headers::TIER.into(), b"two".to_vec()));
        let error = RetryState::from_headers(&bad_tier).unwrap_err();
        assert!(error.contains("not a number"), "{error}");
        assert!(RetryState::from_headers(&[]).is_err());
    }

    #[test]
    fn a_due_time_beyond_the_delay_is_cut_to_it() {
        let written = SystemTime::UNIX_EPOCH + secs(1_000);
        let (due, cut) = effective_due(written + secs(5), Some(written), secs(5));
        assert_eq!((due, cut), (written + secs(5), false));
        let (due, cut) = effective_due(written + secs(86_400 * 365), Some(written), secs(5));
        assert_eq!((due, cut), (written + secs(5), true));
        let (due, cut) = effective_due(written + secs(50), None, secs(5));
        assert_eq!(
            (due, cut),
            (written + secs(50), false),
            "no timestamp: kept"
        );
    }
}
