//! The fiber stacks the rooms' guest calls run on, kept for the next store.
//!
//! wasmtime runs every async call on a fiber with a native stack of its
//! own. A store maps one (`mmap`, then `mprotect` for its guard page) at its
//! first call, keeps it for its later calls, and unmaps it when it is
//! dropped, which also flushes the TLBs of every worker thread. A room pays
//! that whenever it gets a new instance: its first connection, and every
//! wake-up after hibernation. This creator keeps up to `keep` freed stacks
//! and hands them out again, as wasmtime's pooling allocator does with its
//! own.
//!
//! A kept stack is handed out as it was left: its pages stay resident (the
//! next room's calls do not fault them in again) and hold what the last
//! room's calls left on them. WebAssembly cannot read its fiber's stack
//! (its data lives in its linear memory), so nothing passes between rooms;
//! wasmtime asks for zeroed stacks only when `async_stack_zeroing` is set,
//! and those are always fresh mappings.

use std::mem::ManuallyDrop;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{StackCreator, StackMemory};

/// Stacks kept by default. Each kept stack holds 2 mappings, the pages the
/// last room's calls touched (~8 KiB: calls use the top of the stack) and
/// its size in address space (wasmtime's `async_stack_size`, 2 MiB).
pub(crate) const KEEP: usize = 128;

/// Hands out fiber stacks, kept ones first. Clones share the kept stacks.
#[derive(Clone)]
pub(crate) struct Stacks {
    inner: Arc<Inner>,
}

struct Inner {
    free: Mutex<Vec<Mapping>>,
    keep: usize,
    page: usize,
}

/// One stack's mapping: a guard page at its low end, the stack above it.
struct Mapping {
    base: usize,
    len: usize,
}

impl Mapping {
    fn new(len: usize, page: usize) -> wasmtime::Result<Mapping> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks;
        // nothing else refers to it.
        let base = unsafe {
            let base = rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE,
            )?;
            if let Err(e) = rustix::mm::mprotect(
                base.cast::<u8>().add(page).cast(),
                len - page,
                MprotectFlags::READ | MprotectFlags::WRITE,
            ) {
                let _ = rustix::mm::munmap(base, len);
                return Err(e.into());
            }
            base as usize
        };
        Ok(Mapping { base, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Mapping::new` and is no longer
        // in use (its stack's owner dropped it, or it was never handed out).
        unsafe {
            let _ = rustix::mm::munmap(self.base as *mut _, self.len);
        }
    }
}

impl Stacks {
    pub(crate) fn new(keep: usize) -> Stacks {
        Stacks {
            inner: Arc::new(Inner {
                free: Mutex::new(Vec::with_capacity(keep)),
                keep,
                page: rustix::param::page_size(),
            }),
        }
    }

    /// Stacks waiting to be handed out again.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.inner.lock().len()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Mapping>> {
        // A push or a pop cannot panic halfway; recover from a poisoned lock.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// SAFETY: every stack handed out is a mapping of its own, readable and
// writable over `range()` with an inaccessible guard page below it, owned by
// the returned `StackMemory` until that is dropped; only then can it be
// handed out again.
unsafe impl StackCreator for Stacks {
    fn new_stack(&self, size: usize, zeroed: bool) -> wasmtime::Result<Box<dyn StackMemory>> {
        let page = self.inner.page;
        let len = size
            .max(1)
            .checked_next_multiple_of(page)
            .and_then(|s| s.checked_add(page))
            .ok_or_else(|| wasmtime::Error::msg("fiber stack size overflows"))?;
        let kept = if zeroed {
            None
        } else {
            let mut free = self.inner.lock();
            free.iter()
                .rposition(|m| m.len == len)
                .map(|i| free.swap_remove(i))
        };
        let mapping = match kept {
            Some(mapping) => mapping,
            None => Mapping::new(len, page)?,
        };
        Ok(Box::new(Stack {
            mapping: ManuallyDrop::new(mapping),
            inner: self.inner.clone(),
        }))
    }
}

struct Stack {
    /// Taken out only by `Drop`, to be kept or unmapped.
    mapping: ManuallyDrop<Mapping>,
    inner: Arc<Inner>,
}

// SAFETY: see `Stacks`; the ranges are those of the mapping this stack owns.
unsafe impl StackMemory for Stack {
    fn top(&self) -> *mut u8 {
        (self.mapping.base + self.mapping.len) as *mut u8
    }

    fn range(&self) -> Range<usize> {
        self.mapping.base + self.inner.page..self.mapping.base + self.mapping.len
    }

    fn guard_range(&self) -> Range<*mut u8> {
        self.mapping.base as *mut u8..(self.mapping.base + self.inner.page) as *mut u8
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: `mapping` is not used again after this.
        let mapping = unsafe { ManuallyDrop::take(&mut self.mapping) };
        let mut free = self.inner.lock();
        if free.len() < self.inner.keep {
            free.push(mapping);
        } else {
            drop(free);
            drop(mapping);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_stack_is_handed_out_again_up_to_the_limit() {
        let stacks = Stacks::new(1);
        let a = stacks.new_stack(64 << 10, false).unwrap();
        let b = stacks.new_stack(64 << 10, false).unwrap();
        let (a_top, b_top) = (a.top(), b.top());
        assert_ne!(a_top, b_top);
        // Usable: the whole range can be written.
        for s in [&a, &b] {
            let r = s.range();
            assert_eq!(r.end, s.top() as usize);
            assert!(r.len() >= 64 << 10);
            assert_eq!(s.guard_range().end as usize, r.start);
            // SAFETY: the range is this stack's, readable and writable.
            unsafe { std::ptr::write_bytes(r.start as *mut u8, 0xab, r.len()) };
        }
        drop(a);
        drop(b);
        assert_eq!(stacks.kept(), 1, "one kept, the other unmapped");
        let c = stacks.new_stack(64 << 10, false).unwrap();
        assert!(
            c.top() == a_top || c.top() == b_top,
            "a kept stack is reused"
        );
        assert_eq!(stacks.kept(), 0);
        // Another size, or a zeroed stack, is a fresh mapping.
        drop(c);
        let d = stacks.new_stack(128 << 10, false).unwrap();
        assert_eq!(stacks.kept(), 1);
        let e = stacks.new_stack(64 << 10, true).unwrap();
        assert_eq!(stacks.kept(), 1);
        // SAFETY: a fresh mapping is zero-filled and readable.
        let first = unsafe { *(e.range().start as *const u8) };
        assert_eq!(first, 0);
        drop((d, e));
    }
}
