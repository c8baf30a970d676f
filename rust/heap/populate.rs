// SPDX-License-Identifier: GPL-2.0

//! Population of heap pages: process context only.
//!
//! Mapping a page may allocate page tables, so pages are populated only
//! where sleeping is allowed, always under `pop_lock`: by a work item that
//! keeps a *reserve* of populated pages ahead of the allocator, by user-space
//! page faults, and by the sleepable kfunc `bpf_kflex_reserve()`. The
//! allocator (any context) never populates; when its reserve runs low it
//! queues the heap's irq_work, whose handler queues the work item (see
//! [`irq_worker`]) -- queueing work directly from the allocator could
//! deadlock a tracing program that runs inside the scheduler or the
//! workqueue code.
//!
//! The worker also gives memory back: when the allocator's free pages (the
//! free-page stack and the runs of large frees) exceed [`FREE_HIGH`], it
//! takes pages from them down to [`FREE_LOW`], unmaps each from the kernel
//! and every user mapping and frees it (which uncharges its memory cgroup),
//! and keeps it on a stack of released pages, which it populates again
//! (onto the free-page stack) before fresh ones when the allocator runs
//! short.

use core::{ptr, sync::atomic::Ordering};

use kernel::{
    alloc::{flags, KVVec},
    bindings,
    prelude::*,
};

use super::{bump, Heap, PageDesc};
use crate::{
    logic::{alloc::PageKind, geometry::PAGE_SIZE},
    sys::Section,
};

/// Populated pages the worker keeps ahead of the allocator at first.
pub(super) const RESERVE_MIN: u64 = 64;
/// The reserve doubles each time it runs dry, up to this many pages.
pub(super) const RESERVE_MAX: u64 = 4096;
/// Free pages of the allocator above which the worker gives pages back...
pub(super) const FREE_HIGH: u64 = 1024;
/// ... down to this many; below half of it, it populates pages it gave back
/// again (onto the free-page stack), up to it.
const FREE_LOW: u64 = 512;
/// Pages one worker run gives back at most (it queues itself for more).
const GIVE_BACK_MAX: u64 = 8192;
/// Largest `bpf_kflex_reserve()` request (`KFLEX_RESERVE_MAX`).
const RESERVE_CALL_MAX: u64 = bindings::KFLEX_RESERVE_MAX as u64;

/// The work item: tops the reserve up.
///
/// # Safety
///
/// `work` must be the `work` field of a live `Heap`.
pub(super) unsafe extern "C" fn worker(work: *mut bindings::work_struct) {
    // SAFETY: per the contract, `work` is the `work` field of a live pinned
    // `Heap` (`Work` is a transparent wrapper): `Heap::fini` cancels the
    // work before the heap is freed.
    let heap = unsafe { &*kernel::container_of!(work, Heap, work) };
    heap.top_up();
}

/// The irq_work: hard interrupt context on the CPU that queued it. Completes
/// the CPU's deferred frees and queues the worker if the reserve is low.
///
/// # Safety
///
/// `work` must be the `irq_work` field of a live `Heap`.
pub(super) unsafe extern "C" fn irq_worker(work: *mut bindings::irq_work) {
    // SAFETY: per the contract, as in `worker`: `Heap::fini` waits for the
    // irq_work before the heap is freed.
    let heap = unsafe { &*kernel::container_of!(work, Heap, irq_work) };
    let s = Section::enter();
    heap.drain_deferred(&s);
    drop(s);
    if !heap.dying.load(Ordering::Acquire)
        && (heap.reserve_low() || heap.give_back_wanted() || heap.reclaim_wanted())
    {
        // Hard interrupt context that interrupted nothing of ours and no
        // scheduler or workqueue lock holder (they run with interrupts off).
        heap.work.queue();
    }
}

impl Heap {
    /// Queues the irq_work from any context: it completes this CPU's
    /// deferred frees and asks for the worker if needed.
    pub(super) fn kick(&self) {
        if !self.dying.load(Ordering::Acquire) {
            self.irq_work.queue();
        }
    }

    /// Whether the worker has something to populate: the reserve is below
    /// half its target (or a large allocation asked for more) and the heap
    /// is not populated to its end yet, or pages given back wait to be
    /// populated again and the free pages are below half of [`FREE_LOW`].
    pub(super) fn reserve_low(&self) -> bool {
        let target = self.reserve_target.load(Ordering::Relaxed);
        let reserve = self.c.pages_reserve.load(Ordering::Relaxed).max(0) as u64;
        let fresh = self.populated_end.load(Ordering::Acquire) < self.npages
            && (self.want.load(Ordering::Relaxed) > 0 || reserve < target / 2);
        let released = self.released_top.load(Ordering::Relaxed) != 0
            && self.c.pages_free.load(Ordering::Relaxed) < FREE_LOW / 2;
        fresh || released
    }

