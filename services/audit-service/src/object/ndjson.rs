//! An object's NDJSON text, held in chunks so that it grows without moving.
//!
//! A contiguous buffer that doubles up to an object's size copies about as much again as it
//! holds, and for a moment holds both copies. Chunks start small, so that the many small
//! objects of quiet partitions stay small, and double up to a bound, so that a large object is
//! a few dozen allocations; what a chunk holds is never copied again before compression.
//! Chunks of the bound come from a [`ChunkPool`] and go back to it when the text is dropped.
//! A run of lines encoded together can also become a chunk as it is ([`Ndjson::adopt_text`]),
//! so chunk boundaries depend on how the lines arrived: only the text is a function of the
//! input, and whatever reads it must not depend on where the chunks are cut.

use std::sync::Arc;

use super::chunks::{CHUNK_BYTES as MAX_CHUNK_BYTES, ChunkPool};

/// The first chunk's capacity.
const FIRST_CHUNK_BYTES: usize = 64 * 1024;

/// The least text [`Ndjson::adopt_text`] moves in as a chunk when it is not one of the pool's:
/// smaller runs are copied, so that a quiet partition's object is not a list of tiny chunks.
const MIN_ADOPTED_BYTES: usize = 16 * 1024;

/// The lines of one object, each followed by its newline.
#[derive(Debug, Clone, Default)]
pub struct Ndjson {
    chunks: Vec<Vec<u8>>,
    len: usize,
    pool: Option<Arc<ChunkPool>>,
}

impl Ndjson {
    /// Empty text whose full-size chunks come from `pool` and go back to it.
    pub fn pooled(pool: Arc<ChunkPool>) -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            pool: Some(pool),
        }
    }

    /// Bytes held, newlines included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one line (given without its newline) and its newline.
    pub fn push_line(&mut self, line: &[u8]) {
        self.append(line);
        self.append(b"\n");
    }

    /// Appends whole lines, each already followed by its newline, copied.
    pub fn push_text(&mut self, text: &[u8]) {
        self.append(text);
    }

    /// Appends whole lines, each already followed by its newline: moved in as a chunk of its
    /// own when `text` is worth one, copied otherwise. A chunk of the pool's size is moved in
    /// when at least half full (it goes back to the pool with the others); another buffer when
    /// it holds at least [`MIN_ADOPTED_BYTES`], without its spare room, since the object holds
    /// it until stored and only the text counts against the buffer's bound.
    pub fn adopt_text(&mut self, mut text: Vec<u8>) {
        let pooled = text.capacity() == MAX_CHUNK_BYTES;
        let worth_a_chunk = if pooled {
            text.len() >= MAX_CHUNK_BYTES / 2
        } else {
            text.len() >= MIN_ADOPTED_BYTES
        };
        if !worth_a_chunk {
            self.append(&text);
            if let Some(pool) = &self.pool {
                pool.give(text);
            }
            return;
        }
        if !pooled {
            text.shrink_to_fit();
        }
        self.len += text.len();
        self.chunks.push(text);
    }

    /// The text in order, as the chunks hold it.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks.iter().map(Vec::as_slice)
    }

    /// The first line with its newline (the whole text if it has none).
    pub fn first_line(&self) -> Vec<u8> {
        let mut line = Vec::new();
        for chunk in self.chunks() {
            match chunk.iter().position(|&byte| byte == b'\n') {
                Some(end) => {
                    line.extend_from_slice(&chunk[..=end]);
                    break;
                }
                None => line.extend_from_slice(chunk),
            }
        }
        line
    }

    /// The text as one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    fn append(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len();
        while !bytes.is_empty() {
            let chunk = self.chunk_with_room();
            let taken = bytes.len().min(chunk.capacity() - chunk.len());
            chunk.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
        }
    }

    /// The last chunk, or a new one when it is full.
    fn chunk_with_room(&mut self) -> &mut Vec<u8> {
        let full = self
            .chunks
            .last()
            .is_none_or(|chunk| chunk.len() == chunk.capacity());
        if full {
            let capacity = self.chunks.last().map_or(FIRST_CHUNK_BYTES, |last| {
                (last.capacity() * 2).min(MAX_CHUNK_BYTES)
            });
            let chunk = match &self.pool {
                Some(pool) if capacity == MAX_CHUNK_BYTES => pool.take(),
                _ => Vec::with_capacity(capacity),
            };
            self.chunks.push(chunk);
        }
        // Not empty: a chunk was pushed above if there was none.
        let last = self.chunks.len() - 1;
        &mut self.chunks[last]
    }
}

