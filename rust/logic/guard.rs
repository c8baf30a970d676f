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
//! `BPF_REG_AX` (`r11`) always read as `Unknown`. Merges take the interval
//! hull; any other mix is `Unknown`. Widening: a block entry state that has
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
//!   before its instruction (see [`apply`] for one way to do it).
//! - Calls (helpers, kfuncs, subprograms, tail calls) clobber `r0..r5` and may
//!   write anywhere in the caller's stack. Subprograms are analysed separately
//!   with all registers and the stack unknown at entry.
//! - Stores through any register other than `r10` that are not heap accesses
//!   may point into the stack.
//!
//! The module uses only `core`, allocates nothing (the caller supplies all
//! buffers) and never panics: malformed programs and internal inconsistencies
//! are reported as [`Error`].

/// Opcode fields of `struct bpf_insn` used by the pass.
pub mod bpf {
    /// Class mask.
    pub const CLASS_MASK: u8 = 0x07;
    /// Non-register loads (`LD_IMM64`, legacy `LD_ABS`/`LD_IND`).
    pub const LD: u8 = 0x00;
    /// Loads from memory into a register.
    pub const LDX: u8 = 0x01;
    /// Stores of an immediate.
    pub const ST: u8 = 0x02;
    /// Stores of a register and atomics.
    pub const STX: u8 = 0x03;
    /// 32-bit arithmetic.
    pub const ALU: u8 = 0x04;
    /// 64-bit jumps.
    pub const JMP: u8 = 0x05;
    /// 32-bit jumps.
    pub const JMP32: u8 = 0x06;
    /// 64-bit arithmetic.
    pub const ALU64: u8 = 0x07;

    /// Size mask.
    pub const SIZE_MASK: u8 = 0x18;
    /// 4 bytes.
    pub const W: u8 = 0x00;
    /// 2 bytes.
    pub const H: u8 = 0x08;
    /// 1 byte.
    pub const B: u8 = 0x10;
    /// 8 bytes.
    pub const DW: u8 = 0x18;

    /// Mode mask.
    pub const MODE_MASK: u8 = 0xe0;
    /// Immediate (`LD_IMM64`).
    pub const IMM: u8 = 0x00;
    /// Legacy packet load, absolute (`LD` class).
    pub const ABS: u8 = 0x20;
    /// Legacy packet load, indirect (`LD` class).
    pub const IND: u8 = 0x40;
    /// Plain memory access.
    pub const MEM: u8 = 0x60;
    /// Sign-extending load.
    pub const MEMSX: u8 = 0x80;
    /// Atomic operation.
    pub const ATOMIC: u8 = 0xc0;
    /// Kernel-internal: faulting load of a kernel pointer (`LDX` class).
    pub const PROBE_MEM: u8 = 0x20;
    /// Kernel-internal: sign-extending `PROBE_MEM` (`LDX` class).
    pub const PROBE_MEMSX: u8 = 0x40;
    /// Kernel-internal: heap access (`LDX`, `ST`, `STX` classes).
    pub const PROBE_MEM32: u8 = 0xa0;
    /// Kernel-internal: heap atomic (`STX` class).
    pub const PROBE_ATOMIC: u8 = 0xe0;
    /// Kernel-internal: speculation barrier (`ST` class, no operands).
    pub const NOSPEC: u8 = 0xc0;

    /// Operation mask (ALU and JMP classes).
    pub const OP_MASK: u8 = 0xf0;
    /// Source is a register.
    pub const X: u8 = 0x08;
    /// Source is the immediate.
    pub const K: u8 = 0x00;

    /// `dst += src`.
    pub const ADD: u8 = 0x00;
    /// `dst -= src`.
    pub const SUB: u8 = 0x10;
    /// `dst *= src`.
    pub const MUL: u8 = 0x20;
    /// `dst /= src`.
    pub const DIV: u8 = 0x30;
    /// `dst |= src`.
    pub const OR: u8 = 0x40;
    /// `dst &= src`.
    pub const AND: u8 = 0x50;
    /// `dst <<= src`.
    pub const LSH: u8 = 0x60;
    /// `dst >>= src` (logical).
    pub const RSH: u8 = 0x70;
    /// `dst = -dst`.
    pub const NEG: u8 = 0x80;
    /// `dst %= src`.
    pub const MOD: u8 = 0x90;
    /// `dst ^= src`.
    pub const XOR: u8 = 0xa0;
    /// `dst = src`.
    pub const MOV: u8 = 0xb0;
    /// `dst >>= src` (arithmetic).
    pub const ARSH: u8 = 0xc0;
    /// Byte swap.
    pub const END: u8 = 0xd0;

    /// Unconditional jump.
    pub const JA: u8 = 0x00;
    /// Jump if equal.
    pub const JEQ: u8 = 0x10;
    /// Jump if greater (unsigned).
    pub const JGT: u8 = 0x20;
    /// Jump if greater or equal (unsigned).
    pub const JGE: u8 = 0x30;
    /// Jump if `dst & src`.
    pub const JSET: u8 = 0x40;
    /// Jump if not equal.
    pub const JNE: u8 = 0x50;
    /// Jump if greater (signed).
    pub const JSGT: u8 = 0x60;
    /// Jump if greater or equal (signed).
    pub const JSGE: u8 = 0x70;
    /// Call.
    pub const CALL: u8 = 0x80;
    /// Return.
    pub const EXIT: u8 = 0x90;
    /// Jump if less (unsigned).
    pub const JLT: u8 = 0xa0;
    /// Jump if less or equal (unsigned).
    pub const JLE: u8 = 0xb0;
    /// Jump if less (signed).
    pub const JSLT: u8 = 0xc0;
    /// Jump if less or equal (signed).
    pub const JSLE: u8 = 0xd0;
    /// `may_goto` (conditional jump by `off`).
    pub const JCOND: u8 = 0xe0;
    /// Kernel-internal tail call (`BPF_JMP | BPF_TAIL_CALL`).
    pub const TAIL_CALL: u8 = 0xf0;