    /// Whether the allocator's free pages exceed [`FREE_HIGH`].
    pub(super) fn give_back_wanted(&self) -> bool {
        self.c.pages_free.load(Ordering::Relaxed) > FREE_HIGH
    }

    /// Gives free pages back to the system down to [`FREE_LOW`], at most
    /// [`GIVE_BACK_MAX`] per run. Under `pop_lock`, so that no user fault
    /// populates a page while it goes.
    fn give_back(&self) {
        if !self.give_back_wanted() {
            return;
        }
        for i in 0..GIVE_BACK_MAX {
            let page = {
                let s = Section::enter();
                let Some(mut pool) = self.pool.lock(&s) else { return };
                if pool.free_pages() <= FREE_LOW {
                    return;
                }
                self.take_free_for_release(&mut pool)
            };
            let Some(page) = page else { return };
            // SAFETY: `info` is this heap's; the page is populated and its
            // descriptor says `Unpopulated`, so the allocator no longer hands
            // it out, and `pop_lock` keeps faults from populating it.
            let r = unsafe { bindings::kflex_vm_unpopulate(self.info, page.wrapping_mul(PAGE_SIZE)) };
            if r != 0 {
                // Still mapped: keep it.
                let s = Section::enter();
                if let Some(mut pool) = self.pool.lock(&s) {
                    self.push_free_page(&mut pool, page);
                }
                return;
            }
            self.c.pages_populated.fetch_sub(1, Ordering::Relaxed);
            bump(&self.c.pages_returned, 1);
            if let Some(d) = self.desc(page) {
                d.link.store(self.released_top.load(Ordering::Relaxed), Ordering::Relaxed);
                // Page indices fit 32 bits (static assertion in heap.rs).
                self.released_top.store(page.wrapping_add(1) as u32, Ordering::Relaxed);
            }
            if i % 64 == 63 {
                // SAFETY: process context, no spinlock held (`pop_lock` is a
                // mutex).
                unsafe { bindings::kflex_cond_resched() };
            }
        }
        if self.give_back_wanted() {
            self.work.queue();
        }
    }

    /// Populates up to `want` pages given back earlier, onto the free-page
    /// stack. Under `pop_lock`.
    fn refill_released(&self, want: u64) -> Result {
        let mut n = 0;
        while n < want {
            let top = self.released_top.load(Ordering::Relaxed);
            let Some(page) = u64::from(top).checked_sub(1) else { break };
            let Some(d) = self.desc(page) else {
                self.released_top.store(0, Ordering::Relaxed);
                break;
            };
            let next = d.link.load(Ordering::Relaxed);
            if d.kind() != PageKind::Unpopulated {
                // A user fault populated it since.
                self.released_top.store(next, Ordering::Relaxed);
                continue;
            }
            self.populate_page(page, PageKind::Reserve)?;
            self.released_top.store(next, Ordering::Relaxed);
            let s = Section::enter();
            if let Some(mut pool) = self.pool.lock(&s) {
                self.push_free_page(&mut pool, page);
            }
            n = n.wrapping_add(1);
        }
        Ok(())
    }

    /// Called by the allocator after taking fresh pages: grows the reserve
    /// target when the reserve ran dry (and remembers a large request),
    /// kicks the worker when it runs low.
    pub(super) fn note_reserve(&self, dry: bool, want: u64) {
        if dry {
            let t = self.reserve_target.load(Ordering::Relaxed);
            self.reserve_target.store(t.saturating_mul(2).min(RESERVE_MAX), Ordering::Relaxed);
            if want > 0 {
                self.want.fetch_max(want, Ordering::Relaxed);
            }
        }
        if self.reserve_low() {
            self.kick();
        }
    }

    /// Descriptor of `page`, allocating its chunk. Under `pop_lock`.
    fn chunk_for(&self, page: u64) -> Result<&PageDesc> {
        if let Some(d) = self.desc(page) {
            return Ok(d);
        }
        let slot = self.dir.get(self.chunk_of(page)).ok_or(EINVAL)?;
        let n = self.chunk_pages as usize;
        let mut v = KVVec::<PageDesc>::with_capacity(n, flags::GFP_KERNEL_ACCOUNT)?;
        for _ in 0..n {
            v.push(
                PageDesc {
                    state: Default::default(),
                    link: Default::default(),
                    free: Default::default(),
                    global: Default::default(),
                },
                flags::GFP_KERNEL_ACCOUNT,
            )?;
        }
        let (p, _, _) = v.into_raw_parts();
        // INVARIANT: `p` holds `chunk_pages` descriptors; `fini` frees it.
        slot.store(p, Ordering::Release);
        bump(&self.c.meta_bytes, (n * core::mem::size_of::<PageDesc>()) as u64);
        self.desc(page).ok_or(ENOMEM)
    }

