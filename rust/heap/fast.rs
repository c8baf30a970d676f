// SPDX-License-Identifier: GPL-2.0

//! The allocator's fast path: one magazine of free objects per CPU and
//! size class (`struct kflex_fast_class`, allocated per CPU by the glue).
//!
//! - An allocation of a size the program passes as a constant, and a free,
//!   pop from and push to the magazine in instructions the verifier puts in
//!   place of the kfunc calls (`kflex_fast_emit()` and
//!   `kflex_fast_emit_free()` in the glue): no call, no section, interrupts
//!   stay on. The slow path of an allocation takes from the magazine
//!   first and refills an empty one from the CPU's cache
//!   ([`Heap::alloc_via_magazine`]).
//! - A free that reaches the kfunc first tries [`Heap::free_fast`], the same
//!   push in Rust, without a section (programs loaded without the inline
//!   path). A full magazine sends the free to the slow path, which moves
//!   half of that class's magazine to the cache ([`Heap::drain_magazine`]).
//!
//! A magazine is taken with an exchange on its `busy` word, by the inline
//! code and by this file alike; whoever finds it taken (an NMI, a tracing
//! program, a task that preempted the holder) goes to the slow path, which
//! never waits for it. Every object in a magazine is free (its free bit is
//! set), so a second free of it is refused as for any free object, and the
//! class reclaim, which takes only pages all of whose objects are on the
//! global list, never takes its page.

use core::{
    mem::{offset_of, size_of},
    ptr::{self, addr_of_mut},
    sync::atomic::{AtomicU64, Ordering},
};

use kernel::bindings;

use super::{objects::Cache, Heap, PageDesc};
use crate::{
    logic::alloc::{class_size, locate, PageKind, CLASS_SIZES, NR_CLASSES, PAGE_SHIFT},
    sys::Section,
};

/// Objects one magazine holds per class.
const CAP: usize = bindings::KFLEX_FAST_CAP as usize;
/// What a refill or a drain leaves in a magazine.
const HALF: usize = CAP / 2;

const _: () = assert!(CAP >= 2 && HALF > 0);

/// A magazine whose `busy` word this holder set; released on drop.
///
/// # Invariants
///
/// `p` points to a live `kflex_fast_class` (the glue frees the magazines
/// after the heap's last user), and its `busy` is 1 on behalf of this value.
struct Held {
    p: *mut bindings::kflex_fast_class,
}

/// The `busy` word of magazine `p`.
///
/// # Safety
///
/// `p` points to a live `kflex_fast_class`.
unsafe fn busy<'a>(p: *mut bindings::kflex_fast_class) -> &'a AtomicU64 {
    // SAFETY: `busy` is an aligned `u64` of a live magazine, and every
    // access to it (here and in the inline code: an exchange, a store) is
    // atomic.
    unsafe { AtomicU64::from_ptr(addr_of_mut!((*p).busy)) }
}

impl Held {
    /// Takes magazine `p`; `None` if null or taken (then counted in
    /// `taken`).
    fn take(p: *mut bindings::kflex_fast_class, taken: &AtomicU64) -> Option<Self> {
        if p.is_null() {
            return None;
        }
        // SAFETY: the glue's magazines live as long as the heap.
        let b = unsafe { busy(p) };
        if b.swap(1, Ordering::Acquire) != 0 {
            super::bump(taken, 1);
            return None;
        }
        // INVARIANT: the exchange set `busy` for this holder.
        Some(Held { p })
    }

    fn count(&self) -> usize {
        // SAFETY: `p` is live and held (type invariant): nobody else writes
        // the magazine.
        let n = unsafe { ptr::read_volatile(addr_of_mut!((*self.p).count)) };
        (n as usize).min(CAP)
    }

    fn set_count(&mut self, n: usize) {
        if n <= CAP {
            // SAFETY: as in `count`.
            unsafe { ptr::write_volatile(addr_of_mut!((*self.p).count), n as u32) };
        }
    }

