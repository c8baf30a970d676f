// SPDX-License-Identifier: GPL-2.0

//! KFlex extension heaps: the heap object, its page descriptors and its
//! statistics.
//!
//! A heap is a power-of-two region of kernel address space (see
//! [`crate::logic::geometry`]) shared with user space. The code is split by
//! the context it runs in, one rule per file:
//!
//! - this file: creation and teardown, descriptor lookup, statistics
//!   (process context, or lock-free reads);
//! - [`populate`]: population of pages -- the reserve worker, user-space
//!   faults and `bpf_kflex_reserve()` (process context, may sleep, under
//!   `pop_lock`);
//! - [`objects`]: the allocator -- per-CPU caches, global free lists, the
//!   page pool (any context, inside a [`Section`](crate::sys::Section));
//! - [`fast`]: the per-CPU magazines of the fast path (any context, no
//!   section: a busy word taken with an exchange).
//!
//! Metadata lives outside the heap: one [`PageDesc`] per page (kind, object
//! bitmaps, the free-page stack's links), per-CPU caches of free objects,
//! and the list heads. The only metadata inside the heap are the links of
//! the classes' global free lists, and every such link is validated against
//! the descriptors before it is followed (see [`crate::logic::alloc`]).

use core::{
    ptr,
    sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering},
};

use kernel::{
    alloc::{flags, KVVec},
    bindings, c_str, new_mutex,
    prelude::*,
    str::CStr,
    sync::{Mutex, SpinLock},
};

use crate::{
    logic::{
        alloc::{PageKind, BITMAP_WORDS, CLASS_SIZES, NR_CLASSES},
        geometry::{self, PAGE_SIZE},
    },
    sys::{CpuLocal, IrqWork, LockKey, PerCpu, RawLock, Work},
};

mod fast;
mod locks;
mod objects;
mod populate;

pub(crate) use locks::LockError;
#[cfg(CONFIG_KFLEX_BENCH)]
pub(crate) use objects::BenchAlloc;
use objects::{Cache, CpuShared, GlobalList, PagePool};

// One definition of what crosses the C boundary, checked here: the C side
// prints and sizes what Rust fills, and the UAPI limits are the geometry's.
const _: () = assert!(bindings::KFLEX_NR_CLASSES as usize == NR_CLASSES);
const _: () = assert!(bindings::KFLEX_HEAP_MIN_SIZE as u64 == geometry::MIN_SIZE);
const _: () = assert!(bindings::KFLEX_HEAP_MAX_SIZE as u64 == geometry::MAX_SIZE);
const _: () = assert!(bindings::KFLEX_GUARD_SIZE as u64 == geometry::GUARD_LO);
const _: () = assert!(bindings::PAGE_SIZE as u64 == PAGE_SIZE);
// A page index fits the descriptors' 32-bit links and counts.
const _: () = assert!(geometry::MAX_SIZE / PAGE_SIZE <= u32::MAX as u64);

/// Pages per descriptor chunk (descriptors are allocated per chunk).
const CHUNK_PAGES: u64 = 512;

/// Out-of-heap descriptor of one heap page.
struct PageDesc {
    /// [`PageKind`] encoding.
    state: AtomicU32,
    /// Large head: pages of the allocation. Free-stack page: the page below
    /// it on the stack, plus one (0: bottom).
    link: AtomicU32,
    /// Class pages: object is free.
    free: [AtomicU64; BITMAP_WORDS],
    /// Class pages: free object is on the global list.
    global: [AtomicU64; BITMAP_WORDS],
}

impl PageDesc {
    #[inline]
    fn kind(&self) -> PageKind {
        PageKind::decode(self.state.load(Ordering::Acquire))
    }

    fn set_kind(&self, kind: PageKind) {
        self.state.store(kind.encode(), Ordering::Release);
    }
}

/// A KFlex heap.
///
/// # Invariants
///
/// - `info` is the glue's heap info of this heap; it outlives the `Heap`
///   (the glue frees it after `heap_fini`).
/// - `[kern_base, kern_base + size)` lies in a kernel address range reserved
///   for this heap, with unmapped guard zones on both sides; a page whose
///   descriptor exists and says populated is mapped there, and stays mapped
///   until the glue frees the pages after [`Heap::fini`].
/// - A non-null `dir[i]` points to `chunk_pages` descriptors allocated by
///   [`Heap::chunk_for`] and freed only by [`Heap::fini`].
/// - Pages below `populated_end` all have descriptors.
/// - `info.user_start` goes from 0 to the heap's user address once, at the
///   first `mmap` (the glue refuses a second address), and BPF programs --
///   the only callers of [`Heap::alloc`] and [`Heap::free`] -- load only
///   after it is set (the verifier requires an arena's user address), so
///   the allocator always reads the final value.
#[pin_data]
pub(crate) struct Heap {
    info: *mut bindings::kflex_heap_info,
    size: u64,
    npages: u64,
    kern_base: u64,
    dir: KVVec<AtomicPtr<PageDesc>>,
    /// Pages per descriptor chunk: a power of two, `1 << chunk_shift`.
    chunk_pages: u64,
    chunk_shift: u32,
    /// Pages below are populated (process context advances it).
    populated_end: AtomicU64,

