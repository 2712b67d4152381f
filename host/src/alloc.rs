//! The server's allocator: jemalloc, with room instances in an arena of
//! their own.
//!
//! A room instance's host-side memory (its store, its instance's runtime
//! state, WASI's context: ~56 KB) lives for as long as the room is busy; a
//! room's table, a connection's buffers and tasks live for as long as their
//! clients stay. Allocated from the same arena, the two share jemalloc's
//! slabs, and once thousands of rooms hibernate together their instances'
//! memory cannot go back to the kernel: every slab still holds a few
//! long-lived objects. With the instances in an arena of their own, what a
//! hibernated room leaves behind is its table, not the pages around it.
//!
//! `instance_arena` marks the allocations of an instance's creation; the
//! binary installs [`Allocator`] and calls [`init`]. Without them (a test
//! using the library with the system allocator) the mark does nothing.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::task::{Context, Poll};

use tikv_jemalloc_sys as sys;
use tikv_jemallocator::Jemalloc;

/// The instances' arena; 0 (jemalloc's first arena, never created by
/// [`init`]) until [`init`] made one.
static INSTANCE_ARENA: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// Whether this thread is creating a room instance right now.
    static IN_INSTANCE: Cell<bool> = const { Cell::new(false) };
}

/// jemalloc, sending what `instance_arena` marks to the instances' arena.
pub struct Allocator;

impl Allocator {
    /// The `mallocx` flags for a marked allocation, or `None`.
    #[inline]
    fn instance_flags(layout: Layout) -> Option<std::ffi::c_int> {
        if !IN_INSTANCE.try_with(Cell::get).unwrap_or(false) {
            return None;
        }
        let arena = INSTANCE_ARENA.load(Relaxed);
        // No thread cache: the thread's own would hand these blocks to a
        // connection's allocations later. (A cache of the arena's own per
        // thread, `tcache.create`, measured no faster to create rooms.)
        (arena != 0).then(|| {
            sys::MALLOCX_ARENA(arena as usize)
                | sys::MALLOCX_TCACHE_NONE
                | sys::MALLOCX_ALIGN(layout.align())
        })
    }
}

// SAFETY: every call is jemalloc's; a marked allocation is jemalloc's
// `mallocx` with the layout's alignment, freed and resized by jemalloc like
// any other (jemalloc finds a block's arena from its address).
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::instance_flags(layout) {
            // SAFETY: `layout` has a non-zero size (GlobalAlloc's contract).
            Some(flags) => unsafe { sys::mallocx(layout.size(), flags).cast() },
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { Jemalloc.alloc(layout) },
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::instance_flags(layout) {
            // SAFETY: as in `alloc`.
            Some(flags) => unsafe { sys::mallocx(layout.size(), flags | sys::MALLOCX_ZERO).cast() },
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { Jemalloc.alloc_zeroed(layout) },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { Jemalloc.realloc(ptr, layout, new_size) }
    }
}

/// Creates the instances' arena. Without it instances share the others'.
pub fn init() -> Result<(), String> {
    let mut arena: u32 = 0;
    let mut len = size_of::<u32>();
    // SAFETY: "arenas.create" writes one unsigned int to `arena`.
    let rc = unsafe {
        sys::mallctl(
            c"arenas.create".as_ptr(),
            (&raw mut arena).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 || arena == 0 {
        return Err(format!("jemalloc could not create an arena (error {rc})"));
    }
    INSTANCE_ARENA.store(arena, Relaxed);
    Ok(())
}

/// `future`, its allocations made in the instances' arena.
pub(crate) fn instance_arena<F: Future>(future: F) -> InstanceArena<F> {
    InstanceArena { future }
}

pub(crate) struct InstanceArena<F> {
    future: F,
}

impl<F: Future> Future for InstanceArena<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `future` is structurally pinned: never moved out of `self`.
        let future = unsafe { self.map_unchecked_mut(|s| &mut s.future) };
        let _mark = Mark(IN_INSTANCE.replace(true));
        future.poll(cx)
    }
}

/// Restores the thread's mark as it was, even if the poll panics.
struct Mark(bool);

impl Drop for Mark {
    fn drop(&mut self) {
        let _ = IN_INSTANCE.try_with(|mark| mark.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked() -> bool {
        IN_INSTANCE.with(Cell::get)
    }

    #[test]
    fn only_the_instance_future_s_polls_are_marked() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut seen = Vec::new();
        let mut future = std::pin::pin!(instance_arena(std::future::poll_fn(|_| {
            seen.push(marked());
            if seen.len() < 2 {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })));
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert!(!marked(), "the mark outlived the poll");
        assert!(future.as_mut().poll(&mut cx).is_ready());
        assert!(!marked());
        assert_eq!(seen, [true, true]);
    }

    /// The arena jemalloc says `ptr` belongs to.
    fn arena_of(ptr: *mut u8) -> u32 {
        let mut arena: u32 = u32::MAX;
        let mut len = size_of::<u32>();
        let mut ptr = ptr.cast::<std::ffi::c_void>();
        // SAFETY: "arenas.lookup" reads a pointer and writes an unsigned int.
        let rc = unsafe {
            sys::mallctl(
                c"arenas.lookup".as_ptr(),
                (&raw mut arena).cast(),
                &mut len,
                (&raw mut ptr).cast(),
                size_of::<*mut std::ffi::c_void>(),
            )
        };
        assert_eq!(rc, 0, "arenas.lookup");
        arena
    }

    #[test]
    fn marked_allocations_land_in_the_instances_arena_and_others_do_not() {
        init().expect("an arena");
        let arena = INSTANCE_ARENA.load(Relaxed);
        let layout = Layout::from_size_align(200, 64).unwrap();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut marked = std::ptr::null_mut();
        let mut future = std::pin::pin!(instance_arena(std::future::poll_fn(|_| {
            // SAFETY: a non-zero size; freed below with the same layout.
            marked = unsafe { Allocator.alloc(layout) };
            Poll::Ready(())
        })));
        assert!(future.as_mut().poll(&mut cx).is_ready());
        // SAFETY: as above.
        let unmarked = unsafe { Allocator.alloc(layout) };
        assert!(!marked.is_null() && !unmarked.is_null());
        assert_eq!(marked as usize % 64, 0, "the layout's alignment is kept");
        assert_eq!(arena_of(marked), arena);
        assert_ne!(arena_of(unmarked), arena);
        // SAFETY: allocated above with this layout.
        unsafe {
            Allocator.dealloc(marked, layout);
            Allocator.dealloc(unmarked, layout);
        }
    }

    #[test]
    fn a_panicking_poll_leaves_no_mark() {
        let result = std::panic::catch_unwind(|| {
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let mut future =
                std::pin::pin!(instance_arena(std::future::poll_fn(|_| -> Poll<()> {
                    panic!("a room's creation panicked")
                })));
            let _ = future.as_mut().poll(&mut cx);
        });
        assert!(result.is_err());
        assert!(!marked());
    }
}
