//! Turning raw ingress bytes into a normalised, validated event.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use serde::{Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::checks::{
    depth_of_raw_object, is_dotted_name, json_type, lower_case, raw_json_type, required_string,
    truncate,
};
use crate::fields::{self, Unread};
use crate::{RejectReason, SCHEMA_VERSION};

/// Size and time limits. The defaults suit events of up to a few kilobytes.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted payload, checked before parsing so huge inputs cost nothing.
    pub max_payload_bytes: usize,
    /// Longest `id`, in characters.
    pub max_id_chars: usize,
    /// Longest `type`, in characters.
    pub max_type_chars: usize,
    /// Longest `source`, in characters.
    pub max_source_chars: usize,
    /// Longest `route`, in characters.
    pub max_route_chars: usize,
    /// Deepest nesting of arrays and objects inside `data`.
    pub max_data_depth: usize,
    /// How far in the future `occurred_at` may be (clock skew between producers).
    pub max_future_skew: Duration,
    /// How old `occurred_at` may be.
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_id_chars: 128,
            max_type_chars: 128,
            max_source_chars: 128,
            max_route_chars: 64,
            max_data_depth: 32,
            max_future_skew: Duration::hours(24),
            max_age: Duration::days(365),
        }
    }
}

/// A valid, normalised ingress event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngressEvent {
    /// The producer's id: the dedupe key and the `Idempotency-Key` upstream. Trimmed.
    pub id: String,
    /// Lower-case dotted name, such as `order.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's own time, in UTC.
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub occurred_at: DateTime<Utc>,
    /// Who produced it. Trimmed.
    pub source: String,
    /// The upstream to deliver to, when the producer chose one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The payload, always an object (`{}` when absent).
    pub data: Data,
    /// Always [`SCHEMA_VERSION`] after normalisation.
    pub schema_version: u64,
}

impl IngressEvent {
    /// The normalised event as JSON in the ingress schema: what the upstream receives.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serialising plain strings, a timestamp and a JSON map cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An event's `data` object as the producer wrote it. It is checked (an object, not too deep)
/// but never rebuilt: the upstream receives it byte for byte, so a number keeps every digit
/// even where it does not fit a 64-bit float, and reading it costs no tree of values.
#[derive(Debug, Clone)]
pub struct Data(Box<RawValue>);

impl Data {
    /// `{}`: the `data` of an event that has none.
    pub fn empty() -> Self {
        Self(RawValue::from_string("{}".to_owned()).expect("{} is JSON"))
    }

