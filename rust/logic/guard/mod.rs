// SPDX-License-Identifier: GPL-2.0

//! Guard pass: software-fault-isolation guards for KFlex heap accesses.
//!
//! A KFlex program reaches its heap of `size` bytes (a power of two,
//! [`MIN_HEAP_SIZE`]..=[`MAX_HEAP_SIZE`]) with instructions whose address is
//! `heap_base + reg + insn.off`: `LDX`/`ST`/`STX` in mode `PROBE_MEM32` and
//! `STX` in mode `PROBE_ATOMIC`. The heap has an unmapped guard zone of
//! 32 KiB below and 36 KiB above it. A *guard* on register `R` is the in-place
//! operation `R &= size - 1`; after it every access `R + off` (`off` is an
//! `s16`, width at most 8) stays inside the heap and its guard zones.
//!
//! This pass decides, for each heap access, whether a guard must be inserted
//! right before it or can be elided because a forward data-flow analysis
//! proves that, on every path into the access, the address register holds
//! "a guarded value plus a constant `c`" with `c + off` in
//! [`WINDOW_LO`]..[`WINDOW_HI`] (so the access stays within
//! `[base - 32 KiB, base + size + 32 KiB)`).
//!
//! # Abstract domain
//!
//! Per register `r0..r9` and per 8-byte slot of the 512-byte stack frame:
//!
//! - `Guarded { lo, hi }`: the value is `g + c`, `g` in `[0, size)` produced by
//!   a guard or by a cast to the kernel view, `c` in `[lo, hi]` (an `i32`
//!   interval, so `g + c` never wraps),
//! - `Const(k)`: a known 64-bit scalar (used for `p += r_const`),
//! - `Unknown` (top).
//!
//! A whole block state is either unreached (bottom) or holds one value per
//! register and slot. `r10` (read-only frame pointer) and the kernel-internal
//! `BPF_REG_AX` (`r11`) always read as `Unknown`; neither may address a heap
//! access (the pass refuses the program), so a guard names `r0` to
//! [`MAX_GUARD_REG`] only. Merges take the interval hull; any other mix
//! is `Unknown`. Widening: a block entry state that has
//! changed [`WIDEN_LOOP`] times (for targets of backward jumps) or
//! [`WIDEN_ANY`] times (other blocks) widens every component that still
//! changes to `Unknown`. Every state therefore changes at most
//! `WIDEN_ANY + 1 + 74` times, so the analysis runs in `O(insns)` block walks;
//! a work budget (default [`default_budget`]) is a safety net on top: when it
//! is exhausted the pass falls back to block-local analysis (every block starts
//! from `Unknown`), which is still sound, and reports [`Stats::fallback`].
//!
//! # Soundness assumptions
//!
//! - A cast to the kernel view (`BPF_ALU64 | BPF_MOV | BPF_X`, `off == 1`,
//!   `imm == 1`) is rewritten by the kernel into `dst = src & (size - 1)`;
//!   it is reported as [`Mark::Cast`] in every mode.
//! - Every [`Mark::Guard`] is materialised as `R &= size - 1` immediately
//!   before its instruction (the host tools' `apply` is one way to do it).
//! - Calls (helpers, kfuncs, subprograms, tail calls) clobber `r0..r5` and may
//!   write anywhere in the caller's stack. Subprograms are analysed separately
//!   with all registers and the stack unknown at entry.
//! - Stores through any register other than `r10` that are not heap accesses
//!   may point into the stack.
//!
//! The module uses only `core`, allocates nothing (the caller supplies all
//! buffers) and never panics: malformed programs and internal inconsistencies
//! are reported as [`Error`].
//!
//! # Code
//!
//! `domain.rs` holds the abstract values and states with their join and
//! widening, `decode.rs` validates instructions and decodes them into the
//! forms the analysis distinguishes, `transfer.rs` gives each its abstract
//! effect and records the decisions, and `fixpoint.rs` finds the basic
//! blocks and runs the worklist to a fixpoint within the work budget.
//! `rewrite.rs` (`apply`, host builds only) materialises the marks into a
//! plain BPF program for the tests. The instruction set itself is
//! [`crate::logic::bpf`].

