// SPDX-License-Identifier: GPL-2.0

//! Heap locks: the rules of the per-CPU held-lock table and the deadlock
//! search, as pure logic (the kernel side, `heap/locks.rs`, keeps the table in
//! atomics and spins on the lock word).
//!
//! A heap lock is a 4-byte word in the heap, named by its heap offset. The
//! word is program-writable and never trusted: who holds a lock is what the
//! tables say, never what the word says. Each CPU has one table of
//! [`MAX_HELD`] slots for every run on it (nested runs included); a slot
//! names the lock and the run holding it. While a CPU waits for a lock its
//! table also says which lock (`waiting`).
//!
//! - AA: a lock already in this CPU's table, whichever run holds it (a run
//!   interrupted by the one asking cannot go on until the asking one ends),
//!   can never be granted: refused at once.
//! - A full table refuses the acquisition.
//! - While waiting, a cycle "this CPU waits for a lock held by CPU b, which
//!   waits for a lock held by CPU c, …, held by this CPU" is a deadlock
//!   ([`closes_cycle`]); every CPU of a cycle finds it, so at least one of
//!   them gives up.

/// Slots of a CPU's held-lock table (all runs on the CPU together).
pub const MAX_HELD: usize = 8;

/// Why a run asking for a heap lock is cancelled. The values are the cause
/// codes the C glue logs and counts (`KFLEX_CAUSE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Refusal {
    /// The lock is held on this CPU (AA), or waiting for it closes a cycle
    /// of CPUs (ABBA and longer).
    Deadlock = 3,
    /// The run's budget ran out while it waited.
    LockBudget = 4,
    /// The CPU's table is full.
    TableFull = 5,
}

/// One slot as read: `off` is the lock word's heap offset (0: empty slot;
/// offset 0 is the heap's NULL and never a lock), `run` the holding run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    /// Heap offset of the lock word, 0 when the slot is empty.
    pub off: u64,
    /// Tag of the run that holds it.
    pub run: u64,
}

/// Whether `off` can name a lock word in a heap of `size` bytes: 4-byte
/// aligned, not the NULL offset, the word inside the heap.
pub fn valid_word(off: u64, size: u64) -> bool {
    off != 0 && off.is_multiple_of(4) && off.checked_add(4).is_some_and(|end| end <= size)
}

/// May a run on a CPU whose table is `table` ask for the lock at `off`?
/// Returns the free slot it will use.
pub fn admit(table: &[Slot], off: u64) -> Result<usize, Refusal> {
    if table.iter().any(|s| s.off == off) {
        return Err(Refusal::Deadlock);
    }
    table.iter().position(|s| s.off == 0).ok_or(Refusal::TableFull)
}

/// The slot in which `run` holds the lock at `off`.
pub fn held_by(table: &[Slot], off: u64, run: u64) -> Option<usize> {
    table.iter().position(|s| s.off == off && s.off != 0 && s.run == run)
}

/// Whether waiting for `want` from CPU `me` closes a cycle: follow "the lock
/// is held by CPU c (`holder`), which waits for lock w (`waiting`, 0: not
/// waiting)" from `want`; a cycle that comes back to `me` is a deadlock. At
/// most `ncpu` steps: a cycle among other CPUs that does not include `me`
/// (they find it themselves) ends the search without a verdict.
pub fn closes_cycle(
    me: usize,
    want: u64,
    ncpu: usize,
    holder: impl Fn(u64) -> Option<usize>,
    waiting: impl Fn(usize) -> u64,
) -> bool {
    let mut lock = want;
    for _ in 0..=ncpu {
        let Some(cpu) = holder(lock) else {
            return false;
        };
        if cpu == me {
            return true;
        }
        lock = waiting(cpu);
        if lock == 0 {
            return false;
        }
    }
    false
}
