//! Headers Relais adds to the records it writes: the dead-letter copy's `relais-dlq-*` and a
//! replayed record's `relais-replay-*`.

pub const TRACEPARENT: &str = "traceparent";
pub const DLQ_REASON: &str = "relais-dlq-reason";
pub const DLQ_DETAIL: &str = "relais-dlq-detail";
pub const DLQ_OUTCOME: &str = "relais-dlq-outcome";
pub const DLQ_SOURCE_TOPIC: &str = "relais-dlq-source-topic";
pub const DLQ_SOURCE_PARTITION: &str = "relais-dlq-source-partition";
pub const DLQ_SOURCE_OFFSET: &str = "relais-dlq-source-offset";
pub const DLQ_WORKER: &str = "relais-dlq-worker";
/// The message id (the event's `id`, or the source position for unparseable input).
pub const DLQ_MESSAGE_ID: &str = "relais-dlq-message-id";
/// The upstream the message was routed to; empty for rejected input.
pub const DLQ_UPSTREAM: &str = "relais-dlq-upstream";
/// What the DLQ copy left out, comma-separated: `payload`, `headers`, `key`. Absent when
/// the copy is whole; a truncated copy is never replayed (the original is in the source
/// topic at the source partition and offset, for its retention).
pub const DLQ_TRUNCATED: &str = "relais-dlq-truncated";
/// Size of the original payload in bytes (on a truncated copy).
pub const DLQ_ORIGINAL_BYTES: &str = "relais-dlq-original-bytes";
/// SHA-256 of the original payload, lower-case hex (on a truncated copy).
pub const DLQ_ORIGINAL_SHA256: &str = "relais-dlq-original-sha256";
/// How many of the original headers were left out (on a copy whose headers were cut).
pub const DLQ_HEADERS_DROPPED: &str = "relais-dlq-headers-dropped";
/// On a replayed ingress record: the DLQ record it came from, `{topic}/{partition}/{offset}`.
pub const REPLAY_OF: &str = "relais-replay-of";
/// On a replayed ingress record: the replay run that moved it.
pub const REPLAY_JOB: &str = "relais-replay-job";
/// Every header the worker adds to a DLQ record (removed again on replay).
pub const DLQ_ALL: [&str; 13] = [
    DLQ_REASON,
    DLQ_DETAIL,
    DLQ_OUTCOME,
    DLQ_SOURCE_TOPIC,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_OFFSET,
    DLQ_WORKER,
    DLQ_MESSAGE_ID,
    DLQ_UPSTREAM,
    DLQ_TRUNCATED,
    DLQ_ORIGINAL_BYTES,
    DLQ_ORIGINAL_SHA256,
    DLQ_HEADERS_DROPPED,
];
