//! Messages for unit tests.

use std::time::SystemTime;

use super::Inbound;

/// An ingress message at offset 7 of partition 3, read now.
pub(crate) fn inbound(payload: Vec<u8>, key: &[u8], headers: &[(&str, &[u8])]) -> Inbound {
    Inbound {
        topic: "relais.ingress".into(),
        topic_index: crate::tracker::INGRESS,
        partition: 3,
        offset: 7,
        generation: 1,
        key: Some(key.to_vec()),
        payload,
        headers: headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.to_vec()))
            .collect(),
        timestamp: None,
        received_at: SystemTime::now(),
        retry: None,
    }
}
