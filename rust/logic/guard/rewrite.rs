// SPDX-License-Identifier: GPL-2.0

//! Host-only rewriter: materialises the marks of [`super::run`] into a
//! plain BPF program (for the tests and tools; the kernel inserts its own
//! guard instructions and translates casts in the JIT).

use super::{heap_mask, Error, Mark};
use crate::logic::bpf::*;

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

/// Materialises the marks of [`run`](super::run) into a plain BPF program in `out`,
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
