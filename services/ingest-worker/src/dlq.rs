//! Dead-letter copies that stay bounded whatever was read.
//!
//! A DLQ copy carries the original message so that a replay is the same message, but every
//! record the worker writes must stay below the broker's size limit: a copy keeps at most
//! the configured share of payload, headers and key and says in headers what it left out, and
//! [`shrink_refused`] cuts a copy the broker refused anyway down to its bare minimum.

use crate::records::{Inbound, OutHeader, OutRecord, copied_header, header, headers};

/// How much of the original message a DLQ copy keeps, so that every record the worker writes
/// stays below the broker's size limit whatever it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DlqLimits {
    pub max_payload_bytes: usize,
    /// Names and values of the original headers, added up.
    pub max_header_bytes: usize,
    pub max_key_bytes: usize,
}

/// The part of an original message that goes into its DLQ copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DlqCopy {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Vec<u8>,
    /// The original headers kept (the producer's `traceparent` and any `relais-dlq-*` left out).
    pub(crate) headers: Vec<OutHeader>,
    /// Headers describing what was left out; empty when the copy is whole.
    pub(crate) truncation: Vec<(&'static str, String)>,
}

impl DlqCopy {
    pub(crate) fn of(inbound: &Inbound, limits: DlqLimits) -> Self {
        let mut cut = Vec::new();
        let payload = if inbound.payload.len() > limits.max_payload_bytes {
            cut.push("payload");
            inbound.payload[..limits.max_payload_bytes].to_vec()
        } else {
            inbound.payload.clone()
        };
        let key = inbound.key.as_ref().map(|key| {
            if key.len() > limits.max_key_bytes {
                cut.push("key");
                key[..limits.max_key_bytes].to_vec()
            } else {
                key.clone()
            }
        });
        let mut headers = Vec::new();
        let (mut header_bytes, mut dropped) = (0, 0usize);
        for (name, value) in &inbound.headers {
            if name == headers::TRACEPARENT
                || headers::DLQ_ALL.contains(&name.as_str())
                || crate::retry::headers::ALL.contains(&name.as_str())
            {
                continue;
            }
            let size = name.len() + value.len();
            if header_bytes + size > limits.max_header_bytes {
                dropped += 1;
                continue;
            }
            header_bytes += size;
            headers.push(copied_header((name.clone(), value.clone())));
        }
        if dropped > 0 {
            cut.push("headers");
        }
        let mut truncation = Vec::new();
        if !cut.is_empty() {
            truncation.push((headers::DLQ_TRUNCATED, cut.join(",")));
            if cut.contains(&"payload") {
                truncation.push((
                    headers::DLQ_ORIGINAL_BYTES,
                    inbound.payload.len().to_string(),
                ));
                truncation.push((headers::DLQ_ORIGINAL_SHA256, sha256_hex(&inbound.payload)));
            }
            if dropped > 0 {
                truncation.push((headers::DLQ_HEADERS_DROPPED, dropped.to_string()));
            }
        }
        Self {
            key,
            payload,
            headers,
            truncation,
        }
    }
}

/// True for a DLQ copy that left part of its original out.
pub fn is_truncated_dlq_copy(record: &OutRecord) -> bool {
    record
        .headers
        .iter()
        .any(|(name, _)| name == headers::DLQ_TRUNCATED)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Key bytes a shrunk DLQ copy keeps.
const BARE_KEY_BYTES: usize = 256;

impl OutRecord {
    /// Bytes of key, payload and headers.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.payload.len()
            + self
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }

    fn is_dlq_copy(&self) -> bool {
        self.headers
            .iter()
            .any(|(name, _)| name == headers::DLQ_REASON)
    }

    /// How many of the original message's headers a DLQ copy carries.
    fn original_headers(&self) -> usize {
        self.headers
            .iter()
            .filter(|(name, _)| {
                name != headers::TRACEPARENT && !headers::DLQ_ALL.contains(&name.as_ref())
            })
            .count()
    }
}

/// True for a DLQ copy that [`shrink_refused`] can still make smaller.
pub fn can_shrink(record: &OutRecord) -> bool {
    record.is_dlq_copy()
        && (!record.payload.is_empty()
            || record.original_headers() > 0
            || record
                .key
                .as_ref()
                .is_some_and(|key| key.len() > BARE_KEY_BYTES))
}