    // Population, process context (see `populate`).
    /// Reserve the worker aims for, and an extra request from a failed
    /// large allocation.
    reserve_target: AtomicU64,
    want: AtomicU64,
    /// Copy of `pool.next_fresh` for process context, which must not take
    /// `pool`.
    next_fresh_hint: AtomicU64,
    /// Pages given back to the system, to be populated again first: a
    /// stack linked through the descriptors (page index + 1; 0: empty).
    /// Under `pop_lock`.
    released_top: AtomicU32,
    /// Serialises population (worker, faults, bpf_kflex_reserve()).
    #[pin]
    pop_lock: Mutex<()>,
    #[pin]
    work: Work,
    /// Queued from any context when the worker is needed or a CPU has
    /// deferred frees; runs in hard interrupt context.
    #[pin]
    irq_work: IrqWork,
    dying: AtomicBool,

    // The allocator, any context (see `objects`).
    #[pin]
    pool: RawLock<PagePool>,
    #[pin]
    lists: [RawLock<GlobalList>; NR_CLASSES],
    caches: CpuLocal<Cache>,
    cpus: PerCpu<CpuShared>,
    /// Heap locks held and waited for, per CPU (`locks`).
    locks: PerCpu<locks::LockCpu>,
    c: Counters,
    /// The native structures on kernel memory of the benchmarks (empty
    /// unless `bpf_kflex_bench_native()` fills them).
    #[pin]
    kmem: SpinLock<crate::kmem::Structs>,
}

/// Heap-wide statistics (the per-CPU ones are in [`CpuShared`]).
#[derive(Default)]
struct Counters {
    pages_populated: AtomicU64,
    pages_user: AtomicU64,
    pages_reserve: AtomicI64,
    large_bytes: AtomicI64,
    refused_foreign: AtomicU64,
    refused_misaligned: AtomicU64,
    refused_double: AtomicU64,
    corrupt_links: AtomicU64,
    meta_bytes: AtomicU64,
    /// The page pool's free pages (published under its lock).
    pages_free: AtomicU64,
    pages_returned: AtomicU64,
    /// Class pages moved to the free-page stack by reclaim passes.
    pages_reclaimed: AtomicU64,
    /// Slow-path calls that found their CPU's magazine taken.
    fast_busy: AtomicU64,
    /// Objects on each class's global list (published under its lock).
    list_objs: [AtomicU64; NR_CLASSES],
    /// ... and how many the last reclaim pass of the class kept there.
    list_kept: [AtomicU64; NR_CLASSES],
}

// SAFETY: `info` is the C-owned heap info, valid for the heap's life and
// written by the glue only as its invariants say; everything else is
// atomics, locks and per-CPU types that are `Sync` on their own.
unsafe impl Send for Heap {}
// SAFETY: see `Send`.
unsafe impl Sync for Heap {}

static POOL_KEY: LockKey = LockKey::new();
const POOL_NAME: &CStr = c_str!("kflex_heap_pool");
const LIST_NAME: &CStr = c_str!("kflex_heap_list");
const WORK_NAME: &CStr = c_str!("kflex_heap_populate");
static LIST_KEY: LockKey = LockKey::new();
static WORK_KEY: LockKey = LockKey::new();

/// Adds to a counter that several CPUs write.
fn bump(c: &AtomicU64, v: u64) {
    c.fetch_add(v, Ordering::Relaxed);
}

