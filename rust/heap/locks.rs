// SPDX-License-Identifier: GPL-2.0

//! Heap locks (`bpf_kflex_lock`/`bpf_kflex_unlock`): a 4-byte word in the
//! heap, taken with a compare-and-swap on that word only, and a per-CPU table
//! of the locks held on each CPU, in kernel memory (the rules and the cycle
//! search are `logic::locks`).
//!
//! The glue calls these with preemption disabled (so a waiting or holding
//! run stays on its CPU, whose id it passes), never in NMI context, and with
//! the *run* tag: the frame pointer of the run's main BPF frame, distinct
//! for every run active on a CPU (runs that interrupt others have their own
//! frames). Table slots are written only by their own CPU. A run that
//! interrupts another on the CPU ends (releasing or, at exit, having
//! released its slots) before the interrupted one goes on, so a slot the
//! interrupted run found free is free again when it fills it; the only
//! window is between the compare-and-swap that takes a word and the slot
//! update, where an interrupting run asking for that word would wait for it
//! (until its budget) instead of being refused as AA at once. Other CPUs read
//! the tables (the cycle search) with plain atomic loads and may see a stale
//! slot, which can only make a search miss a cycle (the next one finds it,
//! or the budget ends the wait) or see one that has just been broken (a
//! spurious cancellation, never a wrong grant).
//!
//! The word says nothing the kernel trusts: a program that writes it can
//! stall its own runs (until their budget ends) or let two of them in at
//! once, nothing else. Holders are what the tables say. The value stored is
//! the holder's CPU + 1, a hint for debugging.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::{
    logic::{
        alloc::PageKind,
        geometry::PAGE_SIZE,
        locks::{self, Refusal, Slot, MAX_HELD},
    },
    sys::ZeroValid,
};

use super::Heap;

/// One slot of a CPU's table (see `logic::locks::Slot`).
#[derive(Default)]
struct LockSlot {
    off: AtomicU64,
    run: AtomicU64,
}

/// A CPU's held-lock table and the lock it waits for (0: none).
#[derive(Default)]
pub(crate) struct LockCpu {
    slots: [LockSlot; MAX_HELD],
    waiting: AtomicU64,
}

// SAFETY: atomics are valid all-zero.
unsafe impl ZeroValid for LockCpu {}

/// Compare-and-swap attempts between two checks of the budget and the
/// wait-for graph while waiting.
const SPINS_PER_CHECK: u32 = 256;

/// Why a lock call did not take the lock.
pub(crate) enum LockError {
    /// Not a lock word of this heap (misaligned, outside, or in memory the
    /// allocator never handed out): an error for the program, no
    /// cancellation.
    BadWord,
    /// Held by another run and the caller asked not to wait.
    Busy,
    /// The run must be cancelled.
    Cancel(Refusal),
}

impl LockCpu {
    fn snapshot(&self) -> [Slot; MAX_HELD] {
        let mut t = [Slot::default(); MAX_HELD];
        for (out, s) in t.iter_mut().zip(self.slots.iter()) {
            *out = Slot { off: s.off.load(Ordering::Relaxed), run: s.run.load(Ordering::Relaxed) };
        }
        t
    }

    /// Fills slot `i` (empty; this CPU only).
    fn fill(&self, i: usize, off: u64, run: u64) {
        if let Some(s) = self.slots.get(i) {
            s.run.store(run, Ordering::Relaxed);
            s.off.store(off, Ordering::Release);
        }
    }

    /// Empties slot `i` (this CPU only).
    fn clear(&self, i: usize) {
        if let Some(s) = self.slots.get(i) {
            s.off.store(0, Ordering::Release);
            s.run.store(0, Ordering::Relaxed);
        }
    }

    /// One attempt at the word: the compare-and-swap, then slot `slot` (a
    /// free one the caller admitted just before) or, after a wait, a free
    /// slot admitted again. `None`: the word is held.
    fn try_take(
        &self,
        word: &AtomicU32,
        off: u64,
        hint: u32,
        run: u64,
        slot: Option<usize>,
    ) -> Option<Result<(), LockError>> {
        word.compare_exchange(0, hint, Ordering::Acquire, Ordering::Relaxed).ok()?;
        let slot = match slot {
            Some(i) => Ok(i),
            None => locks::admit(&self.snapshot(), off),
        };
        Some(match slot {
            Ok(i) => {
                self.fill(i, off, run);
                Ok(())
            }
            Err(r) => {
                // cannot happen (runs that interrupted the wait ended and
                // left the table as they found it); never hold a lock the
                // table does not show
                word.store(0, Ordering::Release);
                Err(LockError::Cancel(r))
            }
        })
    }
}

impl Heap {
    /// The lock word at user address `uaddr`: its heap offset and the word.
    fn lock_word(&self, uaddr: u64) -> Option<(u64, &AtomicU32)> {
        let off = self.offset_of(uaddr)?;
        Some((off, self.word_at(off)?))
    }

