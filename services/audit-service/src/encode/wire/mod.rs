//! Audit records read in place from their protobuf bytes: the line is written from the Kafka
//! record itself, its strings borrowed rather than copied into an `AuditRecord` first.
//!
//! It accepts and refuses exactly what prost's `AuditRecord::decode` accepts and refuses (the
//! tests hold the two to it on arbitrary bytes), as the protobuf encoding says: fields in any
//! order; a field seen twice keeps its last value, or for a message merges the two; every
//! element of a repeated field kept; unknown fields and groups skipped; nesting at most 100
//! deep.

use std::fmt;

use relais_proto::Timestamp;
use relais_proto::v1::ProbeTimings;

mod fields;

use self::fields::Fields;
use super::view::{AttemptView, PositionView, RecordView, ResponseView, Text};

/// Why bytes are not an audit record: prost's words for the same failure, and the record's
/// field it was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    problem: &'static str,
    field: Option<&'static str>,
}

impl WireError {
    pub(super) const fn new(problem: &'static str) -> Self {
        Self {
            problem,
            field: None,
        }
    }

    /// The error, found in the record's field `tag` (a field it knows).
    fn in_field(self, tag: u32) -> Self {
        let field = usize::try_from(tag)
            .ok()
            .and_then(|tag| FIELD_NAMES.get(tag).copied());
        Self { field, ..self }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(
                f,
                "failed to decode Protobuf message: AuditRecord.{field}: {}",
                self.problem
            ),
            None => write!(f, "failed to decode Protobuf message: {}", self.problem),
        }
    }
}

impl std::error::Error for WireError {}

/// The record's field names by number, for errors.
const FIELD_NAMES: [&str; 18] = [
    "",
    "message_id",
    "trace_id",
    "span_id",
    "outcome",
    "reason_code",
    "reason_detail",
    "event_type",
    "source",
    "upstream",
    "occurred_at",
    "received_at",
    "decided_at",
    "worker_id",
    "position",
    "attempts",
    "circuit_state",
    "payload_bytes",
];

impl<'a> RecordView<'a> {
    /// Reads the record encoded in `bytes` into this view, emptied first. On an error the view
    /// holds part of the record and is to be read into again, not used.
    pub fn read(&mut self, bytes: &'a [u8]) -> Result<(), WireError> {
        self.clear();
        let mut fields = Fields::of_record(bytes);
        while let Some((tag, wire)) = fields.key()? {
            self.read_field(&mut fields, tag, wire)
                .map_err(|error| error.in_field(tag))?;
        }
        Ok(())
    }

    fn read_field(
        &mut self,
        fields: &mut Fields<'a>,
        tag: u32,
        wire: u32,
    ) -> Result<(), WireError> {
        match tag {
            1 => self.message_id = fields.string(wire)?,
            2 => self.trace_id = fields.string(wire)?,
            3 => self.span_id = fields.string(wire)?,
            4 => self.outcome = int32(fields.varint(wire)?),
            5 => self.reason_code = fields.string(wire)?,
            6 => self.reason_detail = fields.string(wire)?,
            7 => self.event_type = fields.string(wire)?,
            8 => self.source = fields.string(wire)?,
            9 => self.upstream = fields.string(wire)?,
            10 => read_timestamp(fields.message(wire)?, &mut self.occurred_at)?,
            11 => read_timestamp(fields.message(wire)?, &mut self.received_at)?,
            12 => read_timestamp(fields.message(wire)?, &mut self.decided_at)?,
            13 => self.worker_id = fields.string(wire)?,
            14 => read_position(fields.message(wire)?, &mut self.position)?,
            15 => {
                let mut attempt = AttemptView::default();
                read_attempt(fields.message(wire)?, &mut attempt)?;
                self.attempts.push(attempt);
            }
            16 => self.circuit_state = int32(fields.varint(wire)?),
            17 => self.payload_bytes = fields.varint(wire)?,
            _ => fields.skip(tag, wire)?,
        }
        Ok(())
    }
}

