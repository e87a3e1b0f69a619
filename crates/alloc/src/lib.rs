//! The global allocator of the Relais binaries: mimalloc, whose thread-local free lists suit a
//! pipeline that allocates and frees a few hundred small blocks per message.
//!
//! The `mimalloc` crate hands every request to mimalloc's aligned entry points, even those
//! whose alignment any block already has. Those entry points take a fast path only for blocks
//! up to 1 KiB; a larger block (a boxed future, a task, a record's buffer) goes to their
//! generic path, which over-allocates by the alignment and adjusts the pointer unless the
//! block's size happens to be a power of two. Every block mimalloc hands out is aligned to the
//! machine word (its sizes are whole words), so a layout asking no more than that is served by
//! the plain entry points, and only the rare larger alignment by the aligned ones.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOCATOR: relais_alloc::Allocator = relais_alloc::Allocator;
//! # fn main() {}
//! ```

#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has: its block sizes are whole machine words.
const WORD_ALIGN: usize = core::mem::size_of::<usize>();

/// mimalloc as the global allocator (see the crate docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

/// Whether mimalloc's plain entry points already give `layout` its alignment.
fn plain_blocks_suffice(layout: &Layout) -> bool {
    layout.align() <= WORD_ALIGN
}

// SAFETY: each method hands the request to mimalloc, which returns a block of at least the
// layout's size and alignment or null, frees what it handed out, and keeps the contents on
// reallocation; the alignment passed to the aligned entry points is the layout's, a power of two.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc accepts any size; see `plain_blocks_suffice` for the alignment.
        unsafe {
            if plain_blocks_suffice(&layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if plain_blocks_suffice(&layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc, whichever entry point.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from mimalloc with `layout`'s alignment, which the new block keeps.
        unsafe {
            if plain_blocks_suffice(&layout) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size class up to and past the aligned entry points' fast path, at every alignment
    /// from a byte to a page: each block has its alignment, keeps its contents through growing
    /// and shrinking, and frees.
    #[test]
    fn blocks_have_their_alignment_and_keep_their_contents() {
        let allocator = Allocator;
        let sizes = (1..=64).chain([100, 1000, 1024, 1025, 1500, 4096, 5000, 70_000, 1 << 20]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                // SAFETY: the layouts have non-zero sizes; each block is used within its size
                // and freed once with the layout it has at that time.
                unsafe {
                    let block = allocator.alloc(layout);
                    assert!(!block.is_null());
                    assert_eq!(block as usize % align, 0, "size {size} align {align}");
                    block.write_bytes(0xA5, size);

                    let grown = allocator.realloc(block, layout, size * 3);
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "grown, size {size} align {align}"
                    );
                    assert!((0..size).all(|i| *grown.add(i) == 0xA5));
                    let grown_layout = Layout::from_size_align(size * 3, align).expect("valid");

                    let shrunk = allocator.realloc(grown, grown_layout, size.div_ceil(2));
                    assert_eq!(
                        shrunk as usize % align,
                        0,
                        "shrunk, size {size} align {align}"
                    );
                    assert!((0..size.div_ceil(2)).all(|i| *shrunk.add(i) == 0xA5));
                    let shrunk_layout =
                        Layout::from_size_align(size.div_ceil(2), align).expect("valid");
                    allocator.dealloc(shrunk, shrunk_layout);

                    let zeroed = allocator.alloc_zeroed(layout);
                    assert_eq!(
                        zeroed as usize % align,
                        0,
                        "zeroed, size {size} align {align}"
                    );
                    assert!((0..size).all(|i| *zeroed.add(i) == 0));
                    allocator.dealloc(zeroed, layout);
                }
            }
        }
    }
}
