//! The WebSocket protocol: what the gateway sends, and how a client names what it has seen.
//!
//! Every frame is a JSON text message with a `type`:
//! - `welcome`: first frame; the feed's `position` (the last event id per partition) and the
//!   subscription's filter;
//! - `gap`: after a resume, the stretches the gateway could no longer replay;
//! - `event`: one event, with its `id` (`partition:offset`);
//! - `replayed`: after a resume, how many missed events were sent before the live feed;
//! - `position`: the client's position now (keeps a filtered client's resume point current);
//! - `lagged`: the client fell too far behind and is being disconnected.
//!
//! A client resumes by reconnecting with `resume=` set to its last event id per partition
//! (`0:812,1:790,...`): the ids of the last events it received, updated from `position`
//! frames. See docs/realtime-gateway.md.

use std::collections::BTreeMap;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;

use crate::event::{EventId, EventView};
use crate::history::{Gap, Position};

/// The frame of one event; built once per event and shared by every client.
pub fn event_frame(view: &EventView) -> Utf8Bytes {
    #[derive(Serialize)]
    struct EventFrame<'a> {
        r#type: &'static str,
        id: &'a str,
        event: &'a EventView,
    }
    let frame = EventFrame {
        r#type: "event",
        id: &view.id,
        event: view,
    };
    // Serialising plain strings and numbers cannot fail.
    serde_json::to_string(&frame).unwrap_or_default().into()
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlFrame<'a> {
    Welcome {
        connection: u64,
        position: Vec<String>,
        filter: &'a BTreeMap<&'static str, String>,
        resumed: bool,
    },
    Gap {
        gaps: &'a [Gap],
        message: &'static str,
    },
    Replayed {
        count: usize,
        position: Vec<String>,
    },
    Position {
        position: Vec<String>,
    },
    Lagged {
        missed: u64,
        message: &'static str,
    },
}

impl ControlFrame<'_> {
    pub fn encode(&self) -> Utf8Bytes {
        serde_json::to_string(self).unwrap_or_default().into()
    }
}

/// A position as the list of event ids a client sends back in `resume=`.
pub fn position_ids(position: &Position) -> Vec<String> {
    position
        .iter()
        .filter(|(_, offset)| **offset >= 0)
        .map(|(partition, offset)| {
            EventId {
                partition: *partition,
                offset: *offset,
            }
            .to_string()
        })
        .collect()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("resume must list event ids (partition:offset) separated by commas, one per partition")]
pub struct BadResume;

/// Parses `resume=0:812,1:790`; the highest offset wins if a partition is named twice.
pub fn parse_resume(text: &str) -> Result<Position, BadResume> {
    let mut position = Position::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id: EventId = part.parse().map_err(|_| BadResume)?;
        let offset = position.entry(id.partition).or_insert(id.offset);
        *offset = (*offset).max(id.offset);
    }
    if position.len() > 10_000 {
        return Err(BadResume);
    }
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_lists_parse_and_print_back() {
        let position = parse_resume("0:812, 1:790,1:700,").unwrap();
        assert_eq!(position, Position::from([(0, 812), (1, 790)]));
        assert_eq!(position_ids(&position), ["0:812", "1:790"]);
        assert_eq!(parse_resume("0:1,x"), Err(BadResume));
        assert_eq!(parse_resume(""), Ok(Position::new()));
    }
}