    fn push(&mut self, slot: bindings::kflex_fast_slot) -> bool {
        let n = self.count();
        if n >= CAP {
            return false;
        }
        // SAFETY: as in `count`; `n < CAP`.
        unsafe { ptr::write_volatile(addr_of_mut!((*self.p).slot[n]), slot) };
        self.set_count(n + 1);
        true
    }

    fn pop(&mut self) -> Option<bindings::kflex_fast_slot> {
        let n = self.count().checked_sub(1)?;
        // SAFETY: as in `push`; slot `n` is below the count, so written.
        let slot = unsafe { ptr::read_volatile(addr_of_mut!((*self.p).slot[n])) };
        self.set_count(n);
        Some(slot)
    }

    /// Counts a free taken here (the inline code counts its own).
    fn count_free(&mut self) {
        // SAFETY: as in `count`; only the holder writes the counters.
        unsafe {
            let f = addr_of_mut!((*self.p).frees);
            ptr::write_volatile(f, ptr::read_volatile(f).wrapping_add(1));
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: `p` is live (type invariant).
        unsafe { busy(self.p) }.store(0, Ordering::Release);
    }
}

/// A magazine slot for the free object at `uaddr`, whose free bit is `bit`
/// of `word`.
fn slot(uaddr: u64, word: &AtomicU64, bit: u64) -> bindings::kflex_fast_slot {
    bindings::kflex_fast_slot { uaddr, word: word.as_ptr() as u64, keep: !bit }
}

impl Heap {
    fn magazine_this(&self, class: usize) -> *mut bindings::kflex_fast_class {
        // SAFETY: `info` is this heap's glue info (type invariant of `Heap`),
        // whose magazines the glue allocated before `heap_init`; the glue
        // returns NULL for a class out of range.
        unsafe { bindings::kflex_fast_this(self.info, class as i32) }
    }

    /// `bpf_kflex_free()`'s fast path: true if the object went to this CPU's
    /// magazine. Anything else -- a large object, a pointer that does not
    /// validate, an object already free, a taken or full magazine -- is the
    /// slow path's, which refuses and counts what must be refused.
    pub(super) fn free_fast(&self, uaddr: u64) -> bool {
        let Some(off) = self.offset_of(uaddr) else { return false };
        let page = off >> PAGE_SHIFT;
        if off == 0 || page >= self.populated_end.load(Ordering::Acquire) {
            return false;
        }
        let Some(desc) = self.desc(page) else { return false };
        let PageKind::Class(c) = desc.kind() else { return false };
        let class = usize::from(c);
        let Ok(obj) = locate(off, class) else { return false };
        let Some(mut m) = Held::take(self.magazine_this(class), &self.c.fast_busy) else {
            return false;
        };
        if m.count() >= CAP {
            return false;
        }
        let (w, b) = obj.bit();
        let Some(word) = desc.free.get(w) else { return false };
        if word.fetch_or(b, Ordering::AcqRel) & b != 0 {
            return false;
        }
        // Room was checked with the magazine held.
        m.push(slot(uaddr, word, b));
        m.count_free();
        true
    }

    /// The slow path of an allocation of `class` (cache held): an object
    /// from this CPU's magazine (a program whose size is not a constant
    /// never runs the inline path, and its frees fill the magazine), else
    /// from the cache, and then an empty magazine is refilled. Returns the
    /// heap offset, 0 if none.
    pub(super) fn alloc_via_magazine(&self, s: &Section, cache: &mut Cache, class: usize) -> u64 {
        let Some(mut m) = Held::take(self.magazine_this(class), &self.c.fast_busy) else {
            return self.alloc_small(s, cache, class);
        };
        if let Some(slot) = m.pop() {
            match self.offset_of(slot.uaddr) {
                // A magazine's object is free: claim it as the inline path does.
                Some(off) if self.claim(off, class) => return off,
                Some(_) => {}
                None => super::bump(&self.c.corrupt_links, 1),
            }
        }
        let off = self.alloc_small(s, cache, class);
        if m.count() == 0 {
            self.fill(&mut m, s, cache, class);
        }
        off
    }

