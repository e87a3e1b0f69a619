//! The lookup index: a small Bloom filter object beside each data object, held in memory for
//! the query window, so a trail lookup reads only the data objects that can contain the id.
//!
//! `{data key}.idx` = `RLIX1` · k (u32) · bit count (u32) · hour (i64, unix seconds) · bits.
//! With 10 bits per id and k = 7 the false-positive rate is under 1 %: a lookup over a day of
//! objects fetches the one or two objects that hold the id, plus rarely one more.

use std::sync::RwLock;

use chrono::{DateTime, Utc};

const MAGIC: &[u8; 5] = b"RLIX1";
const BITS_PER_ID: usize = 10;
const HASHES: u32 = 7;

/// A Bloom filter over trace and message ids. FNV-1a is used (not std's hasher) because the
/// filter is stored: its hash must never change between versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bloom {
    bits: Vec<u8>,
    hashes: u32,
}

/// FNV-1a of `data` with two seeds at once (one pass over the id instead of two).
fn fnv1a_pair(data: &[u8], seeds: [u64; 2]) -> [u64; 2] {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hashes = seeds.map(|seed| 0xcbf2_9ce4_8422_2325u64 ^ seed);
    for byte in data {
        for hash in &mut hashes {
            *hash ^= u64::from(*byte);
            *hash = hash.wrapping_mul(PRIME);
        }
    }
    hashes
}

/// What the filter keeps of one id: its two hashes. Computed where the record is decoded, so
/// an object holds 16 bytes per id rather than the id itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdHash([u64; 2]);

impl IdHash {
    pub fn of(id: &str) -> Self {
        Self::of_bytes(id.as_bytes())
    }

    /// The hash of an id's UTF-8 bytes.
    pub fn of_bytes(id: &[u8]) -> Self {
        Self(fnv1a_pair(id, [0, 0x9e37_79b9_7f4a_7c15]))
    }
}

impl Bloom {
    pub fn with_capacity(ids: usize) -> Self {
        let bits = (ids.max(1) * BITS_PER_ID).div_ceil(8);
        Self {
            bits: vec![0; bits],
            hashes: HASHES,
        }
    }

    /// The bits an id sets: double hashing over the filter's bit count.
    fn positions(&self, id: IdHash) -> impl Iterator<Item = usize> + use<> {
        let IdHash([a, b]) = id;
        let (b, total) = (b | 1, (self.bits.len() * 8) as u64);
        (0..u64::from(self.hashes))
            .map(move |i| (a.wrapping_add(i.wrapping_mul(b)) % total) as usize)
    }

    pub fn insert(&mut self, id: IdHash) {
        for position in self.positions(id) {
            self.bits[position / 8] |= 1 << (position % 8);
        }
    }

    pub fn may_contain(&self, id: &str) -> bool {
        self.positions(IdHash::of(id))
            .all(|position| self.bits[position / 8] & (1 << (position % 8)) != 0)
    }
}

/// The index of one data object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub data_key: String,
    pub hour: DateTime<Utc>,
    pub bloom: Bloom,
}

impl IndexEntry {
    pub fn build(data_key: String, hour: DateTime<Utc>, ids: &[IdHash]) -> Self {
        let mut bloom = Bloom::with_capacity(ids.len());
        for id in ids {
            bloom.insert(*id);
        }
        Self {
            data_key,
            hour,
            bloom,
        }
    }