/// Reduces a DLQ copy the broker refused to what cannot be refused for its size: no payload,
/// none of the original headers, a short key. False when the record is not a DLQ copy or is
/// already as small as it gets (the outcome records are bounded by construction).
pub fn shrink_refused(record: &mut OutRecord) -> bool {
    if !can_shrink(record) {
        return false;
    }
    let originals = record.original_headers();
    let original_bytes = record
        .headers
        .iter()
        .find(|(name, _)| name == headers::DLQ_ORIGINAL_BYTES)
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned());
    let original_sha = record
        .headers
        .iter()
        .find(|(name, _)| name == headers::DLQ_ORIGINAL_SHA256)
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned());
    let (original_bytes, original_sha) = match (original_bytes, original_sha) {
        (Some(bytes), Some(sha)) => (bytes, sha),
        _ => (
            record.payload.len().to_string(),
            sha256_hex(&record.payload),
        ),
    };
    record.headers.retain(|(name, _)| {
        (name == headers::TRACEPARENT || headers::DLQ_ALL.contains(&name.as_ref()))
            && ![
                headers::DLQ_TRUNCATED,
                headers::DLQ_ORIGINAL_BYTES,
                headers::DLQ_ORIGINAL_SHA256,
                headers::DLQ_HEADERS_DROPPED,
            ]
            .contains(&name.as_ref())
    });
    let mut cut = vec!["payload"];
    if originals > 0 {
        cut.push("headers");
    }
    if let Some(key) = &mut record.key
        && key.len() > BARE_KEY_BYTES
    {
        key.truncate(BARE_KEY_BYTES);
        cut.push("key");
    }
    for (name, value) in [
        (headers::DLQ_TRUNCATED, cut.join(",")),
        (headers::DLQ_ORIGINAL_BYTES, original_bytes),
        (headers::DLQ_ORIGINAL_SHA256, original_sha),
        (headers::DLQ_HEADERS_DROPPED, originals.to_string()),
    ] {
        record.headers.push(header(name, value));
    }
    record.payload.clear();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DlqLimits = DlqLimits {
        max_payload_bytes: 100,
        max_header_bytes: 48,
        max_key_bytes: 8,
    };

    use crate::records::fixtures::inbound;

    fn header<'a>(
        headers: &'a [(impl AsRef<str>, impl AsRef<[u8]>)],
        name: &str,
    ) -> Option<&'a [u8]> {
        headers
            .iter()
            .find(|(kept, _)| kept.as_ref() == name)
            .map(|(_, value)| value.as_ref())
    }

    #[test]
    fn a_message_within_the_limits_is_copied_whole() {
        let message = inbound(
            b"{}".to_vec(),
            b"k",
            &[
                ("tenant", b"a"),
                (headers::TRACEPARENT, b"00-x"),
                (headers::DLQ_REASON, b"old"),
            ],
        );
        let copy = DlqCopy::of(&message, LIMITS);
        assert_eq!(copy.payload, b"{}");
        assert_eq!(copy.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(copy.headers, vec![super::header("tenant", b"a")]);
        assert!(copy.truncation.is_empty());
    }

    #[test]
    fn an_oversized_message_is_cut_and_says_what_it_was() {
        let payload = vec![b'x'; 1000];
        let long_value = [b'v'; 30];
        let message = inbound(
            payload.clone(),
            b"a-very-long-key",
            &[
                ("first", &long_value),
                ("second", &long_value),
                ("third", b"1"),
            ],
        );
        let copy = DlqCopy::of(&message, LIMITS);
        assert_eq!(copy.payload.len(), 100);
        assert_eq!(copy.key.as_deref(), Some(&b"a-very-l"[..]));
        assert_eq!(
            copy.headers
                .iter()
                .map(|(name, _)| &**name)
                .collect::<Vec<_>>(),
            ["first", "third"]
        );
        assert_eq!(
            header(&copy.truncation, headers::DLQ_TRUNCATED),
            Some(&b"payload,key,headers"[..])
        );
        assert_eq!(
            header(&copy.truncation, headers::DLQ_ORIGINAL_BYTES),
            Some(&b"1000"[..])
        );
        assert_eq!(
            header(&copy.truncation, headers::DLQ_HEADERS_DROPPED),
            Some(&b"1"[..])
        );
        assert_eq!(
            header(&copy.truncation, headers::DLQ_ORIGINAL_SHA256).map(<[u8]>::len),
            Some(64)
        );
        assert_eq!(
            header(&copy.truncation, headers::DLQ_ORIGINAL_SHA256),
            Some(sha256_hex(&payload).as_bytes())
        );
    }

    #[test]
    fn a_refused_dlq_copy_shrinks_once_and_outcome_records_never() {
        let mut record = OutRecord {
            topic: "relais.dlq".into(),
            partition: None,
            key: Some(vec![b'k'; 1000]),
            payload: vec![b'x'; 5000],
            headers: vec![
                super::header("tenant", b"a"),
                super::header(headers::TRACEPARENT, b"00-x"),
                super::header(headers::DLQ_REASON, b"payload_too_large"),
            ],
        };
        let sha = sha256_hex(&record.payload);
        assert!(shrink_refused(&mut record));
        assert!(record.payload.is_empty());
        assert_eq!(record.key.as_ref().map(Vec::len), Some(256));
        assert_eq!(header(&record.headers, "tenant"), None);
        assert_eq!(
            header(&record.headers, headers::DLQ_REASON),
            Some(&b"payload_too_large"[..])
        );
        assert_eq!(
            header(&record.headers, headers::DLQ_TRUNCATED),
            Some(&b"payload,headers,key"[..])
        );
        assert_eq!(
            header(&record.headers, headers::DLQ_ORIGINAL_BYTES),
            Some(&b"5000"[..])
        );
        assert_eq!(
            header(&record.headers, headers::DLQ_ORIGINAL_SHA256),
            Some(sha.as_bytes())
        );
        assert!(!shrink_refused(&mut record), "nothing left to cut");

        let mut audit = OutRecord {
            topic: "relais.audit".into(),
            partition: None,
            key: None,
            payload: vec![1; 10],
            headers: vec![super::header(headers::TRACEPARENT, b"00-x")],
        };
        assert!(!shrink_refused(&mut audit));
    }
}
