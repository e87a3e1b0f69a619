//! Storing: the loop starts each partition's next upload, takes note of the ones that finish,
//! and commits the offsets after what was stored.

use std::sync::Arc;

use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Loop;
use super::commits::CommitTarget;
use crate::index::IndexEntry;
use crate::object::Pending;

/// An upload that finished.
#[derive(Debug)]
pub(super) struct Uploaded {
    pub(super) partition: i32,
    pub(super) generation: u64,
    /// None when cancelled (revoked, shut down): not stored, not committed.
    pub(super) stored: Option<StoredSize>,
    pub(super) index: Option<IndexEntry>,
}

/// What one stored item held.
#[derive(Debug, Clone, Copy)]
pub(super) struct StoredSize {
    records: usize,
    compressed: usize,
    uncompressed: usize,
}

impl Loop {
    pub(super) fn start_uploads(&mut self) {
        for (&partition, state) in &mut self.partitions {
            if !state.ready_to_upload() {
                continue;
            }
            let generation = state.generation;
            // A revoked partition waits for `forget_revoked`; its records are read again by
            // its next assignment.
            let Some(permit) =
                self.pipeline
                    .assignment
                    .begin_upload(partition, generation, &self.uploads_cancel)
            else {
                continue;
            };
            // Shared, not copied: an object holds up to `objects.max_bytes` of lines.
            let Some(item) = state.start_upload() else {
                continue;
            };
            let store = Arc::clone(&self.pipeline.store);
            let done = self.done_sender.clone();
            let span = tracing::info_span!(
                "store object",
                otel.kind = "producer",
                relais.partition = partition,
                relais.start_offset = tracing::field::Empty,
                relais.records = item.records(),
            );
            if let Pending::Data(object) = &*item {
                span.record("relais.start_offset", object.start_offset);
                // The object's span points at the traces of the records in it.
                for link in &object.links {
                    span.add_link(link.clone());
                }
            }
            tokio::spawn(
                async move {
                    let written = store.write(Arc::clone(&item), &permit.cancel).await;
                    // The upload has stopped: a revoke waiting for it may go on.
                    drop(permit);
                    let (stored, index) = match written {
                        Ok(stored) => (
                            Some(StoredSize {
                                records: item.records(),
                                compressed: stored.compressed_bytes,
                                uncompressed: stored.uncompressed_bytes,
                            }),
                            stored.index,
                        ),
                        Err(error) => {
                            tracing::info!(%error, partition, "object not stored");
                            (None, None)
                        }
                    };
                    let _ = done
                        .send(Uploaded {
                            partition,
                            generation,
                            stored,
                            index,
                        })
                        .await;
                }
                .instrument(span),
            );
        }
    }

    /// Takes note of a finished upload; the partition's next item waits for the commit of this
    /// one (see `partition`).
    pub(super) fn finish_upload(&mut self, uploaded: Uploaded) {
        let Some(state) = self.partitions.get_mut(&uploaded.partition) else {
            return;
        };
        if state.generation != uploaded.generation {
            return;
        }
        let Some(end_offset) = state.stored(uploaded.stored.map(|size| size.records)) else {
            return;
        };
        if let Some(entry) = uploaded.index {
            self.pipeline.index.insert(entry);
        }
        if let Some(size) = uploaded.stored {
            let metrics = &self.pipeline.metrics;
            metrics.bytes_written.inc_by(size.compressed as u64);
            metrics
                .uncompressed_written
                .inc_by(size.uncompressed as u64);
        }
        // Offsets only after the object is stored: a crash before the commit re-reads it.
        self.commits.wait(CommitTarget {
            partition: uploaded.partition,
            generation: uploaded.generation,
            end_offset,
        });
    }

    pub(super) fn start_commit(&mut self) {
        let assignment = &self.pipeline.assignment;
        self.commits.start(
            &self.pipeline.consumer,
            &self.pipeline.config.kafka.audit_topic,
            &self.pipeline.commit_faults,
            |target| assignment.generation(target.partition) == Some(target.generation),
        );
    }

    /// Counts what a commit covered and lets its partitions store their next item; after a
    /// failure they wait for the next try.
    pub(super) fn finish_commit(&mut self, targets: &[CommitTarget], committed: bool) {
        let metrics = &self.pipeline.metrics;
        if committed {
            metrics.commits.inc();
        } else {
            metrics.commit_failures.inc();
        }
        self.commits.ended(targets, committed, &self.commit_backoff);
        for target in targets {
            let Some(state) = self.partitions.get_mut(&target.partition) else {
                continue;
            };
            if state.generation != target.generation {
                continue;
            }
            for stored in state.committed(target.end_offset, committed) {
                if stored.quarantined {
                    metrics.records_quarantined.inc();
                } else {
                    metrics.objects_written.inc();
                    metrics.records_written.inc_by(stored.records as u64);
                }
            }
        }
    }
}
