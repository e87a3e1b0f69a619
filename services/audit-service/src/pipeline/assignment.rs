//! Which partitions this instance owns, and the fence that keeps a revoked partition's upload
//! from landing after the partition has moved.
//!
//! The rebalance callbacks give each assigned partition a new generation; every record and
//! upload carries the generation it was taken under, and work of an older generation is
//! dropped. That alone does not stop an upload already running: during an RGW outage it keeps
//! retrying, and when RGW returns it would replace the object the new owner has stored and
//! committed under the same key (see `object`). So the revoke callback cancels the revoked
//! partitions' uploads and waits until they have stopped before it returns; the partition is
//! handed to its next owner (another instance, or this one under a new generation) only after
//! that. An upload can start only while its generation is the partition's current one, checked
//! under the same lock, so none starts behind the revoke either.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use relais_kafka::resets::ResetWatch;
use relais_telemetry::shutdown::CancellationToken;

pub type AuditConsumer = StreamConsumer<AuditContext>;

/// Assignment generations and running uploads, shared by the pipeline and the callbacks.
#[derive(Debug)]
pub struct Assignment {
    state: Mutex<State>,
    upload_stopped: Condvar,
    /// How long a revoke waits for an upload to stop.
    stop_timeout: Duration,
}

#[derive(Debug, Default)]
struct State {
    generations: HashMap<i32, u64>,
    last_generation: u64,
    /// The cancellation of the one upload running per partition.
    uploads: HashMap<i32, CancellationToken>,
}

impl Assignment {
    pub fn new(stop_timeout: Duration) -> Self {
        Self {
            state: Mutex::default(),
            upload_stopped: Condvar::new(),
            stop_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn generation(&self, partition: i32) -> Option<u64> {
        self.lock().generations.get(&partition).copied()
    }

    fn assign(&self, partition: i32) -> u64 {
        let mut state = self.lock();
        state.last_generation += 1;
        let generation = state.last_generation;
        state.generations.insert(partition, generation);
        generation
    }

    /// Forgets the partitions, cancels their uploads and waits until those have stopped (at
    /// most the stop timeout); returns the partitions whose upload had not stopped by then.
    pub fn revoke(&self, partitions: &[i32]) -> Vec<i32> {
        let mut state = self.lock();
        for partition in partitions {
            state.generations.remove(partition);
            if let Some(upload) = state.uploads.get(partition) {
                upload.cancel();
            }
        }
        let deadline = Instant::now() + self.stop_timeout;
        loop {
            let running: Vec<i32> = partitions
                .iter()
                .copied()
                .filter(|partition| state.uploads.contains_key(partition))
                .collect();
            let left = deadline.saturating_duration_since(Instant::now());
            if running.is_empty() || left.is_zero() {
                return running;
            }
            state = self
                .upload_stopped
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Lets an upload of `partition` start if `generation` is still its assignment; the
    /// permit carries the upload's cancellation (a child of `parent`) and ends the upload's
    /// registration when dropped.
    pub fn begin_upload(
        self: &Arc<Self>,
        partition: i32,
        generation: u64,
        parent: &CancellationToken,
    ) -> Option<UploadPermit> {
        let mut state = self.lock();
        if state.generations.get(&partition) != Some(&generation)
            || state.uploads.contains_key(&partition)
        {
            return None;
        }
        let cancel = parent.child_token();
        state.uploads.insert(partition, cancel.clone());
        Some(UploadPermit {
            assignment: Arc::clone(self),
            partition,
            cancel,
        })
    }

    fn end_upload(&self, partition: i32) {
        self.lock().uploads.remove(&partition);
        self.upload_stopped.notify_all();
    }
}

/// The right to store one item of a partition; dropping it tells a waiting revoke that the
/// upload has stopped.
#[derive(Debug)]
pub struct UploadPermit {
    assignment: Arc<Assignment>,
    partition: i32,
    pub cancel: CancellationToken,
}

impl Drop for UploadPermit {
    fn drop(&mut self) {
        self.assignment.end_upload(self.partition);
    }
}

#[derive(Debug)]
pub struct AuditContext {
    pub assignment: Arc<Assignment>,
    /// Picks the offset resets out of librdkafka's log.
    pub resets: ResetWatch,
}

impl ClientContext for AuditContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.resets.log(level, fac, log_message);
    }
}

impl ConsumerContext for AuditContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
        // The callback runs inside the pipeline task's poll; the uploads it waits for run on
        // the other workers. `block_in_place` hands this worker's queued tasks to another
        // thread meanwhile (an upload woken by the cancel would otherwise wait behind us).
        let still_running = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor())
        {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.assignment.revoke(&partitions))
            }
            _ => self.assignment.revoke(&partitions),
        };
        for partition in &partitions {
            tracing::info!(partition, "partition revoked");
        }
        if !still_running.is_empty() {
            tracing::error!(
                partitions = ?still_running,
                "a revoked partition's upload did not stop in time; it may still replace an object its next owner stores"
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            for element in partitions.elements() {
                self.assignment.assign(element.partition());
                tracing::info!(partition = element.partition(), "partition assigned");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_starts_only_under_the_current_generation() {
        let assignment = Arc::new(Assignment::new(Duration::from_secs(1)));
        let parent = CancellationToken::new();
        let first = assignment.assign(3);
        let permit = assignment.begin_upload(3, first, &parent);
        assert!(permit.is_some());
        assert!(
            assignment.begin_upload(3, first, &parent).is_none(),
            "one upload per partition"
        );
        drop(permit);
        let second = assignment.assign(3);
        assert!(assignment.begin_upload(3, first, &parent).is_none());
        assert!(assignment.begin_upload(3, second, &parent).is_some());
        assert!(assignment.begin_upload(4, second, &parent).is_none());
    }

    #[test]
    fn a_revoke_cancels_the_upload_and_waits_until_it_has_stopped() {
        let assignment = Arc::new(Assignment::new(Duration::from_secs(10)));
        let generation = assignment.assign(1);
        let permit = assignment
            .begin_upload(1, generation, &CancellationToken::new())
            .unwrap_or_else(|| unreachable!("assigned"));
        let cancel = permit.cancel.clone();
        let uploader = std::thread::spawn(move || {
            // The upload notices its cancellation a little later, then stops.
            while !permit.cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(100));
            // Taken before the permit goes: the revoke can return only after that.
            let stopping = Instant::now();
            drop(permit);
            stopping
        });
        let still_running = assignment.revoke(&[1]);
        let returned = Instant::now();
        assert!(still_running.is_empty());
        assert!(cancel.is_cancelled());
        let stopped = uploader.join().unwrap_or_else(|_| unreachable!());
        assert!(
            stopped <= returned,
            "the revoke returned before the upload stopped"
        );
        assert_eq!(assignment.generation(1), None);
        assert!(
            assignment
                .begin_upload(1, generation, &CancellationToken::new())
                .is_none()
        );
    }

    #[test]
    fn a_revoke_gives_up_waiting_after_the_stop_timeout() {
        let assignment = Arc::new(Assignment::new(Duration::from_millis(50)));
        let generation = assignment.assign(2);
        let _stuck = assignment.begin_upload(2, generation, &CancellationToken::new());
        assert_eq!(assignment.revoke(&[2, 5]), vec![2]);
    }
}
