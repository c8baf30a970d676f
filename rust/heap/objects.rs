// SPDX-License-Identifier: GPL-2.0

//! The allocator: any context, always inside a [`Section`].
//!
//! Objects of the 11 size classes come from a per-CPU cache ([`Cache`],
//! outside the heap) with the paper's watermarks; below `LOW` cached objects
//! an allocation first moves `REFILL` from the class's global list (linked
//! through the free objects, inside the heap, every link validated), above
//! `HIGH` a free moves `SPILL` back. An empty global list gets a fresh page
//! from the [`PagePool`] (free-page stack, free runs, then the reserve).
//! Large frees become free runs, merged with their neighbours and listed by
//! size ([`crate::logic::runs`]: boundary tags in the descriptors, no limit
//! on their number).
//! Allocations above 4 KiB take whole contiguous pages (at most
//! `MAX_LARGE_PAGES`).
//!
//! Rules of this file, all enforced by [`crate::sys`]:
//! - a CPU's cache is used only through the section's [`CpuRef`]; a section
//!   that finds it taken (it interrupted the allocator on this CPU) fails an
//!   allocation and *defers* a free to the CPU's [`Ring`], which the next
//!   section holding the cache, or the heap's irq_work, completes;
//! - the pool and list locks are held only for bounded work and never
//!   across anything that takes another lock; nested and NMI sections only
//!   try them (an allocation fails, a free is deferred);
//! - interrupts-off work is bounded: at most `REFILL` or `SPILL` links, one
//!   page carved, `SCAN_MAX` descriptors scanned and `MAX_LARGE_PAGES`
//!   descriptors written per large allocation or free, `runs::SCAN` runs
//!   and `runs::NBINS` lists looked at, `DRAIN_MAX` deferred frees per
//!   section.

use core::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use kernel::alloc::{flags, KVVec};

use super::{bump, Heap, PageDesc};
use crate::{
    logic::{
        alloc::{
            class_of, class_size, full_bitmap, large_pages, locate, objs_per_page, refill_amount,
            spill_amount, user_offset, ObjRef, PageKind, Refusal, CACHE_CAP, LOW, MAX_LARGE_PAGES,
            MAX_OBJS_PER_PAGE, NR_CLASSES, PAGE_SHIFT, SPILL,
        },
        geometry::PAGE_SIZE,
        runs::{RunStore, Runs, Tag},
    },
    sys::{CpuRef, Section, ZeroValid},
};

/// Descriptors one large allocation may scan for fresh pages.
const SCAN_MAX: u64 = 2 * MAX_LARGE_PAGES;
/// Deferred frees one CPU may hold.
const RING: usize = 64;
/// Deferred frees completed per section.
const DRAIN_MAX: usize = 8;
/// Objects one class reclaim pass may examine (its buffer takes 8 bytes
/// each).
const RECLAIM_MAX: usize = 1 << 23;
/// A class's global list is worth a reclaim pass when it holds at least this
/// many pages' worth of objects more than the last pass kept (see
/// `reclaim_wanted_class`).
const RECLAIM_PAGES: u64 = 16;
/// A class page's descriptor `link` during a reclaim pass: the page goes.
const RECLAIMED: u32 = u32::MAX;

// A refill happens below LOW cached objects; a fresh page then fits whole.
const _: () = assert!(LOW + MAX_OBJS_PER_PAGE <= CACHE_CAP);

/// One CPU's cache of free objects, per class.
pub(super) struct Cache {
    count: [usize; NR_CLASSES],
    objs: [[u64; CACHE_CAP]; NR_CLASSES],
}

// SAFETY: all-zero is an empty cache (integers only).
unsafe impl ZeroValid for Cache {}

impl Cache {
    pub(super) fn push(&mut self, class: usize, off: u64) -> bool {
        let Some(n) = self.count.get_mut(class) else { return false };
        let Some(slot) = self.objs.get_mut(class).and_then(|o| o.get_mut(*n)) else {
            return false;
        };
        *slot = off;
        // `*n < CACHE_CAP`: its slot exists.
        *n = n.wrapping_add(1);
        true
    }

    pub(super) fn pop(&mut self, class: usize) -> Option<u64> {
        let n = self.count.get_mut(class)?;
        let i = n.checked_sub(1)?;
        let off = *self.objs.get(class)?.get(i)?;
        *n = i;
        Some(off)
    }

    fn len(&self, class: usize) -> usize {
        self.count.get(class).copied().unwrap_or(CACHE_CAP)
    }

    pub(super) fn full(&self, class: usize) -> bool {
        self.len(class) >= CACHE_CAP
    }
}

