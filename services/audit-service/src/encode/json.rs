//! The few JSON shapes a stored line is made of, appended straight to its bytes.
//!
//! Field names are constants of this crate in plain ASCII, so they are copied as they are
//! rather than escaped once per field of every line. Values are escaped exactly as
//! `serde_json` escapes them, so the bytes are those a serde serializer would write.

use relais_proto::Timestamp;

use super::time::Rfc3339;

/// One JSON object being written; [`JsonObject::end`] closes it.
pub(crate) struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> JsonObject<'a> {
    #[inline]
    pub(crate) fn begin(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    #[inline(always)]
    pub(crate) fn str(&mut self, name: &'static str, value: &str) {
        write_str(self.name(name), value);
    }

    #[inline(always)]
    pub(crate) fn raw(&mut self, name: &'static str, value: &'static str) {
        write_plain_str(self.name(name), value.as_bytes());
    }

    #[inline(always)]
    pub(crate) fn int(&mut self, name: &'static str, value: impl Into<i128>) {
        write_int(self.name(name), value.into());
    }

    #[inline(always)]
    pub(crate) fn bool(&mut self, name: &'static str, value: bool) {
        let literal: &[u8] = if value { b"true" } else { b"false" };
        self.name(name).extend_from_slice(literal);
    }

    /// RFC 3339 in UTC with microseconds, or `null` when absent.
    #[inline(always)]
    pub(crate) fn time(&mut self, name: &'static str, value: Option<&Timestamp>) {
        let out = self.name(name);
        match Rfc3339::of(value) {
            Some(text) => write_plain_str(out, text.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
    }

    /// A nested object under `name`, written by `fill`.
    pub(crate) fn object(&mut self, name: &'static str, fill: impl FnOnce(&mut JsonObject<'_>)) {
        let mut nested = JsonObject::begin(self.name(name));
        fill(&mut nested);
        nested.end();
    }

    /// An object whose names are data (response headers): escaped like any value.
    pub(crate) fn map<'v>(
        &mut self,
        name: &'static str,
        entries: impl IntoIterator<Item = (&'v str, &'v str)>,
    ) {
        let out = self.name(name);
        out.push(b'{');
        for (index, (key, value)) in entries.into_iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_str(out, key);
            out.push(b':');
            write_str(out, value);
        }
        out.push(b'}');
    }

    /// An array of objects under `name`, one per item, each written by `fill`.
    pub(crate) fn objects<T>(
        &mut self,
        name: &'static str,
        items: &[T],
        mut fill: impl FnMut(&mut JsonObject<'_>, &T),
    ) {
        let out = self.name(name);
        out.push(b'[');
        for (index, item) in items.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            let mut element = JsonObject::begin(out);
            fill(&mut element, item);
            element.end();
        }
        out.push(b']');
    }

    #[inline]
    pub(crate) fn end(self) {
        self.out.push(b'}');
    }

    /// Writes the separator and `"name":`, and returns the output for the value.
    #[inline(always)]
    fn name(&mut self, name: &'static str) -> &mut Vec<u8> {
        debug_assert!(needs_no_escape(name.as_bytes()), "{name}");
        if !std::mem::take(&mut self.empty) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }
}

/// `value` in decimal. Its digits are copied as one block of fixed size and then cut to their
/// count: a copy whose size is known when compiling is a few moves, one of a computed size is
/// a call to `memmove`, and a line has a few dozen numbers.
#[inline(always)]
fn write_int(out: &mut Vec<u8>, value: i128) {
    if value < 0 {
        out.push(b'-');
    }
    // Every caller passes a 64-bit integer, whose magnitude fits in a u64.
    let mut magnitude = u64::try_from(value.unsigned_abs()).unwrap_or(u64::MAX);
    let digits = magnitude.checked_ilog10().map_or(1, |log| log as usize + 1);
    let mut text = [b'0'; 20];
    for slot in text[..digits].iter_mut().rev() {
        *slot = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
    }
    let start = out.len();
    out.extend_from_slice(&text);
    out.truncate(start + digits);
}

