//! A global allocator front for rooms: freed small blocks are kept by size
//! class and handed out again.
//!
//! Every call into a room allocates: the host lowers each string argument
//! into a fresh allocation, the room builds its reply, the host's answer to
//! `send` is another, and all are freed before the call returns. The same
//! few sizes come and go for every message. A general allocator (dlmalloc,
//! talc) searches its bins and splits and merges blocks each time, some
//! hundreds of wasm instructions per allocation; [`Recycler`] keeps up to
//! [`KEPT_BYTES`] of freed blocks per power-of-two size class (16 B to 2 KiB)
//! in a list, so the next allocation of that class is a pop. Anything
//! larger, over-aligned or beyond the bound goes to the allocator it wraps.
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: wsroom_room_sdk::alloc::Recycler<talc::wasm::WasmDynamicTalc> =
//!     wsroom_room_sdk::alloc::Recycler::new(talc::wasm::new_wasm_dynamic_allocator());
//! ```
//!
//! It is for single-threaded WebAssembly (a room instance runs one call at a
//! time): it can be a global allocator only there.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;

/// The smallest class holds 2^4 = 16 bytes.
const MIN_SHIFT: u32 = 4;
/// The largest class holds 2^11 = 2048 bytes.
const MAX_SHIFT: u32 = 11;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
/// Alignment of every block of a class (and the most a request may ask for
/// to be served from one).
const ALIGN: usize = 8;
/// Bytes of free blocks kept per class; the rest go back to the wrapped
/// allocator. At most 8 classes x 4 KiB are held back.
pub const KEPT_BYTES: usize = 4 * 1024;

/// A free block, linked into its class's list.
struct Free {
    next: *mut Free,
}

struct Lists {
    heads: [*mut Free; CLASSES],
    kept: [u16; CLASSES],
}

/// Keeps freed small blocks per size class in front of allocator `A`.
///
/// Every allocation first writes a byte of its own, before it reads its
/// lists or the wrapped allocator's state: a new instance's first access to
/// the page this static sits in is then a write, which the kernel serves by
/// copying the component's data page at once, instead of mapping it
/// read-only and then copying it with a TLB flush on every other core. Its
/// fields are laid out in order and the value aligned to 128 bytes, so that
/// the byte, the lists and (when it fits the rest of the line, as talc's
/// does) the wrapped allocator's state share one page.
#[repr(C, align(128))]
pub struct Recycler<A> {
    /// Written, never read: see [`Recycler::touch`].
    touched: UnsafeCell<u8>,
    lists: UnsafeCell<Lists>,
    inner: A,
}

// SAFETY: on WebAssembly without threads there is one thread, so the lists
// are never touched from two at once.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<A: Sync> Sync for Recycler<A> {}

/// The class that serves `layout`, if any.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.align() > ALIGN || layout.size() > 1 << MAX_SHIFT {
        return None;
    }
    let size = layout.size().max(1 << MIN_SHIFT);
    // Rounded up to a power of two: 17..=32 bytes is class 1.
    let shift = usize::BITS - (size - 1).leading_zeros();
    Some((shift - MIN_SHIFT) as usize)
}

/// The layout of every block of class `c`, as the wrapped allocator sees it.
fn class_layout(c: usize) -> Layout {
    // Powers of two up to 2 KiB with alignment 8 are always valid layouts.
    Layout::from_size_align(1 << (c as u32 + MIN_SHIFT), ALIGN).unwrap_or(Layout::new::<u64>())
}

/// How many free blocks class `c` keeps.
fn kept_max(c: usize) -> u16 {
    (KEPT_BYTES >> (c as u32 + MIN_SHIFT)).max(2) as u16
}

impl<A> Recycler<A> {
    /// Wraps `inner`, with every size class empty.
    pub const fn new(inner: A) -> Self {
        Recycler {
            touched: UnsafeCell::new(0),
            lists: UnsafeCell::new(Lists {
                heads: [ptr::null_mut(); CLASSES],
                kept: [0; CLASSES],
            }),
            inner,
        }
    }

