//! One trail lookup: which stored lines belong to the answer, and when to stop reading.
//!
//! Candidate objects are read hour by hour, oldest first (an object holds one event hour), so
//! once the records of the hours read exceed the limit, the oldest `limit` are known and the
//! later hours are not read at all: a lookup's cost follows its limit, not the size of the
//! window. The lookup also stops at its deadline and then says its answer is partial.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use relais_proto::v1::{AuditRecord, OperatorAction};

use crate::encode;

/// Which id the lookup is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    TraceId,
    MessageId,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Self::TraceId => "trace_id",
            Self::MessageId => "message_id",
        }
    }

    /// The field of an operator action that holds the id: an action's subject is looked up
    /// as a message id.
    fn action_name(self) -> &'static str {
        match self {
            Self::TraceId => "trace_id",
            Self::MessageId => "subject",
        }
    }
}

/// What a lookup asks for.
#[derive(Debug, Clone)]
pub struct TrailQuery {
    pub field: Field,
    pub id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub limit: usize,
}

/// The matching records and actions found so far.
#[derive(Debug, Default)]
pub struct Collected {
    records: Vec<AuditRecord>,
    actions: Vec<OperatorAction>,
    /// Audit positions seen: a record appears once even if two objects hold it (an object
    /// rewritten under another key).
    seen: BTreeSet<(String, i32, i64)>,
}

/// The answer to a lookup.
#[derive(Debug, Default, PartialEq)]
pub struct Answer {
    pub records: Vec<AuditRecord>,
    pub actions: Vec<OperatorAction>,
    /// More matched than the limit, or the lookup stopped reading because it had enough.
    pub truncated: bool,
}

impl Collected {
    /// Adds the matching lines of one data object (NDJSON).
    pub fn add_object(&mut self, query: &TrailQuery, ndjson: &[u8]) {
        let needle = query.id.as_bytes();
        for line in ndjson.split(|byte| *byte == b'\n') {
            // Most lines of a candidate object are other records: skip them before paying
            // for a JSON parse.
            if line.is_empty() || !line.windows(needle.len()).any(|window| window == needle) {
                continue;
            }
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) {
                self.add_line(query, &value);
            }
        }
    }

    fn add_line(&mut self, query: &TrailQuery, value: &serde_json::Value) {
        let in_window = |time: Option<DateTime<Utc>>| {
            time.is_none_or(|time| time >= query.from && time <= query.to)
        };
        let position = || {
            (
                value["audit"]["topic"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                value["audit"]["partition"].as_i64().unwrap_or(0) as i32,
                value["audit"]["offset"].as_i64().unwrap_or(0),
            )
        };
        if crate::actions::is_action(value) {
            if value[query.field.action_name()].as_str() != Some(query.id.as_str()) {
                return;
            }
            let action = crate::actions::action_from_json(value);
            let time = encode::timestamp(action.at.as_ref());
            // An action without a time cannot be placed in the window.
            if time.is_some() && in_window(time) && self.seen.insert(position()) {
                self.actions.push(action);
            }
            return;
        }
        if value[query.field.name()].as_str() != Some(query.id.as_str()) {
            return;
        }
        let record = encode::record_from_json(value);
        if in_window(encode::timestamp(record.occurred_at.as_ref())) && self.seen.insert(position())
        {
            self.records.push(record);
        }
    }

    /// Whether the hours read so far hold more than the limit: later hours can only add
    /// later records, which the answer would cut.
    pub fn has_enough(&self, limit: usize) -> bool {
        self.records.len() > limit || self.actions.len() > limit
    }

    /// The oldest `limit` records and actions. `stopped_early`: hours were left unread.
    pub fn answer(mut self, limit: usize, stopped_early: bool) -> Answer {
        self.records
            .sort_by_key(|record| record.occurred_at.map(|t| (t.seconds, t.nanos)));
        self.actions
            .sort_by_key(|action| action.at.map(|t| (t.seconds, t.nanos)));
        let truncated = stopped_early || self.has_enough(limit);
        self.records.truncate(limit);
        self.actions.truncate(limit);
        Answer {
            records: self.records,
            actions: self.actions,
            truncated,
        }
    }
}

