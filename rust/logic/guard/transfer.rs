// SPDX-License-Identifier: GPL-2.0

//! Transfer functions of the guard pass: the abstract effect of each
//! decoded instruction on an [`AbsState`], and the guard decision for each
//! heap access, recorded with its counters on the final walk.

use super::{
    decode::{atomic_writes, Op, Pass},
    domain::{AbsState, Val},
    Error, Mark, Mode, Stats, STACK_SIZE,
};
use crate::logic::bpf::*;

const fn size_bytes(size: u8) -> i64 {
    match size {
        W => 4,
        H => 2,
        B => 1,
        _ => 8,
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

impl Pass<'_> {
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
    pub(super) fn walk(
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
pub(super) struct Out<'m> {
    pub(super) marks: &'m mut [u8],
    pub(super) stats: Stats,
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