use super::{bpf::Insn, geometry};

mod decode;
mod domain;
mod fixpoint;
#[cfg(feature = "host-tools")]
mod rewrite;
mod transfer;

pub use fixpoint::{blocks_needed, default_budget, run_with_budget, BlockState};
#[cfg(feature = "host-tools")]
pub use rewrite::{applied_len, apply};

/// Smallest heap size.
pub const MIN_HEAP_SIZE: u64 = geometry::MIN_SIZE;
/// Largest heap size.
pub const MAX_HEAP_SIZE: u64 = geometry::MAX_SIZE;
/// Smallest `c + off` for which a guard is elided.
pub const WINDOW_LO: i64 = -32768;
/// `c + off` must be below this for a guard to be elided.
pub const WINDOW_HI: i64 = 32759;
/// Largest program the pass accepts (instructions).
pub const MAX_INSNS: usize = 1 << 24;
/// Size of a stack frame.
pub const STACK_SIZE: usize = 512;
/// Highest register a [`Mark::Guard`] may name: `r9`.
///
/// Heap accesses address the heap through `r0..r9` only: `r10` is the
/// read-only frame pointer and `BPF_REG_AX` the verifier's scratch register,
/// which its rewrites use but never as the address of a heap access. The pass
/// refuses a heap access through either ([`Error::BadInsn`]), so it never
/// marks them, and [`Mark::decode`] refuses such marks. The kernel checks the
/// same bound on the marks it receives (`kflex_instrument()` in `verifier.c`:
/// at most `BPF_REG_9`, asserted against the kernel's value in `planner.rs`).
pub const MAX_GUARD_REG: u8 = 9;
/// Number of entry-state changes after which a backward-jump target widens.
pub const WIDEN_LOOP: u8 = 3;
/// Number of entry-state changes after which any block widens.
pub const WIDEN_ANY: u8 = 16;

// An elided access `[g + c + off, g + c + off + 8)` with `g` in `[0, size)`
// stays inside the heap's guard zones.
const _: () = assert!(WINDOW_LO < 0 && WINDOW_LO.unsigned_abs() <= geometry::GUARD_LO);
const _: () = assert!(WINDOW_HI > 0 && WINDOW_HI.unsigned_abs() + 8 <= geometry::GUARD_HI);

/// What the pass guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Loads, stores and atomics are guarded.
    Full,
    /// Only stores and atomics are guarded; loads are [`Mark::Unchecked`].
    Performance,
    /// Nothing is guarded; casts are still reported.
    Unguarded,
}

/// Parameters of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Heap size in bytes: a power of two in
    /// [`MIN_HEAP_SIZE`]..=[`MAX_HEAP_SIZE`].
    pub heap_size: u64,
    /// What to guard.
    pub mode: Mode,
}

impl Params {
    /// The guard mask `heap_size - 1`, or [`Error::BadParams`].
    pub fn mask(&self) -> Result<u64, Error> {
        heap_mask(self.heap_size)
    }
}

/// `heap_size - 1` if `heap_size` is valid.
pub fn heap_mask(heap_size: u64) -> Result<u64, Error> {
    if heap_size.is_power_of_two() && (MIN_HEAP_SIZE..=MAX_HEAP_SIZE).contains(&heap_size) {
        Ok(heap_size.wrapping_sub(1))
    } else {
        Err(Error::BadParams)
    }
}

