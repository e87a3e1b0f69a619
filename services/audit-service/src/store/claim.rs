//! Whose object a key holds. Keys are functions of a record's position (partition, offset,
//! event hour), and a position names other records once the topic was deleted and created
//! again, or a partition's log truncated: the new log's objects would take the old log's keys
//! and replace them. So an object is stored only where no object is yet (`If-None-Match: *`);
//! where one is, its first bytes are read back and compared with the item's:
//!
//! - the same first record: a write of the same object again (after a crash, a timeout whose
//!   PUT was applied, a partition that moved), which replaces it as before;
//! - another record: an object of another log, which is kept, and the item is stored under
//!   its second key (`object::second_key`), marked with a hash of its first record, so that
//!   writing it again finds the same key.

use std::io::Write as _;

use crate::object::Pending;

use super::sigv4;

/// What tells an item's log from another's: the bytes its object starts with.
#[derive(Debug, Clone)]
pub(super) struct Identity {
    /// A data object's first line with its newline, or a quarantined record's bytes.
    start: Vec<u8>,
    /// Whether `start` is the whole object (a quarantined record).
    whole: bool,
}

impl Identity {
    pub(super) fn of(item: &Pending) -> Self {
        match item {
            Pending::Data(object) => Self {
                start: object.ndjson.first_line(),
                whole: false,
            },
            Pending::Quarantine(record) => Self {
                start: record.payload.clone(),
                whole: true,
            },
        }
    }

    /// The decoded bytes of a stored object needed to compare it: one more than the item's
    /// start, so that a longer object is told apart from one that ends there.
    pub(super) fn wanted(&self) -> usize {
        self.start.len() + 1
    }

    /// Whether a stored object whose decoded content starts with `stored` (at most
    /// [`wanted`](Self::wanted) bytes, fewer when the object is shorter) holds the same first
    /// record.
    pub(super) fn matches(&self, stored: &[u8]) -> bool {
        if self.whole {
            stored == self.start
        } else {
            stored.starts_with(&self.start)
        }
    }

    /// The mark of the item's second key: 16 hex digits of its start's SHA-256.
    pub(super) fn mark(&self) -> String {
        let mut hash = sigv4::sha256_hex(&self.start);
        hash.truncate(16);
        hash
    }
}

/// Decodes a stored object's start from its compressed pieces, as they arrive, by the
/// compression its key names.
pub(super) enum StartDecoder {
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Vec<u8>>>),
    Plain(Vec<u8>),
}

impl StartDecoder {
    pub(super) fn for_key(key: &str) -> std::io::Result<Self> {
        Ok(if key.ends_with(".ndjson.gz") {
            Self::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new())))
        } else if key.ends_with(".ndjson.zst") {
            Self::Zstd(Box::new(zstd::stream::write::Decoder::new(Vec::new())?))
        } else {
            Self::Plain(Vec::new())
        })
    }

    /// Decodes the next compressed piece.
    pub(super) fn feed(&mut self, piece: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Gzip(decoder) => {
                decoder.write_all(piece)?;
                decoder.flush()
            }
            Self::Zstd(decoder) => {
                decoder.write_all(piece)?;
                decoder.flush()
            }
            Self::Plain(bytes) => {
                bytes.extend_from_slice(piece);
                Ok(())
            }
        }
    }

    /// What was decoded so far.
    pub(super) fn decoded(&self) -> &[u8] {
        match self {
            Self::Gzip(decoder) => decoder.get_ref(),
            Self::Zstd(decoder) => decoder.get_ref(),
            Self::Plain(bytes) => bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;
    use crate::config::Compression;
    use crate::object::{ChunkPool, DataObject, Ndjson, QuarantinedRecord};
    use crate::store::compress::compress;

    fn data(text: &[u8]) -> Pending {
        let mut ndjson = Ndjson::pooled(Arc::new(ChunkPool::new(0)));
        ndjson.push_text(text);
        Pending::Data(DataObject {
            partition: 0,
            start_offset: 0,
            end_offset: 0,
            hour: chrono::DateTime::UNIX_EPOCH,
            records: text.iter().filter(|&&byte| byte == b'\n').count(),
            ndjson,
            ids: Vec::new(),
            links: Vec::new(),
            first_arrival: Instant::now(),
        })
    }

    fn quarantined(payload: &[u8]) -> Pending {
        Pending::Quarantine(QuarantinedRecord {
            partition: 0,
            offset: 0,
            key: None,
            payload: payload.to_vec(),
            error: String::new(),
            first_arrival: Instant::now(),
        })
    }

    #[test]
    fn an_object_of_the_same_first_record_matches_whatever_follows_it() {
        let item = Identity::of(&data(b"{\"a\":1}\n{\"b\":2}\n"));
        assert_eq!(item.wanted(), 9);
        assert!(item.matches(b"{\"a\":1}\n{"), "written again, another end");
        assert!(item.matches(b"{\"a\":1}\n"), "one line only");
        assert!(!item.matches(b"{\"a\":2}\n{"), "another first record");
        assert!(!item.matches(b"{\"a\":1}x"), "a longer first line");
        assert!(!item.matches(b""), "an empty object");
    }

    #[test]
    fn a_quarantined_record_matches_only_the_same_bytes() {
        let item = Identity::of(&quarantined(b"\x00\x01bad"));
        assert!(item.matches(b"\x00\x01bad"));
        assert!(!item.matches(b"\x00\x01ba"), "shorter");
        assert!(!item.matches(b"\x00\x01bad!"), "longer");
    }

    #[test]
    fn the_mark_is_a_function_of_the_first_record_only() {
        let first = Identity::of(&data(b"{\"a\":1}\n{\"b\":2}\n")).mark();
        assert_eq!(first.len(), 16);
        assert!(first.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_eq!(first, Identity::of(&data(b"{\"a\":1}\n")).mark());
        assert_ne!(first, Identity::of(&data(b"{\"a\":2}\n")).mark());
    }

    #[test]
    fn the_start_of_a_stored_object_is_decoded_piece_by_piece() {
        let lines: Vec<u8> = (0..20_000)
            .flat_map(|index| format!("{{\"n\":{index}}}\n").into_bytes())
            .collect();
        let mut ndjson = Ndjson::default();
        ndjson.push_text(&lines);
        for (compression, key) in [
            (Compression::Gzip, "a+0+1.ndjson.gz"),
            (Compression::Zstd, "a+0+1.ndjson.zst"),
        ] {
            let stored = compress(&ndjson, compression, 3);
            let mut decoder = StartDecoder::for_key(key).unwrap();
            for piece in stored.chunks(100) {
                decoder.feed(piece).unwrap();
                if decoder.decoded().len() >= 50 {
                    break;
                }
            }
            assert!(decoder.decoded().len() >= 50, "{key}");
            assert!(lines.starts_with(decoder.decoded()), "{key}");
        }
        let mut plain = StartDecoder::for_key("q/t+0+1.bin").unwrap();
        plain.feed(b"ab").unwrap();
        plain.feed(b"c").unwrap();
        assert_eq!(plain.decoded(), b"abc");
    }
}
