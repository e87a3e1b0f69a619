//! Property tests: no input can panic the normaliser, valid events survive normalisation,
//! and normalisation is idempotent.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use relais_ingress::{Limits, Normaliser};
use serde_json::{Value, json};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0)
        .single()
        .expect("valid time")
}

fn normaliser() -> Normaliser {
    Normaliser::new(Limits::default(), ["orders".to_owned()])
}

/// Arbitrary JSON values, nested a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Objects that look like events: the known fields with arbitrary (often wrong) values.
fn event_like() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("id"),
        Just("type"),
        Just("occurred_at"),
        Just("source"),
        Just("route"),
        Just("data"),
        Just("schema_version"),
        Just("other"),
    ];
    prop::collection::vec((field, any_json()), 0..8).prop_map(|fields| {
        Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    })
}

/// Valid events with messy but acceptable formatting.
fn valid_event() -> impl Strategy<Value = Value> {
    (
        "[ ]{0,2}[a-zA-Z0-9:_-]{1,40}[ ]{0,2}",
        "[ ]{0,2}[a-zA-Z][a-zA-Z0-9_]{0,8}(\\.[a-zA-Z][a-zA-Z0-9_]{0,8}){0,3}[ ]{0,2}",
        -720i64..720,
        -12i32..=14,
        "[a-z]{1,20}",
        prop::option::of(Just("orders")),
        any_json(),
    )
        .prop_map(
            |(id, event_type, minutes, offset_hours, source, route, data)| {
                let offset = chrono::FixedOffset::east_opt(offset_hours * 3600).expect("offset");
                let at = (now() + chrono::Duration::minutes(minutes)).with_timezone(&offset);
                let mut event = json!({
                    "id": id, "type": event_type, "occurred_at": at.to_rfc3339(), "source": source,
                    "data": { "payload": data },
                });
                if let Some(route) = route {
                    event["route"] = json!(route);
                }
                event
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = normaliser().normalise(&bytes, now());
    }

    #[test]
    fn arbitrary_json_never_panics(value in any_json()) {
        let _ = normaliser().normalise(value.to_string().as_bytes(), now());
    }

    #[test]
    fn event_like_objects_get_an_event_or_a_reason(value in event_like()) {
        match normaliser().normalise(value.to_string().as_bytes(), now()) {
            Ok(event) => {
                prop_assert!(!event.id.is_empty());
                prop_assert_eq!(event.event_type.to_lowercase(), event.event_type.clone());
            }
            Err(rejection) => prop_assert!(!rejection.reason.code().is_empty()),
        }
    }

    #[test]
    fn valid_events_are_accepted_and_normalisation_is_idempotent(value in valid_event()) {
        let first = normaliser()
            .normalise(value.to_string().as_bytes(), now())
            .map_err(|r| TestCaseError::fail(format!("rejected {value}: {r}")))?;
        prop_assert_eq!(first.id.trim(), first.id.as_str());
        let normalised = serde_json::to_string(&first).expect("serialise");
        let second = normaliser()
            .normalise(normalised.as_bytes(), now())
            .map_err(|r| TestCaseError::fail(format!("normalised form rejected: {r}")))?;
        prop_assert_eq!(first, second);
    }
}