    /// `LD_IMM64` opcode (`BPF_LD | BPF_IMM | BPF_DW`).
    pub const LD_IMM64: u8 = LD | IMM | DW;
    /// `src_reg` of a call to a subprogram.
    pub const PSEUDO_CALL: u8 = 1;
    /// `src_reg` of a kfunc call.
    pub const PSEUDO_KFUNC_CALL: u8 = 2;
    /// `src_reg` of an `LD_IMM64` loading the address of a subprogram.
    pub const PSEUDO_FUNC: u8 = 4;
    /// Largest `src_reg` of an `LD_IMM64` (`BPF_PSEUDO_MAP_IDX_VALUE`).
    pub const PSEUDO_LD_MAX: u8 = 6;

    /// Atomic `imm` flag: the old value is fetched into `src`.
    pub const FETCH: i32 = 0x01;
    /// Atomic exchange.
    pub const XCHG: i32 = 0xe0 | FETCH;
    /// Atomic compare and exchange (old value into `r0`).
    pub const CMPXCHG: i32 = 0xf0 | FETCH;

    /// `off` of `BPF_ALU64 | BPF_MOV | BPF_X` marking an address-space cast.
    pub const ADDR_SPACE_CAST: i16 = 1;
    /// `imm` of the cast to the kernel view (address space 1 to 0): a guard.
    pub const CAST_KERN: i32 = 1;
    /// `imm` of the cast to the user view (address space 0 to 1).
    pub const CAST_USER: i32 = 1 << 16;
}

use bpf::*;

/// Smallest heap size.
pub const MIN_HEAP_SIZE: u64 = 1 << 16;
/// Largest heap size.
pub const MAX_HEAP_SIZE: u64 = 1 << 38;
/// Size of the unmapped guard zone below the heap.
pub const GUARD_BELOW: u64 = 32 << 10;
/// Size of the unmapped guard zone above the heap.
pub const GUARD_ABOVE: u64 = 36 << 10;
/// Smallest `c + off` for which a guard is elided.
pub const WINDOW_LO: i64 = -32768;
/// `c + off` must be below this for a guard to be elided.
pub const WINDOW_HI: i64 = 32759;
/// Largest program the pass accepts (instructions).
pub const MAX_INSNS: usize = 1 << 24;
/// Size of a stack frame.
pub const STACK_SIZE: usize = 512;
/// The read-only frame pointer.
pub const REG_FP: u8 = 10;
/// The kernel-internal auxiliary register `BPF_REG_AX`.
pub const REG_AX: u8 = 11;
/// Number of entry-state changes after which a backward-jump target widens.
pub const WIDEN_LOOP: u8 = 3;
/// Number of entry-state changes after which any block widens.
pub const WIDEN_ANY: u8 = 16;

/// Tracked registers: r0..r9 (r10 and AX always read as unknown).
const NREGS: usize = 10;
/// 8-byte stack slots.
const SLOTS: usize = STACK_SIZE / 8;

/// One BPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register (4 bits).
    pub dst: u8,
    /// Source register (4 bits).
    pub src: u8,
    /// Signed offset.
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

impl Insn {
    /// Builds an instruction from its fields.
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn { code, dst, src, off, imm }
    }

    /// Decodes the 8-byte little-endian encoding.
    pub const fn from_raw(b: [u8; 8]) -> Insn {
        Insn {
            code: b[0],
            dst: b[1] & 0x0f,
            src: b[1] >> 4,
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// Encodes into the 8-byte little-endian form (register fields are
    /// truncated to 4 bits).
    pub const fn to_raw(self) -> [u8; 8] {
        let off = self.off.to_le_bytes();
        let imm = self.imm.to_le_bytes();
        [
            self.code,
            (self.dst & 0x0f) | (self.src << 4),
            off[0],
            off[1],
            imm[0],
            imm[1],
            imm[2],
            imm[3],
        ]
    }
}

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
            _ if b & 0xf0 == MARK_GUARD && b & 0x0f <= REG_AX && b & 0x0f != REG_FP => {
                Some(Mark::Guard(b & 0x0f))
            }
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

/// Abstract value of a register or stack slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    Unknown,
    /// Known 64-bit value, split to keep the type 4-byte aligned.
    Const {
        lo: u32,
        hi: u32,
    },
    /// `g + c`, `g` in `[0, size)`, `c` in `[lo, hi]`.
    Guarded {
        lo: i32,
        hi: i32,
    },
}

impl Val {
    const GUARD: Val = Val::Guarded { lo: 0, hi: 0 };

    const fn konst(v: i64) -> Val {
        Val::Const { lo: v as u32, hi: ((v as u64) >> 32) as u32 }
    }

    const fn as_const(self) -> Option<i64> {
        match self {
            Val::Const { lo, hi } => Some((((hi as u64) << 32) | lo as u64) as i64),
            _ => None,
        }
    }

    fn guarded(lo: i64, hi: i64) -> Val {
        match (i32::try_from(lo), i32::try_from(hi)) {
            (Ok(lo), Ok(hi)) if lo <= hi => Val::Guarded { lo, hi },
            _ => Val::Unknown,
        }
    }

    /// The value plus `k` (64-bit wrapping for scalars).
    fn shift(self, k: i64) -> Val {
        match self {
            Val::Guarded { lo, hi } => {
                match (i64::from(lo).checked_add(k), i64::from(hi).checked_add(k)) {
                    (Some(lo), Some(hi)) => Val::guarded(lo, hi),
                    _ => Val::Unknown,
                }
            }
            Val::Const { .. } => match self.as_const() {
                Some(v) => Val::konst(v.wrapping_add(k)),
                None => Val::Unknown,
            },
            Val::Unknown => Val::Unknown,
        }
    }

    fn join(self, o: Val) -> Val {
        match (self, o) {
            (a, b) if a == b => a,
            (Val::Guarded { lo: l1, hi: h1 }, Val::Guarded { lo: l2, hi: h2 }) => {
                Val::Guarded { lo: l1.min(l2), hi: h1.max(h2) }
            }
            _ => Val::Unknown,
        }
    }

