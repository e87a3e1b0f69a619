//! The checks of one value that the normaliser applies field by field: pure functions of the
//! value, each giving the cleaned value or the rejection that names the field.

use serde_json::{Map, Value};

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

/// Nesting depth of an object's values: `{}` and `{"a": 1}` are 1, `{"a": {"b": 1}}` is 2.
/// Iterative, so a deep input cannot exhaust the stack here.
pub(crate) fn depth_of_object(object: &Map<String, Value>) -> usize {
    let mut deepest = 1;
    let mut stack: Vec<(&Value, usize)> = object.values().map(|value| (value, 1)).collect();
    while let Some((value, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|item| (item, depth + 1))),
            Value::Object(fields) => stack.extend(fields.values().map(|item| (item, depth + 1))),
            _ => {}
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