/// Candidate objects grouped by hour, oldest hour first.
pub fn by_hour(mut candidates: Vec<(DateTime<Utc>, String)>) -> Vec<Vec<String>> {
    candidates.sort();
    let mut hours: Vec<(DateTime<Utc>, Vec<String>)> = Vec::new();
    for (hour, key) in candidates {
        match hours.last_mut() {
            Some((last, keys)) if *last == hour => keys.push(key),
            _ => hours.push((hour, vec![key])),
        }
    }
    hours.into_iter().map(|(_, keys)| keys).collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn query(limit: usize) -> TrailQuery {
        TrailQuery {
            field: Field::TraceId,
            id: "aa".repeat(16),
            from: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            to: Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap(),
            limit,
        }
    }

    fn line(trace_id: &str, offset: i64, minute: u32) -> String {
        serde_json::json!({
            "message_id": format!("m{offset}"),
            "trace_id": trace_id,
            "outcome": "DELIVERED",
            "occurred_at": format!("2026-01-01T10:{minute:02}:00Z"),
            "audit": {"topic": "relais.audit", "partition": 0, "offset": offset},
        })
        .to_string()
    }

    #[test]
    fn keeps_only_matching_lines_in_the_window_once_each() {
        let query = query(10);
        let mut collected = Collected::default();
        let object = [
            line(&query.id, 1, 5),
            line(&"bb".repeat(16), 2, 6),
            line(&query.id, 3, 7),
        ]
        .join("\n");
        collected.add_object(&query, object.as_bytes());
        // The same records again (an object rewritten under another key).
        collected.add_object(&query, object.as_bytes());
        let late = line(&query.id, 4, 8).replace("2026-01-01", "2026-01-03");
        collected.add_object(&query, late.as_bytes());
        let answer = collected.answer(query.limit, false);
        let ids: Vec<&str> = answer
            .records
            .iter()
            .map(|r| r.message_id.as_str())
            .collect();
        assert_eq!(ids, ["m1", "m3"]);
        assert!(!answer.truncated);
    }

    #[test]
    fn more_than_the_limit_is_enough_and_the_oldest_are_kept() {
        let query = query(2);
        let mut collected = Collected::default();
        let object = [
            line(&query.id, 1, 30),
            line(&query.id, 2, 10),
            line(&query.id, 3, 20),
        ]
        .join("\n");
        collected.add_object(&query, object.as_bytes());
        assert!(collected.has_enough(2));
        let answer = collected.answer(2, false);
        let ids: Vec<&str> = answer
            .records
            .iter()
            .map(|r| r.message_id.as_str())
            .collect();
        assert_eq!(ids, ["m2", "m3"]);
        assert!(answer.truncated);
    }

    #[test]
    fn exactly_the_limit_is_not_truncated_unless_hours_were_left() {
        let query = query(1);
        let mut collected = Collected::default();
        collected.add_object(&query, line(&query.id, 1, 30).as_bytes());
        assert!(!collected.has_enough(1));
        assert!(!Collected::default().answer(1, false).truncated);
        assert!(collected.answer(1, true).truncated);
    }

    #[test]
    fn candidates_are_read_hour_by_hour_oldest_first() {
        let hour = |h| Utc.with_ymd_and_hms(2026, 1, 1, h, 0, 0).unwrap();
        let grouped = by_hour(vec![
            (hour(5), "e".into()),
            (hour(3), "c2".into()),
            (hour(3), "c1".into()),
            (hour(4), "d".into()),
        ]);
        assert_eq!(grouped, vec![vec!["c1", "c2"], vec!["d"], vec!["e"]]);
    }
}