/// A field of a message seen again merges into what the earlier ones gave.
fn read_timestamp(mut fields: Fields<'_>, into: &mut Option<Timestamp>) -> Result<(), WireError> {
    let time = into.get_or_insert_default();
    while let Some((tag, wire)) = fields.key()? {
        match tag {
            1 => time.seconds = fields.varint(wire)? as i64,
            2 => time.nanos = int32(fields.varint(wire)?),
            _ => fields.skip(tag, wire)?,
        }
    }
    Ok(())
}

fn read_position<'a>(
    mut fields: Fields<'a>,
    into: &mut Option<PositionView<'a>>,
) -> Result<(), WireError> {
    let position = into.get_or_insert_default();
    while let Some((tag, wire)) = fields.key()? {
        match tag {
            1 => position.topic = fields.string(wire)?,
            2 => position.partition = int32(fields.varint(wire)?),
            3 => position.offset = fields.varint(wire)? as i64,
            _ => fields.skip(tag, wire)?,
        }
    }
    Ok(())
}

fn read_attempt<'a>(
    mut fields: Fields<'a>,
    attempt: &mut AttemptView<'a>,
) -> Result<(), WireError> {
    while let Some((tag, wire)) = fields.key()? {
        match tag {
            1 => attempt.number = fields.varint(wire)? as u32,
            2 => read_timestamp(fields.message(wire)?, &mut attempt.started_at)?,
            3 => attempt.status_code = fields.varint(wire)? as u32,
            4 => attempt.error_type = fields.string(wire)?,
            5 => attempt.timeout = int32(fields.varint(wire)?),
            6 => read_timings(fields.message(wire)?, &mut attempt.timings)?,
            7 => attempt.request_bytes = fields.varint(wire)?,
            8 => attempt.response_bytes = fields.varint(wire)?,
            9 => attempt.backoff_ms = fields.varint(wire)?,
            10 => read_response(fields.message(wire)?, &mut attempt.response)?,
            _ => fields.skip(tag, wire)?,
        }
    }
    Ok(())
}

fn read_timings(mut fields: Fields<'_>, into: &mut Option<ProbeTimings>) -> Result<(), WireError> {
    let timings = into.get_or_insert_default();
    while let Some((tag, wire)) = fields.key()? {
        let slot = match tag {
            1 => &mut timings.dns_us,
            2 => &mut timings.connect_us,
            3 => &mut timings.tls_us,
            4 => &mut timings.time_to_first_byte_us,
            5 => &mut timings.transfer_us,
            6 => &mut timings.total_us,
            _ => {
                fields.skip(tag, wire)?;
                continue;
            }
        };
        *slot = fields.varint(wire)?;
    }
    Ok(())
}

fn read_response<'a>(
    mut fields: Fields<'a>,
    into: &mut Option<ResponseView<'a>>,
) -> Result<(), WireError> {
    let response = into.get_or_insert_default();
    while let Some((tag, wire)) = fields.key()? {
        match tag {
            1 => response.headers.push(read_header(fields.message(wire)?)?),
            2 => response.body = fields.string(wire)?,
            3 => response.body_truncated = fields.varint(wire)? != 0,
            _ => fields.skip(tag, wire)?,
        }
    }
    Ok(())
}

fn read_header(mut fields: Fields<'_>) -> Result<(Text<'_>, Text<'_>), WireError> {
    let (mut name, mut value) = (Text::default(), Text::default());
    while let Some((tag, wire)) = fields.key()? {
        match tag {
            1 => name = fields.string(wire)?,
            2 => value = fields.string(wire)?,
            _ => fields.skip(tag, wire)?,
        }
    }
    Ok((name, value))
}

/// An `int32` (or enum) field: the varint's low 32 bits, as protobuf's encoding defines it.
fn int32(value: u64) -> i32 {
    value as i32
}

#[cfg(test)]
mod tests;