    /// The lock word at heap offset `off`.
    fn word_at(&self, off: u64) -> Option<&AtomicU32> {
        if !locks::valid_word(off, self.size) {
            return None;
        }
        // Lock words live in objects the allocator handed out or in pages
        // user space populated (`__arena` globals); pages are never
        // unpopulated while the heap lives, so the check stays true.
        let kind = self.desc(off / PAGE_SIZE)?.kind();
        if !matches!(
            kind,
            PageKind::Class(_) | PageKind::LargeHead | PageKind::LargeTail | PageKind::User
        ) {
            return None;
        }
        let p = self.kern_base.wrapping_add(off) as *const AtomicU32;
        // SAFETY: `off` is 4-byte aligned and the 4 bytes are in a populated
        // page of the heap's kernel mapping (checked above), mapped until the
        // heap is freed, which the calling program prevents. The program may
        // write the word concurrently: it is only accessed atomically here.
        Some(unsafe { &*p })
    }

    /// The CPU that holds the lock at `off`, per the tables.
    fn lock_holder(&self, off: u64) -> Option<usize> {
        self.locks
            .iter()
            .position(|c| c.slots.iter().any(|s| s.off.load(Ordering::Relaxed) == off))
    }

    /// Takes the lock at `uaddr` for `run` on CPU `me`, waiting until the
    /// monotonic clock passes `deadline` (ns) at most; `deadline` 0: do not
    /// wait ([`LockError::Busy`]). Preemption disabled, not NMI.
    pub(crate) fn lock(
        &self,
        uaddr: u64,
        run: u64,
        deadline: u64,
        me: usize,
    ) -> Result<(), LockError> {
        let (off, word) = self.lock_word(uaddr).ok_or(LockError::BadWord)?;
        let cpu = self.locks.of(me).ok_or(LockError::BadWord)?;
        let hint = (me as u32).wrapping_add(1);
        let slot = locks::admit(&cpu.snapshot(), off).map_err(LockError::Cancel)?;
        if let Some(taken) = cpu.try_take(word, off, hint, run, Some(slot)) {
            return taken;
        }
        if deadline == 0 {
            return Err(LockError::Busy);
        }
        // Runs that interrupt this one end before it goes on, and leave
        // `waiting` and the table as they found them.
        let before = cpu.waiting.swap(off, Ordering::Relaxed);
        let ncpu = crate::sys::nr_cpu_ids();
        let result = loop {
            let mut taken = None;
            for _ in 0..SPINS_PER_CHECK {
                if word.load(Ordering::Relaxed) == 0 {
                    taken = cpu.try_take(word, off, hint, run, None);
                    if taken.is_some() {
                        break;
                    }
                }
                core::hint::spin_loop();
            }
            if let Some(r) = taken {
                break r;
            }
            // SAFETY: NMI-safe clock read, no preconditions.
            if unsafe { kernel::bindings::ktime_get_mono_fast_ns() } > deadline {
                break Err(LockError::Cancel(Refusal::LockBudget));
            }
            let cycle = locks::closes_cycle(
                me,
                off,
                ncpu,
                |l| self.lock_holder(l),
                |c| self.locks.of(c).map_or(0, |t| t.waiting.load(Ordering::Relaxed)),
            );
            if cycle {
                break Err(LockError::Cancel(Refusal::Deadlock));
            }
        };
        cpu.waiting.store(before, Ordering::Relaxed);
        result
    }

    /// Releases the lock at `uaddr` if `run` holds it on CPU `me`; false
    /// (nothing changes) otherwise. Preemption disabled.
    pub(crate) fn unlock(&self, uaddr: u64, run: u64, me: usize) -> bool {
        let Some((off, word)) = self.lock_word(uaddr) else {
            return false;
        };
        let Some(cpu) = self.locks.of(me) else {
            return false;
        };
        let Some(i) = locks::held_by(&cpu.snapshot(), off, run) else {
            return false;
        };
        cpu.clear(i);
        word.store(0, Ordering::Release);
        true
    }

    /// Releases every lock `run` holds on CPU `me` (the run is cancelled or
    /// returned with locks held); returns how many. A run holding locks
    /// keeps preemption disabled, so it is on `me`; one holding none finds
    /// no slot of its own on any CPU.
    pub(crate) fn unlock_run(&self, run: u64, me: usize) -> u32 {
        let Some(cpu) = self.locks.of(me) else {
            return 0;
        };
        let mut n = 0u32;
        for (i, slot) in (0..MAX_HELD).zip(cpu.snapshot()) {
            if slot.off == 0 || slot.run != run {
                continue;
            }
            cpu.clear(i);
            if let Some(word) = self.word_at(slot.off) {
                word.store(0, Ordering::Release);
            }
            n = n.wrapping_add(1);
        }
        n
    }
}