    /// Whether an access at this value plus `off` may skip its guard.
    fn elidable(self, off: i16) -> bool {
        match self {
            Val::Guarded { lo, hi } => {
                let off = i64::from(off);
                i64::from(lo).saturating_add(off) >= WINDOW_LO
                    && i64::from(hi).saturating_add(off) < WINDOW_HI
            }
            _ => false,
        }
    }
}

/// Abstract state at one program point (reached).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AbsState {
    regs: [Val; NREGS],
    stack: [Val; SLOTS],
}

impl AbsState {
    const UNKNOWN: AbsState =
        AbsState { regs: [Val::Unknown; NREGS], stack: [Val::Unknown; SLOTS] };

    fn get(&self, r: u8) -> Val {
        self.regs.get(usize::from(r)).copied().unwrap_or(Val::Unknown)
    }

    /// Writes a register; r10 and AX are not tracked and stay unknown.
    fn set(&mut self, r: u8, v: Val) {
        if let Some(slot) = self.regs.get_mut(usize::from(r)) {
            *slot = v;
        }
    }

    fn clobber_caller_saved(&mut self) {
        for r in 0..=5 {
            self.set(r, Val::Unknown);
        }
    }

    fn clobber_stack(&mut self) {
        self.stack = [Val::Unknown; SLOTS];
    }

    /// Joins `o` into `self`, widening changed components to unknown if
    /// `widen`. Returns whether `self` changed.
    fn join_from(&mut self, o: &AbsState, widen: bool) -> bool {
        let mut changed = false;
        let pairs = self
            .regs
            .iter_mut()
            .zip(o.regs.iter())
            .chain(self.stack.iter_mut().zip(o.stack.iter()));
        for (a, b) in pairs {
            let j = a.join(*b);
            if j != *a {
                changed = true;
                *a = if widen { Val::Unknown } else { j };
            }
        }
        changed
    }
}

/// Caller-provided scratch: the entry state of one basic block.
///
/// Allocate [`blocks_needed`] of them (e.g. filled with
/// [`BlockState::EMPTY`]); their content on entry does not matter.
#[derive(Clone, Copy, Debug)]
pub struct BlockState {
    start: u32,
    /// Element of the intrusive min-heap (worklist) stored across blocks.
    heap: u32,
    changes: u8,
    loop_head: bool,
    queued: bool,
    reached: bool,
    st: AbsState,
}

impl BlockState {
    /// An unused entry.
    pub const EMPTY: BlockState = BlockState {
        start: 0,
        heap: 0,
        changes: 0,
        loop_head: false,
        queued: false,
        reached: false,
        st: AbsState::UNKNOWN,
    };
}

impl Default for BlockState {
    fn default() -> Self {
        BlockState::EMPTY
    }
}

/// Upper bound on the basic blocks of a program: the length of the block
/// scratch that [`run`] needs. Cheap (one scan, no allocation).
pub fn blocks_needed(insns: &[Insn], subprog_starts: &[usize]) -> usize {
    // (`Iterator::count` would carry an overflow check.)
    let jumps = insns.iter().fold(0usize, |n, i| {
        if matches!(i.code & CLASS_MASK, JMP | JMP32) {
            n.saturating_add(1)
        } else {
            n
        }
    });
    subprog_starts.len().saturating_add(jumps.saturating_mul(2)).max(1).min(insns.len().max(1))
}

/// Default work budget (instructions walked) for a program: comfortably
/// above the worst case the widening allows.
pub fn default_budget(insns: usize) -> u64 {
    (insns as u64).saturating_mul(128).saturating_add(4096)
}

/// Decoded instruction.
#[derive(Clone, Copy, Debug)]
enum Op {
    Alu {
        alu64: bool,
        op: u8,
        dst: u8,
        /// `Some(src)` for `BPF_X`.
        src: Option<u8>,
        off: i16,
        imm: i32,
    },
    Cast {
        dst: u8,
    },
    LdImm64 {
        dst: u8,
        value: Option<i64>,
    },
    LdAbs,
    Load {
        dst: u8,
        src: u8,
        off: i16,
        size: u8,
        plain: bool,
    },
    Store {
        dst: u8,
        off: i16,
        size: u8,
        /// Stored register (`STX`) or `None` for an immediate (`ST`).
        val: Option<u8>,
    },
    Atomic {
        src: u8,
        imm: i32,
    },
    HeapLoad {
        dst: u8,
        addr: u8,
        off: i16,
    },
    HeapStore {
        addr: u8,
        off: i16,
    },
    HeapAtomic {
        addr: u8,
        off: i16,
        src: u8,
        imm: i32,
    },
    Ja {
        target: usize,
    },
    Cond {
        target: usize,
    },
    Call,
    Exit,
    /// Speculation barrier (`BPF_ST | BPF_NOSPEC`).
    Nop,
}

impl Op {
    const fn ends_block(&self) -> bool {
        matches!(self, Op::Ja { .. } | Op::Cond { .. } | Op::Exit)
    }

    const fn falls_through(&self) -> bool {
        !matches!(self, Op::Ja { .. } | Op::Exit)
    }

    const fn target(&self) -> Option<usize> {
        match self {
            Op::Ja { target } | Op::Cond { target } => Some(*target),
            _ => None,
        }
    }
}

const fn size_bytes(size: u8) -> i64 {
    match size {
        W => 4,
        H => 2,
        B => 1,
        _ => 8,
    }
}

fn valid_atomic(size: u8, imm: i32) -> bool {
    (size == W || size == DW)
        && matches!(imm, 0x00 | 0x01 | 0x40 | 0x41 | 0x50 | 0x51 | 0xa0 | 0xa1 | XCHG | CMPXCHG)
}

/// Register written by the fetch of an atomic, if any.
fn atomic_writes(src: u8, imm: i32) -> Option<u8> {
    if imm == CMPXCHG {
        Some(0)
    } else if imm & FETCH != 0 {
        Some(src)
    } else {
        None
    }
}

