//! Any bytes on `relais.events`: the gateway either refuses them with a reason or takes an
//! event whose WebSocket frame is valid JSON carrying the right id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relais_realtime_gateway::event::{Event, EventId};
use relais_realtime_gateway::protocol::event_frame;

fuzz_target!(|payload: &[u8]| {
    let id = EventId {
        partition: 3,
        offset: 42,
    };
    let Ok(event) = Event::decode(id, payload) else {
        return;
    };
    let frame = event_frame(&event.view);
    let parsed: serde_json::Value = serde_json::from_str(frame.as_str()).expect("frame is JSON");
    assert_eq!(parsed["id"], "3:42");
    assert_eq!(parsed["event"]["trace_id"], event.view.trace_id);
});
