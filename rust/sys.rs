// SPDX-License-Identifier: GPL-2.0

//! The few C primitives the allocator's any-context code needs, each behind
//! a type that carries its rule.
//!
//! The allocator runs in whatever context a BPF program runs: process
//! context, softirq (XDP), hardirq, NMI, and inside tracing programs that
//! fire while the kernel holds scheduler or workqueue locks, or while this
//! very allocator is half-way through an operation on the same CPU. Three
//! rules follow, and the types here enforce them:
//!
//! - Everything happens in a [`Section`]: interrupts off on this CPU, and a
//!   per-CPU nesting count kept by the C glue. A section entered while
//!   another one is active on the CPU (only an NMI or a tracing program
//!   attached inside the allocator can do that) is *nested*.
//! - The allocator's locks are raw spinlocks ([`RawLock`]) that nothing
//!   outside it takes, held only inside a section and never across anything
//!   that takes another lock. A nested section, or one in NMI context, only
//!   ever *tries* them: the CPU may already hold the lock it wants, or (NMI)
//!   lockdep would rightly object to spinning.
//! - A CPU's private state ([`CpuLocal`]) is reached only through a
//!   [`CpuRef`] that borrows the section, so it cannot outlive the
//!   interrupts-off region; a nested section finds it taken and does without.
//!
//! Nothing here queues work, wakes a task or takes a lock the interrupted
//! context could hold; the one deferral the allocator needs (topping up the
//! reserve) goes through [`IrqWork`], which is NMI-safe.

use core::{
    cell::UnsafeCell,
    marker::{PhantomData, PhantomPinned},
    ops::{Deref, DerefMut},
    sync::atomic::{compiler_fence, AtomicBool, Ordering},
};

use kernel::{
    alloc::{flags, KVBox, KVVec},
    bindings,
    init::PinInit,
    prelude::*,
    str::CStr,
    types::Opaque,
};

/// An allocator section: interrupts disabled on the current CPU and the
/// CPU's nesting count raised, both undone on drop.
pub(crate) struct Section {
    raw: bindings::kflex_section,
    /// Sections are tied to the CPU and the stack frame that entered them.
    _not_send: PhantomData<*mut ()>,
}

impl Section {
    /// Enters a section. Any context.
    #[inline]
    pub(crate) fn enter() -> Self {
        let mut raw = bindings::kflex_section { flags: 0, cpu: 0, nested: false };
        // SAFETY: `raw` is a valid out-parameter; the glue disables local
        // interrupts and counts the nesting; `drop` undoes both.
        unsafe { bindings::kflex_section_enter(&mut raw) };
        Section { raw, _not_send: PhantomData }
    }

    /// The CPU this section runs on.
    #[inline]
    pub(crate) fn cpu(&self) -> usize {
        self.raw.cpu as usize
    }

    /// Whether this section interrupted another one on this CPU or runs in
    /// NMI context: it must not spin on locks.
    #[inline]
    pub(crate) fn nested(&self) -> bool {
        self.raw.nested
    }
}

impl Drop for Section {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: undoes `enter` on the same CPU (interrupts are still off,
        // so the task has not moved), with the flags it saved.
        unsafe { bindings::kflex_section_exit(&mut self.raw) };
    }
}

/// A static lockdep class key for one kind of lock or work item.
pub(crate) struct LockKey(Opaque<bindings::lock_class_key>);

// SAFETY: the key is only handed to C code (lockdep), which synchronises
// itself; Rust never reads or writes it.
unsafe impl Sync for LockKey {}

impl LockKey {
    /// A key for a `static`.
    pub(crate) const fn new() -> Self {
        LockKey(Opaque::uninit())
    }

    pub(crate) fn as_ptr(&'static self) -> *mut bindings::lock_class_key {
        self.0.get()
    }
}

/// A raw spinlock protecting `T`, taken only inside a [`Section`].
///
/// # Invariants
///
/// `data` is only accessed through a [`RawGuard`], which exists only while
/// `lock` is held.
#[pin_data]
pub(crate) struct RawLock<T> {
    #[pin]
    lock: Opaque<bindings::raw_spinlock_t>,
    data: UnsafeCell<T>,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: the lock serialises every access to `data` (type invariant), so
// sharing the lock between CPUs is sound when `T` may move between them.
unsafe impl<T: Send> Sync for RawLock<T> {}
// SAFETY: see `Sync`.
unsafe impl<T: Send> Send for RawLock<T> {}

impl<T> RawLock<T> {
    /// A new unlocked lock of lockdep class `key`, named `name`.
    pub(crate) fn new(data: T, name: &'static CStr, key: &'static LockKey) -> impl PinInit<Self> {
        pin_init!(RawLock {
            lock <- Opaque::ffi_init(|l: *mut bindings::raw_spinlock_t| {
                // SAFETY: `l` is valid for the lock's whole pinned life; the
                // name and key are static.
                unsafe { bindings::kflex_raw_lock_init(l, name.as_char_ptr(), key.as_ptr()) }
            }),
            data: UnsafeCell::new(data),
            _pin: PhantomPinned,
        })
    }

