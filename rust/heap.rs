// SPDX-License-Identifier: GPL-2.0

//! KFlex extension heaps and their allocator.
//!
//! A heap is a power-of-two region of kernel address space (see
//! [`crate::logic::geometry`]) shared with user space. Pages are populated
//! from process context only (page tables may have to be allocated): by a
//! work item that keeps a *reserve* of populated pages ahead of the
//! allocator, by user-space faults, and by the sleepable kfunc
//! `bpf_kflex_reserve()`. The allocator itself never sleeps and runs in any
//! context: it takes pages from the reserve and carves them into objects.
//!
//! Metadata lives outside the heap: one [`PageDesc`] per page (kind, object
//! bitmaps), per-CPU caches of free objects, and the list heads. The only
//! metadata inside the heap are the links of the global free lists and of
//! the free-page stack, and every link is validated against the descriptors
//! before it is followed (see [`crate::logic::alloc`]).

use core::{
    cell::UnsafeCell,
    ptr,
    sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering},
};

use kernel::{
    alloc::{flags, KVBox, KVVec},
    bindings, c_str, new_mutex, new_spinlock,
    prelude::*,
    sync::{Mutex, SpinLock},
    types::Opaque,
};

use crate::logic::{
    alloc::{
        class_of, class_size, full_bitmap, large_pages, locate, objs_per_page, refill_amount,
        spill_amount, user_offset, ObjRef, PageKind, Refusal, BITMAP_WORDS, CACHE_CAP, NR_CLASSES,
        SPILL,
    },
    geometry::{self, PAGE_SIZE},
};

/// Pages per descriptor chunk (descriptors are allocated per chunk).
const CHUNK_PAGES: u64 = 512;
/// Populated pages the worker keeps ahead of the allocator at first.
const RESERVE_MIN: u64 = 64;
/// The reserve doubles each time it runs dry, up to this many pages.
const RESERVE_MAX: u64 = 4096;
/// Free page runs remembered for large allocations.
const MAX_RUNS: usize = 32;

/// Out-of-heap descriptor of one heap page.
struct PageDesc {
    /// [`PageKind`] encoding.
    state: AtomicU32,
    /// Pages of a large allocation (on its head page).
    npages: AtomicU32,
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

/// One CPU's cache of free objects, per class. Only touched by its CPU with
/// interrupts disabled; `busy` keeps NMI-context programs out.
struct PerCpu {
    busy: bool,
    count: [usize; NR_CLASSES],
    objs: [[u64; CACHE_CAP]; NR_CLASSES],
    /// Statistics written by this CPU only (summed on read).
    allocs: AtomicU64,
    frees: AtomicU64,
    failed: AtomicU64,
    class_bytes: [AtomicI64; NR_CLASSES],
}

/// Adds `v` to a counter written by one CPU only (no atomic RMW needed).
fn bump(c: &AtomicU64, v: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
}

fn bump_i(c: &AtomicI64, v: i64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
}

/// Global free list of one class, linked through the objects.
struct GlobalList {
    head: u64,
    count: u64,
}

/// Pages handed out to the allocator and returned by large frees.
struct PagePool {
    /// Pages below are consumed (or skipped).
    next_fresh: u64,
    /// Top of the free-page stack (page index + 1; 0: empty), linked
    /// through the pages' first word.
    free_top: u64,
    /// Free runs of pages `(start, len)` from large frees.
    runs: [(u64, u64); MAX_RUNS],
    nruns: usize,
}

/// A KFlex heap.
#[pin_data]
pub(crate) struct Heap {
    info: *mut bindings::kflex_heap_info,
    size: u64,
    npages: u64,
    kern_base: u64,
    /// Descriptor chunks; a chunk exists for every populated page.
    dir: KVVec<AtomicPtr<PageDesc>>,
    chunk_pages: u64,
    /// Pages below are populated (process context advances it).
    populated_end: AtomicU64,
    /// Reserve the worker aims for, and an extra request from a failed
    /// large allocation.
    reserve_target: AtomicU64,
    want: AtomicU64,
    /// Copy of `pool.next_fresh` for process context, which must not take
    /// `pool` (an allocator in an interrupt on the same CPU would deadlock).
    next_fresh_hint: AtomicU64,
    /// Serialises population (worker, faults, bpf_kflex_reserve()).
    #[pin]
    pop_lock: Mutex<()>,
    #[pin]
    pool: SpinLock<PagePool>,
    #[pin]
    lists: [SpinLock<GlobalList>; NR_CLASSES],
    percpu: KVVec<KVBox<UnsafeCell<PerCpu>>>,
    #[pin]
    work: Opaque<bindings::work_struct>,
    dying: AtomicBool,
    c: Counters,
}

/// Heap-wide statistics (the per-CPU ones are in [`PerCpu`]).
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
}