/// A JSON string of bytes known to need no escaping (constants, timestamps).
#[inline(always)]
fn write_plain_str(out: &mut Vec<u8>, value: &[u8]) {
    debug_assert!(needs_no_escape(value), "{value:?}");
    out.push(b'"');
    out.extend_from_slice(value);
    out.push(b'"');
}

/// `value` as a JSON string: most values (ids, names, topics) need no escaping and are copied
/// whole; the rest go byte by byte.
#[inline(always)]
fn write_str(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if needs_no_escape(bytes) {
        out.extend_from_slice(bytes);
    } else {
        write_escaped(out, bytes);
    }
    out.push(b'"');
}

fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let short: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..index]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether no byte is a control character, a quote or a backslash: eight bytes at a time,
/// with the usual bit tricks for "some byte is below n" and "some byte is zero".
#[inline]
fn needs_no_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_byte_below =
        |word: u64, limit: u8| word.wrapping_sub(ONES * u64::from(limit)) & !word & HIGHS != 0;
    let has_byte = |word: u64, byte: u8| has_byte_below(word ^ (ONES * u64::from(byte)), 1);
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
        if has_byte_below(word, 0x20) || has_byte(word, b'"') || has_byte(word, b'\\') {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&byte| byte >= 0x20 && byte != b'"' && byte != b'\\')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn written(value: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    fn written_int(value: i128) -> String {
        let mut out = Vec::new();
        write_int(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(value in any::<String>()) {
            prop_assert_eq!(written(&value), serde_json::to_string(&value).unwrap());
        }

        #[test]
        fn strings_near_the_escaped_bytes_are_escaped_as_serde_json_escapes_them(
            bytes in proptest::collection::vec(
                prop_oneof![0x00u8..0x22, Just(b'\\'), 0x5bu8..0x5e, 0x7eu8..0x80], 0..40),
        ) {
            let value = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(written(&value), serde_json::to_string(&value).unwrap());
        }
    }

    proptest! {
        #[test]
        fn integers_are_written_as_serde_json_writes_them(signed: i64, unsigned: u64) {
            prop_assert_eq!(written_int(signed.into()), serde_json::to_string(&signed).unwrap());
            prop_assert_eq!(written_int(unsigned.into()), serde_json::to_string(&unsigned).unwrap());
        }
    }

    #[test]
    fn integers_at_their_bounds_and_powers_of_ten_are_written_in_full() {
        for value in [i128::from(i64::MIN), i128::from(u64::MAX), 0, -1] {
            assert_eq!(written_int(value), value.to_string());
        }
        for power in 0..20 {
            let ten = 10_u64.pow(power);
            for value in [ten - 1, ten, ten + 1] {
                assert_eq!(written_int(value.into()), value.to_string());
            }
        }
    }

    #[test]
    fn every_byte_that_needs_escaping_is_found_at_every_place_in_a_word() {
        for byte in (0x00..0x20).chain([b'"', b'\\']) {
            for at in 0..17 {
                let mut bytes = vec![b'a'; 17];
                bytes[at] = byte;
                assert!(!needs_no_escape(&bytes), "{byte:#x} at {at}");
            }
        }
        let clean: Vec<u8> = (0x20..=0xff)
            .filter(|b| *b != b'"' && *b != b'\\')
            .collect();
        assert!(needs_no_escape(&clean));
    }

    #[test]
    fn objects_nest_with_separators_in_place() {
        let mut out = Vec::new();
        let mut object = JsonObject::begin(&mut out);
        object.str("a", "x");
        object.int("b", -3_i64);
        object.object("c", |inner| inner.bool("d", false));
        object.objects("e", &[1_u32, 2], |element, n| element.int("n", *n));
        object.map("f", [("k\"", "v")]);
        object.time("g", None);
        object.raw("h", "OPEN");
        object.objects("i", &[] as &[u32], |_, _| {});
        object.end();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":"x","b":-3,"c":{"d":false},"e":[{"n":1},{"n":2}],"f":{"k\"":"v"},"g":null,"h":"OPEN","i":[]}"#
        );
    }
}