    /// Refills magazine `m` of `class` with half its capacity from the
    /// CPU's cache.
    fn fill(&self, m: &mut Held, s: &Section, cache: &mut Cache, class: usize) {
        self.refill(s, cache, class);
        for _ in 0..HALF {
            let Some(off) = cache.pop(class) else { break };
            let free = self.object(off, class).and_then(|(_, obj, desc)| {
                let (w, b) = obj.bit();
                let word = desc.free.get(w)?;
                // A cached object is free; check it as `claim` does.
                (word.load(Ordering::Acquire) & b != 0).then(|| slot(self.user_addr(off), word, b))
            });
            match free {
                Some(slot) => {
                    m.push(slot);
                }
                None => super::bump(&self.c.corrupt_links, 1),
            }
        }
    }

    /// Moves half of this CPU's magazine of `class`, if full, to its cache
    /// (slow path of a free of that class, cache held).
    pub(super) fn drain_magazine(&self, s: &Section, cache: &mut Cache, class: usize) {
        let Some(mut m) = Held::take(self.magazine_this(class), &self.c.fast_busy) else {
            return;
        };
        if m.count() < CAP {
            return;
        }
        while m.count() > HALF && !cache.full(class) {
            let Some(slot) = m.pop() else { break };
            match self.offset_of(slot.uaddr) {
                Some(off) => {
                    cache.push(class, off);
                }
                None => super::bump(&self.c.corrupt_links, 1),
            }
        }
        self.spill(s, cache, class);
    }

    /// Adds the magazines' allocations and frees to the statistics.
    pub(super) fn magazine_stats(
        &self,
        st: &mut bindings::kflex_heap_stats,
        class_bytes: &mut [i64; NR_CLASSES],
    ) {
        for cpu in 0..crate::sys::nr_cpu_ids() {
            for (class, bytes) in class_bytes.iter_mut().enumerate() {
                // SAFETY: `info` is this heap's (type invariant of `Heap`);
                // `cpu` is a possible CPU id, `class` in range.
                let p = unsafe { bindings::kflex_fast_of(self.info, cpu as i32, class as i32) };
                if p.is_null() {
                    continue;
                }
                // SAFETY: a live magazine (the glue's, as long as the heap);
                // the counters are aligned `u64`s that only their holder
                // writes, read here as a snapshot.
                let (a, f) = unsafe {
                    (
                        ptr::read_volatile(addr_of_mut!((*p).allocs)),
                        ptr::read_volatile(addr_of_mut!((*p).frees)),
                    )
                };
                st.fast_allocs = st.fast_allocs.wrapping_add(a);
                st.fast_frees = st.fast_frees.wrapping_add(f);
                let n = a.wrapping_sub(f) as i64;
                *bytes = bytes.wrapping_add(n.wrapping_mul(class_size(class) as i64));
            }
        }
        st.allocs = st.allocs.wrapping_add(st.fast_allocs);
        st.frees = st.frees.wrapping_add(st.fast_frees);
    }

    /// What the glue's inline fast path needs: the classes' object sizes,
    /// and where the page descriptors are and how they are laid out.
    pub(super) fn publish_layout(&self) {
        let info = self.info;
        for (i, &size) in CLASS_SIZES.iter().enumerate() {
            // SAFETY: `info` is the glue's, not yet shared (`heap_init`);
            // `i < KFLEX_NR_CLASSES` (asserted in `heap.rs`).
            unsafe { ptr::write(addr_of_mut!((*info).class_size[i]), size as u16) };
        }
        // SAFETY: as above. `dir` is never resized, so its buffer stays
        // where it is until the heap goes; a chunk pointer in it is NULL or
        // points to `chunk_pages` descriptors (type invariant of `Heap`).
        unsafe {
            (*info).fast_dir = self.dir.as_ptr() as u64;
            (*info).fast_chunk_shift = self.chunk_shift;
            (*info).fast_desc_size = size_of::<PageDesc>() as u32;
            (*info).fast_desc_state = offset_of!(PageDesc, state) as u32;
            (*info).fast_desc_free = offset_of!(PageDesc, free) as u32;
            (*info).fast_class_state = PageKind::Class(0).encode();
        }
    }
}