// SAFETY: the raw pointers are the C-owned heap info, which outlives the
// heap, and per-CPU caches that only their CPU touches with interrupts off;
// everything else is atomics and locks.
unsafe impl Send for Heap {}
// SAFETY: see `Send`.
unsafe impl Sync for Heap {}

/// Interrupts disabled on the current CPU until dropped.
struct IrqOff(usize);

impl IrqOff {
    fn new() -> Self {
        // SAFETY: saves and disables local interrupts; restored in `drop`.
        IrqOff(unsafe { bindings::kflex_irq_save() })
    }

    fn cpu(&self) -> usize {
        // SAFETY: no preconditions; with interrupts off the task stays here.
        unsafe { bindings::kflex_this_cpu() as usize }
    }
}

impl Drop for IrqOff {
    fn drop(&mut self) {
        // SAFETY: restores the flags saved in `new` on the same CPU.
        unsafe { bindings::kflex_irq_restore(self.0) };
    }
}

/// Lock class of the heaps' work items (lockdep).
struct WorkKey(Opaque<bindings::lock_class_key>);

// SAFETY: the key is only handed to the C side, which synchronises itself.
unsafe impl Sync for WorkKey {}

static WORK_KEY: WorkKey = WorkKey(Opaque::uninit());

unsafe extern "C" fn populate_work(work: *mut bindings::work_struct) {
    // SAFETY: `work` is the `work` field of a live pinned `Heap`: the work
    // is cancelled in `Heap::fini` before the heap is freed.
    let heap = unsafe { &*(kernel::container_of!(work, Heap, work) as *const Heap) };
    heap.top_up();
}