/// Slots touched by `[r10 + off, r10 + off + width)`, if inside the frame.
fn slot_range(off: i16, width: i64) -> Option<(usize, usize)> {
    let start = i64::from(off).checked_add(STACK_SIZE as i64)?;
    let last = start.checked_add(width)?.checked_sub(1)?;
    if start < 0 || last >= STACK_SIZE as i64 {
        return None;
    }
    Some((usize::try_from(start / 8).ok()?, usize::try_from(last / 8).ok()?))
}

/// Slots overlapped by `[r10 + off, r10 + off + width)`, if any. Bytes
/// outside the frame belong to no tracked slot.
fn slots_touched(off: i16, width: i64) -> Option<(usize, usize)> {
    let start = i64::from(off).checked_add(STACK_SIZE as i64)?;
    let end = start.checked_add(width)?;
    if end <= 0 || start >= STACK_SIZE as i64 {
        return None;
    }
    let first = start.max(0) / 8;
    let last = end.min(STACK_SIZE as i64).checked_sub(1)? / 8;
    Some((usize::try_from(first).ok()?, usize::try_from(last).ok()?))
}

/// Temporary flags kept in the marks buffer during the analysis.
const TMP_LEADER: u8 = 0x80;
const TMP_SECOND: u8 = 0x40;
const TMP_LOOP: u8 = 0x20;

struct Pass<'a> {
    insns: &'a [Insn],
    subprogs: &'a [usize],
    mode: Mode,
}