/// Why the pass refused a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Invalid [`Params`] (heap size).
    BadParams,
    /// No instructions.
    EmptyProgram,
    /// More than [`MAX_INSNS`] instructions.
    TooLarge,
    /// `subprog_starts` is empty, does not start at 0, is not strictly
    /// increasing or points past the end.
    BadSubprogs,
    /// The marks buffer is shorter than the program.
    MarksTooSmall,
    /// The block scratch holds fewer than `needed` entries.
    ScratchTooSmall {
        /// Entries required.
        needed: usize,
    },
    /// Output buffer of [`apply`] too small.
    #[cfg(feature = "host-tools")]
    OutputTooSmall {
        /// Instructions required.
        needed: usize,
    },
    /// Unknown class, mode, operation or register, or a write to `r10`.
    BadInsn {
        /// Instruction index.
        pc: usize,
    },
    /// Truncated or malformed `LD_IMM64`.
    BadLdImm64 {
        /// Instruction index.
        pc: usize,
    },
    /// A jump leaves its subprogram.
    JumpOutOfRange {
        /// Instruction index.
        pc: usize,
    },
    /// A jump (or a subprogram start) lands on the second slot of an
    /// `LD_IMM64`.
    JumpIntoLdImm64 {
        /// The second slot.
        target: usize,
    },
    /// A call or subprogram address does not name a subprogram start.
    BadCallTarget {
        /// Instruction index.
        pc: usize,
    },
    /// Execution can fall off the end of a subprogram.
    FallThrough {
        /// Instruction index.
        pc: usize,
    },
    /// A mark that [`apply`] cannot materialise.
    #[cfg(feature = "host-tools")]
    BadMark {
        /// Instruction index.
        pc: usize,
    },
    /// Internal inconsistency (never expected).
    Internal,
}

/// Decision for one instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// Not a heap access or cast.
    None,
    /// Insert `R &= size - 1` on this register right before the instruction.
    Guard(u8),
    /// Heap access whose guard is proven unnecessary.
    Elided,
    /// Heap access that the mode does not guard.
    Unchecked,
    /// Cast to the kernel view: rewrite as `dst = src & (size - 1)`.
    Cast,
}

const MARK_GUARD: u8 = 0x10;
const MARK_ELIDED: u8 = 0x20;
const MARK_UNCHECKED: u8 = 0x21;
const MARK_CAST: u8 = 0x22;

impl Mark {
    /// The byte stored in the marks buffer.
    pub const fn encode(self) -> u8 {
        match self {
            Mark::None => 0,
            Mark::Guard(r) => MARK_GUARD | (r & 0x0f),
            Mark::Elided => MARK_ELIDED,
            Mark::Unchecked => MARK_UNCHECKED,
            Mark::Cast => MARK_CAST,
        }
    }

    /// Decodes a byte of the marks buffer.
    pub const fn decode(b: u8) -> Option<Mark> {
        match b {
            0 => Some(Mark::None),
            MARK_ELIDED => Some(Mark::Elided),
            MARK_UNCHECKED => Some(Mark::Unchecked),
            MARK_CAST => Some(Mark::Cast),
            _ if b & 0xf0 == MARK_GUARD && b & 0x0f <= MAX_GUARD_REG => Some(Mark::Guard(b & 0x0f)),
            _ => None,
        }
    }
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Heap accesses the mode requires to be safe (guarded or elided).
    pub accesses: u32,
    /// Of those, accesses left without a guard.
    pub elided: u32,
    /// Heap accesses the mode exempts ([`Mark::Unchecked`]).
    pub unchecked: u32,
    /// Casts to the kernel view ([`Mark::Cast`]).
    pub casts: u32,
    /// The work budget ran out; blocks were analysed locally only.
    pub fallback: bool,
}

/// Runs the pass with the default work budget. See [`run_with_budget`].
pub fn run(
    insns: &[Insn],
    subprog_starts: &[usize],
    params: &Params,
    blocks: &mut [BlockState],
    marks: &mut [u8],
) -> Result<Stats, Error> {
    run_with_budget(insns, subprog_starts, params, blocks, marks, default_budget(insns.len()))
}
