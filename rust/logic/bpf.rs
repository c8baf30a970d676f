// SPDX-License-Identifier: GPL-2.0

//! The BPF instruction set as the kernel sees it after verification:
//! opcode fields of `struct bpf_insn` (class, size, mode, operation, the
//! kernel-internal modes the verifier rewrites heap accesses into), special
//! register numbers and [`Insn`], one decoded instruction.
//!
//! The values are those of `include/uapi/linux/bpf.h`,
//! `include/uapi/linux/bpf_common.h` and `include/linux/filter.h`. They are
//! defined whole here so that every pass reads the same names.

// A table of the instruction set: the kernel build uses only part of it.
#![allow(dead_code)]

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

/// The read-only frame pointer (`BPF_REG_FP`, `BPF_REG_10`).
pub const REG_FP: u8 = 10;
/// The kernel-internal auxiliary register `BPF_REG_AX` (`MAX_BPF_REG`),
/// used by the verifier's own rewrites, never by a program's instructions.
pub const REG_AX: u8 = 11;

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
    #[cfg(feature = "host-tools")]
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
    #[cfg(feature = "host-tools")]
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

/// The target of a jump at `pc` by `delta` (`pc + 1 + delta`) if it lies in
/// `[lo, hi)`; computed without overflow whatever the operands.
pub fn jump_target(pc: usize, delta: i64, lo: usize, hi: usize) -> Option<usize> {
    i64::try_from(pc)
        .ok()
        .and_then(|p| p.checked_add(1))
        .and_then(|p| p.checked_add(delta))
        .and_then(|t| usize::try_from(t).ok())
        .filter(|&t| t >= lo && t < hi)
}