/// Frees deferred on one CPU. Producers are sections that found the CPU's
/// cache taken (they interrupted its holder) or a lock busy; the consumer is
/// a later section holding the cache. All of them run on this CPU, and an
/// interrupting section finishes before the interrupted one goes on, so a
/// slot claimed with the compare-and-swap is written before any consumer
/// can look at it.
struct Ring {
    head: AtomicU32,
    tail: AtomicU32,
    slots: [AtomicU64; RING],
}

impl Ring {
    fn push(&self, v: u64) -> bool {
        loop {
            let t = self.tail.load(Ordering::Relaxed);
            if t.wrapping_sub(self.head.load(Ordering::Relaxed)) as usize >= RING {
                return false;
            }
            let next = t.wrapping_add(1);
            if self.tail.compare_exchange(t, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                if let Some(slot) = self.slots.get(t as usize % RING) {
                    slot.store(v, Ordering::Relaxed);
                }
                return true;
            }
        }
    }

    fn pop(&self) -> Option<u64> {
        let h = self.head.load(Ordering::Relaxed);
        if h == self.tail.load(Ordering::Relaxed) {
            return None;
        }
        let v = self.slots.get(h as usize % RING)?.load(Ordering::Relaxed);
        self.head.store(h.wrapping_add(1), Ordering::Relaxed);
        Some(v)
    }
}

/// Per-CPU state any CPU may read: statistics and deferred frees.
pub(super) struct CpuShared {
    /// Written only by the holder of this CPU's [`Cache`] ([`bump_owned`]),
    /// as are `frees` and `class_bytes`.
    pub(super) allocs: AtomicU64,
    pub(super) frees: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) deferred: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) class_bytes: [AtomicI64; NR_CLASSES],
    ring: Ring,
}

// SAFETY: all-zero is a valid `CpuShared`: atomics holding 0, an empty ring.
unsafe impl ZeroValid for CpuShared {}

/// Global free list of one class, linked through the objects.
#[derive(Default)]
pub(super) struct GlobalList {
    head: u64,
    count: u64,
}

/// Pages handed out to the allocator and returned by large frees.
pub(super) struct PagePool {
    /// Pages below are consumed (or skipped).
    next_fresh: u64,
    /// Top of the free-page stack (page index + 1; 0: empty), linked through
    /// the descriptors.
    free_top: u32,
    /// Free runs of pages from large frees.
    runs: Runs,
    /// Pages on the free-page stack and in the runs.
    free_pages: u64,
}

impl PagePool {
    pub(super) fn new() -> Self {
        PagePool {
            next_fresh: 1,
            free_top: 0,
            runs: Runs::new(),
            free_pages: 0,
        }
    }

    /// Pages on the free-page stack and in the runs.
    pub(super) fn free_pages(&self) -> u64 {
        self.free_pages
    }
}

/// The page pool's runs keep their boundary tags in the descriptors' bitmap
/// words, which only class pages use (a run's pages are never class pages).
struct RunTags<'a>(&'a Heap);

impl RunTags<'_> {
    fn word(&self, page: u64, t: Tag) -> Option<&AtomicU64> {
        let d = self.0.desc(page)?;
        match t {
            Tag::Len => d.free.first(),
            Tag::Next => d.free.get(1),
            Tag::Prev => d.free.get(2),
            Tag::Start => d.global.first(),
        }
    }
}

impl RunStore for RunTags<'_> {
    fn in_run(&self, page: u64) -> bool {
        self.0.desc(page).map(PageDesc::kind) == Some(PageKind::FreeRun)
    }

    fn tag(&self, page: u64, t: Tag) -> u64 {
        self.word(page, t).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    fn set_tag(&self, page: u64, t: Tag, v: u64) {
        if let Some(w) = self.word(page, t) {
            w.store(v, Ordering::Relaxed);
        }
    }
}

/// Heap offset of an object in a class page of the heap: the only offsets
/// the allocator reads or writes links at.
///
/// # Invariants
///
/// The offset is 8-byte aligned and lies in a page whose descriptor said
/// `Class(_)` when the value was made, so the page is populated, and it stays
/// mapped until [`Heap::fini`] (type invariant of `Heap`).
#[derive(Clone, Copy)]
pub(super) struct ObjOff(u64);

impl Heap {
    /// Validates `off` as the start of an object of `class`.
    pub(super) fn object(&self, off: u64, class: usize) -> Option<(ObjOff, ObjRef, &PageDesc)> {
        if off == 0 || off >= self.size {
            return None;
        }
        let obj = locate(off, class).ok()?;
        if obj.page >= self.populated_end.load(Ordering::Acquire) {
            return None;
        }
        let desc = self.desc(obj.page)?;
        if desc.kind() != PageKind::Class(class as u8) {
            return None;
        }
        // INVARIANT: class objects are multiples of 16 bytes from their
        // page's start, in a `Class` page.
        Some((ObjOff(off), obj, desc))
    }