impl Heap {
    /// Creates the state of a new heap of `pages` pages; reserves its
    /// address range and fills `info`.
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
        // SAFETY: reading a kernel variable that is fixed after boot.
        let ncpus = unsafe { bindings::nr_cpu_ids } as usize;
        let mut percpu = KVVec::with_capacity(ncpus, flags::GFP_KERNEL_ACCOUNT)?;
        for _ in 0..ncpus {
            let pc = KVBox::<UnsafeCell<PerCpu>>::new_uninit(
                flags::GFP_KERNEL_ACCOUNT | flags::__GFP_ZERO,
            )?;
            // SAFETY: all-zero is a valid `PerCpu` (integers, atomics, bool).
            percpu.push(unsafe { pc.assume_init() }, flags::GFP_KERNEL_ACCOUNT)?;
        }
        let meta = nchunks * core::mem::size_of::<AtomicPtr<PageDesc>>()
            + ncpus * core::mem::size_of::<PerCpu>()
            + core::mem::size_of::<Heap>();
        // SAFETY: `info` is valid (see above).
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
                populated_end: AtomicU64::new(0),
                reserve_target: AtomicU64::new(RESERVE_MIN),
                want: AtomicU64::new(0),
                pop_lock <- new_mutex!((), "kflex_heap_pop"),
                pool <- new_spinlock!(
                    PagePool { next_fresh: 1, free_top: 0, runs: [(0, 0); MAX_RUNS], nruns: 0 },
                    "kflex_heap_pool"
                ),
                lists <- kernel::init::pin_init_array_from_fn(|_| {
                    new_spinlock!(GlobalList { head: 0, count: 0 }, "kflex_heap_list")
                }),
                percpu,
                work <- Opaque::ffi_init(|w: *mut bindings::work_struct| {
                    // SAFETY: `w` is valid for the work item's whole life;
                    // the key is static.
                    unsafe {
                        bindings::init_work_with_key(
                            w,
                            Some(populate_work),
                            false,
                            c_str!("kflex_heap_populate").as_char_ptr(),
                            WORK_KEY.0.get(),
                        )
                    }
                }),
                dying: AtomicBool::new(false),
                c: Counters { meta_bytes: AtomicU64::new(meta as u64), ..Default::default() },
                next_fresh_hint: AtomicU64::new(1),
            }? Error),
            flags::GFP_KERNEL,
        )?;
        heap.kick();
        Ok(heap)
    }

    /// Stops the worker; after this the heap may be freed.
    pub(crate) fn fini(&self) {
        self.dying.store(true, Ordering::Release);
        // SAFETY: the work item was initialised in `create`.
        unsafe { bindings::cancel_work_sync(self.work.get()) };
        for chunk in self.dir.iter() {
            let p = chunk.swap(ptr::null_mut(), Ordering::AcqRel);
            if !p.is_null() {
                let n = self.chunk_pages as usize;
                // SAFETY: `p` came from `KVVec::into_raw_parts` with length
                // and capacity `n` in `chunk_for`.
                drop(unsafe { KVVec::<PageDesc>::from_raw_parts(p, n, n) });
            }
        }
    }

    fn user_start(&self) -> u64 {
        // SAFETY: `info` outlives the heap; user_start only changes once,
        // before any program can run.
        unsafe { ptr::read_volatile(ptr::addr_of!((*self.info).user_start)) }
    }

    /// Descriptor of page `page` if its chunk exists.
    #[inline]
    fn desc(&self, page: u64) -> Option<&PageDesc> {
        // `chunk_pages` is a power of two (both operands of its `min` are).
        let chunk = self.dir.get((page >> self.chunk_pages.trailing_zeros()) as usize)?;
        let p = chunk.load(Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: chunks hold `chunk_pages` descriptors and live until `fini`.
        Some(unsafe { &*p.add((page & (self.chunk_pages - 1)) as usize) })
    }

    /// Descriptor of `page`, allocating its chunk. Process context, under
    /// `pop_lock`.
    fn chunk_for(&self, page: u64) -> Result<&PageDesc> {
        if let Some(d) = self.desc(page) {
            return Ok(d);
        }
        let slot = self.dir.get((page / self.chunk_pages) as usize).ok_or(EINVAL)?;
        let n = self.chunk_pages as usize;
        let mut v = KVVec::<PageDesc>::with_capacity(n, flags::GFP_KERNEL)?;
        for _ in 0..n {
            v.push(
                PageDesc {
                    state: AtomicU32::new(0),
                    npages: AtomicU32::new(0),
                    free: Default::default(),
                    global: Default::default(),
                },
                flags::GFP_KERNEL,
            )?;
        }
        let (p, _, _) = v.into_raw_parts();
        slot.store(p, Ordering::Release);
        bump_shared(&self.c.meta_bytes, (n * core::mem::size_of::<PageDesc>()) as u64);
        self.desc(page).ok_or(ENOMEM)
    }

    /// Kernel pointer to the 8-byte word at heap offset `off`.
    fn word(&self, off: u64) -> *mut u64 {
        (self.kern_base + off) as *mut u64
    }

    /// Reads a link from heap memory the program may be writing.
    fn read_link(&self, off: u64) -> u64 {
        // SAFETY: callers pass offsets inside populated pages of this heap.
        unsafe { ptr::read_volatile(self.word(off)) }
    }

    fn write_link(&self, off: u64, v: u64) {
        // SAFETY: see `read_link`.
        unsafe { ptr::write_volatile(self.word(off), v) }
    }

    // ---- population (process context) ----

    fn kick(&self) {
        // SAFETY: NMI context cannot queue work; the flag is always readable.
        if self.dying.load(Ordering::Acquire) || unsafe { bindings::kflex_in_nmi() } {
            return;
        }
        // SAFETY: the work item is initialised and the heap outlives it
        // (`fini` cancels it).
        unsafe {
            bindings::queue_work_on(
                bindings::wq_misc_consts_WORK_CPU_UNBOUND as _,
                bindings::system_wq,
                self.work.get(),
            )
        };
    }

    /// Populates page `page` (its descriptor must say `Unpopulated`).
    fn populate_page(&self, page: u64, kind: PageKind) -> Result<&PageDesc> {
        let desc = self.chunk_for(page)?;
        // SAFETY: `info` is this heap's; the page is not populated yet and
        // `pop_lock` keeps anyone else from populating it.
        kernel::error::to_result(unsafe {
            bindings::kflex_vm_populate(self.info, page * PAGE_SIZE, bindings::GFP_KERNEL)
        })?;
        desc.set_kind(kind);
        bump_shared(&self.c.pages_populated, 1);
        Ok(desc)
    }

    /// Populates the reserve up to its target. Process context.
    fn top_up(&self) {
        let extra = self.want.swap(0, Ordering::AcqRel);
        let target = self.reserve_target.load(Ordering::Relaxed) + extra;
        let _guard = self.pop_lock.lock();
        let next_fresh = self.next_fresh_hint.load(Ordering::Acquire);
        let goal = next_fresh.saturating_add(target).min(self.npages);
        self.populate_to(goal);
    }

    /// Populates pages up to `goal` under `pop_lock`.
    fn populate_to(&self, goal: u64) {
        let mut end = self.populated_end.load(Ordering::Acquire);
        while end < goal {
            let populated = self.desc(end).map(|d| d.kind().populated()).unwrap_or(false);
            if !populated {
                // Page 0 is never handed out: offset 0 is NULL.
                let kind = if end == 0 { PageKind::System } else { PageKind::Reserve };
                if self.populate_page(end, kind).is_err() {
                    break;
                }
                if kind == PageKind::Reserve {
                    self.c.pages_reserve.fetch_add(1, Ordering::Relaxed);
                }
            }
            end += 1;
            self.populated_end.store(end, Ordering::Release);
        }
    }

    /// `bpf_kflex_reserve()`: populate so that `bytes` more can be
    /// allocated without waiting for the worker. Sleeps.
    pub(crate) fn reserve(&self, bytes: u64) -> i32 {
        let pages = bytes.div_ceil(PAGE_SIZE);
        let _guard = self.pop_lock.lock();
        let next_fresh = self.next_fresh_hint.load(Ordering::Acquire);
        let goal = next_fresh.saturating_add(pages).min(self.npages);
        self.populate_to(goal);
        if self.populated_end.load(Ordering::Acquire) >= goal {
            0
        } else {
            ENOMEM.to_errno()
        }
    }

    /// Page backing heap offset `off` for a user-space fault, populating it
    /// if needed. Process context.
    pub(crate) fn fault(&self, off: u64) -> *mut bindings::page {
        if off >= self.size {
            return ptr::null_mut();
        }
        let page = off / PAGE_SIZE;
        let _guard = self.pop_lock.lock();
        let populated = self.desc(page).map(|d| d.kind().populated()).unwrap_or(false);
        if !populated {
            if self.populate_page(page, PageKind::User).is_err() {
                return ptr::null_mut();
            }
            bump_shared(&self.c.pages_user, 1);
        }
        // SAFETY: `info` is this heap's and the page is populated.
        unsafe { bindings::kflex_vm_page(self.info, page * PAGE_SIZE) }
    }

    // ---- page pool (any context, interrupts off, CPU marked busy) ----

    /// Takes `n` contiguous fresh pages from the reserve.
    fn take_fresh(&self, pool: &mut PagePool, n: u64) -> Option<u64> {
        let end = self.populated_end.load(Ordering::Acquire);
        let mut start = pool.next_fresh;
        while start + n <= end {
            // A page that is not a reserve page (user-populated) breaks the
            // run: the reserve pages before it go to the free-page stack.
            let blocker = (start..start + n)
                .find(|&p| self.desc(p).map(|d| d.kind()) != Some(PageKind::Reserve));
            match blocker {
                None => {
                    pool.next_fresh = start + n;
                    self.next_fresh_hint.store(pool.next_fresh, Ordering::Release);
                    self.c.pages_reserve.fetch_sub(n as i64, Ordering::Relaxed);
                    return Some(start);
                }
                Some(b) => {
                    for p in start..b {
                        self.c.pages_reserve.fetch_sub(1, Ordering::Relaxed);
                        self.push_free_page(pool, p);
                    }
                    start = b + 1;
                    pool.next_fresh = start;
                    self.next_fresh_hint.store(start, Ordering::Release);
                }
            }
        }
        None
    }

    fn push_free_page(&self, pool: &mut PagePool, page: u64) {
        if let Some(d) = self.desc(page) {
            d.set_kind(PageKind::Free);
            self.write_link(page * PAGE_SIZE, pool.free_top);
            pool.free_top = page + 1;
        }
    }

    /// Pops the free-page stack, validating the link read from the heap.
    fn pop_free_page(&self, pool: &mut PagePool) -> Option<u64> {
        let top = pool.free_top;
        if top == 0 {
            return None;
        }
        let page = top - 1;
        let ok = page < self.populated_end.load(Ordering::Acquire)
            && self.desc(page).map(|d| d.kind()) == Some(PageKind::Free);
        if !ok {
            bump_shared(&self.c.corrupt_links, 1);
            pool.free_top = 0;
            return None;
        }
        pool.free_top = self.read_link(page * PAGE_SIZE);
        Some(page)
    }

    /// One page for a size class.
    fn take_page(&self) -> Option<u64> {
        let mut pool = self.pool.lock();
        if let Some(p) = self.pop_free_page(&mut pool) {
            return Some(p);
        }
        if pool.nruns > 0 {
            let i = pool.nruns - 1;
            let (start, len) = pool.runs[i];
            if len <= 1 {
                pool.nruns -= 1;
            } else {
                pool.runs[i] = (start + 1, len - 1);
            }
            return Some(start);
        }
        let p = self.take_fresh(&mut pool, 1);
        drop(pool);
        self.note_reserve(p.is_none(), 0);
        p
    }

    /// Kicks the worker when the reserve runs low; grows the reserve when
    /// it ran dry.
    fn note_reserve(&self, dry: bool, want: u64) {
        if dry {
            let t = self.reserve_target.load(Ordering::Relaxed);
            self.reserve_target.store((t * 2).min(RESERVE_MAX), Ordering::Relaxed);
            if want > 0 {
                self.want.fetch_max(want, Ordering::Relaxed);
            }
            self.kick();
        } else if (self.c.pages_reserve.load(Ordering::Relaxed) as u64)
            < self.reserve_target.load(Ordering::Relaxed) / 2
        {
            self.kick();
        }
    }

    // ---- objects ----

    /// Validates a global-list link: a free object of class `class` that is
    /// marked as on the global list.
    fn check_link(&self, off: u64, class: usize) -> Option<(ObjRef, &PageDesc)> {
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
        let (w, b) = obj.bit();
        let free = desc.free.get(w)?.load(Ordering::Acquire) & b != 0;
        let global = desc.global.get(w)?.load(Ordering::Acquire) & b != 0;
        (free && global).then_some((obj, desc))
    }

    /// Pops one object from a global list, or truncates a corrupted list.
    fn pop_global(&self, list: &mut GlobalList, class: usize) -> Option<u64> {
        let off = list.head;
        if off == 0 {
            return None;
        }
        let Some((obj, desc)) = self.check_link(off, class) else {
            bump_shared(&self.c.corrupt_links, 1);
            list.head = 0;
            list.count = 0;
            return None;
        };
        let (w, b) = obj.bit();
        if let Some(g) = desc.global.get(w) {
            if g.fetch_and(!b, Ordering::AcqRel) & b == 0 {
                // Someone else took it through a forged link.
                bump_shared(&self.c.corrupt_links, 1);
                list.head = 0;
                list.count = 0;
                return None;
            }
        }
        list.head = self.read_link(off);
        list.count = list.count.saturating_sub(1);
        Some(off)
    }

    fn push_global(&self, list: &mut GlobalList, class: usize, off: u64) {
        if let Ok(obj) = locate(off, class) {
            if let Some(desc) = self.desc(obj.page) {
                let (w, b) = obj.bit();
                if let Some(g) = desc.global.get(w) {
                    self.write_link(off, list.head);
                    g.fetch_or(b, Ordering::AcqRel);
                    list.head = off;
                    list.count += 1;
                }
            }
        }
    }

    /// Refills a per-CPU cache from the global list, or carves a new page.
    fn refill(&self, pc: &mut PerCpu, class: usize) {
        let want = refill_amount(pc.count[class]);
        if want == 0 {
            return;
        }
        {
            let mut list = self.lists[class].lock();
            let mut got = 0;
            while got < want {
                match self.pop_global(&mut list, class) {
                    Some(off) => {
                        pc.objs[class][pc.count[class]] = off;
                        pc.count[class] += 1;
                        got += 1;
                    }
                    None => break,
                }
            }
            if got > 0 {
                return;
            }
        }
        let Some(page) = self.take_page() else {
            return;
        };
        let Some(desc) = self.desc(page) else {
            return;
        };
        let n = objs_per_page(class);
        let bits = full_bitmap(n);
        for w in 0..BITMAP_WORDS {
            desc.free[w].store(bits[w], Ordering::Relaxed);
            desc.global[w].store(0, Ordering::Relaxed);
        }
        desc.set_kind(PageKind::Class(class as u8));
        let mut i = 0;
        while i < n && pc.count[class] < CACHE_CAP {
            pc.objs[class][pc.count[class]] = ObjRef { page, index: i }.offset(class);
            pc.count[class] += 1;
            i += 1;
        }
        if i < n {
            let mut list = self.lists[class].lock();
            for j in i..n {
                self.push_global(&mut list, class, ObjRef { page, index: j }.offset(class));
            }
        }
    }

    /// The calling CPU's cache; `None` when it is already in use (an NMI
    /// program interrupted the allocator on this CPU).
    fn this_cpu<'a>(&'a self, irq: &IrqOff) -> Option<&'a mut PerCpu> {
        let cell = self.percpu.get(irq.cpu())?;
        // SAFETY: only this CPU touches its cache, with interrupts disabled
        // (`irq`); `busy` excludes NMIs, so this is the only reference.
        let pc = unsafe { &mut *cell.get() };
        if pc.busy {
            return None;
        }
        pc.busy = true;
        Some(pc)
    }

    /// `bpf_kflex_alloc()`: user address of `size` new bytes, or 0.
    pub(crate) fn alloc(&self, size: u64) -> u64 {
        let Some(class) = class_of(size) else {
            return self.alloc_large(size);
        };
        let irq = IrqOff::new();
        let Some(pc) = self.this_cpu(&irq) else {
            return 0;
        };
        let mut off = 0;
        for _ in 0..2 {
            self.refill(pc, class);
            let Some(n) = pc.count[class].checked_sub(1) else {
                break;
            };
            pc.count[class] = n;
            let cand = pc.objs[class][n];
            // Mark allocated; a cached object is always free, but check.
            if let Ok(obj) = locate(cand, class) {
                if let Some(desc) = self.desc(obj.page) {
                    let (w, b) = obj.bit();
                    if desc.free[w].fetch_and(!b, Ordering::AcqRel) & b != 0 {
                        off = cand;
                        break;
                    }
                }
            }
            bump_shared(&self.c.corrupt_links, 1);
        }
        if off == 0 {
            bump(&pc.failed, 1);
        } else {
            bump(&pc.allocs, 1);
            bump_i(&pc.class_bytes[class], class_size(class) as i64);
        }
        pc.busy = false;
        drop(irq);
        if off == 0 {
            0
        } else {
            self.user_start() + off
        }
    }

    fn alloc_large(&self, size: u64) -> u64 {
        let n = large_pages(size);
        if size == 0 || n >= self.npages {
            self.count_failed();
            return 0;
        }
        let irq = IrqOff::new();
        let Some(pc) = self.this_cpu(&irq) else {
            return 0;
        };
        let mut pool = self.pool.lock();
        let mut start = None;
        for i in 0..pool.nruns {
            let (s, len) = pool.runs[i];
            if len >= n {
                if len == n {
                    pool.runs[i] = pool.runs[pool.nruns - 1];
                    pool.nruns -= 1;
                } else {
                    pool.runs[i] = (s + n, len - n);
                }
                start = Some(s);
                break;
            }
        }
        let dry = start.is_none();
        if start.is_none() {
            start = self.take_fresh(&mut pool, n);
        }
        drop(pool);
        let uaddr = match start.and_then(|s| Some((s, self.desc(s)?))) {
            Some((s, head)) => {
                for p in s + 1..s + n {
                    if let Some(d) = self.desc(p) {
                        d.set_kind(PageKind::LargeTail);
                    }
                }
                head.npages.store(n as u32, Ordering::Relaxed);
                head.set_kind(PageKind::LargeHead);
                self.c.large_bytes.fetch_add((n * PAGE_SIZE) as i64, Ordering::Relaxed);
                bump(&pc.allocs, 1);
                self.user_start() + s * PAGE_SIZE
            }
            None => {
                bump(&pc.failed, 1);
                0
            }
        };
        pc.busy = false;
        drop(irq);
        self.note_reserve(dry && uaddr == 0, n);
        uaddr
    }

    fn count_failed(&self) {
        let irq = IrqOff::new();
        if let Some(pc) = self.this_cpu(&irq) {
            bump(&pc.failed, 1);
            pc.busy = false;
        }
    }

    fn refuse(&self, why: Refusal) {
        let c = match why {
            Refusal::Foreign => &self.c.refused_foreign,
            Refusal::Misaligned => &self.c.refused_misaligned,
            Refusal::Double => &self.c.refused_double,
        };
        bump_shared(c, 1);
    }

    /// `bpf_kflex_free()`.
    pub(crate) fn free(&self, uaddr: u64) {
        if let Err(why) = self.try_free(uaddr) {
            self.refuse(why);
        }
    }

    fn try_free(&self, uaddr: u64) -> core::result::Result<(), Refusal> {
        let off = user_offset(uaddr, self.user_start(), self.size).ok_or(Refusal::Foreign)?;
        let page = off / PAGE_SIZE;
        if off == 0 || page >= self.populated_end.load(Ordering::Acquire) {
            return Err(Refusal::Foreign);
        }
        let desc = self.desc(page).ok_or(Refusal::Foreign)?;
        match desc.kind() {
            PageKind::Class(c) => self.free_object(off, c as usize, desc),
            PageKind::LargeHead if off % PAGE_SIZE == 0 => self.free_large(page, desc),
            PageKind::LargeHead | PageKind::LargeTail => Err(Refusal::Misaligned),
            PageKind::Free => Err(Refusal::Double),
            _ => Err(Refusal::Foreign),
        }
    }

    fn free_object(
        &self,
        off: u64,
        class: usize,
        desc: &PageDesc,
    ) -> core::result::Result<(), Refusal> {
        let obj = locate(off, class)?;
        let (w, b) = obj.bit();
        let word = desc.free.get(w).ok_or(Refusal::Foreign)?;
        if word.fetch_or(b, Ordering::AcqRel) & b != 0 {
            return Err(Refusal::Double);
        }
        let irq = IrqOff::new();
        let Some(pc) = self.this_cpu(&irq) else {
            // An NMI program freeing on a CPU that is inside the allocator:
            // the object is marked free but cannot be queued anywhere, so
            // it stays unused (never handed out twice).
            return Ok(());
        };
        pc.objs[class][pc.count[class]] = off;
        pc.count[class] += 1;
        bump(&pc.frees, 1);
        bump_i(&pc.class_bytes[class], -(class_size(class) as i64));
        if spill_amount(pc.count[class]) > 0 {
            let mut list = self.lists[class].lock();
            for _ in 0..SPILL {
                pc.count[class] -= 1;
                let o = pc.objs[class][pc.count[class]];
                self.push_global(&mut list, class, o);
            }
        }
        pc.busy = false;
        Ok(())
    }

    fn free_large(&self, page: u64, head: &PageDesc) -> core::result::Result<(), Refusal> {
        let n = u64::from(head.npages.load(Ordering::Relaxed));
        if head
            .state
            .compare_exchange(
                PageKind::LargeHead.encode(),
                PageKind::Free.encode(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(Refusal::Double);
        }
        for p in page + 1..page + n {
            if let Some(d) = self.desc(p) {
                d.set_kind(PageKind::Free);
            }
        }
        self.c.large_bytes.fetch_sub((n * PAGE_SIZE) as i64, Ordering::Relaxed);
        let irq = IrqOff::new();
        let Some(pc) = self.this_cpu(&irq) else {
            return Ok(());
        };
        bump(&pc.frees, 1);
        let mut pool = self.pool.lock();
        // Coalesce with a run that ends here or starts right after.
        let mut merged = false;
        for i in 0..pool.nruns {
            let (s, len) = pool.runs[i];
            if s + len == page {
                pool.runs[i] = (s, len + n);
                merged = true;
                break;
            }
            if page + n == s {
                pool.runs[i] = (page, len + n);
                merged = true;
                break;
            }
        }
        if !merged {
            if pool.nruns < MAX_RUNS {
                let i = pool.nruns;
                pool.runs[i] = (page, n);
                pool.nruns += 1;
            } else {
                for p in page..page + n {
                    self.push_free_page(&mut pool, p);
                }
            }
        }
        drop(pool);
        pc.busy = false;
        Ok(())
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
        let (first, last) = (off / PAGE_SIZE, (end - 1) / PAGE_SIZE);
        if !handed_out(first) || (last != first && !handed_out(last)) {
            return None;
        }
        Some((self.kern_base + off) as *mut u8)
    }

    /// Heap offset of user address `uaddr`, if inside the heap.
    pub(crate) fn offset_of(&self, uaddr: u64) -> Option<u64> {
        user_offset(uaddr, self.user_start(), self.size)
    }

    /// User address of heap offset `off`.
    pub(crate) fn user_addr(&self, off: u64) -> u64 {
        self.user_start() + off
    }

    /// Fills the statistics.
    pub(crate) fn stats(&self, st: &mut bindings::kflex_heap_stats) {
        st.size = self.size;
        st.pages_populated = self.c.pages_populated.load(Ordering::Relaxed);
        st.pages_user = self.c.pages_user.load(Ordering::Relaxed);
        st.pages_reserve = self.c.pages_reserve.load(Ordering::Relaxed).max(0) as u64;
        let mut class_bytes = [0i64; NR_CLASSES];
        for cell in self.percpu.iter() {
            // SAFETY: only atomics are read; other CPUs may update them.
            let pc = unsafe { &*cell.get() };
            st.allocs += pc.allocs.load(Ordering::Relaxed);
            st.frees += pc.frees.load(Ordering::Relaxed);
            st.failed_allocs += pc.failed.load(Ordering::Relaxed);
            for (c, b) in class_bytes.iter_mut().enumerate() {
                *b += pc.class_bytes[c].load(Ordering::Relaxed);
            }
        }
        for (c, b) in class_bytes.iter().enumerate() {
            st.class_bytes[c] = (*b).max(0) as u64;
        }
        st.large_bytes = self.c.large_bytes.load(Ordering::Relaxed).max(0) as u64;
        st.refused_foreign = self.c.refused_foreign.load(Ordering::Relaxed);
        st.refused_misaligned = self.c.refused_misaligned.load(Ordering::Relaxed);
        st.refused_double = self.c.refused_double.load(Ordering::Relaxed);
        st.corrupt_links = self.c.corrupt_links.load(Ordering::Relaxed);
        st.meta_bytes = self.c.meta_bytes.load(Ordering::Relaxed);
    }
}

/// Adds to a counter that several CPUs write.
fn bump_shared(c: &AtomicU64, v: u64) {
    c.fetch_add(v, Ordering::Relaxed);
}