impl Drop for Ndjson {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            for chunk in self.chunks.drain(..) {
                pool.give(chunk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn the_text_is_the_lines_each_followed_by_a_newline(
            lines in proptest::collection::vec((0..400_000_usize, any::<u8>()), 0..16),
        ) {
            let mut ndjson = Ndjson::default();
            let mut expected = Vec::new();
            for (index, (len, fill)) in lines.into_iter().enumerate() {
                // Lines of different bytes, so a misplaced chunk shows.
                let line: Vec<u8> = (0..len).map(|at| fill.wrapping_add((at + index) as u8)).collect();
                ndjson.push_line(&line);
                expected.extend_from_slice(&line);
                expected.push(b'\n');
            }
            prop_assert_eq!(ndjson.len(), expected.len());
            let first_line = expected.iter().position(|&byte| byte == b'\n')
                .map_or(&expected[..], |end| &expected[..=end]);
            prop_assert_eq!(&ndjson.first_line()[..], first_line);
            prop_assert_eq!(ndjson.to_vec(), expected);
        }
    }

    #[test]
    fn full_size_chunks_come_from_the_pool_and_go_back_when_the_text_is_dropped() {
        let pool = Arc::new(ChunkPool::new(64 * MAX_CHUNK_BYTES));
        let line = vec![b'x'; 999];
        let filled = || {
            let mut ndjson = Ndjson::pooled(Arc::clone(&pool));
            while ndjson.len() < 4 * MAX_CHUNK_BYTES {
                ndjson.push_line(&line);
            }
            ndjson
        };
        let first = filled();
        let expected = first.to_vec();
        // 64, 128, 256 and 512 KiB, then full-size chunks.
        let full_size: Vec<*const u8> = first.chunks().skip(4).map(<[u8]>::as_ptr).collect();
        assert_eq!(pool.kept(), 0);
        drop(first);
        assert_eq!(
            pool.kept(),
            full_size.len(),
            "the full-size chunks are kept"
        );

        let second = filled();
        assert_eq!(second.to_vec(), expected, "kept chunks start empty");
        assert_eq!(pool.kept(), 0);
        let mut reused: Vec<*const u8> = second.chunks().skip(4).map(<[u8]>::as_ptr).collect();
        reused.reverse();
        assert_eq!(reused, full_size, "every kept chunk was taken again");
    }

    #[test]
    fn chunks_are_filled_before_the_next_and_double_up_to_their_bound() {
        let mut ndjson = Ndjson::default();
        let line = vec![b'x'; 999];
        while ndjson.len() < 8 * MAX_CHUNK_BYTES {
            ndjson.push_line(&line);
        }
        let sizes: Vec<usize> = ndjson.chunks().map(<[u8]>::len).collect();
        let (last, full) = sizes.split_last().unwrap();
        assert!(*last <= MAX_CHUNK_BYTES);
        let mut capacity = FIRST_CHUNK_BYTES;
        for size in full {
            assert_eq!(*size, capacity, "{sizes:?}");
            capacity = (capacity * 2).min(MAX_CHUNK_BYTES);
        }
    }

    #[test]
    fn large_runs_are_moved_in_without_their_spare_room_and_small_ones_copied() {
        let mut ndjson = Ndjson::default();
        let mut large = Vec::with_capacity(4 * MIN_ADOPTED_BYTES);
        large.extend(std::iter::repeat_n(b'a', MIN_ADOPTED_BYTES - 1));
        large.push(b'\n');
        ndjson.adopt_text(large);
        ndjson.adopt_text(b"small\n".to_vec());
        ndjson.push_line(b"copied");
        let chunks: Vec<&[u8]> = ndjson.chunks().collect();
        assert_eq!(chunks.len(), 2, "the small run and the line share a chunk");
        assert_eq!(chunks[0].len(), MIN_ADOPTED_BYTES);
        assert_eq!(chunks[1], b"small\ncopied\n");
        assert_eq!(ndjson.len(), MIN_ADOPTED_BYTES + 13);
        assert_eq!(
            ndjson.chunks[0].capacity(),
            MIN_ADOPTED_BYTES,
            "no spare room held"
        );
    }

    #[test]
    fn a_chunk_of_the_pool_is_moved_in_when_half_full_and_given_back_otherwise() {
        let pool = Arc::new(ChunkPool::new(8 * MAX_CHUNK_BYTES));
        let mut ndjson = Ndjson::pooled(Arc::clone(&pool));
        let mut half = pool.take();
        half.resize(MAX_CHUNK_BYTES / 2 - 1, b'h');
        half.push(b'\n');
        ndjson.adopt_text(half);
        assert_eq!(
            ndjson.chunks.last().map(Vec::capacity),
            Some(MAX_CHUNK_BYTES),
            "kept whole"
        );
        let mut little = pool.take();
        little.extend_from_slice(b"little\n");
        ndjson.adopt_text(little);
        assert_eq!(pool.kept(), 1, "copied, and the chunk given back");
        assert_eq!(
            ndjson.chunks.len(),
            1,
            "copied into the spare room of the last chunk"
        );
        assert_eq!(ndjson.len(), MAX_CHUNK_BYTES / 2 + 7);
        drop(ndjson);
        assert_eq!(pool.kept(), 2, "the adopted chunk goes back too");
    }
}
