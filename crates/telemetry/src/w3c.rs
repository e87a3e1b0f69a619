//! W3C Trace Context as text: the ids in lower-case hex and the `traceparent` header, written
//! without the formatting machinery, since the worker writes them for every message.

use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

/// The only `traceparent` version there is.
const VERSION: &str = "00";

/// Lower-case hex, as W3C writes trace and span ids.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// `traceparent` from ids already written as hex: `00-{trace}-{span}-{flags}`, where only the
/// sampled flag is carried (the one flag version 00 defines).
pub fn traceparent_of_hex(trace_id: &str, span_id: &str, sampled: bool) -> String {
    let mut header = String::with_capacity(55);
    for part in [
        VERSION,
        "-",
        trace_id,
        "-",
        span_id,
        if sampled { "-01" } else { "-00" },
    ] {
        header.push_str(part);
    }
    header
}

/// `traceparent` for a span.
pub fn traceparent(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> String {
    traceparent_of_hex(
        &hex(&trace_id.to_bytes()),
        &hex(&span_id.to_bytes()),
        flags.is_sampled(),
    )
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

    use super::{hex, traceparent};

    #[test]
    fn ids_are_written_as_opentelemetry_writes_them() {
        let trace_id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("valid");
        let span_id = SpanId::from_hex("00f067aa0ba902b7").expect("valid");
        assert_eq!(hex(&trace_id.to_bytes()), trace_id.to_string());
        assert_eq!(hex(&span_id.to_bytes()), span_id.to_string());
        assert_eq!(hex(&1_u128.to_be_bytes()), format!("{:032x}", 1_u128));
        assert_eq!(hex(&[]), "");
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
                traceparent(trace_id, span_id, flags),
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{written}")
            );
        }
    }
}