impl Pass<'_> {
    /// `[start, end)` of the subprogram holding `pc`.
    fn bounds(&self, pc: usize) -> (usize, usize) {
        let i = self.subprogs.partition_point(|&s| s <= pc);
        let start = i.checked_sub(1).and_then(|j| self.subprogs.get(j)).copied().unwrap_or(0);
        let end = self.subprogs.get(i).copied().unwrap_or(self.insns.len());
        (start, end)
    }

    fn target(&self, pc: usize, delta: i64, lo: usize, hi: usize) -> Result<usize, Error> {
        let t = i64::try_from(pc)
            .ok()
            .and_then(|p| p.checked_add(1))
            .and_then(|p| p.checked_add(delta))
            .and_then(|t| usize::try_from(t).ok());
        match t {
            Some(t) if t >= lo && t < hi => Ok(t),
            _ => Err(Error::JumpOutOfRange { pc }),
        }
    }

    fn subprog_target(&self, pc: usize, delta: i32) -> Result<usize, Error> {
        let t = self
            .target(pc, i64::from(delta), 0, self.insns.len())
            .map_err(|_| Error::BadCallTarget { pc })?;
        if self.subprogs.binary_search(&t).is_ok() {
            Ok(t)
        } else {
            Err(Error::BadCallTarget { pc })
        }
    }

    /// Decodes and validates the instruction at `pc`; returns it and its
    /// length in slots.
    fn decode(&self, pc: usize) -> Result<(Op, usize), Error> {
        let bad = Error::BadInsn { pc };
        let insn = *self.insns.get(pc).ok_or(Error::Internal)?;
        if insn.dst > REG_AX || insn.src > REG_AX {
            return Err(bad);
        }
        let (lo, hi) = self.bounds(pc);
        let class = insn.code & CLASS_MASK;
        let size = insn.code & SIZE_MASK;
        let mode = insn.code & MODE_MASK;
        let (dst, src, off, imm) = (insn.dst, insn.src, insn.off, insn.imm);
        let op = match class {
            LD => {
                if insn.code == LD_IMM64 {
                    if dst == REG_FP {
                        return Err(bad);
                    }
                    let next = pc.checked_add(1).ok_or(Error::Internal)?;
                    let second = match self.insns.get(next) {
                        Some(s) if next < hi => *s,
                        _ => return Err(Error::BadLdImm64 { pc }),
                    };
                    if second.code != 0 || second.dst != 0 || second.src != 0 || second.off != 0 {
                        return Err(Error::BadLdImm64 { pc });
                    }
                    let value = match src {
                        0 => Some(
                            ((u64::from(second.imm as u32) << 32) | u64::from(imm as u32)) as i64,
                        ),
                        PSEUDO_FUNC => {
                            self.subprog_target(pc, imm)?;
                            None
                        }
                        s if s <= PSEUDO_LD_MAX => None,
                        _ => return Err(bad),
                    };
                    return Ok((Op::LdImm64 { dst, value }, 2));
                }
                if (mode == ABS || mode == IND) && size != DW {
                    Op::LdAbs
                } else {
                    return Err(bad);
                }
            }
            LDX => {
                if dst == REG_FP {
                    return Err(bad);
                }
                match mode {
                    PROBE_MEM32 => {
                        if src == REG_FP {
                            return Err(bad);
                        }
                        Op::HeapLoad { dst, addr: src, off }
                    }
                    MEM | MEMSX | PROBE_MEM | PROBE_MEMSX => {
                        Op::Load { dst, src, off, size, plain: mode == MEM }
                    }
                    _ => return Err(bad),
                }
            }
            ST if insn.code == ST | NOSPEC => Op::Nop,
            ST | STX => match mode {
                MEM => {
                    Op::Store { dst, off, size, val: if class == STX { Some(src) } else { None } }
                }
                PROBE_MEM32 => {
                    if dst == REG_FP {
                        return Err(bad);
                    }
                    Op::HeapStore { addr: dst, off }
                }
                ATOMIC | PROBE_ATOMIC if class == STX => {
                    if !valid_atomic(size, imm) || atomic_writes(src, imm) == Some(REG_FP) {
                        return Err(bad);
                    }
                    if mode == ATOMIC {
                        Op::Atomic { src, imm }
                    } else if dst == REG_FP {
                        return Err(bad);
                    } else {
                        Op::HeapAtomic { addr: dst, off, src, imm }
                    }
                }
                _ => return Err(bad),
            },
            ALU | ALU64 => {
                let op = insn.code & OP_MASK;
                if op > END || dst == REG_FP {
                    return Err(bad);
                }
                let x = insn.code & X != 0;
                if class == ALU64 && op == MOV && x && off == ADDR_SPACE_CAST && imm == CAST_KERN {
                    Op::Cast { dst }
                } else {
                    Op::Alu {
                        alu64: class == ALU64,
                        op,
                        dst,
                        src: if x { Some(src) } else { None },
                        off,
                        imm,
                    }
                }
            }
            _ => {
                // JMP or JMP32.
                let jmp32 = class == JMP32;
                let op = insn.code & OP_MASK;
                let x = insn.code & X != 0;
                match op {
                    JA if !x => {
                        let delta = if jmp32 { i64::from(imm) } else { i64::from(off) };
                        Op::Ja { target: self.target(pc, delta, lo, hi)? }
                    }
                    JEQ | JGT | JGE | JSET | JNE | JSGT | JSGE | JLT | JLE | JSLT | JSLE => {
                        Op::Cond { target: self.target(pc, i64::from(off), lo, hi)? }
                    }
                    JCOND if !jmp32 && !x && src == 0 => {
                        Op::Cond { target: self.target(pc, i64::from(off), lo, hi)? }
                    }
                    CALL if !jmp32 && !x => match src {
                        0 | PSEUDO_KFUNC_CALL => Op::Call,
                        PSEUDO_CALL => {
                            self.subprog_target(pc, imm)?;
                            Op::Call
                        }
                        _ => return Err(bad),
                    },
                    TAIL_CALL if !jmp32 && !x => Op::Call,
                    EXIT if !jmp32 && !x => Op::Exit,
                    _ => return Err(bad),
                }
            }
        };
        Ok((op, 1))
    }

    /// Abstract transfer of one instruction. With `out`, records the mark
    /// and counts it.
    fn step(&self, pc: usize, op: Op, st: &mut AbsState, out: Option<&mut Out<'_>>) {
        match op {
            Op::Alu { alu64, op, dst, src, off, imm } => {
                let v = alu(st, alu64, op, dst, src, off, imm);
                st.set(dst, v);
            }
            Op::Cast { dst } => {
                st.set(dst, Val::GUARD);
                if let Some(out) = out {
                    out.mark(pc, Mark::Cast);
                    out.stats.casts = out.stats.casts.saturating_add(1);
                }
            }
            Op::LdImm64 { dst, value } => {
                st.set(dst, value.map_or(Val::Unknown, Val::konst));
            }
            Op::LdAbs => st.clobber_caller_saved(),
            Op::Load { dst, src, off, size, plain } => {
                let v = match slot_range(off, size_bytes(size)) {
                    Some((a, b)) if src == REG_FP && plain && size == DW && a == b => {
                        st.stack.get(a).copied().unwrap_or(Val::Unknown)
                    }
                    _ => Val::Unknown,
                };
                st.set(dst, v);
            }
            Op::Store { dst, off, size, val } => {
                if dst != REG_FP {
                    // Any other register may point into the stack.
                    st.clobber_stack();
                } else if let Some((a, b)) = slots_touched(off, size_bytes(size)) {
                    let exact = size == DW && slot_range(off, 8) == Some((a, a));
                    let v = match val {
                        Some(r) if exact => st.get(r),
                        _ => Val::Unknown,
                    };
                    for s in st.stack.iter_mut().take(b.saturating_add(1)).skip(a) {
                        *s = v;
                    }
                }
                // A store through r10 entirely outside the frame touches no
                // tracked slot (the caller's frame is clobbered at the call).
            }
            Op::Atomic { src, imm } => {
                st.clobber_stack();
                if let Some(r) = atomic_writes(src, imm) {
                    st.set(r, Val::Unknown);
                }
            }
            Op::HeapLoad { dst, addr, off } => {
                self.heap_access(pc, addr, off, true, st, out);
                st.set(dst, Val::Unknown);
            }
            Op::HeapStore { addr, off } => self.heap_access(pc, addr, off, false, st, out),
            Op::HeapAtomic { addr, off, src, imm } => {
                self.heap_access(pc, addr, off, false, st, out);
                if let Some(r) = atomic_writes(src, imm) {
                    st.set(r, Val::Unknown);
                }
            }
            Op::Call => {
                st.clobber_caller_saved();
                st.clobber_stack();
            }
            Op::Ja { .. } | Op::Cond { .. } | Op::Exit | Op::Nop => {}
        }
    }

    fn heap_access(
        &self,
        pc: usize,
        addr: u8,
        off: i16,
        load: bool,
        st: &mut AbsState,
        out: Option<&mut Out<'_>>,
    ) {
        let checked = match self.mode {
            Mode::Full => true,
            Mode::Performance => !load,
            Mode::Unguarded => false,
        };
        let mark = if !checked {
            Mark::Unchecked
        } else if st.get(addr).elidable(off) {
            Mark::Elided
        } else {
            st.set(addr, Val::GUARD);
            Mark::Guard(addr)
        };
        if let Some(out) = out {
            out.mark(pc, mark);
            let s = &mut out.stats;
            match mark {
                Mark::Unchecked => s.unchecked = s.unchecked.saturating_add(1),
                Mark::Elided => {
                    s.accesses = s.accesses.saturating_add(1);
                    s.elided = s.elided.saturating_add(1);
                }
                _ => s.accesses = s.accesses.saturating_add(1),
            }
        }
    }

    /// Walks the block `[start, end)` from `st`. Returns the last
    /// instruction's index, decoded form and length.
    fn walk(
        &self,
        start: usize,
        end: usize,
        st: &mut AbsState,
        mut out: Option<&mut Out<'_>>,
        work: &mut u64,
    ) -> Result<(usize, Op, usize), Error> {
        let mut pc = start;
        loop {
            let (op, len) = self.decode(pc)?;
            self.step(pc, op, st, out.as_deref_mut());
            *work = work.saturating_add(1);
            let next = pc.checked_add(len).ok_or(Error::Internal)?;
            if op.ends_block() || next >= end {
                return Ok((pc, op, len));
            }
            pc = next;
        }
    }
}

