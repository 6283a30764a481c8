//! The global allocator: mimalloc, asked the cheap way.
//!
//! The `mimalloc` crate's allocator passes every allocation to
//! `mi_malloc_aligned`, alignment 8 included. mimalloc 3 serves such a call
//! from its plain size classes only when the rounded size is a power of two;
//! any other size above 1 KiB (a boxed request future, a read buffer, a
//! header vector) is over-allocated by the alignment and goes through the
//! allocator's generic path: about a tenth of weft's own instructions per
//! proxied request. Every size class of mimalloc is a multiple of a word
//! (of two words above that) and a page's first block is two-word aligned,
//! so a plain `mi_malloc` already gives word alignment for any size, and
//! two-word (16-byte) alignment for multiples of 16; only larger
//! alignments need the aligned calls.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// mimalloc as the global allocator, with plain calls where the alignment
/// asked for is one every block has.
pub struct MiMalloc;

/// True when a plain mimalloc block of `size` bytes is aligned to `align`:
/// every block is word-aligned, and one whose size is a multiple of two
/// words is aligned to two words (16 bytes on 64-bit targets).
fn natural(size: usize, align: usize) -> bool {
    const WORD: usize = std::mem::size_of::<usize>();
    align <= WORD || (align == 2 * WORD && size & (2 * WORD - 1) == 0)
}

// SAFETY: every method hands mimalloc's results back unchanged; blocks from
// the plain and the aligned calls are both freed by `mi_free` and resized
// by either `mi_realloc` variant (mimalloc documents both).
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; mimalloc returns null on failure, as
        // `GlobalAlloc` expects.
        unsafe {
            if natural(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if natural(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (the
        // caller's contract); the new block keeps `layout.align()`.
        unsafe {
            if natural(new_size, layout.align()) {
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

    /// Every size up to 70 KiB at every alignment up to 4 KiB comes back
    /// aligned, keeps its bytes through growing and shrinking, and frees.
    #[test]
    fn blocks_have_the_alignment_asked_for() {
        let a = MiMalloc;
        let mut sizes: Vec<usize> = (1..=300).collect();
        sizes.extend([
            1000,
            1023,
            1024,
            1025,
            1500,
            4095,
            4096,
            5000,
            16 * 1024,
            16 * 1024 + 8,
            70_000,
        ]);
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: a non-zero size; every block is freed once below.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(
                        !p.is_null() && (p as usize) & (align - 1) == 0,
                        "alloc {size} align {align}"
                    );
                    p.write_bytes(0xa5, size);
                    let z = a.alloc_zeroed(layout);
                    assert!(
                        !z.is_null() && (z as usize) & (align - 1) == 0,
                        "zalloc {size} align {align}"
                    );
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    // Grown, then shrunk below the first size: the bytes
                    // written first survive both.
                    let grown = size * 3 + 5;
                    let q = a.realloc(p, layout, grown);
                    assert!(
                        !q.is_null() && (q as usize) & (align - 1) == 0,
                        "grow {size} align {align}"
                    );
                    let shrunk = size / 2 + 1;
                    let r = a.realloc(q, Layout::from_size_align(grown, align).expect("layout"), shrunk);
                    assert!(
                        !r.is_null() && (r as usize) & (align - 1) == 0,
                        "shrink {size} align {align}"
                    );
                    assert!(std::slice::from_raw_parts(r, shrunk).iter().all(|b| *b == 0xa5));
                    a.dealloc(r, Layout::from_size_align(shrunk, align).expect("layout"));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
