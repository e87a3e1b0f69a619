//! Any bytes: the normaliser returns an event or a rejection, never panics, and an accepted
//! event survives a second normalisation unchanged.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use relais_ingress::{Limits, Normaliser};

fuzz_target!(|payload: &[u8]| {
    let now = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).single().expect("valid time");
    let normaliser = Normaliser::new(Limits::default(), ["orders".to_owned()]);
    if let Ok(event) = normaliser.normalise(payload, now) {
        let again = serde_json_round_trip(&normaliser, &event, now);
        assert_eq!(again.as_ref(), Some(&event), "normalisation is idempotent");
    }
});

fn serde_json_round_trip(
    normaliser: &Normaliser,
    event: &relais_ingress::IngressEvent,
    now: chrono::DateTime<Utc>,
) -> Option<relais_ingress::IngressEvent> {
    let bytes = relais_ingress::IngressEvent::to_json_bytes(event);
    normaliser.normalise(&bytes, now).ok()
}