    /// Reads the link word of a free object, which the program may be
    /// writing.
    fn read_link(&self, at: ObjOff) -> u64 {
        let p = self.kern_base.wrapping_add(at.0) as *const u64;
        // SAFETY: `at` is an aligned offset in a mapped page of this heap
        // (invariants of `ObjOff` and `Heap`).
        unsafe { core::ptr::read_volatile(p) }
    }

    fn write_link(&self, at: ObjOff, v: u64) {
        let p = self.kern_base.wrapping_add(at.0) as *mut u64;
        // SAFETY: as in `read_link`.
        unsafe { core::ptr::write_volatile(p, v) }
    }

    fn cpu<'a>(&'a self, s: &Section) -> Option<&'a CpuShared> {
        self.cpus.this(s)
    }

    fn count_failed(&self, s: &Section) {
        if let Some(c) = self.cpu(s) {
            bump(&c.failed, 1);
        }
    }

    // ---- global lists ----

    /// Validates a global-list link: a free object of class `class` that is
    /// marked as on the global list.
    fn check_link(&self, off: u64, class: usize) -> Option<(ObjOff, ObjRef, &PageDesc)> {
        let (at, obj, desc) = self.object(off, class)?;
        let (w, b) = obj.bit();
        let free = desc.free.get(w)?.load(Ordering::Acquire) & b != 0;
        let global = desc.global.get(w)?.load(Ordering::Acquire) & b != 0;
        (free && global).then_some((at, obj, desc))
    }

    /// Pops one object from a global list, or truncates a corrupted list.
    fn pop_global(&self, list: &mut GlobalList, class: usize) -> Option<u64> {
        let off = list.head;
        if off == 0 {
            return None;
        }
        let taken = self.check_link(off, class).and_then(|(at, obj, desc)| {
            let (w, b) = obj.bit();
            // Clearing the bit claims the object: a forged link elsewhere
            // naming it can no longer be followed.
            (desc.global.get(w)?.fetch_and(!b, Ordering::AcqRel) & b != 0).then_some(at)
        });
        let Some(at) = taken else {
            bump(&self.c.corrupt_links, 1);
            *list = GlobalList::default();
            self.publish_list(list, class);
            return None;
        };
        list.head = self.read_link(at);
        list.count = list.count.saturating_sub(1);
        self.publish_list(list, class);
        Some(off)
    }

    /// Publishes a class list's length (`list_objs`: the worker's trigger).
    fn publish_list(&self, list: &GlobalList, class: usize) {
        if let Some(c) = self.c.list_objs.get(class) {
            c.store(list.count, Ordering::Relaxed);
        }
    }

    fn push_global(&self, list: &mut GlobalList, class: usize, off: u64) {
        if self.push_list(list, class, off).is_some() {
            self.publish_list(list, class);
        }
    }

    /// Links `off` in front of `list` and marks it as on a global list;
    /// returns where its link is.
    fn push_list(&self, list: &mut GlobalList, class: usize, off: u64) -> Option<ObjOff> {
        let (at, obj, desc) = self.object(off, class)?;
        let (w, b) = obj.bit();
        let g = desc.global.get(w)?;
        self.write_link(at, list.head);
        g.fetch_or(b, Ordering::AcqRel);
        list.head = off;
        list.count = list.count.saturating_add(1);
        Some(at)
    }

    // ---- giving class pages back (the worker, process context) ----

    /// Whether class `class`'s global list has grown enough since the last
    /// reclaim pass to be worth another: by [`RECLAIM_PAGES`] pages' worth
    /// of objects and by a quarter of what that pass kept (a growing list is
    /// walked at geometrically spaced sizes, a list that churns around its
    /// size not at all).
    pub(super) fn reclaim_wanted_class(&self, class: usize) -> bool {
        let (Some(objs), Some(kept)) = (self.c.list_objs.get(class), self.c.list_kept.get(class))
        else {
            return false;
        };
        let threshold = (objs_per_page(class) as u64).saturating_mul(RECLAIM_PAGES);
        let kept = kept.load(Ordering::Relaxed);
        objs.load(Ordering::Relaxed) > kept.saturating_add(threshold.max(kept / 4))
    }

    /// Whether some class is worth a reclaim pass.
    pub(super) fn reclaim_wanted(&self) -> bool {
        (0..NR_CLASSES).any(|c| self.reclaim_wanted_class(c))
    }

    /// Moves class pages whose objects are all on their class's global list
    /// to the free-page stack (the worker then gives free pages back to the
    /// system). Process context: sleeps to allocate its buffers.
    pub(super) fn reclaim_classes(&self) {
        for class in 0..NR_CLASSES {
            if self.reclaim_wanted_class(class) {
                self.reclaim_class(class);
            }
        }
    }

    /// One reclaim pass over class `class`:
    /// 1. detach the whole global list (under its lock: O(1));
    /// 2. claim every object of it as `pop_global` does (clearing its
    ///    on-global mark: a forged link elsewhere can no longer reach it)
    ///    and record it in a kernel buffer -- the links in the heap are
    ///    read once, validated, and never trusted again;
    /// 3. count the recorded objects per page (in the page descriptor's
    ///    `link`, which class pages do not use otherwise);
    /// 4. a page all of whose objects were recorded (and all free) goes to
    ///    the free-page stack; the other objects are linked into a private
    ///    list, which is spliced back in front of the global list (O(1)).
    fn reclaim_class(&self, class: usize) {
        let per_page = objs_per_page(class) as u32;
        let Some(now) = self.c.list_objs.get(class).map(|c| c.load(Ordering::Relaxed)) else {
            return;
        };
        // Room for the list as it is plus what spills meanwhile; a longer
        // list at detach time is left alone this round.
        let cap = (now as usize).saturating_add(now as usize / 8).saturating_add(4096);
        if cap > RECLAIM_MAX {
            return;
        }
        let Ok(mut objs) = KVVec::<u64>::with_capacity(cap, flags::GFP_KERNEL) else { return };
        let (mut cur, n) = {
            let s = Section::enter();
            let Some(mut list) = self.lists.get(class).and_then(|l| l.lock(&s)) else { return };
            if list.count as usize > cap {
                return;
            }
            let taken = (list.head, list.count);
            *list = GlobalList::default();
            self.publish_list(&list, class);
            taken
        };
        // 2. Claim and record. A list longer than its count, or a link that
        // does not validate, is corrupt: the rest stays leaked in the heap.
        let mut steps = 0u64;
        while cur != 0 {
            let claimed = (steps < n)
                .then(|| self.check_link(cur, class))
                .flatten()
                .and_then(|(at, obj, desc)| {
                    let (w, b) = obj.bit();
                    (desc.global.get(w)?.fetch_and(!b, Ordering::AcqRel) & b != 0).then_some(at)
                });
            let Some(at) = claimed else {
                bump(&self.c.corrupt_links, 1);
                break;
            };
            let next = self.read_link(at);
            if objs.push(cur, flags::GFP_KERNEL).is_err() {
                // Cannot happen (`n <= cap`): keep the object all the same.
                let mut one = GlobalList::default();
                let _ = self.push_list(&mut one, class, cur);
                break;
            }
            steps = steps.wrapping_add(1);
            cur = next;
        }
        // 3. Count per page.
        for &off in objs.iter() {
            if let Some(d) = self.desc(off >> PAGE_SHIFT) {
                d.link.store(0, Ordering::Relaxed);
            }
        }
        for &off in objs.iter() {
            if let Some(d) = self.desc(off >> PAGE_SHIFT) {
                d.link.store(d.link.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
            }
        }
        // 4. Decide.
        let full = full_bitmap(per_page as usize);
        let mut pages = KVVec::<u64>::new();
        let mut keep = GlobalList::default();
        let mut tail: Option<ObjOff> = None;
        for &off in objs.iter() {
            let page = off >> PAGE_SHIFT;
            let Some(d) = self.desc(page) else { continue };
            let t = d.link.load(Ordering::Relaxed);
            if t == RECLAIMED {
                continue;
            }
            let all_free = d.free.iter().zip(full.iter()).all(|(f, w)| f.load(Ordering::Acquire) == *w);
            if t == per_page && all_free && pages.push(page, flags::GFP_KERNEL).is_ok() {
                d.link.store(RECLAIMED, Ordering::Relaxed);
                continue;
            }
            // A page kept: later objects of it see a count that is not
            // the page's full count.
            d.link.store(0, Ordering::Relaxed);
            if let Some(at) = self.push_list(&mut keep, class, off) {
                tail.get_or_insert(at);
            }
        }
        // 5. Splice the kept objects back in front of the global list.
        if let Some(at) = tail {
            let s = Section::enter();
            let list = self.lists.get(class).and_then(|l| l.lock(&s));
            if let Some(mut list) = list {
                self.write_link(at, list.head);
                list.head = keep.head;
                list.count = list.count.saturating_add(keep.count);
                self.publish_list(&list, class);
            }
        }
        if let Some(k) = self.c.list_kept.get(class) {
            k.store(keep.count, Ordering::Relaxed);
        }
        // 6. The pages go to the free-page stack.
        for chunk in pages.chunks(64) {
            let s = Section::enter();
            let Some(mut pool) = self.pool.lock(&s) else { return };
            for &page in chunk {
                if self.desc(page).map(PageDesc::kind) == Some(PageKind::Class(class as u8)) {
                    self.push_free_page(&mut pool, page);
                    bump(&self.c.pages_reclaimed, 1);
                }
            }
        }
    }

    // ---- page pool ----

    /// Takes `n` contiguous fresh pages from the reserve, scanning at most
    /// [`SCAN_MAX`] descriptors.
    fn take_fresh(&self, pool: &mut PagePool, n: u64) -> Option<u64> {
        let end = self.populated_end.load(Ordering::Acquire);
        let mut start = pool.next_fresh;
        let mut scanned = 0u64;
        // Page indices are below 2^26, `n` at most MAX_LARGE_PAGES: the
        // sums below cannot wrap.
        while start.wrapping_add(n) <= end && scanned < SCAN_MAX {
            // A page that is not a reserve page (user-populated) breaks the
            // run: the reserve pages before it go to the free-page stack.
            let blocker = (start..start.wrapping_add(n))
                .find(|&p| self.desc(p).map(PageDesc::kind) != Some(PageKind::Reserve));
            match blocker {
                None => {
                    pool.next_fresh = start.wrapping_add(n);
                    self.next_fresh_hint.store(pool.next_fresh, Ordering::Release);
                    self.c.pages_reserve.fetch_sub(n as i64, Ordering::Relaxed);
                    return Some(start);
                }
                Some(b) => {
                    for p in start..b {
                        self.c.pages_reserve.fetch_sub(1, Ordering::Relaxed);
                        self.push_free_page(pool, p);
                    }
                    // `start <= b`.
                    let next = b.wrapping_add(1);
                    scanned = scanned.wrapping_add(next.wrapping_sub(start));
                    start = next;
                    pool.next_fresh = start;
                    self.next_fresh_hint.store(start, Ordering::Release);
                }
            }
        }
        None
    }

    pub(super) fn push_free_page(&self, pool: &mut PagePool, page: u64) {
        if let Some(d) = self.desc(page) {
            d.link.store(pool.free_top, Ordering::Relaxed);
            d.set_kind(PageKind::FreeStack);
            // Page indices fit 32 bits (static assertion in heap.rs).
            pool.free_top = page.wrapping_add(1) as u32;
            self.count_free(pool, 1, 0);
        }
    }

    /// Adds `add` and takes `sub` pages from the pool's count of free pages
    /// and publishes it (`pages_free`: the worker's watermarks).
    fn count_free(&self, pool: &mut PagePool, add: u64, sub: u64) {
        pool.free_pages = pool.free_pages.saturating_add(add).saturating_sub(sub);
        self.c.pages_free.store(pool.free_pages, Ordering::Relaxed);
    }

    /// One free page for the worker to give back to the system (the
    /// free-page stack first, then the end of the last run); its descriptor
    /// says `Unpopulated` from here on, so nothing hands it out again.
    pub(super) fn take_free_for_release(&self, pool: &mut PagePool) -> Option<u64> {
        let p = match self.pop_free_page(pool) {
            Some(p) => p,
            None => {
                let p = self.with_runs(pool, |runs, tags| runs.take_last(tags))?;
                self.count_free(pool, 0, 1);
                p
            }
        };
        self.desc(p)?.set_kind(PageKind::Unpopulated);
        Some(p)
    }

    /// Pops the free-page stack. Its links are in the descriptors, out of the
    /// program's reach; the page's kind is checked all the same.
    fn pop_free_page(&self, pool: &mut PagePool) -> Option<u64> {
        let page = u64::from(pool.free_top).checked_sub(1)?;
        match self.desc(page) {
            Some(d) if d.kind() == PageKind::FreeStack => {
                pool.free_top = d.link.load(Ordering::Relaxed);
                d.set_kind(PageKind::Reserve);
                self.count_free(pool, 0, 1);
                Some(page)
            }
            _ => {
                bump(&self.c.corrupt_links, 1);
                pool.free_top = 0;
                None
            }
        }
    }

    /// Runs `f` on the pool's free runs; a list they drop because a run
    /// did not check out counts in `corrupt_links`.
    fn with_runs<T>(
        &self,
        pool: &mut PagePool,
        f: impl FnOnce(&mut Runs, &RunTags<'_>) -> T,
    ) -> T {
        let dropped = pool.runs.dropped();
        let r = f(&mut pool.runs, &RunTags(self));
        if pool.runs.dropped() != dropped {
            bump(&self.c.corrupt_links, 1);
        }
        r
    }

    /// Takes `n` contiguous pages from the free runs.
    fn take_run(&self, pool: &mut PagePool, n: u64) -> Option<u64> {
        let start = self.with_runs(pool, |runs, tags| runs.take(tags, n))?;
        self.count_free(pool, 0, n);
        // Runs lie inside the heap (page indices below 2^26), so `start + n`
        // does not wrap. Every page of a run says so; one that does not means
        // the pool is inconsistent: leak the pages rather than hand one out
        // twice.
        let end = start.wrapping_add(n);
        if (start..end).any(|p| self.desc(p).map(PageDesc::kind) != Some(PageKind::FreeRun)) {
            bump(&self.c.corrupt_links, 1);
            return None;
        }
        for p in start..end {
            if let Some(d) = self.desc(p) {
                d.set_kind(PageKind::Reserve);
            }
        }
        Some(start)
    }

    /// One page for a size class (any context; `None` if a nested section
    /// cannot take the pool's lock or nothing is left).
    fn take_page(&self, s: &Section) -> Option<u64> {
        let mut pool = self.pool.lock(s)?;
        if let Some(p) = self.pop_free_page(&mut pool) {
            return Some(p);
        }
        if let Some(p) = self.take_run(&mut pool, 1) {
            return Some(p);
        }
        let p = self.take_fresh(&mut pool, 1);
        drop(pool);
        self.note_reserve(p.is_none(), 0);
        p
    }

    // ---- small objects ----

    /// Refills a per-CPU cache from the global list, or carves a new page.
    pub(super) fn refill(&self, s: &Section, cache: &mut Cache, class: usize) {
        let want = refill_amount(cache.len(class));
        if want == 0 {
            return;
        }
        {
            let Some(mut list) = self.lists.get(class).and_then(|l| l.lock(s)) else {
                return;
            };
            let mut got = 0;
            while got < want {
                let Some(off) = self.pop_global(&mut list, class) else { break };
                cache.push(class, off);
                got += 1;
            }
            if got > 0 {
                return;
            }
        }
        let Some(page) = self.take_page(s) else { return };
        let Some(desc) = self.desc(page) else { return };
        let n = objs_per_page(class);
        let bits = full_bitmap(n);
        for ((f, g), b) in desc.free.iter().zip(desc.global.iter()).zip(bits.iter()) {
            f.store(*b, Ordering::Relaxed);
            g.store(0, Ordering::Relaxed);
        }
        desc.set_kind(PageKind::Class(class as u8));
        // The whole page fits in the cache (static assertion above), so no
        // list lock is needed, which a nested section might not get.
        for i in 0..n {
            cache.push(class, ObjRef { page, index: i }.offset(class));
        }
    }

    pub(super) fn alloc_small(&self, s: &Section, cache: &mut Cache, class: usize) -> u64 {
        for _ in 0..2 {
            self.refill(s, cache, class);
            let Some(cand) = cache.pop(class) else { break };
            if self.claim(cand, class) {
                return cand;
            }
        }
        0
    }

    /// Marks the free object at `off` (from a cache or a magazine, which
    /// hold only free objects, but checked) allocated; counts a corrupt
    /// link if it is not a free object of `class`.
    pub(super) fn claim(&self, off: u64, class: usize) -> bool {
        if let Some((_, obj, desc)) = self.object(off, class) {
            let (w, b) = obj.bit();
            if desc.free.get(w).is_some_and(|f| f.fetch_and(!b, Ordering::AcqRel) & b != 0) {
                return true;
            }
        }
        bump(&self.c.corrupt_links, 1);
        false
    }

    fn free_object(
        &self,
        s: &Section,
        cache: &mut Cache,
        off: u64,
        class: usize,
    ) -> Result<(), Deferral> {
        let (_, obj, desc) = self.object(off, class).ok_or(Refusal::Misaligned)?;
        if cache.len(class) >= CACHE_CAP {
            // Full (nested sections could not spill): try again later.
            return Err(Deferral::Busy);
        }
        let (w, b) = obj.bit();
        let word = desc.free.get(w).ok_or(Refusal::Foreign)?;
        if word.fetch_or(b, Ordering::AcqRel) & b != 0 {
            return Err(Refusal::Double.into());
        }
        cache.push(class, off);
        self.spill(s, cache, class);
        Ok(())
    }

    /// Moves objects of a cache above its high watermark to the global list.
    pub(super) fn spill(&self, s: &Section, cache: &mut Cache, class: usize) {
        if spill_amount(cache.len(class)) == 0 {
            return;
        }
        if let Some(mut list) = self.lists.get(class).and_then(|l| l.lock(s)) {
            for _ in 0..SPILL {
                let Some(o) = cache.pop(class) else { break };
                self.push_global(&mut list, class, o);
            }
        }
        if self.reclaim_wanted_class(class) {
            // The worker looks for class pages to give back.
            self.kick();
        }
    }

    // ---- large allocations ----

    fn alloc_large(&self, s: &Section, size: u64) -> u64 {
        let Some(n) = large_pages(size).filter(|&n| n < self.npages) else {
            return 0;
        };
        let Some(mut pool) = self.pool.lock(s) else { return 0 };
        let mut start = self.take_run(&mut pool, n);
        let dry = start.is_none();
        if start.is_none() {
            start = self.take_fresh(&mut pool, n);
        }
        drop(pool);
        let head = start.and_then(|st| Some((st, self.desc(st)?)));
        let uaddr = match head {
            Some((st, head)) => {
                // `st + n` is at most the heap's page count.
                for p in st.wrapping_add(1)..st.wrapping_add(n) {
                    if let Some(d) = self.desc(p) {
                        d.set_kind(PageKind::LargeTail);
                    }
                }
                head.link.store(n as u32, Ordering::Relaxed);
                head.set_kind(PageKind::LargeHead);
                self.c.large_bytes.fetch_add((n << PAGE_SHIFT) as i64, Ordering::Relaxed);
                self.user_addr(st << PAGE_SHIFT)
            }
            None => 0,
        };
        self.note_reserve(dry && uaddr == 0, n);
        uaddr
    }

    fn free_large(&self, s: &Section, page: u64, head: &PageDesc) -> Result<(), Deferral> {
        let mut pool = self.pool.lock(s).ok_or(Deferral::Busy)?;
        // Claiming the head under the pool's lock makes a double free (or a
        // racing one) fail here, before any page changes hands.
        if head
            .state
            .compare_exchange(
                PageKind::LargeHead.encode(),
                PageKind::FreeRun.encode(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(Refusal::Double.into());
        }
        let n = u64::from(head.link.load(Ordering::Relaxed)).clamp(1, MAX_LARGE_PAGES);
        let end = page.saturating_add(n);
        for p in page.saturating_add(1)..end {
            if let Some(d) = self.desc(p) {
                d.set_kind(PageKind::FreeRun);
            }
        }
        self.c.large_bytes.fetch_sub((n << PAGE_SHIFT) as i64, Ordering::Relaxed);
        // A run of its own, merged with the runs right before and after.
        self.with_runs(&mut pool, |runs, tags| runs.insert(tags, page, n));
        self.count_free(&mut pool, n, 0);
        let give_back = self.give_back_wanted();
        drop(pool);
        if give_back {
            // The worker gives pages back to the system.
            self.kick();
        }
        Ok(())
    }

    // ---- entry points ----

    /// `bpf_kflex_bench_alloc()`: `n` iterations of `mode` on objects of
    /// `size` bytes, no kfunc calls; returns the failed allocations.
    #[cfg(CONFIG_KFLEX_BENCH)]
    pub(crate) fn bench_alloc(&self, mode: BenchAlloc, size: u64, n: u64) -> u64 {
        let mut failed = 0u64;
        for _ in 0..n {
            match mode {
                BenchAlloc::Section => {
                    for _ in 0..2 {
                        core::hint::black_box(Section::enter());
                    }
                }
                BenchAlloc::Cache => {
                    for _ in 0..2 {
                        let s = Section::enter();
                        core::hint::black_box(self.caches.get(&s).is_some());
                    }
                }
                BenchAlloc::Pair => match self.alloc(size) {
                    0 => failed = failed.wrapping_add(1),
                    u => self.free(u),
                },
            }
        }
        failed
    }

    /// `bpf_kflex_alloc()`: user address of `size` new bytes, or 0.
    pub(crate) fn alloc(&self, size: u64) -> u64 {
        let s = Section::enter();
        let Some(mut cache) = self.caches.get(&s) else {
            // This section interrupted the allocator on this CPU.
            self.count_failed(&s);
            return 0;
        };
        let class = class_of(size);
        let off = match class {
            Some(c) => self.alloc_via_magazine(&s, &mut cache, c),
            None => {
                let u = self.alloc_large(&s, size);
                return self.finish(&s, cache, u, None);
            }
        };
        let uaddr = if off == 0 { 0 } else { self.user_addr(off) };
        self.finish(&s, cache, uaddr, class)
    }

    /// Accounts an allocation and completes deferred frees.
    fn finish(
        &self,
        s: &Section,
        mut cache: CpuRef<'_, Cache>,
        uaddr: u64,
        class: Option<usize>,
    ) -> u64 {
        if let Some(c) = self.cpu(s) {
            if uaddr == 0 {
                bump(&c.failed, 1);
            } else {
                bump_owned(&cache, &c.allocs, 1);
                account(&cache, c, class, 1);
            }
        }
        self.drain(s, &mut cache);
        uaddr
    }

    /// `bpf_kflex_free()`.
    pub(crate) fn free(&self, uaddr: u64) {
        if self.free_fast(uaddr) {
            return;
        }
        let s = Section::enter();
        let Some(mut cache) = self.caches.get(&s) else {
            self.defer(&s, uaddr);
            return;
        };
        if let Some(class) = self.free_one(&s, &mut cache, uaddr) {
            self.drain_magazine(&s, &mut cache, class);
        }
        self.drain(&s, &mut cache);
    }

    /// Frees `uaddr` with the CPU's cache held; defers it if a lock cannot
    /// be taken or the cache is full.
    /// Returns the size class of a small object it freed.
    fn free_one(&self, s: &Section, cache: &mut Cache, uaddr: u64) -> Option<usize> {
        match self.try_free(s, cache, uaddr) {
            Ok(class) => {
                if let Some(c) = self.cpu(s) {
                    bump_owned(cache, &c.frees, 1);
                    account(cache, c, class, -1);
                }
                return class;
            }
            Err(Deferral::Busy) => self.defer(s, uaddr),
            Err(Deferral::Refused(why)) => {
                let c = match why {
                    Refusal::Foreign => &self.c.refused_foreign,
                    Refusal::Misaligned => &self.c.refused_misaligned,
                    Refusal::Double => &self.c.refused_double,
                };
                bump(c, 1);
            }
        }
        None
    }

    /// Frees `uaddr`; returns the size class of a small object.
    fn try_free(
        &self,
        s: &Section,
        cache: &mut Cache,
        uaddr: u64,
    ) -> Result<Option<usize>, Deferral> {
        let off = user_offset(uaddr, self.user_start(), self.size).ok_or(Refusal::Foreign)?;
        let page = off >> PAGE_SHIFT;
        if off == 0 || page >= self.populated_end.load(Ordering::Acquire) {
            return Err(Refusal::Foreign.into());
        }
        let desc = self.desc(page).ok_or(Refusal::Foreign)?;
        match desc.kind() {
            PageKind::Class(c) => {
                self.free_object(s, cache, off, c as usize).map(|_| Some(c as usize))
            }
            PageKind::LargeHead if off & (PAGE_SIZE - 1) == 0 => {
                self.free_large(s, page, desc).map(|_| None)
            }
            PageKind::LargeHead | PageKind::LargeTail => Err(Refusal::Misaligned.into()),
            k if k.is_free() => Err(Refusal::Double.into()),
            _ => Err(Refusal::Foreign.into()),
        }
    }

    /// Queues a free for a later section of this CPU.
    fn defer(&self, s: &Section, uaddr: u64) {
        let Some(c) = self.cpu(s) else { return };
        if c.ring.push(uaddr) {
            bump(&c.deferred, 1);
        } else {
            // The object stays allocated: a leak inside the heap, counted.
            bump(&c.dropped, 1);
        }
        self.kick();
    }

    /// Completes up to [`DRAIN_MAX`] deferred frees of this CPU (not from a
    /// nested section: it could only defer them again).
    fn drain(&self, s: &Section, cache: &mut Cache) {
        if s.nested() {
            return;
        }
        let Some(c) = self.cpu(s) else { return };
        for _ in 0..DRAIN_MAX {
            let Some(uaddr) = c.ring.pop() else { break };
            self.free_one(s, cache, uaddr);
        }
    }

    /// Completes this CPU's deferred frees from the heap's irq_work.
    pub(super) fn drain_deferred(&self, s: &Section) {
        if let Some(mut cache) = self.caches.get(s) {
            self.drain(s, &mut cache);
        }
    }
}

/// What one iteration of [`Heap::bench_alloc`] does.
#[cfg(CONFIG_KFLEX_BENCH)]
pub(crate) enum BenchAlloc {
    /// Enter and leave two sections (a pair's).
    Section,
    /// ... and take the CPU's cache in each.
    Cache,
    /// Allocate and free one object.
    Pair,
}

/// Adds `sign` objects of `class` (if a small object) to the bytes of the
/// CPU whose cache `held` is.
fn account(held: &Cache, c: &CpuShared, class: Option<usize>, sign: i64) {
    if let Some(k) = class {
        if let Some(b) = c.class_bytes.get(k) {
            let _ = held;
            // Only the holder of this CPU's cache writes these counters
            // (other CPUs only read them): no read-modify-write atomic.
            let v = b.load(Ordering::Relaxed);
            b.store(v.wrapping_add(sign.wrapping_mul(class_size(k) as i64)), Ordering::Relaxed);
        }
    }
}

/// Adds `v` to `counter`, a counter of the CPU whose cache `held` is that
/// only that cache's holder writes (`allocs`, `frees`): a plain load and
/// store (other CPUs only read it), cheaper than an atomic add.
fn bump_owned(held: &Cache, counter: &AtomicU64, v: u64) {
    let _ = held;
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
}

/// Why a free did not happen now.
enum Deferral {
    /// A lock or the cache was not available to this section: retry later.
    Busy,
    /// Refused for good (and counted).
    Refused(Refusal),
}

impl From<Refusal> for Deferral {
    fn from(r: Refusal) -> Self {
        Deferral::Refused(r)
    }
}
