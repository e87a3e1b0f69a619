//! Reading a payload's top-level fields straight into their slots, without a map of them: the
//! value of each known field is kept as JSON for the checks in `normalise` (`data` as the
//! producer's own text, checked but never rebuilt); an unknown field is only named.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// Longest unknown field name kept for the rejection's detail, in characters.
const UNKNOWN_NAME_CHARS: usize = 64;

/// The top-level fields of an event payload, each as its JSON value (`None` when absent). A
/// field given twice keeps its last value, like a JSON object read into a map.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    pub(crate) id: Option<Value>,
    pub(crate) event_type: Option<Value>,
    pub(crate) occurred_at: Option<Value>,
    pub(crate) source: Option<Value>,
    pub(crate) route: Option<Value>,
    /// Exactly as written in the payload (valid JSON of any kind; checked in `normalise`).
    pub(crate) data: Option<Box<RawValue>>,
    pub(crate) schema_version: Option<Value>,
    /// The first field that is none of the above, in payload order (its name cut to 64
    /// characters).
    pub(crate) unknown: Option<String>,
}

/// Why a payload gave no fields.
#[derive(Debug)]
pub(crate) enum Unread {
    /// Not exactly one JSON value: serde_json's message, which names line and column.
    Malformed(serde_json::Error),
    /// Valid JSON of another kind than an object: "a number", "an array", ...
    NotAnObject(&'static str),
}

/// Parses `payload` as exactly one JSON value, an object. A syntax error anywhere in it is the
/// error, whatever else the payload gets wrong.
pub(crate) fn read(payload: &[u8]) -> Result<Fields, Unread> {
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    let top = deserializer
        .deserialize_any(TopLevelVisitor)
        .map_err(Unread::Malformed)?;
    deserializer.end().map_err(Unread::Malformed)?;
    top.map_err(Unread::NotAnObject)
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    /// The fields of an object, or the kind of anything else.
    type Value = Result<Fields, &'static str>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Id => &mut fields.id,
                Key::Type => &mut fields.event_type,
                Key::OccurredAt => &mut fields.occurred_at,
                Key::Source => &mut fields.source,
                Key::Route => &mut fields.route,
                Key::Data => {
                    fields.data = Some(map.next_value::<Box<RawValue>>()?);
                    continue;
                }
                Key::SchemaVersion => &mut fields.schema_version,
                Key::Unknown(name) => {
                    fields.unknown.get_or_insert(name);
                    // Read on to the end: a syntax error further on still decides.
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<Value>()?);
        }
        Ok(Ok(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err("an array"))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err("a string"))
    }
}

/// A top-level field name; only an unknown one is copied.
enum Key {
    Id,
    Type,
    OccurredAt,
    Source,
    Route,
    Data,
    SchemaVersion,
    Unknown(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a field name")
    }

    fn visit_str<E>(self, name: &str) -> Result<Key, E> {
        Ok(match name {
            "id" => Key::Id,
            "type" => Key::Type,
            "occurred_at" => Key::OccurredAt,
            "source" => Key::Source,
            "route" => Key::Route,
            "data" => Key::Data,
            "schema_version" => Key::SchemaVersion,
            other => Key::Unknown(other.chars().take(UNKNOWN_NAME_CHARS).collect()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(payload: &str) -> Fields {
        read(payload.as_bytes()).expect("a JSON object")
    }

    #[test]
    fn known_fields_land_in_their_slots_and_the_last_of_a_repeated_one_wins() {
        let read = fields(r#"{"id":"a","type":"t","id":"b","data":{"n":[1,{"m":null}]}}"#);
        assert_eq!(read.id, Some(Value::from("b")));
        assert_eq!(read.event_type, Some(Value::from("t")));
        assert_eq!(
            read.data.as_deref().map(RawValue::get),
            Some(r#"{"n":[1,{"m":null}]}"#),
            "data is read whole, as written"
        );
        assert!(read.source.is_none() && read.route.is_none() && read.unknown.is_none());
    }

    #[test]
    fn the_first_unknown_field_is_named_cut_to_64_characters() {
        let long = "x".repeat(100);
        let read = fields(&format!(r#"{{"id":"a","{long}":1,"other":[1,2]}}"#));
        assert_eq!(read.unknown.as_deref(), Some("x".repeat(64).as_str()));
        let escaped = fields(r#"{"i\u0064":"a","\u0074ype2":2}"#);
        assert_eq!(escaped.id, Some(Value::from("a")), "escaped names are read");
        assert_eq!(escaped.unknown.as_deref(), Some("type2"));
    }

    #[test]
    fn any_other_top_level_is_named_by_its_kind() {
        for (payload, kind) in [
            ("[1, {\"a\": 2}]", "an array"),
            ("null", "null"),
            ("true", "a boolean"),
            ("-3", "a number"),
            ("18446744073709551615", "a number"),
            ("2.5e3", "a number"),
            ("\"text\"", "a string"),
        ] {
            match read(payload.as_bytes()) {
                Err(Unread::NotAnObject(found)) => assert_eq!(found, kind, "{payload}"),
                other => panic!("{payload}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_syntax_error_anywhere_decides_even_after_an_unknown_field() {
        for payload in [
            r#"{"unknown":1,"id":"a""#,
            r#"{"unknown":1,"id":}"#,
            r#"{"id":"a"} trailing"#,
            r#"[1, 2"#,
            r#"{"id":"a","data":{"n":1}"#,
        ] {
            assert!(
                matches!(read(payload.as_bytes()), Err(Unread::Malformed(_))),
                "{payload}"
            );
        }
    }
}
