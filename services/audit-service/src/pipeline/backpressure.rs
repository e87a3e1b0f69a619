//! When consumption pauses and resumes, and which open objects close early, as pure decisions
//! over what the partitions hold.
//!
//! Memory is bounded by the buffer limits: when the records or bytes held reach them, every
//! assigned partition is paused (the consumer keeps polling); below 80 % they resume. The gap
//! keeps a buffer hovering at its limit from pausing and resuming on every record. Objects stay
//! open until a rotation rule closes them, and with many partitions the open objects alone can
//! fill the buffer (more than 25 partitions × 20,000 records fill the default 500,000):
//! consumption would then pause with nothing to store until the idle rule fired. So when the
//! buffer is full, the largest open objects are closed and stored until those left open hold at
//! most half of it. That is as safe as the idle rule (see `object`).

use crate::config::BufferConfig;

/// What the buffer holds: open objects, items waiting to be stored, and records being encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub records: usize,
    /// NDJSON bytes, or payload bytes for quarantined and not yet encoded records.
    pub bytes: usize,
}

impl Load {
    pub fn is_full(self, limits: &BufferConfig) -> bool {
        self.records >= limits.max_records || self.bytes >= limits.max_bytes
    }

    /// Below 80 % of both limits.
    pub fn is_relieved(self, limits: &BufferConfig) -> bool {
        self.records * 5 < limits.max_records * 4 && self.bytes * 5 < limits.max_bytes * 4
    }
}

/// What to do with consumption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Running and not full: nothing to do.
    Run,
    Pause,
    /// Paused and still above the resume mark: pause partitions assigned since, too.
    StayPaused,
    Resume,
}

pub fn flow(load: Load, limits: &BufferConfig, paused: bool) -> Flow {
    match (paused, load.is_full(limits)) {
        (false, false) => Flow::Run,
        (false, true) => Flow::Pause,
        (true, _) if load.is_relieved(limits) => Flow::Resume,
        (true, _) => Flow::StayPaused,
    }
}

/// The size of one partition's open object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenObject {
    pub partition: i32,
    pub records: usize,
    pub bytes: usize,
}

/// The partitions whose open objects to close, largest first, until those left open hold at
/// most half of each limit.
pub fn objects_to_close(open: &[OpenObject], limits: &BufferConfig) -> Vec<i32> {
    let mut open: Vec<OpenObject> = open.iter().copied().filter(|o| o.records > 0).collect();
    let (mut records, mut bytes) = open
        .iter()
        .fold((0, 0), |(r, b), o| (r + o.records, b + o.bytes));
    open.sort_unstable_by_key(|o| std::cmp::Reverse((o.records, o.bytes, o.partition)));
    let mut close = Vec::new();
    for object in open {
        if records * 2 <= limits.max_records && bytes * 2 <= limits.max_bytes {
            break;
        }
        close.push(object.partition);
        records -= object.records;
        bytes -= object.bytes;
    }
    close
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BufferConfig = BufferConfig {
        max_records: 1000,
        max_bytes: 100_000,
    };

    fn load(records: usize, bytes: usize) -> Load {
        Load { records, bytes }
    }

    #[test]
    fn pauses_at_either_limit_and_resumes_below_eighty_percent_of_both() {
        assert_eq!(flow(load(999, 99_999), &LIMITS, false), Flow::Run);
        assert_eq!(flow(load(1000, 0), &LIMITS, false), Flow::Pause);
        assert_eq!(flow(load(0, 100_000), &LIMITS, false), Flow::Pause);
        // Between the marks a paused buffer stays paused: no flapping at the limit.
        assert_eq!(flow(load(999, 0), &LIMITS, true), Flow::StayPaused);
        assert_eq!(flow(load(800, 0), &LIMITS, true), Flow::StayPaused);
        assert_eq!(flow(load(799, 80_000), &LIMITS, true), Flow::StayPaused);
        assert_eq!(flow(load(799, 79_999), &LIMITS, true), Flow::Resume);
        assert_eq!(flow(load(5000, 0), &LIMITS, true), Flow::StayPaused);
    }

    fn open(partition: i32, records: usize, bytes: usize) -> OpenObject {
        OpenObject {
            partition,
            records,
            bytes,
        }
    }

    #[test]
    fn closes_the_largest_open_objects_until_half_the_buffer_is_left() {
        let objects = [
            open(0, 300, 3000),
            open(1, 100, 1000),
            open(2, 400, 4000),
            open(3, 0, 0),
            open(4, 200, 2000),
        ];
        // 1000 records open: closing 400 and 300 leaves 300 <= 500.
        assert_eq!(objects_to_close(&objects, &LIMITS), vec![2, 0]);
    }

    #[test]
    fn closes_nothing_when_the_open_objects_hold_half_or_less() {
        let objects = [open(0, 250, 10), open(1, 250, 10)];
        assert!(objects_to_close(&objects, &LIMITS).is_empty());
    }

    #[test]
    fn the_byte_limit_alone_can_close_objects() {
        let objects = [open(0, 10, 60_000), open(1, 10, 30_000), open(2, 20, 5_000)];
        // Largest by records, then bytes: 95,000 bytes open, closing 5,000 and 60,000 leaves 30,000.
        let close = objects_to_close(&objects, &LIMITS);
        assert_eq!(close, vec![2, 0]);
    }

    #[test]
    fn the_choice_is_the_same_whatever_the_order_given() {
        let mut objects = vec![open(5, 300, 1), open(1, 300, 1), open(9, 600, 1)];
        let first = objects_to_close(&objects, &LIMITS);
        objects.reverse();
        assert_eq!(objects_to_close(&objects, &LIMITS), first);
        assert_eq!(first, vec![9, 5]);
    }
}