    /// The object's JSON text.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.as_json() == other.as_json()
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Why a message was rejected: a stable reason and a short human-readable detail (which field,
/// which limit). The detail never contains the payload itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub(crate) fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Normalises and validates ingress events against [`Limits`] and the configured routes.
#[derive(Debug, Clone)]
pub struct Normaliser {
    limits: Limits,
    routes: BTreeSet<String>,
}

impl Normaliser {
    /// `routes` are the upstream names an event may ask for in its `route` field.
    pub fn new(limits: Limits, routes: impl IntoIterator<Item = String>) -> Self {
        Self {
            limits,
            routes: routes.into_iter().collect(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Parses, normalises and validates one payload. `now` bounds `occurred_at`; it is a
    /// parameter so that the same input always gives the same answer in tests and replays.
    pub fn normalise(&self, payload: &[u8], now: DateTime<Utc>) -> Result<IngressEvent, Rejection> {
        if payload.len() > self.limits.max_payload_bytes {
            return Err(Rejection::new(
                RejectReason::TooLarge,
                format!(
                    "{} bytes, limit {}",
                    payload.len(),
                    self.limits.max_payload_bytes
                ),
            ));
        }
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Err(Rejection::new(RejectReason::Empty, "no content"));
        }
        let fields = fields::read(payload).map_err(|unread| match unread {
            // serde_json's message names line and column, never the content.
            Unread::Malformed(error) => {
                Rejection::new(RejectReason::MalformedJson, error.to_string())
            }
            Unread::NotAnObject(kind) => {
                Rejection::new(RejectReason::NotAnObject, format!("top level is {kind}"))
            }
        })?;

        if let Some(unknown) = &fields.unknown {
            return Err(Rejection::new(
                RejectReason::UnknownField,
                format!("field {unknown:?}"),
            ));
        }
        self.check_schema_version(fields.schema_version)?;

        let id = required_string(fields.id, "id")?;
        self.check_length("id", &id, self.limits.max_id_chars)?;
        if id.chars().any(char::is_control) {
            return Err(Rejection::new(
                RejectReason::InvalidId,
                "id contains control characters",
            ));
        }

        let event_type = lower_case(required_string(fields.event_type, "type")?);
        self.check_length("type", &event_type, self.limits.max_type_chars)?;
        if !is_dotted_name(&event_type) {
            return Err(Rejection::new(
                RejectReason::InvalidTypeName,
                "type must be lower-case words of [a-z0-9_] separated by dots, starting with a letter",
            ));
        }

        let occurred_at = self.timestamp(fields.occurred_at, now)?;

        let source = required_string(fields.source, "source")?;
        self.check_length("source", &source, self.limits.max_source_chars)?;

        let route = self.route(fields.route)?;

        let data = match fields.data {
            None => Data::empty(),
            Some(raw) => match raw_json_type(raw.get()) {
                "an object" => Data(raw),
                "null" => Data::empty(),
                other => {
                    return Err(Rejection::new(
                        RejectReason::WrongType,
                        format!("data must be an object, not {other}"),
                    ));
                }
            },
        };
        let depth = depth_of_raw_object(data.as_json());
        if depth > self.limits.max_data_depth {
            return Err(Rejection::new(
                RejectReason::DataTooDeep,
                format!("depth {depth}, limit {}", self.limits.max_data_depth),
            ));
        }

        Ok(IngressEvent {
            id,
            event_type,
            occurred_at,
            source,
            route,
            data,
            schema_version: SCHEMA_VERSION,
        })
    }

    fn check_schema_version(&self, value: Option<Value>) -> Result<(), Rejection> {
        match value {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Number(number)) if number.as_u64() == Some(SCHEMA_VERSION) => Ok(()),
            Some(Value::Number(number)) => Err(Rejection::new(
                RejectReason::UnsupportedSchemaVersion,
                format!("schema_version {number}, supported {SCHEMA_VERSION}"),
            )),
            Some(other) => Err(Rejection::new(
                RejectReason::WrongType,
                format!("schema_version must be a number, not {}", json_type(&other)),
            )),
        }
    }

    fn check_length(&self, field: &str, value: &str, limit: usize) -> Result<(), Rejection> {
        let chars = value.chars().count();
        if chars > limit {
            return Err(Rejection::new(
                RejectReason::FieldTooLong,
                format!("{field} has {chars} characters, limit {limit}"),
            ));
        }
        Ok(())
    }

    fn timestamp(
        &self,
        value: Option<Value>,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, Rejection> {
        let text = required_string(value, "occurred_at")?;
        let parsed = DateTime::parse_from_rfc3339(&text).map_err(|error| {
            Rejection::new(
                RejectReason::BadTimestamp,
                format!("occurred_at is not RFC 3339: {error}"),
            )
        })?;
        let utc = parsed.with_timezone(&Utc);
        if utc > now + self.limits.max_future_skew {
            return Err(Rejection::new(
                RejectReason::TimestampOutOfRange,
                format!(
                    "occurred_at is more than {} h in the future",
                    self.limits.max_future_skew.num_hours()
                ),
            ));
        }
        if utc < now - self.limits.max_age {
            return Err(Rejection::new(
                RejectReason::TimestampOutOfRange,
                format!(
                    "occurred_at is more than {} days old",
                    self.limits.max_age.num_days()
                ),
            ));
        }
        Ok(utc)
    }

    fn route(&self, value: Option<Value>) -> Result<Option<String>, Rejection> {
        let route = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(route)) => route.trim().to_owned(),
            Some(other) => {
                return Err(Rejection::new(
                    RejectReason::WrongType,
                    format!("route must be a string, not {}", json_type(&other)),
                ));
            }
        };
        if route.is_empty() {
            // An empty route means "no preference", like an absent one.
            return Ok(None);
        }
        self.check_length("route", &route, self.limits.max_route_chars)?;
        if !self.routes.contains(&route) {
            return Err(Rejection::new(
                RejectReason::UnknownRoute,
                format!(
                    "route {:?} is not a configured upstream",
                    truncate(&route, 64)
                ),
            ));
        }
        Ok(Some(route))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    fn normaliser() -> Normaliser {
        Normaliser::new(
            Limits::default(),
            ["orders".to_owned(), "billing".to_owned()],
        )
    }

    fn check(value: serde_json::Value) -> Result<IngressEvent, Rejection> {
        normaliser().normalise(value.to_string().as_bytes(), now())
    }

    fn reason(value: serde_json::Value) -> RejectReason {
        check(value).expect_err("should be rejected").reason
    }

    fn valid() -> serde_json::Value {
        json!({"id": "order-1", "type": "order.created", "occurred_at": "2026-11-27T10:00:00Z",
               "source": "shop", "data": {"total": 12.5}})
    }

    fn with(field: &str, value: serde_json::Value) -> serde_json::Value {
        let mut event = valid();
        event[field] = value;
        event
    }

    fn without(field: &str) -> serde_json::Value {
        let mut event = valid();
        event.as_object_mut().expect("object").remove(field);
        event
    }

    #[test]
    fn normalises_strings_case_and_time_zone() {
        let event = check(json!({
            "id": "  order-1 ", "type": " Order.Created ", "occurred_at": "2026-11-27T11:00:00+01:00",
            "source": " shop ", "route": " orders "
        }))
        .expect("valid");
        assert_eq!(event.id, "order-1");
        assert_eq!(event.event_type, "order.created");
        assert_eq!(
            event.occurred_at,
            Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()
        );
        assert_eq!(event.source, "shop");
        assert_eq!(event.route.as_deref(), Some("orders"));
        assert_eq!(
            event.data.as_json(),
            "{}",
            "data defaults to an empty object"
        );
        assert_eq!(event.schema_version, SCHEMA_VERSION);
    }

    #[test]
    fn data_reaches_the_upstream_as_written_with_every_digit() {
        let data = r#"{ "amount": 12345678901234567890.123456789012345, "tiny": 1e-400,
            "huge": 1e400, "id": 98765432109876543210987, "price": 12.30, "text": "a\u00e9b" }"#;
        let payload = format!(
            r#"{{"id":"o-1","type":"order.created","occurred_at":"2026-11-27T10:00:00Z","source":"shop","data":{data}}}"#
        );
        let event = normaliser()
            .normalise(payload.as_bytes(), now())
            .expect("numbers beyond a float are valid JSON");
        assert_eq!(event.data.as_json(), data);
        let body = String::from_utf8(event.to_json_bytes()).expect("UTF-8");
        assert!(body.contains(data), "{body}");
        assert_eq!(
            reason(with("data", json!("text"))),
            RejectReason::WrongType,
            "data must still be an object"
        );
    }

    #[test]
    fn data_nested_far_beyond_the_limit_is_too_deep_not_a_crash() {
        let depth = 20_000;
        let data = format!("{}1{}", r#"{"a":["#.repeat(depth), "]}".repeat(depth));
        let payload = format!(
            r#"{{"id":"o-1","type":"order.created","occurred_at":"2026-11-27T10:00:00Z","source":"shop","data":{data}}}"#
        );
        let rejection = normaliser()
            .normalise(payload.as_bytes(), now())
            .expect_err("far too deep");
        assert_eq!(rejection.reason, RejectReason::DataTooDeep);
    }

    #[test]
    fn serialises_back_to_the_ingress_schema() {
        let event = check(valid()).expect("valid");
        let json = serde_json::to_value(&event).expect("serialise");
        assert_eq!(json["type"], "order.created");
        assert_eq!(json["occurred_at"], "2026-11-27T10:00:00Z");
        assert!(json.get("route").is_none());
        // Normalising the normalised form changes nothing.
        let again = normaliser()
            .normalise(json.to_string().as_bytes(), now())
            .expect("still valid");
        assert_eq!(again, event);
    }

    #[test]
    fn every_rejection_has_its_reason() {
        let n = normaliser();
        assert_eq!(
            n.normalise(&vec![b' '; 300 * 1024], now())
                .unwrap_err()
                .reason,
            RejectReason::TooLarge
        );
        assert_eq!(
            n.normalise(b"  \n", now()).unwrap_err().reason,
            RejectReason::Empty
        );
        assert_eq!(
            n.normalise(b"{\"id\":", now()).unwrap_err().reason,
            RejectReason::MalformedJson
        );
        assert_eq!(
            n.normalise(b"\xff\xfe{}", now()).unwrap_err().reason,
            RejectReason::MalformedJson
        );
        assert_eq!(
            n.normalise(b"[1,2]", now()).unwrap_err().reason,
            RejectReason::NotAnObject
        );
        assert_eq!(reason(without("id")), RejectReason::MissingField);
        assert_eq!(
            reason(with("source", json!(null))),
            RejectReason::MissingField
        );
        assert_eq!(reason(with("id", json!(42))), RejectReason::WrongType);
        assert_eq!(reason(with("data", json!([1]))), RejectReason::WrongType);
        assert_eq!(reason(with("route", json!(true))), RejectReason::WrongType);
        assert_eq!(
            reason(with("schema_version", json!("1"))),
            RejectReason::WrongType
        );
        assert_eq!(
            reason(with("source", json!("   "))),
            RejectReason::EmptyField
        );
        assert_eq!(
            reason(with("id", json!("x".repeat(129)))),
            RejectReason::FieldTooLong
        );
        assert_eq!(
            reason(with("id", json!("a\u{0007}b"))),
            RejectReason::InvalidId
        );
        assert_eq!(
            reason(with("type", json!("order..created"))),
            RejectReason::InvalidTypeName
        );
        assert_eq!(
            reason(with("type", json!("9order"))),
            RejectReason::InvalidTypeName
        );
        assert_eq!(
            reason(with("type", json!("order-created"))),
            RejectReason::InvalidTypeName
        );
        assert_eq!(
            reason(with("occurred_at", json!("yesterday"))),
            RejectReason::BadTimestamp
        );
        assert_eq!(
            reason(with("occurred_at", json!("2026-11-27 10:00:00"))),
            RejectReason::BadTimestamp
        );
        assert_eq!(
            reason(with("occurred_at", json!("2026-11-29T12:00:01Z"))),
            RejectReason::TimestampOutOfRange
        );
        assert_eq!(
            reason(with("occurred_at", json!("2020-01-01T00:00:00Z"))),
            RejectReason::TimestampOutOfRange
        );
        assert_eq!(
            reason(with("route", json!("nowhere"))),
            RejectReason::UnknownRoute
        );
        assert_eq!(
            reason(with("schema_version", json!(2))),
            RejectReason::UnsupportedSchemaVersion
        );
        assert_eq!(reason(with("extra", json!(1))), RejectReason::UnknownField);
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({ "x": deep });
        }
        assert_eq!(reason(with("data", deep)), RejectReason::DataTooDeep);
    }

    #[test]
    fn accepts_explicit_defaults() {
        let event = check(with("schema_version", json!(1))).expect("version 1 is fine");
        assert_eq!(event.schema_version, 1);
        assert!(
            check(with("route", json!("")))
                .expect("empty route")
                .route
                .is_none()
        );
        assert!(
            check(with("data", json!(null)))
                .expect("null data")
                .data
                .as_json()
                == "{}"
        );
    }

    #[test]
    fn details_never_echo_the_payload() {
        let secret = "sk_live_do_not_log_me";
        let rejection =
            check(with("id", json!(format!("{secret}{}", "x".repeat(200))))).unwrap_err();
        assert!(!rejection.detail.contains(secret), "{}", rejection.detail);
        let rejection = normaliser()
            .normalise(format!("{{\"id\": \"{secret}\" oops").as_bytes(), now())
            .unwrap_err();
        assert!(!rejection.detail.contains(secret), "{}", rejection.detail);
    }

    #[test]
    fn details_name_the_first_unknown_field_and_the_kind_of_a_top_level() {
        let detail = |payload: &str| {
            let rejection = normaliser()
                .normalise(payload.as_bytes(), now())
                .unwrap_err();
            (rejection.reason, rejection.detail)
        };
        let mut event = valid().to_string();
        event.insert_str(1, r#""zeta":1,"alpha":[2],"#);
        assert_eq!(
            detail(&event),
            (RejectReason::UnknownField, r#"field "zeta""#.to_owned())
        );
        // A syntax error after the unknown field is what the payload is rejected for.
        let (reason, _) = detail(&event[..event.len() - 1]);
        assert_eq!(reason, RejectReason::MalformedJson);
        assert_eq!(
            detail(" [1, 2] "),
            (
                RejectReason::NotAnObject,
                "top level is an array".to_owned()
            )
        );
    }
}