    pub fn index_key(data_key: &str) -> String {
        format!("{data_key}.idx")
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.bloom.bits.len() + 24);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.bloom.hashes.to_le_bytes());
        bytes.extend_from_slice(
            &u32::try_from(self.bloom.bits.len() * 8)
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        bytes.extend_from_slice(&self.hour.timestamp().to_le_bytes());
        bytes.extend_from_slice(&self.bloom.bits);
        bytes
    }

    /// Parses an index object; `None` for anything malformed (it is then ignored, and the data
    /// object is found by a scan of its hour instead — see the query).
    pub fn from_bytes(index_key: &str, bytes: &[u8]) -> Option<Self> {
        let data_key = index_key.strip_suffix(".idx")?.to_owned();
        let rest = bytes.strip_prefix(MAGIC.as_slice())?;
        let hashes = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?);
        let bit_count = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?) as usize;
        let hour = i64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
        let bits = rest.get(16..)?.to_vec();
        if bits.len() * 8 != bit_count || bits.is_empty() || hashes == 0 || hashes > 32 {
            return None;
        }
        Some(Self {
            data_key,
            hour: DateTime::from_timestamp(hour, 0)?,
            bloom: Bloom { bits, hashes },
        })
    }
}

/// Every index entry of the query window, in memory.
#[derive(Debug, Default)]
pub struct Index {
    entries: RwLock<Vec<IndexEntry>>,
}

impl Index {
    pub fn insert(&self, entry: IndexEntry) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !entries
            .iter()
            .any(|existing| existing.data_key == entry.data_key)
        {
            entries.push(entry);
        } else if let Some(existing) = entries
            .iter_mut()
            .find(|existing| existing.data_key == entry.data_key)
        {
            // A rewritten object (same key after a restart) may hold more records.
            *existing = entry;
        }
    }

    /// Data objects of hours within [from, to] that may hold `id`, with their hours.
    pub fn candidates(
        &self,
        id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<(DateTime<Utc>, String)> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .iter()
            .filter(|entry| entry.hour + chrono::Duration::hours(1) > from && entry.hour <= to)
            .filter(|entry| entry.bloom.may_contain(id))
            .map(|entry| (entry.hour, entry.data_key.clone()))
            .collect()
    }

    /// Drops entries older than `before` (the window moves on).
    pub fn forget_before(&self, before: DateTime<Utc>) {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|entry| entry.hour + chrono::Duration::hours(1) > before);
    }

    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn bloom_has_no_false_negatives_and_few_false_positives() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("{i:032x}")).collect();
        let hashes: Vec<IdHash> = ids.iter().map(|id| IdHash::of(id)).collect();
        let entry = IndexEntry::build("k".into(), Utc::now(), &hashes);
        assert!(ids.iter().all(|id| entry.bloom.may_contain(id)));
        let false_positives = (0..20_000)
            .filter(|i| entry.bloom.may_contain(&format!("other-{i}")))
            .count();
        assert!(false_positives < 400, "{false_positives} of 20000");
    }

    #[test]
    fn the_bits_an_id_sets_never_change() {
        // Stored filters are read by later versions: the hash and the positions are a format.
        let mut bloom = Bloom::with_capacity(4);
        bloom.insert(IdHash::of("00000000000000000000005eed000000"));
        bloom.insert(IdHash::of("load-17"));
        assert_eq!(bloom.bits, [0xbd, 0x04, 0x13, 0x40, 0x00]);
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let hour = Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap();
        let entry = IndexEntry::build(
            "audit/x.ndjson.gz".into(),
            hour,
            &[IdHash::of("a"), IdHash::of("b")],
        );
        let parsed = IndexEntry::from_bytes("audit/x.ndjson.gz.idx", &entry.to_bytes()).unwrap();
        assert_eq!(parsed, entry);
        assert!(IndexEntry::from_bytes("audit/x.ndjson.gz.idx", b"RLIX1\\x00").is_none());
        assert!(IndexEntry::from_bytes("audit/x.ndjson.gz.idx", b"garbage").is_none());

        let index = Index::default();
        index.insert(entry);
        assert_eq!(
            index.candidates("a", hour, hour + chrono::Duration::hours(1)),
            [(hour, "audit/x.ndjson.gz".to_owned())]
        );
        assert!(
            index
                .candidates(
                    "a",
                    hour + chrono::Duration::hours(2),
                    hour + chrono::Duration::hours(3)
                )
                .is_empty()
        );
    }
}