    /// Takes the lock: spins in an ordinary section, only tries in a nested
    /// one. `None`: the lock is held elsewhere and `s` must not wait.
    #[inline]
    pub(crate) fn lock<'a>(&'a self, s: &'a Section) -> Option<RawGuard<'a, T>> {
        if s.nested() {
            // SAFETY: the lock was initialised in `new`.
            if !unsafe { bindings::kflex_raw_trylock(self.lock.get()) } {
                return None;
            }
        } else {
            // SAFETY: as above. Interrupts are off (`s`), and no section of
            // this CPU holds the lock: a section that holds it never enters
            // another, except nested ones, which do not come here.
            unsafe { bindings::kflex_raw_lock(self.lock.get()) };
        }
        // INVARIANT: the lock is held until the guard drops.
        Some(RawGuard { lock: self, _section: PhantomData })
    }
}

/// Access to the data of a held [`RawLock`]; unlocks on drop.
pub(crate) struct RawGuard<'a, T> {
    lock: &'a RawLock<T>,
    _section: PhantomData<&'a Section>,
}

impl<T> Deref for RawGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the lock is held (type
        // invariant of `RawLock`), so no other reference to `data` exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for RawGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for RawGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the lock is held by this guard.
        unsafe { bindings::kflex_raw_unlock(self.lock.lock.get()) };
    }
}

/// One CPU's slot of a [`CpuLocal`].
struct CpuCell<T> {
    /// Set while a [`CpuRef`] to `val` exists.
    busy: AtomicBool,
    val: UnsafeCell<T>,
}

/// Per-CPU state that only its own CPU touches, inside a section.
///
/// # Invariants
///
/// `val` of a cell is only accessed through a [`CpuRef`]; at most one exists
/// per cell at a time (`busy`), and only on the cell's CPU.
pub(crate) struct CpuLocal<T> {
    cells: KVVec<KVBox<CpuCell<T>>>,
}

// SAFETY: a cell is only ever accessed from its own CPU, by one `CpuRef` at
// a time (type invariant); `T` moving between threads is all that is needed.
unsafe impl<T: Send> Sync for CpuLocal<T> {}
// SAFETY: see `Sync`.
unsafe impl<T: Send> Send for CpuLocal<T> {}

/// Types for which all-zero bytes are a valid value.
///
/// # Safety
///
/// An all-zero bit pattern must be a valid, initialised `Self`.
pub(crate) unsafe trait ZeroValid {}

/// A zeroed `T` in its own allocation (per-CPU state can be too large for
/// the stack).
fn zeroed_box<T: ZeroValid>() -> Result<KVBox<T>> {
    let b = KVBox::<T>::new_uninit(flags::GFP_KERNEL_ACCOUNT | flags::__GFP_ZERO)?;
    // SAFETY: the memory is zeroed and all-zero is a valid `T` (`ZeroValid`).
    Ok(unsafe { b.assume_init() })
}

// SAFETY: `busy` zero is `false`, and `val` is valid zeroed when `T` is.
unsafe impl<T: ZeroValid> ZeroValid for CpuCell<T> {}

impl<T: ZeroValid> CpuLocal<T> {
    /// One zeroed cell per possible CPU.
    pub(crate) fn new_zeroed() -> Result<Self> {
        let n = nr_cpu_ids();
        let mut cells = KVVec::with_capacity(n, flags::GFP_KERNEL_ACCOUNT)?;
        for _ in 0..n {
            cells.push(zeroed_box()?, flags::GFP_KERNEL_ACCOUNT)?;
        }
        Ok(CpuLocal { cells })
    }
}

impl<T> CpuLocal<T> {
    /// This CPU's state, or `None` when a section this one interrupted is
    /// using it.
    #[inline]
    pub(crate) fn get<'a>(&'a self, s: &'a Section) -> Option<CpuRef<'a, T>> {
        let cell = self.cells.get(s.cpu())?;
        // Only this CPU's sections touch the flag, and an interrupting one
        // runs to completion before the interrupted one goes on: a plain
        // test and set is enough; the fences keep the compiler from moving
        // accesses to `val` across it.
        if cell.busy.load(Ordering::Relaxed) {
            return None;
        }
        cell.busy.store(true, Ordering::Relaxed);
        compiler_fence(Ordering::Acquire);
        // INVARIANT: `busy` is set until the `CpuRef` drops, on this CPU.
        Some(CpuRef { cell, _section: PhantomData })
    }

    /// Bytes of memory the cells use.
    pub(crate) fn bytes(&self) -> usize {
        self.cells.len().saturating_mul(core::mem::size_of::<CpuCell<T>>())
    }
}

/// Exclusive access to this CPU's cell of a [`CpuLocal`], for the length of
/// a section.
pub(crate) struct CpuRef<'a, T> {
    cell: &'a CpuCell<T>,
    _section: PhantomData<&'a Section>,
}