impl Heap {
    /// Creates the state of a new heap of `pages` pages; reserves its
    /// address range and fills `info`. Process context.
    pub(crate) fn create(
        info: *mut bindings::kflex_heap_info,
        pages: u32,
        map_extra: u64,
    ) -> Result<Pin<KBox<Heap>>> {
        let size = geometry::heap_size(pages, map_extra).map_err(|e| {
            pr_info!("heap of {} pages refused: {}\n", pages, e.reason());
            Error::from_errno(e.errno())
        })?;
        let len = geometry::reservation_len(size);
        // SAFETY: `info` belongs to a heap being created by the glue.
        let start = unsafe { bindings::kflex_vm_reserve(info, len) };
        if start == 0 {
            return Err(ENOMEM);
        }
        let base = geometry::place(start, size).ok_or(ENOMEM)?;
        let npages = size / PAGE_SIZE;
        let chunk_pages = npages.min(CHUNK_PAGES);
        let nchunks = npages.div_ceil(chunk_pages) as usize;
        let mut dir = KVVec::with_capacity(nchunks, flags::GFP_KERNEL_ACCOUNT)?;
        for _ in 0..nchunks {
            dir.push(AtomicPtr::new(ptr::null_mut()), flags::GFP_KERNEL_ACCOUNT)?;
        }
        let caches = CpuLocal::new_zeroed()?;
        let cpus = PerCpu::new_zeroed()?;
        let held = PerCpu::new_zeroed()?;
        let meta = (nchunks * core::mem::size_of::<AtomicPtr<PageDesc>>())
            .saturating_add(caches.bytes())
            .saturating_add(cpus.bytes())
            .saturating_add(held.bytes())
            .saturating_add(core::mem::size_of::<Heap>());
        // SAFETY: `info` is valid (see above) and not yet shared.
        unsafe {
            (*info).size = size;
            (*info).mask = size - 1;
            (*info).kern_base = base;
            (*info).user_start = map_extra;
        }
        let heap = KBox::pin_init(
            try_pin_init!(Heap {
                info,
                size,
                npages,
                kern_base: base,
                dir,
                chunk_pages,
                chunk_shift: chunk_pages.trailing_zeros(),
                populated_end: AtomicU64::new(0),
                reserve_target: AtomicU64::new(populate::RESERVE_MIN),
                want: AtomicU64::new(0),
                next_fresh_hint: AtomicU64::new(1),
                released_top: AtomicU32::new(0),
                pop_lock <- new_mutex!((), "kflex_heap_pop"),
                work <- Work::new(populate::worker, WORK_NAME, &WORK_KEY),
                irq_work <- IrqWork::new(populate::irq_worker),
                dying: AtomicBool::new(false),
                pool <- RawLock::new(PagePool::new(), POOL_NAME, &POOL_KEY),
                lists <- kernel::init::pin_init_array_from_fn(|_| {
                    RawLock::new(GlobalList::default(), LIST_NAME, &LIST_KEY)
                }),
                caches,
                cpus,
                locks: held,
                c: Counters { meta_bytes: AtomicU64::new(meta as u64), ..Default::default() },
                kmem <- crate::kmem::new(),
            }? Error),
            flags::GFP_KERNEL,
        )?;
        heap.publish_layout();
        heap.work.queue();
        Ok(heap)
    }

    /// Stops the deferred work; after this the heap may be freed. Process
    /// context, with no program, mapping or reader left.
    pub(crate) fn fini(&self) {
        self.dying.store(true, Ordering::Release);
        // The irq_work may queue the work: wait for it first.
        self.irq_work.sync();
        self.work.cancel_sync();
        for chunk in self.dir.iter() {
            let p = chunk.swap(ptr::null_mut(), Ordering::AcqRel);
            if !p.is_null() {
                let n = self.chunk_pages as usize;
                // SAFETY: `p` came from `KVVec::into_raw_parts` with length
                // and capacity `n` in `chunk_for` (type invariant), and the
                // swap above made this the only owner.
                drop(unsafe { KVVec::<PageDesc>::from_raw_parts(p, n, n) });
            }
        }
    }

    /// The native structures on kernel memory (benchmarks).
    #[cfg(CONFIG_KFLEX_BENCH)]
    pub(crate) fn kmem(&self) -> &SpinLock<crate::kmem::Structs> {
        &self.kmem
    }

    /// User address of heap offset 0.
    #[inline]
    fn user_start(&self) -> u64 {
        // SAFETY: `info` outlives the heap (type invariant); the glue writes
        // `user_start` once, with WRITE_ONCE.
        unsafe { ptr::read_volatile(ptr::addr_of!((*self.info).user_start)) }
    }