    /// Writes to the allocator's page before anything reads it.
    ///
    /// A new instance's memory maps the component's data copy-on-write,
    /// and the allocator is a static in it. Were the instance's first
    /// access to its page a read (the lists, talc's state), the kernel
    /// would map the shared page read-only, and the write that follows
    /// would copy it *and* flush the page from every other core's TLB, an
    /// inter-processor interrupt: on a 2-core VM, ~13 us of a new room's
    /// ~200 (`perf`, 5,000 new rooms). Written first, the page is copied at
    /// that first fault and nothing is flushed. One store per allocation.
    #[inline(always)]
    fn touch(&self) {
        // SAFETY: single-threaded (see `Sync`); a byte of our own.
        unsafe { ptr::write_volatile(self.touched.get(), 0) }
    }

    /// Free blocks kept now, by class (16 B first).
    #[cfg(test)]
    fn kept(&self) -> [u16; CLASSES] {
        // SAFETY: single-threaded (see `Sync`), and no reference into the
        // lists outlives a method.
        unsafe { (*self.lists.get()).kept }
    }
}

unsafe impl<A: GlobalAlloc> GlobalAlloc for Recycler<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.touch();
        let Some(c) = class_of(layout) else {
            // SAFETY: the caller's layout, passed on.
            return unsafe { self.inner.alloc(layout) };
        };
        // SAFETY: single-threaded; the lists only hold blocks of class `c`
        // that were allocated by `inner` with `class_layout(c)` and freed.
        unsafe {
            let lists = &mut *self.lists.get();
            let head = lists.heads[c];
            if head.is_null() {
                return self.inner.alloc(class_layout(c));
            }
            lists.heads[c] = (*head).next;
            lists.kept[c] -= 1;
            head.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(c) = class_of(layout) else {
            // SAFETY: a block `alloc` got from `inner` with this layout.
            return unsafe { self.inner.dealloc(ptr, layout) };
        };
        // SAFETY: `ptr` is a block of class `c` (the caller frees with the
        // layout it allocated with), at least 16 bytes and 8-aligned, so a
        // `Free` fits at its start.
        unsafe {
            let lists = &mut *self.lists.get();
            if lists.kept[c] >= kept_max(c) {
                return self.inner.dealloc(ptr, class_layout(c));
            }
            let block = ptr.cast::<Free>();
            block.write(Free {
                next: lists.heads[c],
            });
            lists.heads[c] = block;
            lists.kept[c] += 1;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the
        // alignment, does not overflow isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // SAFETY: neither is ours: the wrapped allocator's own block.
            (None, None) => unsafe { self.inner.realloc(ptr, layout, new_size) },
            // The block already holds the whole class.
            (Some(a), Some(b)) if a == b => ptr,
            _ => {
                // SAFETY: a fresh block of the new layout; the old one
                // holds `layout.size()` bytes and is freed once copied.
                unsafe {
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    new
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;
    use std::cell::Cell;

    /// The system allocator, counting what reaches it.
    #[derive(Default)]
    struct Counting {
        allocs: Cell<usize>,
        deallocs: Cell<usize>,
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.allocs.set(self.allocs.get() + 1);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            self.deallocs.set(self.deallocs.get() + 1);
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            self.allocs.set(self.allocs.get() + 1);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 1).unwrap()
    }

    #[test]
    fn sizes_map_to_power_of_two_classes() {
        assert_eq!(class_of(layout(1)), Some(0));
        assert_eq!(class_of(layout(16)), Some(0));
        assert_eq!(class_of(layout(17)), Some(1));
        assert_eq!(class_of(layout(150)), Some(4));
        assert_eq!(class_of(layout(2048)), Some(7));
        assert_eq!(class_of(layout(2049)), None);
        assert_eq!(class_of(Layout::from_size_align(32, 16).unwrap()), None);
    }

    #[test]
    fn a_message_worth_of_allocations_is_served_from_the_lists_after_the_first() {
        let r = Recycler::new(Counting::default());
        // The sizes one message through the default room allocates.
        let sizes = [36, 7, 150, 96, 190, 24, 8];
        for round in 0..100u8 {
            let blocks: Vec<_> = sizes
                .iter()
                .map(|&s| {
                    let p = unsafe { r.alloc(layout(s)) };
                    assert!(!p.is_null());
                    unsafe { p.write_bytes(round, s) };
                    (p, s)
                })
                .collect();
            for &(p, s) in &blocks {
                let bytes = unsafe { std::slice::from_raw_parts(p, s) };
                assert!(
                    bytes.iter().all(|&b| b == round),
                    "a block was handed out twice"
                );
            }
            for (p, s) in blocks {
                unsafe { r.dealloc(p, layout(s)) };
            }
        }
        // Only the first round reached the system allocator.
        assert_eq!(r.inner.allocs.get(), sizes.len());
        assert_eq!(r.inner.deallocs.get(), 0);
    }

    #[test]
    fn each_class_keeps_a_bounded_number_of_blocks() {
        let r = Recycler::new(Counting::default());
        let n = 1000;
        let blocks: Vec<_> = (0..n).map(|_| unsafe { r.alloc(layout(100)) }).collect();
        for p in blocks {
            unsafe { r.dealloc(p, layout(100)) };
        }
        let kept = r.kept()[3] as usize;
        assert_eq!(kept, KEPT_BYTES / 128);
        assert_eq!(r.inner.deallocs.get(), n - kept);
        assert!(r.kept().iter().enumerate().all(|(c, &k)| c == 3 || k == 0));
    }

    #[test]
    fn large_and_overaligned_requests_go_to_the_wrapped_allocator() {
        let r = Recycler::new(Counting::default());
        for l in [layout(4096), Layout::from_size_align(64, 64).unwrap()] {
            let p = unsafe { r.alloc(l) };
            assert_eq!(p as usize % l.align(), 0);
            unsafe { r.dealloc(p, l) };
        }
        assert_eq!(r.inner.allocs.get(), 2);
        assert_eq!(r.inner.deallocs.get(), 2);
        assert_eq!(r.kept(), [0; CLASSES]);
    }

    #[test]
    fn realloc_keeps_the_contents_within_and_across_classes() {
        let r = Recycler::new(Counting::default());
        let p = unsafe { r.alloc(layout(20)) };
        let text = b"hello, room; 20 byte";
        unsafe { p.copy_from_nonoverlapping(text.as_ptr(), 20) };
        // Within the 32-byte class: the same block.
        let q = unsafe { r.realloc(p, layout(20), 30) };
        assert_eq!(q, p);
        // Into the next class, then out of the classes, then back.
        let mut size = 30;
        let mut ptr = q;
        for new_size in [60, 5000, 9000, 40] {
            ptr = unsafe { r.realloc(ptr, layout(size), new_size) };
            assert!(!ptr.is_null());
            let kept = unsafe { std::slice::from_raw_parts(ptr, 20) };
            assert_eq!(kept, text, "contents lost growing {size} -> {new_size}");
            size = new_size;
        }
        unsafe { r.dealloc(ptr, layout(size)) };
    }

    #[test]
    fn zeroed_allocations_are_zero_even_from_a_recycled_block() {
        let r = Recycler::new(Counting::default());
        let p = unsafe { r.alloc(layout(64)) };
        unsafe { p.write_bytes(0xAA, 64) };
        unsafe { r.dealloc(p, layout(64)) };
        let z = unsafe { r.alloc_zeroed(layout(64)) };
        assert_eq!(z, p, "the freed block is reused");
        assert!(
            unsafe { std::slice::from_raw_parts(z, 64) }
                .iter()
                .all(|&b| b == 0)
        );
        unsafe { r.dealloc(z, layout(64)) };
    }
}