impl<T> Deref for CpuRef<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: `busy` is set for this `CpuRef` (type invariant of
        // `CpuLocal`): no other reference to `val` exists.
        unsafe { &*self.cell.val.get() }
    }
}

impl<T> DerefMut for CpuRef<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`.
        unsafe { &mut *self.cell.val.get() }
    }
}

impl<T> Drop for CpuRef<'_, T> {
    #[inline]
    fn drop(&mut self) {
        compiler_fence(Ordering::Release);
        self.cell.busy.store(false, Ordering::Relaxed);
    }
}

/// Per-CPU values that any CPU may read (atomics, counters).
pub(crate) struct PerCpu<T: Sync> {
    slots: KVVec<KVBox<T>>,
}

impl<T: Sync + ZeroValid> PerCpu<T> {
    /// One zeroed slot per possible CPU.
    pub(crate) fn new_zeroed() -> Result<Self> {
        let n = nr_cpu_ids();
        let mut slots = KVVec::with_capacity(n, flags::GFP_KERNEL_ACCOUNT)?;
        for _ in 0..n {
            slots.push(zeroed_box()?, flags::GFP_KERNEL_ACCOUNT)?;
        }
        Ok(PerCpu { slots })
    }
}

impl<T: Sync> PerCpu<T> {
    /// The slot of the section's CPU.
    #[inline]
    pub(crate) fn this(&self, s: &Section) -> Option<&T> {
        self.of(s.cpu())
    }

    /// The slot of CPU `cpu`.
    #[inline]
    pub(crate) fn of(&self, cpu: usize) -> Option<&T> {
        self.slots.get(cpu).map(|b| &**b)
    }

    /// Every CPU's slot.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|b| &**b)
    }

    /// Bytes of memory the slots use.
    pub(crate) fn bytes(&self) -> usize {
        self.slots.len().saturating_mul(core::mem::size_of::<T>())
    }
}

/// Possible CPU ids are below this.
pub(crate) fn nr_cpu_ids() -> usize {
    // SAFETY: reading a kernel variable that is fixed after boot.
    unsafe { bindings::nr_cpu_ids as usize }
}

/// An `irq_work`: runs a function soon in hard interrupt context on the CPU
/// that queued it. Queueing is safe from any context, NMI included.
#[pin_data]
pub(crate) struct IrqWork {
    #[pin]
    inner: Opaque<bindings::irq_work>,
}

impl IrqWork {
    /// An irq_work that runs `func`.
    pub(crate) fn new(func: unsafe extern "C" fn(*mut bindings::irq_work)) -> impl PinInit<Self> {
        pin_init!(IrqWork {
            inner <- Opaque::ffi_init(|w: *mut bindings::irq_work| {
                // SAFETY: `w` is valid for the irq_work's whole pinned life.
                unsafe { bindings::kflex_init_irq_work(w, Some(func)) }
            }),
        })
    }

    /// Queues the work unless it is already pending. Any context.
    pub(crate) fn queue(&self) {
        // SAFETY: initialised in `new`; irq_work_queue() is NMI-safe.
        unsafe { bindings::irq_work_queue(self.inner.get()) };
    }

    /// Waits until the work is neither pending nor running. Process context.
    pub(crate) fn sync(&self) {
        // SAFETY: initialised in `new`.
        unsafe { bindings::irq_work_sync(self.inner.get()) };
    }
}

/// A work item on the system workqueue (process context).
#[pin_data]
pub(crate) struct Work {
    #[pin]
    inner: Opaque<bindings::work_struct>,
}

impl Work {
    /// A work item that runs `func`, of lockdep class `key`.
    pub(crate) fn new(
        func: unsafe extern "C" fn(*mut bindings::work_struct),
        name: &'static CStr,
        key: &'static LockKey,
    ) -> impl PinInit<Self> {
        pin_init!(Work {
            inner <- Opaque::ffi_init(|w: *mut bindings::work_struct| {
                // SAFETY: `w` is valid for the work item's whole pinned
                // life; the name and key are static.
                unsafe {
                    bindings::init_work_with_key(w, Some(func), false, name.as_char_ptr(), key.as_ptr())
                }
            }),
        })
    }

    /// Queues the work on any CPU. Only from contexts that may take the
    /// workqueue's locks and wake its worker -- not from inside the
    /// scheduler, a workqueue tracepoint or NMI: the allocator calls it from
    /// its irq_work.
    pub(crate) fn queue(&self) {
        // SAFETY: initialised in `new`; the owner cancels it before it is
        // freed.
        unsafe {
            bindings::queue_work_on(
                bindings::wq_misc_consts_WORK_CPU_UNBOUND as _,
                bindings::system_wq,
                self.inner.get(),
            )
        };
    }

    /// Cancels the work and waits for a running instance. Process context.
    pub(crate) fn cancel_sync(&self) {
        // SAFETY: initialised in `new`.
        unsafe { bindings::cancel_work_sync(self.inner.get()) };
    }
}
