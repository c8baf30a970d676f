// SPDX-License-Identifier: GPL-2.0

//! Decoder of the guard pass: validates each instruction of the program
//! (registers, opcodes, jump and call targets, `LD_IMM64` pairs) and
//! decodes it into an [`Op`], the forms the analysis tells apart.

use super::{Error, Mode, MAX_GUARD_REG};
use crate::logic::bpf::*;

/// Decoded instruction.
#[derive(Clone, Copy, Debug)]
pub(super) enum Op {
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
    pub(super) const fn ends_block(&self) -> bool {
        matches!(self, Op::Ja { .. } | Op::Cond { .. } | Op::Exit)
    }

    pub(super) const fn falls_through(&self) -> bool {
        !matches!(self, Op::Ja { .. } | Op::Exit)
    }

    pub(super) const fn target(&self) -> Option<usize> {
        match self {
            Op::Ja { target } | Op::Cond { target } => Some(*target),
            _ => None,
        }
    }
}

fn valid_atomic(size: u8, imm: i32) -> bool {
    (size == W || size == DW)
        && matches!(imm, 0x00 | 0x01 | 0x40 | 0x41 | 0x50 | 0x51 | 0xa0 | 0xa1 | XCHG | CMPXCHG)
}

/// Register written by the fetch of an atomic, if any.
pub(super) fn atomic_writes(src: u8, imm: i32) -> Option<u8> {
    if imm == CMPXCHG {
        Some(0)
    } else if imm & FETCH != 0 {
        Some(src)
    } else {
        None
    }
}

/// The program under analysis and the mode: what decoding (here) and the
/// transfer functions (`transfer.rs`) read.
pub(super) struct Pass<'a> {
    pub(super) insns: &'a [Insn],
    pub(super) subprogs: &'a [usize],
    pub(super) mode: Mode,
}

impl Pass<'_> {
    /// `[start, end)` of the subprogram holding `pc`.
    pub(super) fn bounds(&self, pc: usize) -> (usize, usize) {
        let i = self.subprogs.partition_point(|&s| s <= pc);
        let start = i.checked_sub(1).and_then(|j| self.subprogs.get(j)).copied().unwrap_or(0);
        let end = self.subprogs.get(i).copied().unwrap_or(self.insns.len());
        (start, end)
    }

    fn target(&self, pc: usize, delta: i64, lo: usize, hi: usize) -> Result<usize, Error> {
        jump_target(pc, delta, lo, hi).ok_or(Error::JumpOutOfRange { pc })
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
    pub(super) fn decode(&self, pc: usize) -> Result<(Op, usize), Error> {
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
                        if src > MAX_GUARD_REG {
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
                    if dst > MAX_GUARD_REG {
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
                    } else if dst > MAX_GUARD_REG {
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
}