    /// Populates page `page` (its descriptor must say `Unpopulated`), under
    /// `pop_lock`.
    fn populate_page(&self, page: u64, kind: PageKind) -> Result<&PageDesc> {
        let desc = self.chunk_for(page)?;
        // SAFETY: `info` is this heap's; the page is not populated yet and
        // `pop_lock` keeps anyone else from populating it.
        kernel::error::to_result(unsafe {
            bindings::kflex_vm_populate(self.info, page.wrapping_mul(PAGE_SIZE))
        })?;
        desc.set_kind(kind);
        bump(&self.c.pages_populated, 1);
        Ok(desc)
    }

    /// Populates the reserve up to its target (the work item).
    fn top_up(&self) {
        let extra = self.want.swap(0, Ordering::AcqRel);
        let target = self.reserve_target.load(Ordering::Relaxed).saturating_add(extra);
        let _guard = self.pop_lock.lock();
        self.reclaim_classes();
        self.give_back();
        // Pages given back come back (onto the free-page stack) when the
        // free pages run low.
        let free = self.c.pages_free.load(Ordering::Relaxed);
        if free < FREE_LOW / 2 {
            let _ = self.refill_released(FREE_LOW.saturating_sub(free));
        }
        let next_fresh = self.next_fresh_hint.load(Ordering::Acquire);
        let goal = next_fresh.saturating_add(target).min(self.npages);
        // Errors end the round; the allocator kicks again when it needs to.
        let _ = self.populate_to(goal);
    }

    /// Populates pages up to `goal` under `pop_lock`: `-ENOMEM` at the
    /// memory cgroup's limit or when memory runs short, `-EINTR` when the
    /// task is being killed.
    fn populate_to(&self, goal: u64) -> Result {
        let mut end = self.populated_end.load(Ordering::Acquire);
        while end < goal {
            let populated = self.desc(end).is_some_and(|d| d.kind().populated());
            if !populated {
                // Page 0 is never handed out: offset 0 is NULL.
                let kind = if end == 0 { PageKind::System } else { PageKind::Reserve };
                self.populate_page(end, kind)?;
                if kind == PageKind::Reserve {
                    self.c.pages_reserve.fetch_add(1, Ordering::Relaxed);
                }
            }
            end += 1;
            // INVARIANT: page `end - 1` has a descriptor.
            self.populated_end.store(end, Ordering::Release);
            if end % 64 == 0 {
                // SAFETY: no preconditions.
                if unsafe { bindings::kflex_fatal_signal_pending() } {
                    return Err(EINTR);
                }
                // SAFETY: process context, no spinlock held (`pop_lock` is a
                // mutex).
                unsafe { bindings::kflex_cond_resched() };
            }
        }
        Ok(())
    }

    /// `bpf_kflex_reserve()`: populate so that `bytes` more can be
    /// allocated without waiting for the worker. Sleeps.
    pub(crate) fn reserve(&self, bytes: u64) -> i32 {
        if bytes > RESERVE_CALL_MAX {
            return E2BIG.to_errno();
        }
        let pages = bytes.div_ceil(PAGE_SIZE);
        let _guard = self.pop_lock.lock();
        let next_fresh = self.next_fresh_hint.load(Ordering::Acquire);
        let goal = next_fresh.saturating_add(pages).min(self.npages);
        if let Err(e) = self.populate_to(goal) {
            return e.to_errno();
        }
        if self.populated_end.load(Ordering::Acquire) >= goal {
            0
        } else {
            ENOMEM.to_errno()
        }
    }

    /// Page backing heap offset `off` for a user-space fault, populating it
    /// if needed.
    pub(crate) fn fault(&self, off: u64) -> *mut bindings::page {
        if off >= self.size {
            return ptr::null_mut();
        }
        let page = off / PAGE_SIZE;
        let _guard = self.pop_lock.lock();
        let populated = self.desc(page).is_some_and(|d| d.kind().populated());
        if !populated {
            if self.populate_page(page, PageKind::User).is_err() {
                return ptr::null_mut();
            }
            bump(&self.c.pages_user, 1);
        }
        // SAFETY: `info` is this heap's and the page is populated.
        unsafe { bindings::kflex_vm_page(self.info, page.wrapping_mul(PAGE_SIZE)) }
    }
}
