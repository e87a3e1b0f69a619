//! The delivery rate seen at each in-flight limit, to tell where a larger limit stops
//! delivering more.
//!
//! A round trip that grows with the limit (the upstream, or the worker's own host, queues what
//! it cannot serve at once) never looks like a rise against a long-run mean that follows it.
//! The rate does: past the point where the upstream is busy, more in flight delivers no more
//! per second. Windows that reached the limit record their rate under the limit they ran at,
//! in buckets about 10 % wide; the knee is the smallest recent limit whose rate came within
//! 90 % of the rate of the recent limits above it, taken together.

/// Buckets; the last holds every limit beyond the one before (above about 180,000).
const BUCKETS: usize = 128;
/// Limits within this factor of each other share a bucket.
const BUCKET_WIDTH: f64 = 1.1;
/// What a bucket's earlier windows still weigh when a new one is recorded.
const KEPT: f64 = 0.8;
/// A bucket not recorded for this many windows says nothing of the upstream now.
const FRESH_WINDOWS: u64 = 200;
/// A limit whose rate came within this share of the larger ones' delivers as much as they do.
const AS_MUCH: f64 = 0.9;
/// Buckets needed before a knee is named: a curve, not a point.
const MIN_BUCKETS: usize = 3;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// The limit last recorded in this bucket.
    limit: usize,
    /// Deliveries and seconds at it, earlier windows weighing less.
    delivered: f64,
    seconds: f64,
    /// The window it was last recorded in.
    window: u64,
}

#[derive(Debug)]
pub(super) struct RateByLimit {
    buckets: Vec<Option<Bucket>>,
}

impl RateByLimit {
    pub(super) fn new() -> Self {
        Self {
            buckets: vec![None; BUCKETS],
        }
    }

    /// Forgets every rate recorded.
    pub(super) fn clear(&mut self) {
        self.buckets.fill(None);
    }

    /// Records that window number `window`, running at `limit`, delivered `delivered` in
    /// `seconds`.
    pub(super) fn record(&mut self, window: u64, limit: usize, delivered: u32, seconds: f64) {
        let slot = &mut self.buckets[bucket_of(limit)];
        let (earlier_delivered, earlier_seconds) = match slot {
            Some(bucket) if is_fresh(bucket, window) => {
                (bucket.delivered * KEPT, bucket.seconds * KEPT)
            }
            _ => (0.0, 0.0),
        };
        *slot = Some(Bucket {
            limit,
            delivered: earlier_delivered + f64::from(delivered),
            seconds: earlier_seconds + seconds,
            window,
        });
    }

    /// The smallest limit recorded in the last windows (as of window number `window`) that
    /// delivered about as much as the limits above it, taken together; `None` while too few
    /// limits were seen.
    ///
    /// Against the limits above taken together, not against the best one of them: on a busy
    /// host each bucket's rate scatters, the best of several is the luckiest, and a knee
    /// measured against luck would only ever move up.
    pub(super) fn knee(&self, window: u64) -> Option<usize> {
        let fresh: Vec<&Bucket> = self
            .buckets
            .iter()
            .flatten()
            .filter(|bucket| is_fresh(bucket, window))
            .collect();
        if fresh.len() < MIN_BUCKETS {
            return None;
        }
        let (mut delivered_above, mut seconds_above) = (0.0, 0.0);
        let mut knee = None;
        for bucket in fresh.iter().rev() {
            let above = delivered_above / seconds_above;
            if seconds_above == 0.0 || bucket.rate() >= above * AS_MUCH {
                knee = Some(bucket.limit);
            }
            delivered_above += bucket.delivered;
            seconds_above += bucket.seconds;
        }
        knee
    }
}

impl Bucket {
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.delivered / self.seconds
        } else {
            0.0
        }
    }
}

fn is_fresh(bucket: &Bucket, window: u64) -> bool {
    window.saturating_sub(bucket.window) < FRESH_WINDOWS
}

fn bucket_of(limit: usize) -> usize {
    let index = (limit.max(1) as f64).ln() / BUCKET_WIDTH.ln();
    (index as usize).min(BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records a tenth of a second at `rate`.
    fn record(rates: &mut RateByLimit, window: u64, limit: usize, rate: f64) {
        rates.record(window, limit, (rate / 10.0) as u32, 0.1);
    }

    #[test]
    fn buckets_keep_small_limits_apart_and_group_large_ones_by_a_tenth() {
        let buckets: Vec<usize> = (1..=12).map(bucket_of).collect();
        let mut distinct = buckets.clone();
        distinct.dedup();
        assert_eq!(distinct, buckets, "every small limit its own bucket");
        assert_eq!(bucket_of(500), bucket_of(520));
        assert_ne!(bucket_of(500), bucket_of(560));
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(usize::MAX), BUCKETS - 1);
    }

    #[test]
    fn the_knee_is_where_the_rate_stops_rising() {
        let mut rates = RateByLimit::new();
        for (window, limit) in [8, 12, 18, 27, 40, 60, 90].into_iter().enumerate() {
            // Rises with the limit up to 40, then 20,000 per second whatever the limit.
            let rate = (limit as f64 * 500.0).min(20_000.0);
            record(&mut rates, window as u64, limit, rate);
        }
        assert_eq!(rates.knee(7), Some(40));
    }

    #[test]
    fn a_rate_that_keeps_rising_puts_the_knee_at_the_top() {
        let mut rates = RateByLimit::new();
        for (window, limit) in [100, 150, 225, 337, 505].into_iter().enumerate() {
            record(&mut rates, window as u64, limit, limit as f64 * 10.0);
        }
        assert_eq!(rates.knee(5), Some(505));
    }

    #[test]
    fn no_knee_from_too_few_limits_or_from_old_ones() {
        let mut rates = RateByLimit::new();
        record(&mut rates, 0, 10, 1_000.0);
        record(&mut rates, 1, 20, 1_000.0);
        assert_eq!(rates.knee(2), None, "two limits are not a curve");
        record(&mut rates, 2, 40, 1_000.0);
        assert_eq!(rates.knee(3), Some(10));
        assert_eq!(rates.knee(2 + FRESH_WINDOWS), None, "forgotten");
    }

    #[test]
    fn a_bucket_follows_its_limit_s_new_rate_and_an_old_one_is_replaced() {
        let mut rates = RateByLimit::new();
        for window in 0..3 {
            record(&mut rates, window, 10, 1_000.0);
            record(&mut rates, window, 20, 2_000.0);
            record(&mut rates, window, 40, 2_000.0);
        }
        assert_eq!(rates.knee(3), Some(20));
        // The upstream now delivers twice as much at 40: 20 falls short after a few windows.
        for window in 3..6 {
            record(&mut rates, window, 40, 4_000.0);
        }
        assert_eq!(rates.knee(6), Some(40));
        // An old bucket's rate does not weigh on a new recording of it.
        record(&mut rates, 500, 10, 8_000.0);
        record(&mut rates, 500, 20, 1_000.0);
        record(&mut rates, 500, 40, 1_000.0);
        assert_eq!(rates.knee(501), Some(10));
    }
}
