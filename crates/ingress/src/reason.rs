//! Rejection reasons and their stable codes.

/// Why an ingress message was rejected. The [`code`](Self::code) of each variant never changes
/// once released: it appears in DLQ headers, audit records, metrics labels and replay filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The payload is larger than the configured limit (checked before parsing).
    TooLarge,
    /// The payload is empty.
    Empty,
    /// The payload is not valid JSON (including invalid UTF-8 and excessive nesting).
    MalformedJson,
    /// The payload is JSON but not an object.
    NotAnObject,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A required string field is empty after trimming.
    EmptyField,
    /// A string field is longer than its limit.
    FieldTooLong,
    /// The id contains control characters.
    InvalidId,
    /// `type` is not a lower-case dotted name.
    InvalidTypeName,
    /// `occurred_at` is not an RFC 3339 timestamp.
    BadTimestamp,
    /// `occurred_at` is too far in the future or the past.
    TimestampOutOfRange,
    /// `route` names no configured upstream.
    UnknownRoute,
    /// `schema_version` is present and not one this worker understands.
    UnsupportedSchemaVersion,
    /// A top-level field that schema version 1 does not define.
    UnknownField,
    /// `data` nests deeper than the limit.
    DataTooDeep,
}

impl RejectReason {
    /// Every reason, for metrics initialisation and documentation.
    pub const ALL: [Self; 16] = [
        Self::TooLarge,
        Self::Empty,
        Self::MalformedJson,
        Self::NotAnObject,
        Self::MissingField,
        Self::WrongType,
        Self::EmptyField,
        Self::FieldTooLong,
        Self::InvalidId,
        Self::InvalidTypeName,
        Self::BadTimestamp,
        Self::TimestampOutOfRange,
        Self::UnknownRoute,
        Self::UnsupportedSchemaVersion,
        Self::UnknownField,
        Self::DataTooDeep,
    ];

    /// The stable, machine-readable code (snake case).
    pub const fn code(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Empty => "empty",
            Self::MalformedJson => "malformed_json",
            Self::NotAnObject => "not_an_object",
            Self::MissingField => "missing_field",
            Self::WrongType => "wrong_type",
            Self::EmptyField => "empty_field",
            Self::FieldTooLong => "field_too_long",
            Self::InvalidId => "invalid_id",
            Self::InvalidTypeName => "invalid_type_name",
            Self::BadTimestamp => "bad_timestamp",
            Self::TimestampOutOfRange => "timestamp_out_of_range",
            Self::UnknownRoute => "unknown_route",
            Self::UnsupportedSchemaVersion => "unsupported_schema_version",
            Self::UnknownField => "unknown_field",
            Self::DataTooDeep => "data_too_deep",
        }
    }

    /// Parses a code back (for replay filters).
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.code() == code)
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut codes: Vec<&str> = RejectReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), RejectReason::ALL.len());
        for reason in RejectReason::ALL {
            assert_eq!(RejectReason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(RejectReason::from_code("nonsense"), None);
    }
}
