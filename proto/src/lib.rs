//! Rust types for the `relais.v1` protocols (see `proto/README.md`).
//!
//! Messages are plain `prost` structs; the `audit_query_*` and `worker_report_*` modules hold
//! the tonic client and server for the two gRPC services.

/// The `relais.v1` package: messages, enums and gRPC services.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("relais.v1");
}

/// The protobuf timestamp used by the generated messages.
pub use prost_types::Timestamp;

/// The value of the `relais-schema` Kafka header that names a record's message type.
pub mod schema {
    /// Records on `relais.audit`.
    pub const AUDIT_RECORD: &str = "relais.v1.AuditRecord";
    /// Records on `relais.events`.
    pub const PIPELINE_EVENT: &str = "relais.v1.PipelineEvent";
    /// Name of the header that carries one of the values above.
    pub const HEADER: &str = "relais-schema";
}
