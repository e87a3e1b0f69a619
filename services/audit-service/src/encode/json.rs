//! The few JSON shapes a stored line is made of, appended straight to its bytes.
//!
//! Field names are constants of this crate in plain ASCII, so they are copied as they are (with
//! their punctuation, see [`key!`]) rather than escaped once per field of every line. Values are
//! escaped exactly as `serde_json` escapes them, so the bytes are those a serde serializer would
//! write.

use relais_proto::Timestamp;

use super::time;
use super::view::Text;

/// The [`Key`] of the field `name`, checked when compiling.
macro_rules! key {
    ($name:literal) => {
        const { $crate::encode::Key::new(concat!(",\"", $name, "\":")) }
    };
}
pub(crate) use key;

/// `,"name":`, what puts a field after the one before it, as one constant: a field's name and
/// punctuation are copied in one go rather than piece by piece. Made by [`key!`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key(&'static str);

impl Key {
    /// `text` as a key; a name that would need escaping does not compile ([`key!`] calls this
    /// in a constant).
    pub(crate) const fn new(text: &'static str) -> Self {
        let bytes = text.as_bytes();
        let end = bytes.len() - 2;
        assert!(bytes.len() > 4 && bytes[0] == b',' && bytes[1] == b'"');
        assert!(bytes[end] == b'"' && bytes[end + 1] == b':');
        let mut at = 2;
        while at < end {
            let byte = bytes[at];
            assert!(byte >= 0x20 && byte < 0x80 && byte != b'"' && byte != b'\\');
            at += 1;
        }
        Self(text)
    }
}

/// One JSON object being written; [`JsonObject::end`] closes it.
///
/// Every field is written with its leading comma (see [`key!`]); the first field's comma is
/// turned into the opening brace when the object ends.
pub(crate) struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> JsonObject<'a> {
    #[inline]
    pub(crate) fn begin(out: &'a mut Vec<u8>) -> Self {
        let start = out.len();
        Self { out, start }
    }

    #[inline(always)]
    pub(crate) fn str(&mut self, key: Key, value: &str) {
        write_str(self.key(key), value.as_bytes());
    }

    #[inline(always)]
    pub(crate) fn text(&mut self, key: Key, value: Text<'_>) {
        write_str(self.key(key), value.as_bytes());
    }

    #[inline(always)]
    pub(crate) fn raw(&mut self, key: Key, value: &'static str) {
        write_plain_str(self.key(key), value.as_bytes());
    }

    #[inline(always)]
    pub(crate) fn int(&mut self, key: Key, value: impl Into<i128>) {
        write_int(self.key(key), value.into());
    }

    #[inline(always)]
    pub(crate) fn bool(&mut self, key: Key, value: bool) {
        let literal: &[u8] = if value { b"true" } else { b"false" };
        self.key(key).extend_from_slice(literal);
    }

    /// RFC 3339 in UTC with microseconds, or `null` when absent.
    #[inline(always)]
    pub(crate) fn time(&mut self, key: Key, value: Option<&Timestamp>) {
        time::write_json(self.key(key), value);
    }

    /// A nested object under `key`, written by `fill`.
    pub(crate) fn object(&mut self, key: Key, fill: impl FnOnce(&mut JsonObject<'_>)) {
        let mut nested = JsonObject::begin(self.key(key));
        fill(&mut nested);
        nested.end();
    }

    /// An object whose names are data (response headers): escaped like any value.
    pub(crate) fn map<'v>(
        &mut self,
        key: Key,
        entries: impl IntoIterator<Item = (Text<'v>, Text<'v>)>,
    ) {
        let out = self.key(key);
        out.push(b'{');
        for (index, (name, value)) in entries.into_iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_str(out, name.as_bytes());
            out.push(b':');
            write_str(out, value.as_bytes());
        }
        out.push(b'}');
    }

    /// An array of objects under `key`, one per item, each written by `fill`.
    pub(crate) fn objects<T>(
        &mut self,
        key: Key,
        items: &[T],
        mut fill: impl FnMut(&mut JsonObject<'_>, &T),
    ) {
        let out = self.key(key);
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
        if self.out.len() == self.start {
            self.out.push(b'{');
        } else {
            self.out[self.start] = b'{';
        }
        self.out.push(b'}');
    }

    /// Writes `,"name":` and returns the output for the value.
    #[inline(always)]
    fn key(&mut self, key: Key) -> &mut Vec<u8> {
        self.out.extend_from_slice(key.0.as_bytes());
        self.out
    }
}

/// `value` in decimal, its digits written in place in `out`. A block of twenty zeros of a size
/// known when compiling is a few stores, then the digits overwrite its start and the rest is
/// cut. Built in a buffer of its own and copied, the copy would read bytes just stored one by
/// one, which the processor cannot forward to a wide load: a stall for every number of a line.
#[inline(always)]
fn write_int(out: &mut Vec<u8>, value: i128) {
    if value < 0 {
        out.push(b'-');
    }
    // Every caller passes a 64-bit integer, whose magnitude fits in a u64.
    let mut magnitude = u64::try_from(value.unsigned_abs()).unwrap_or(u64::MAX);
    if magnitude < 10 {
        out.push(b'0' + magnitude as u8);
        return;
    }
    let digits = magnitude.ilog10() as usize + 1;
    let start = out.len();
    out.extend_from_slice(&[b'0'; 20]);
    for slot in out[start..start + digits].iter_mut().rev() {
        *slot = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
    }
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

/// `bytes`, UTF-8, as a JSON string: most values (ids, names, topics) need no escaping and are
/// copied whole; the rest go byte by byte.
#[inline(always)]
fn write_str(out: &mut Vec<u8>, bytes: &[u8]) {
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
        write_str(&mut out, value.as_bytes());
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
    #[should_panic]
    fn a_name_that_would_need_escaping_is_no_key() {
        Key::new(",\"a\"b\":");
    }

    #[test]
    fn objects_nest_with_separators_in_place() {
        let mut out = Vec::new();
        let mut object = JsonObject::begin(&mut out);
        object.str(key!("a"), "x");
        object.int(key!("b"), -3_i64);
        object.object(key!("c"), |inner| inner.bool(key!("d"), false));
        object.objects(key!("e"), &[1_u32, 2], |element, n| {
            element.int(key!("n"), *n)
        });
        object.map(key!("f"), [(Text::of("k\""), Text::of("v"))]);
        object.time(key!("g"), None);
        object.raw(key!("h"), "OPEN");
        object.objects(key!("i"), &[] as &[u32], |_, _| {});
        object.end();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":"x","b":-3,"c":{"d":false},"e":[{"n":1},{"n":2}],"f":{"k\"":"v"},"g":null,"h":"OPEN","i":[]}"#
        );
    }
}