/// Output of the recording walk.
struct Out<'m> {
    marks: &'m mut [u8],
    stats: Stats,
}

impl Out<'_> {
    fn mark(&mut self, pc: usize, m: Mark) {
        if let Some(b) = self.marks.get_mut(pc) {
            *b = m.encode();
        }
    }
}

/// Abstract result of an ALU instruction.
fn alu(st: &AbsState, alu64: bool, op: u8, dst: u8, src: Option<u8>, off: i16, imm: i32) -> Val {
    let d = st.get(dst);
    let s = match src {
        Some(r) => st.get(r),
        None if alu64 => Val::konst(i64::from(imm)),
        None => Val::konst(i64::from(imm as u32)),
    };
    if off != 0 {
        // Sign-extending moves, casts to the user view, signed division:
        // never tracked.
        return Val::Unknown;
    }
    if !alu64 {
        // 32-bit: only moves of known scalars stay known.
        return match (op, s.as_const()) {
            (MOV, Some(v)) => Val::konst(i64::from(v as u32)),
            _ => Val::Unknown,
        };
    }
    match op {
        MOV => s,
        ADD => match (d, s) {
            (Val::Guarded { .. }, Val::Const { .. }) => {
                s.as_const().map_or(Val::Unknown, |k| d.shift(k))
            }
            (Val::Const { .. }, _) => d.as_const().map_or(Val::Unknown, |k| s.shift(k)),
            _ => Val::Unknown,
        },
        SUB => match (d, s.as_const()) {
            (Val::Guarded { .. } | Val::Const { .. }, Some(k)) => match k.checked_neg() {
                Some(nk) => d.shift(nk),
                None => match d.as_const() {
                    Some(a) => Val::konst(a.wrapping_sub(k)),
                    None => Val::Unknown,
                },
            },
            _ => Val::Unknown,
        },
        NEG if src.is_none() => d.as_const().map_or(Val::Unknown, |a| Val::konst(a.wrapping_neg())),
        MUL | OR | AND | XOR | LSH | RSH | ARSH => match (d.as_const(), s.as_const()) {
            (Some(a), Some(b)) => fold64(op, a, b).map_or(Val::Unknown, Val::konst),
            _ => Val::Unknown,
        },
        _ => Val::Unknown,
    }
}

fn fold64(op: u8, a: i64, b: i64) -> Option<i64> {
    let sh = u32::try_from(b).ok().filter(|&s| s < 64);
    match op {
        MUL => Some(a.wrapping_mul(b)),
        OR => Some(a | b),
        AND => Some(a & b),
        XOR => Some(a ^ b),
        LSH => sh.map(|s| ((a as u64) << s) as i64),
        RSH => sh.map(|s| ((a as u64) >> s) as i64),
        ARSH => sh.map(|s| a >> s),
        _ => None,
    }
}

fn blk(blocks: &[BlockState], i: usize) -> Result<&BlockState, Error> {
    blocks.get(i).ok_or(Error::Internal)
}

fn blk_mut(blocks: &mut [BlockState], i: usize) -> Result<&mut BlockState, Error> {
    blocks.get_mut(i).ok_or(Error::Internal)
}

fn idx(v: u32) -> usize {
    v as usize
}

/// Worklist: a binary min-heap of block indices (program order) stored in
/// the `heap` fields of the first `len` blocks.
struct Worklist {
    len: usize,
}

impl Worklist {
    fn push(&mut self, blocks: &mut [BlockState], b: u32) -> Result<(), Error> {
        let bs = blk_mut(blocks, idx(b))?;
        if bs.queued {
            return Ok(());
        }
        bs.queued = true;
        let mut i = self.len;
        self.len = self.len.checked_add(1).ok_or(Error::Internal)?;
        while i > 0 {
            let parent = i.saturating_sub(1) / 2;
            let pv = blk(blocks, parent)?.heap;
            if pv <= b {
                break;
            }
            blk_mut(blocks, i)?.heap = pv;
            i = parent;
        }
        blk_mut(blocks, i)?.heap = b;
        Ok(())
    }

    fn pop(&mut self, blocks: &mut [BlockState]) -> Result<Option<u32>, Error> {
        if self.len == 0 {
            return Ok(None);
        }
        let top = blk(blocks, 0)?.heap;
        self.len = self.len.saturating_sub(1);
        let last = blk(blocks, self.len)?.heap;
        let mut i = 0usize;
        loop {
            let l = i.saturating_mul(2).saturating_add(1);
            if l >= self.len {
                break;
            }
            let r = l.saturating_add(1);
            let mut c = l;
            let mut cv = blk(blocks, l)?.heap;
            if r < self.len {
                let rv = blk(blocks, r)?.heap;
                if rv < cv {
                    c = r;
                    cv = rv;
                }
            }
            if last <= cv {
                break;
            }
            blk_mut(blocks, i)?.heap = cv;
            i = c;
        }
        if self.len > 0 {
            blk_mut(blocks, i)?.heap = last;
        }
        blk_mut(blocks, idx(top))?.queued = false;
        Ok(Some(top))
    }
}

/// Index of the block starting at `pc`.
fn find_block(blocks: &[BlockState], pc: usize) -> Result<u32, Error> {
    let pc = u32::try_from(pc).map_err(|_| Error::Internal)?;
    let i = blocks.binary_search_by_key(&pc, |b| b.start).map_err(|_| Error::Internal)?;
    u32::try_from(i).map_err(|_| Error::Internal)
}

