//! W3C Trace Context as text: the ids in lower-case hex and the `traceparent` header, written
//! without the formatting machinery, since the worker writes them for every message.

use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

/// The length of a version 00 `traceparent`: `00-{32 hex}-{16 hex}-{2 hex}`.
pub const TRACEPARENT_LEN: usize = 55;

/// Where the ids sit in a `traceparent`.
const TRACE_ID_HEX: std::ops::Range<usize> = 3..35;
const SPAN_ID_HEX: std::ops::Range<usize> = 36..52;

/// A version 00 `traceparent`, written in place: the worker writes one for every message and
/// every attempt, and a header value or a record field is then one copy of these bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Traceparent([u8; TRACEPARENT_LEN]);

impl Traceparent {
    /// `00-{trace}-{span}-{flags}`, where only the sampled flag is carried (the one flag
    /// version 00 defines).
    pub fn new(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> Self {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&trace_id.to_bytes(), &mut text[TRACE_ID_HEX]);
        write_hex(&span_id.to_bytes(), &mut text[SPAN_ID_HEX]);
        if flags.is_sampled() {
            text[TRACEPARENT_LEN - 1] = b'1';
        }
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits, letters and dashes are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The trace id as lower-case hex.
    pub fn trace_id(&self) -> &str {
        &self.as_str()[TRACE_ID_HEX]
    }

    /// The span id as lower-case hex.
    pub fn span_id(&self) -> &str {
        &self.as_str()[SPAN_ID_HEX]
    }
}

impl std::fmt::Debug for Traceparent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes `bytes` as lower-case hex into `out`, which holds exactly two digits per byte.
fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

    use super::Traceparent;

    #[test]
    fn ids_are_written_as_opentelemetry_writes_them() {
        for (trace_id, span_id) in [
            (
                TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("valid"),
                SpanId::from_hex("00f067aa0ba902b7").expect("valid"),
            ),
            (TraceId::from(1_u128), SpanId::from(u64::MAX)),
        ] {
            let written = Traceparent::new(trace_id, span_id, TraceFlags::SAMPLED);
            assert_eq!(written.trace_id(), trace_id.to_string());
            assert_eq!(written.span_id(), span_id.to_string());
            assert_eq!(
                written.as_str(),
                format!("00-{trace_id}-{span_id}-01"),
                "{written:?}"
            );
            assert_eq!(written.as_bytes(), written.as_str().as_bytes());
        }
    }

    #[test]
    fn traceparent_carries_only_the_sampled_flag() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("valid");
        let span_id = SpanId::from_hex("00f067aa0ba902b7").expect("valid");
        for (flags, written) in [
            (TraceFlags::SAMPLED, "01"),
            (TraceFlags::NOT_SAMPLED, "00"),
            (TraceFlags::new(0xff), "01"),
            (TraceFlags::new(0xfe), "00"),
        ] {
            assert_eq!(
                Traceparent::new(trace_id, span_id, flags).as_str(),
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{written}")
            );
        }
    }
}
