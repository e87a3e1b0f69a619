//! The checks of one value that the normaliser applies field by field: pure functions of the
//! value, each giving the cleaned value or the rejection that names the field.

use serde_json::Value;

use crate::RejectReason;
use crate::normalise::Rejection;

/// A field that must be a non-empty string, trimmed (the same `String` when it needs no trim).
pub(crate) fn required_string(value: Option<Value>, field: &str) -> Result<String, Rejection> {
    match value {
        None | Some(Value::Null) => Err(Rejection::new(
            RejectReason::MissingField,
            format!("{field} is required"),
        )),
        Some(Value::String(text)) => {
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return Err(Rejection::new(
                    RejectReason::EmptyField,
                    format!("{field} is empty"),
                ));
            }
            if trimmed.len() == text.len() {
                Ok(text)
            } else {
                Ok(trimmed.to_owned())
            }
        }
        Some(other) => Err(Rejection::new(
            RejectReason::WrongType,
            format!("{field} must be a string, not {}", json_type(&other)),
        )),
    }
}

/// `text` in lower case, reusing it when it is lower-case ASCII already.
pub(crate) fn lower_case(text: String) -> String {
    if text.is_ascii() && !text.bytes().any(|b| b.is_ascii_uppercase()) {
        text
    } else {
        text.to_lowercase()
    }
}

/// `order.created`, `user_v2.signed_in`: words of `[a-z0-9_]` starting with a letter,
/// separated by single dots.
pub(crate) fn is_dotted_name(name: &str) -> bool {
    name.split('.').all(|word| {
        let mut chars = word.chars();
        chars.next().is_some_and(|first| first.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The kind of a JSON text, named as [`json_type`] names values. The text is valid JSON
/// (serde_json checked it), so its first byte decides.
pub(crate) fn raw_json_type(json: &str) -> &'static str {
    match json.trim_start().bytes().next() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// Nesting depth of a JSON object's values, read from its text: `{}` and `{"a": 1}` are 1,
/// `{"a": {"b": 1}}` is 2, `{"a": {}}` is 1. The text is valid JSON (serde_json checked it);
/// one pass over its bytes, nothing allocated, brackets inside strings not counted.
pub(crate) fn depth_of_raw_object(json: &str) -> usize {
    let (mut deepest, mut open) = (1, 0_usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'{' | b'[' => {
                // A container is a value at the depth of what encloses it.
                if open > 0 {
                    deepest = deepest.max(open);
                }
                open += 1;
            }
            b'}' | b']' => open = open.saturating_sub(1),
            b'"' => {
                in_string = true;
                deepest = deepest.max(open);
            }
            b',' | b':' => {}
            byte if byte.is_ascii_whitespace() => {}
            // The first byte of a number, `true`, `false` or `null` (the rest of it too:
            // counting it again changes nothing).
            _ => deepest = deepest.max(open),
        }
    }
    deepest
}

pub(crate) fn truncate(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_read_from_the_text_as_from_the_tree() {
        for (json, depth) in [
            ("{}", 1),
            (r#"{"a": 1}"#, 1),
            (r#"{"a": {}}"#, 1),
            (r#"{"a": []}"#, 1),
            (r#"{"a": {"b": 1}}"#, 2),
            (r#"{"a": [1, 2]}"#, 2),
            (r#"{"a": [[]], "b": 1}"#, 2),
            (r#"{"a": [[true]]}"#, 3),
            (r#"{"a": [{"b": [null]}]}"#, 4),
            (r#"{"a": "{[{[\"]}]", "b": "\\"}"#, 1),
            (r#"{"{": {"}": "x"}, "]": 2}"#, 2),
        ] {
            assert_eq!(depth_of_raw_object(json), depth, "{json}");
        }
        let mut deep = serde_json::json!(1);
        for _ in 0..40 {
            deep = serde_json::json!({ "x": deep });
        }
        assert_eq!(depth_of_raw_object(&deep.to_string()), 40);
    }

    #[test]
    fn a_texts_kind_is_named_as_a_values() {
        for value in [
            serde_json::json!(null),
            serde_json::json!(true),
            serde_json::json!(false),
            serde_json::json!(-1.5),
            serde_json::json!(7),
            serde_json::json!("x"),
            serde_json::json!([1]),
            serde_json::json!({"a": 1}),
        ] {
            assert_eq!(
                raw_json_type(&value.to_string()),
                json_type(&value),
                "{value}"
            );
        }
    }

    #[test]
    fn lower_case_is_to_lowercase_without_the_copy() {
        for text in [
            "order.created",
            "Order.Created",
            "\u{212A}elvin.x",
            "ǅ.x",
            "été",
            "",
        ] {
            assert_eq!(lower_case(text.to_owned()), text.to_lowercase(), "{text:?}");
        }
    }
}
