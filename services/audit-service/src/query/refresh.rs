//! Keeping the in-memory index in step with RGW: loaded for the whole window at start-up, then
//! refreshed every 30 s for the whole window too, because other replicas store objects in any
//! hour of it (a late event, a replayed message) and rewrite objects under the same key (after
//! a restart or a partition move). A refresh lists every hour of the window and reads only the
//! `.idx` objects that are new or changed (by ETag), so its cost is one LIST per hour plus what
//! changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use relais_telemetry::shutdown::CancellationToken;

use super::WINDOW;
use crate::index::{Index, IndexEntry};
use crate::store::Store;

/// The ETag of each `.idx` object already in the index.
pub type Known = HashMap<String, String>;

/// Loads the `.idx` objects of the hours in [from, to] that are not in `known` with the same
/// ETag; returns how many were loaded.
pub async fn load_index(
    store: &Store,
    index: &Index,
    known: &mut Known,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> usize {
    let mut loaded = 0;
    let mut hour = crate::object::hour_of(from);
    while hour <= to {
        match store.list_with_etags(&store.hour_prefix(hour)).await {
            Ok(objects) => {
                for (key, etag) in objects.into_iter().filter(|(key, _)| key.ends_with(".idx")) {
                    if known.get(&key) == Some(&etag) {
                        continue;
                    }
                    match store.get(&key).await {
                        Ok(bytes) => match IndexEntry::from_bytes(&key, &bytes) {
                            Some(entry) => {
                                index.insert(entry);
                                known.insert(key, etag);
                                loaded += 1;
                            }
                            None => tracing::warn!(key = %key, "malformed index object ignored"),
                        },
                        Err(error) => {
                            tracing::warn!(key = %key, %error, "cannot read index object")
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list index objects"),
        }
        hour += chrono::Duration::hours(1);
    }
    loaded
}

/// Loads the window at start-up, then refreshes it until shutdown.
pub async fn maintain_index(
    store: Arc<Store>,
    index: Arc<Index>,
    ready: relais_telemetry::admin::ReadinessCheck,
    shutdown: CancellationToken,
) {
    let mut known = Known::new();
    let now = Utc::now();
    let loaded = load_index(&store, &index, &mut known, now - WINDOW, now).await;
    tracing::info!(loaded, "lookup index loaded");
    ready.set_ready();
    let mut ticker = tokio::time::interval(Duration::from_secs(30));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Utc::now();
        let loaded = load_index(&store, &index, &mut known, now - WINDOW, now).await;
        tracing::debug!(loaded, "lookup index refreshed");
        let before = now - WINDOW;
        index.forget_before(before);
        known.retain(|key, _| !is_before(key, before));
    }
}

/// Whether an `.idx` key's hour (from its `dt=…/hour=…` path) ends before `before`.
fn is_before(key: &str, before: DateTime<Utc>) -> bool {
    let mut parts = key.split('/');
    let date = parts.find_map(|part| part.strip_prefix("dt="));
    let hour = parts.find_map(|part| part.strip_prefix("hour="));
    let (Some(date), Some(hour)) = (date, hour) else {
        return false;
    };
    let Ok(start) =
        chrono::NaiveDateTime::parse_from_str(&format!("{date} {hour}:00:00"), "%Y-%m-%d %H:%M:%S")
    else {
        return false;
    };
    start.and_utc() + chrono::Duration::hours(1) <= before
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn an_index_key_is_forgotten_once_its_hour_has_left_the_window() {
        let key = "audit/dt=2026-11-27/hour=10/relais.audit+0+00000000000000000000.ndjson.gz.idx";
        let at = |h, m| Utc.with_ymd_and_hms(2026, 11, 27, h, m, 0).unwrap();
        assert!(!is_before(key, at(10, 59)));
        assert!(is_before(key, at(11, 0)));
        assert!(!is_before("not/a/dated/key.idx", at(23, 0)));
    }
}
