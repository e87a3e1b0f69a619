//! Operator actions in the stored trail: one NDJSON line each, in the same objects as the
//! message outcomes, told apart by `"kind": "operator_action"` (see docs/audit-objects.md).

use relais_proto::v1::OperatorAction;
use serde_json::Value;

use crate::encode::{AuditPosition, JsonObject, key, parse_time};

/// The value of `kind` on an operator action's line (message outcomes have no `kind`).
pub const KIND: &str = "operator_action";

/// The stored line of one operator action, field by field like [`crate::encode::RecordLine`].
#[derive(Debug, Clone, Copy)]
pub struct ActionLine<'a> {
    pub action: &'a OperatorAction,
    pub position: AuditPosition<'a>,
}

impl ActionLine<'_> {
    /// The line as JSON bytes (without the newline).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// Appends the line (without the newline) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let action = self.action;
        let mut line = JsonObject::begin(out);
        line.raw(key!("kind"), KIND);
        line.str(key!("action_id"), &action.action_id);
        line.str(key!("action"), &action.action);
        line.str(key!("subject"), &action.subject);
        line.str(key!("actor"), &action.actor);
        line.str(key!("detail"), &action.detail);
        line.time(key!("at"), action.at.as_ref());
        line.str(key!("trace_id"), &action.trace_id);
        self.position.write(key!("audit"), &mut line);
        line.end();
    }
}

/// Whether a stored line is an operator action.
pub fn is_action(line: &Value) -> bool {
    line["kind"].as_str() == Some(KIND)
}

/// Reads a stored line back into an `OperatorAction` (the inverse of [`ActionLine`]).
pub fn action_from_json(line: &Value) -> OperatorAction {
    let text = |field: &str| line[field].as_str().unwrap_or_default().to_owned();
    OperatorAction {
        action_id: text("action_id"),
        action: text("action"),
        subject: text("subject"),
        actor: text("actor"),
        detail: text("detail"),
        at: parse_time(&line["at"]),
        trace_id: text("trace_id"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_line_has_the_documented_names_and_reads_back() {
        let action = OperatorAction {
            action_id: "a-1".into(),
            action: "upstream.enabled".into(),
            subject: "upstream/billing".into(),
            actor: "token:alice".into(),
            detail: "endpoint restored".into(),
            at: Some(relais_proto::Timestamp {
                seconds: 1_796_198_400,
                nanos: 5_000,
            }),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        };
        let line = ActionLine {
            action: &action,
            position: AuditPosition {
                topic: "relais.audit",
                partition: 2,
                offset: 7,
            },
        }
        .to_vec();
        assert_eq!(
            String::from_utf8(line.clone()).unwrap(),
            concat!(
                "{\"kind\":\"operator_action\",\"action_id\":\"a-1\",\"action\":\"upstream.enabled\",",
                "\"subject\":\"upstream/billing\",\"actor\":\"token:alice\",",
                "\"detail\":\"endpoint restored\",\"at\":\"2026-12-02T08:00:00.000005Z\",",
                "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",",
                "\"audit\":{\"topic\":\"relais.audit\",\"partition\":2,\"offset\":7}}",
            )
        );
        let value: Value = serde_json::from_slice(&line).unwrap();
        let names: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            names,
            [
                "kind",
                "action_id",
                "action",
                "subject",
                "actor",
                "detail",
                "at",
                "trace_id",
                "audit"
            ]
        );
        assert_eq!(value["at"], "2026-12-02T08:00:00.000005Z");
        assert_eq!(value["audit"]["offset"], 7);
        assert!(is_action(&value));
        assert_eq!(action_from_json(&value), action);
    }
}