    /// Descriptor of page `page` if its chunk exists.
    #[inline]
    fn desc(&self, page: u64) -> Option<&PageDesc> {
        let chunk = self.dir.get(self.chunk_of(page))?;
        let p = chunk.load(Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        // `chunk_pages` is a power of two (both operands of its `min` are),
        // so the mask keeps the index below it.
        let index = page & self.chunk_pages.wrapping_sub(1);
        // SAFETY: a non-null chunk holds `chunk_pages` descriptors and lives
        // until `fini` (type invariant); the index is below `chunk_pages`.
        Some(unsafe { &*p.add(index as usize) })
    }

    /// Index in `dir` of the chunk holding page `page`.
    #[inline]
    fn chunk_of(&self, page: u64) -> usize {
        (page >> (self.chunk_shift & 63)) as usize
    }

    /// Kernel pointer to `len` bytes at heap offset `off`, if they lie in
    /// pages the allocator handed out (so the access cannot fault). For
    /// in-kernel users of heap memory (the native benchmark baseline).
    #[inline]
    pub(crate) fn object_ptr(&self, off: u64, len: u64) -> Option<*mut u8> {
        let end = off.checked_add(len)?;
        if off == 0 || len == 0 || end > self.size {
            return None;
        }
        let handed_out = |page: u64| {
            matches!(
                self.desc(page).map(PageDesc::kind),
                Some(PageKind::Class(_) | PageKind::LargeHead | PageKind::LargeTail)
            )
        };
        // `end > off >= 1`, and pages are below 2^26.
        let (first, last) = (off / PAGE_SIZE, end.wrapping_sub(1) / PAGE_SIZE);
        if last > first.wrapping_add(1) {
            // Callers access single words and small objects.
            return None;
        }
        if !handed_out(first) || (last != first && !handed_out(last)) {
            return None;
        }
        Some(self.kern_base.wrapping_add(off) as *mut u8)
    }

    /// Heap offset of user address `uaddr`, if inside the heap.
    pub(crate) fn offset_of(&self, uaddr: u64) -> Option<u64> {
        crate::logic::alloc::user_offset(uaddr, self.user_start(), self.size)
    }

    /// User address of heap offset `off` (below `size`).
    pub(crate) fn user_addr(&self, off: u64) -> u64 {
        self.user_start() | (off & self.size.wrapping_sub(1))
    }

    /// Fills the statistics.
    pub(crate) fn stats(&self, st: &mut bindings::kflex_heap_stats) {
        for (out, &size) in st.class_size.iter_mut().zip(CLASS_SIZES.iter()) {
            *out = size;
        }
        st.size = self.size;
        st.pages_populated = self.c.pages_populated.load(Ordering::Relaxed);
        st.pages_user = self.c.pages_user.load(Ordering::Relaxed);
        st.pages_reserve = self.c.pages_reserve.load(Ordering::Relaxed).max(0) as u64;
        let mut class_bytes = [0i64; NR_CLASSES];
        for cpu in self.cpus.iter() {
            st.allocs = st.allocs.wrapping_add(cpu.allocs.load(Ordering::Relaxed));
            st.frees = st.frees.wrapping_add(cpu.frees.load(Ordering::Relaxed));
            st.failed_allocs = st.failed_allocs.wrapping_add(cpu.failed.load(Ordering::Relaxed));
            st.frees_deferred =
                st.frees_deferred.wrapping_add(cpu.deferred.load(Ordering::Relaxed));
            st.frees_dropped = st.frees_dropped.wrapping_add(cpu.dropped.load(Ordering::Relaxed));
            for (b, c) in class_bytes.iter_mut().zip(cpu.class_bytes.iter()) {
                *b = b.wrapping_add(c.load(Ordering::Relaxed));
            }
        }
        self.magazine_stats(st, &mut class_bytes);
        for (out, b) in st.class_bytes.iter_mut().zip(class_bytes.iter()) {
            *out = (*b).max(0) as u64;
        }
        st.large_bytes = self.c.large_bytes.load(Ordering::Relaxed).max(0) as u64;
        st.refused_foreign = self.c.refused_foreign.load(Ordering::Relaxed);
        st.refused_misaligned = self.c.refused_misaligned.load(Ordering::Relaxed);
        st.refused_double = self.c.refused_double.load(Ordering::Relaxed);
        st.corrupt_links = self.c.corrupt_links.load(Ordering::Relaxed);
        st.meta_bytes = self.c.meta_bytes.load(Ordering::Relaxed);
        st.pages_free = self.c.pages_free.load(Ordering::Relaxed);
        st.pages_returned = self.c.pages_returned.load(Ordering::Relaxed);
        st.pages_reclaimed = self.c.pages_reclaimed.load(Ordering::Relaxed);
        st.fast_busy = self.c.fast_busy.load(Ordering::Relaxed);
    }
}
