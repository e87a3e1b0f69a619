//! Full-size chunks of stored objects, kept for the objects and the encoders' runs that follow.
//!
//! A new chunk's pages are mapped and zeroed by the kernel as they are first written, and
//! glibc hands freed blocks of this size back to the kernel, so without reuse every megabyte
//! of every object paid for its page faults again. A chunk given back here keeps its pages.
//!
//! The pool never makes the process hold more than it already did: it only keeps chunks that
//! objects have let go of, and new objects take from it before allocating, so chunks held and
//! kept together never exceed the most ever held at once. Its bound caps that further, and a
//! pool that was not drawn from between two checks is emptied, so a service that stopped
//! receiving gives the memory back.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// The capacity of every chunk the pool hands out and keeps.
pub(super) const CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
pub struct ChunkPool {
    state: Mutex<State>,
    max_chunks: usize,
}

#[derive(Debug, Default)]
struct State {
    free: Vec<Vec<u8>>,
    taken_since_check: bool,
}

impl ChunkPool {
    /// A pool that keeps at most `max_bytes` of chunks.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_chunks: max_bytes / CHUNK_BYTES,
        }
    }

    /// An empty chunk of [`CHUNK_BYTES`] capacity: a kept one if there is one.
    pub fn take(&self) -> Vec<u8> {
        let kept = {
            let mut state = self.lock();
            state.taken_since_check = true;
            state.free.pop()
        };
        kept.unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES))
    }

    /// A buffer for a run of lines of about `estimate` bytes, holding `start` already: a chunk
    /// of the pool when the run fills at least half of one and fits in it (it can become part
    /// of an object as it is, and come back here after), a new allocation of the estimate
    /// otherwise.
    pub fn buffer_for(&self, estimate: usize, start: &[u8]) -> Vec<u8> {
        let mut buffer = if (CHUNK_BYTES / 2..=CHUNK_BYTES).contains(&estimate) {
            self.take()
        } else {
            Vec::with_capacity(estimate.max(start.len()))
        };
        buffer.extend_from_slice(start);
        buffer
    }

    /// Keeps a chunk for a later [`take`](Self::take) if it is full-size and there is room;
    /// otherwise frees it.
    pub fn give(&self, mut chunk: Vec<u8>) {
        if chunk.capacity() != CHUNK_BYTES {
            return;
        }
        chunk.clear();
        let mut state = self.lock();
        if state.free.len() < self.max_chunks {
            state.free.push(chunk);
        }
    }

    /// Frees every kept chunk if none was taken since the last call.
    pub fn release_if_unused(&self) {
        let released = {
            let mut state = self.lock();
            let unused = !std::mem::take(&mut state.taken_since_check);
            if unused {
                std::mem::take(&mut state.free)
            } else {
                Vec::new()
            }
        };
        // Freed outside the lock.
        drop(released);
    }

    /// Chunks kept now.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.lock().free.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_given_back_is_taken_again_empty() {
        let pool = ChunkPool::new(4 * CHUNK_BYTES);
        let mut chunk = pool.take();
        assert_eq!((chunk.len(), chunk.capacity()), (0, CHUNK_BYTES));
        chunk.extend_from_slice(b"stored already");
        let address = chunk.as_ptr();
        pool.give(chunk);
        assert_eq!(pool.kept(), 1);
        let again = pool.take();
        assert_eq!(again.as_ptr(), address, "the same memory");
        assert!(again.is_empty());
        assert_eq!(pool.kept(), 0);
    }

    #[test]
    fn only_full_size_chunks_are_kept_and_no_more_than_the_bound() {
        let pool = ChunkPool::new(2 * CHUNK_BYTES + CHUNK_BYTES / 2);
        pool.give(Vec::with_capacity(64 * 1024));
        assert_eq!(pool.kept(), 0, "a small chunk is freed");
        for _ in 0..3 {
            pool.give(Vec::with_capacity(CHUNK_BYTES));
        }
        assert_eq!(pool.kept(), 2, "two chunks fit in the bound");
        assert_eq!(ChunkPool::new(CHUNK_BYTES - 1).max_chunks, 0);
    }

    #[test]
    fn a_pool_not_drawn_from_between_two_checks_is_emptied() {
        let pool = ChunkPool::new(8 * CHUNK_BYTES);
        let (first, second) = (pool.take(), pool.take());
        pool.give(first);
        pool.release_if_unused();
        assert_eq!(pool.kept(), 1, "taken from since the last check: kept");
        pool.give(second);
        pool.release_if_unused();
        assert_eq!(pool.kept(), 0, "not taken from since: released");
    }

    #[test]
    fn a_run_that_fills_half_a_chunk_or_more_gets_one_of_the_pool() {
        let pool = ChunkPool::new(4 * CHUNK_BYTES);
        let kept = Vec::with_capacity(CHUNK_BYTES);
        let address = kept.as_ptr();
        pool.give(kept);
        let run = pool.buffer_for(CHUNK_BYTES * 3 / 4, b"first line\n");
        assert_eq!(run.as_ptr(), address, "the kept chunk");
        assert_eq!(run, b"first line\n");
        for estimate in [CHUNK_BYTES / 2, CHUNK_BYTES] {
            assert_eq!(pool.buffer_for(estimate, b"x").capacity(), CHUNK_BYTES);
        }
        let small = pool.buffer_for(1000, b"x\n");
        assert_eq!((small.capacity(), small.as_slice()), (1000, &b"x\n"[..]));
        assert_eq!(
            pool.buffer_for(3 * CHUNK_BYTES, b"").capacity(),
            3 * CHUNK_BYTES
        );
    }
}