/// Joins `st` into the entry of block `b`; returns whether it changed.
fn join_into(blocks: &mut [BlockState], b: u32, st: &AbsState) -> Result<bool, Error> {
    let bs = blk_mut(blocks, idx(b))?;
    if !bs.reached {
        bs.reached = true;
        bs.st = *st;
        bs.changes = 1;
        return Ok(true);
    }
    let limit = if bs.loop_head { WIDEN_LOOP } else { WIDEN_ANY };
    let changed = bs.st.join_from(st, bs.changes >= limit);
    if changed {
        bs.changes = bs.changes.saturating_add(1);
    }
    Ok(changed)
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

/// Runs the guard pass.
///
/// - `insns`: the program after the verifier's fixups.
/// - `subprog_starts`: sorted, strictly increasing instruction indices of the
///   subprograms; the first is 0. Every call to a subprogram and every
///   `LD_IMM64` of a subprogram address must name one of them.
/// - `blocks`: scratch, at least [`blocks_needed`] entries (the exact number
///   of basic blocks suffices; [`Error::ScratchTooSmall`] says how many).
/// - `marks`: at least `insns.len()` bytes; on success `marks[pc]` is the
///   [`Mark::encode`]d decision for instruction `pc` (0 for the second slot of
///   an `LD_IMM64`). On error its content is unspecified.
/// - `budget`: maximum number of instructions walked by the fixpoint
///   iteration; when exceeded, blocks are analysed locally from an unknown
///   state ([`Stats::fallback`]), which is sound but guards more.
pub fn run_with_budget(
    insns: &[Insn],
    subprog_starts: &[usize],
    params: &Params,
    blocks: &mut [BlockState],
    marks: &mut [u8],
    budget: u64,
) -> Result<Stats, Error> {
    params.mask()?;
    let n = insns.len();
    if n == 0 {
        return Err(Error::EmptyProgram);
    }
    if n > MAX_INSNS {
        return Err(Error::TooLarge);
    }
    if subprog_starts.first() != Some(&0)
        || subprog_starts.windows(2).any(|w| w.first() >= w.get(1))
        || subprog_starts.last().is_some_and(|&l| l >= n)
    {
        return Err(Error::BadSubprogs);
    }
    let marks = marks.get_mut(..n).ok_or(Error::MarksTooSmall)?;
    let pass = Pass { insns, subprogs: subprog_starts, mode: params.mode };

    // Validation and block leaders (kept as flags in `marks`).
    marks.fill(0);
    for &s in subprog_starts {
        if let Some(m) = marks.get_mut(s) {
            *m |= TMP_LEADER;
        }
    }
    let mut pc = 0usize;
    while pc < n {
        let (op, len) = pass.decode(pc)?;
        let next = pc.checked_add(len).ok_or(Error::Internal)?;
        let (_, end) = pass.bounds(pc);
        if len == 2 {
            let m = marks.get_mut(pc.wrapping_add(1)).ok_or(Error::Internal)?;
            if *m & TMP_LEADER != 0 {
                return Err(Error::JumpIntoLdImm64 { target: pc.wrapping_add(1) });
            }
            *m |= TMP_SECOND;
        }
        if next >= end && op.falls_through() {
            return Err(Error::FallThrough { pc });
        }
        if let Some(t) = op.target() {
            let m = marks.get_mut(t).ok_or(Error::Internal)?;
            if *m & TMP_SECOND != 0 {
                return Err(Error::JumpIntoLdImm64 { target: t });
            }
            *m |= TMP_LEADER;
            if t <= pc {
                *m |= TMP_LOOP;
            }
        }
        if op.ends_block() {
            if let Some(m) = marks.get_mut(next) {
                *m |= TMP_LEADER;
            }
        }
        pc = next;
    }

    // Block table.
    let nblocks =
        marks.iter().fold(
            0usize,
            |n, &m| {
                if m & TMP_LEADER != 0 {
                    n.saturating_add(1)
                } else {
                    n
                }
            },
        );
    if blocks.len() < nblocks {
        return Err(Error::ScratchTooSmall { needed: nblocks });
    }
    let blocks = blocks.get_mut(..nblocks).ok_or(Error::Internal)?;
    // (`Iterator::enumerate` and `sum` would carry overflow checks.)
    let leaders = (0..n).zip(marks.iter()).filter(|(_, &m)| m & TMP_LEADER != 0);
    for (bs, (pc, &m)) in blocks.iter_mut().zip(leaders) {
        *bs = BlockState::EMPTY;
        bs.start = u32::try_from(pc).map_err(|_| Error::Internal)?;
        bs.loop_head = m & TMP_LOOP != 0;
    }
    let block_end = |blocks: &[BlockState], b: usize| -> usize {
        blocks.get(b.wrapping_add(1)).map_or(n, |next| idx(next.start))
    };

    // Fixpoint iteration.
    let mut wl = Worklist { len: 0 };
    for &s in subprog_starts {
        let b = find_block(blocks, s)?;
        join_into(blocks, b, &AbsState::UNKNOWN)?;
        wl.push(blocks, b)?;
    }
    let mut work = 0u64;
    let mut fallback = false;
    while let Some(b) = wl.pop(blocks)? {
        if work > budget {
            fallback = true;
            break;
        }
        let bs = blk(blocks, idx(b))?;
        let mut st = bs.st;
        let start = idx(bs.start);
        let end = block_end(blocks, idx(b));
        let (last, op, len) = pass.walk(start, end, &mut st, None, &mut work)?;
        let fall = if op.falls_through() {
            Some(last.checked_add(len).ok_or(Error::Internal)?)
        } else {
            None
        };
        for t in [fall, op.target()].into_iter().flatten() {
            let sb = find_block(blocks, t)?;
            if join_into(blocks, sb, &st)? {
                wl.push(blocks, sb)?;
            }
        }
    }

    // Decisions.
    marks.fill(0);
    let mut out = Out { marks, stats: Stats { fallback, ..Stats::default() } };
    let mut ignored = 0u64;
    for b in 0..blocks.len() {
        let bs = blk(blocks, b)?;
        let mut st = if bs.reached && !fallback { bs.st } else { AbsState::UNKNOWN };
        let start = idx(bs.start);
        let end = block_end(blocks, b);
        pass.walk(start, end, &mut st, Some(&mut out), &mut ignored)?;
    }
    Ok(out.stats)
}

/// Number of slots [`apply`] adds for one mark.
const fn extra(mark: u8) -> usize {
    match Mark::decode(mark) {
        Some(Mark::Guard(_)) | Some(Mark::Cast) => 2,
        _ => 0,
    }
}

/// Length of the program [`apply`] produces.
pub fn applied_len(insns: &[Insn], marks: &[u8]) -> usize {
    marks.iter().take(insns.len()).fold(insns.len(), |acc, &m| acc.saturating_add(extra(m)))
}

/// Materialises the marks of [`run`] into a plain BPF program in `out`,
/// returning its length ([`applied_len`]).
///
/// A guard on `R` becomes `R <<= s; R >>= s` (with `s = 64 - log2(size)`,
/// equal to `R &= size - 1` without a scratch register) inserted before the
/// access; a cast becomes `dst = src; dst <<= s; dst >>= s`. Jumps, calls,
/// `gotol`, `may_goto` and subprogram addresses are relocated so that a jump
/// to a guarded instruction lands on its guard. Meant for tests and small
/// programs: relocating a jump costs `O(distance)`.
pub fn apply(
    insns: &[Insn],
    marks: &[u8],
    heap_size: u64,
    out: &mut [Insn],
) -> Result<usize, Error> {
    heap_mask(heap_size)?;
    let n = insns.len();
    let marks = marks.get(..n).ok_or(Error::MarksTooSmall)?;
    let needed = applied_len(insns, marks);
    if out.len() < needed {
        return Err(Error::OutputTooSmall { needed });
    }
    let s = 64i32.wrapping_sub(heap_size.trailing_zeros() as i32);
    let lsh = |r: u8| Insn::new(ALU64 | LSH | K, r, 0, 0, s);
    let rsh = |r: u8| Insn::new(ALU64 | RSH | K, r, 0, 0, s);

    // New index of old instruction `t`, knowing `cur` extra slots before
    // old instruction `pc`.
    let relocate = |pc: usize, cur: usize, t: usize| -> Option<usize> {
        let e = if t >= pc {
            let more = marks.get(pc..t)?.iter().fold(0usize, |a, &m| a.saturating_add(extra(m)));
            cur.checked_add(more)?
        } else {
            let less = marks.get(t..pc)?.iter().fold(0usize, |a, &m| a.saturating_add(extra(m)));
            cur.checked_sub(less)?
        };
        t.checked_add(e)
    };
    // New relative delta for a jump at old `pc` (new index `np`) to old `t`.
    let delta = |pc: usize, np: usize, cur: usize, delta: i64| -> Option<i64> {
        let t = i64::try_from(pc).ok()?.checked_add(1)?.checked_add(delta)?;
        let nt = relocate(pc, cur, usize::try_from(t).ok()?)?;
        i64::try_from(nt).ok()?.checked_sub(i64::try_from(np).ok()?.checked_add(1)?)
    };

    let mut o = 0usize;
    let mut cur = 0usize;
    let push = |out: &mut [Insn], o: &mut usize, i: Insn| -> Result<(), Error> {
        *out.get_mut(*o).ok_or(Error::Internal)? = i;
        *o = o.checked_add(1).ok_or(Error::Internal)?;
        Ok(())
    };
    let mut pc = 0usize;
    while pc < n {
        let insn = *insns.get(pc).ok_or(Error::Internal)?;
        let m = *marks.get(pc).ok_or(Error::Internal)?;
        let class = insn.code & CLASS_MASK;
        let mark = Mark::decode(m).ok_or(Error::BadMark { pc })?;
        match mark {
            Mark::Guard(r) => {
                if !matches!(class, LDX | ST | STX) {
                    return Err(Error::BadMark { pc });
                }
                push(out, &mut o, lsh(r))?;
                push(out, &mut o, rsh(r))?;
                push(out, &mut o, insn)?;
                cur = cur.checked_add(2).ok_or(Error::Internal)?;
            }
            Mark::Cast => {
                if insn.code != ALU64 | MOV | X || insn.dst == REG_FP {
                    return Err(Error::BadMark { pc });
                }
                push(out, &mut o, Insn::new(ALU64 | MOV | X, insn.dst, insn.src, 0, 0))?;
                push(out, &mut o, lsh(insn.dst))?;
                push(out, &mut o, rsh(insn.dst))?;
                cur = cur.checked_add(2).ok_or(Error::Internal)?;
            }
            Mark::None | Mark::Elided | Mark::Unchecked => {
                let np = o;
                let op = insn.code & OP_MASK;
                let mut new = insn;
                let bad = Error::JumpOutOfRange { pc };
                if matches!(class, JMP | JMP32) {
                    let call = class == JMP && op == CALL && insn.src == PSEUDO_CALL;
                    let gotol = class == JMP32 && op == JA;
                    let plain = !matches!(op, CALL | EXIT | TAIL_CALL);
                    if call || gotol {
                        let d = delta(pc, np, cur, i64::from(insn.imm)).ok_or(bad)?;
                        new.imm = i32::try_from(d).map_err(|_| bad)?;
                    } else if plain {
                        let d = delta(pc, np, cur, i64::from(insn.off)).ok_or(bad)?;
                        new.off = i16::try_from(d).map_err(|_| bad)?;
                    }
                } else if insn.code == LD_IMM64 && insn.src == PSEUDO_FUNC {
                    let d = delta(pc, np, cur, i64::from(insn.imm)).ok_or(bad)?;
                    new.imm = i32::try_from(d).map_err(|_| bad)?;
                }
                push(out, &mut o, new)?;
                if insn.code == LD_IMM64 {
                    // Copy the second slot verbatim.
                    if let Some(&second) = insns.get(pc.wrapping_add(1)) {
                        push(out, &mut o, second)?;
                        pc = pc.wrapping_add(1);
                    }
                }
            }
        }
        pc = pc.checked_add(1).ok_or(Error::Internal)?;
    }
    Ok(o)
}
