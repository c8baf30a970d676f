// SPDX-License-Identifier: GPL-2.0

//! Placement of cancellation points on the loops that carry none.
//!
//! A KFlex program's `may_goto` instructions are cancellation points
//! already. Every other cycle of a function's control-flow graph (iterator
//! loops such as `bpf_for`/`bpf_repeat`, loops the verifier bounds by
//! exploring them) gets one: [`place`] runs a depth-first search of each
//! function from its entry over the graph *without* its `may_goto`
//! instructions and marks the source of every retreating edge (an edge to an
//! instruction on the search stack). Every cycle of a graph contains a
//! retreating edge of any depth-first search, irreducible graphs included,
//! so afterwards every cycle passes through a `may_goto` or a marked
//! instruction; the verifier puts a point right before each marked one.
//!
//! The program is the one the verifier is about to check (after its CFG
//! check): raw instructions, subprogram calls as `BPF_PSEUDO_CALL`
//! (not followed: another function), `LD_IMM64` as two slots.

use crate::logic::bpf::{Insn, CALL, CLASS_MASK, EXIT, JA, JCOND, JMP, JMP32, LD_IMM64, OP_MASK};

/// Why a program cannot be analysed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The subprogram starts are not increasing from 0 within the program.
    BadSubprogs,
    /// A jump at `pc` leaves its function, or a function falls off its end.
    BadJump {
        /// The instruction.
        pc: usize,
    },
    /// An `LD_IMM64` at `pc` lacks its second slot.
    BadLdImm64 {
        /// The instruction.
        pc: usize,
    },
    /// The work buffers are shorter than the program.
    Buffers,
}

/// Node state of the search.
const UNSEEN: u8 = 0;
const ON_STACK: u8 = 1;
const DONE: u8 = 2;

/// A frame of the search: an instruction and how many of its successors
/// were looked at.
#[derive(Clone, Copy, Debug, Default)]
pub struct Frame {
    pc: u32,
    next: u8,
}

/// What [`place`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Instructions marked: points to add.
    pub placed: u32,
    /// `may_goto` instructions (points already).
    pub may_gotos: u32,
}

/// Whether `insn` is a `may_goto`.
pub fn is_may_goto(insn: &Insn) -> bool {
    insn.code == JMP | JCOND && insn.src == 0
}

/// Successors of the instruction at `pc` in the function `[lo, hi)`, in
/// the order the search takes them (fall-through first).
fn successors(
    insns: &[Insn],
    pc: usize,
    lo: usize,
    hi: usize,
) -> Result<[Option<usize>; 2], Error> {
    let insn = &insns[pc];
    let class = insn.code & CLASS_MASK;
    let inside = |t: i64| -> Result<usize, Error> {
        if t >= lo as i64 && t < hi as i64 {
            Ok(t as usize)
        } else {
            Err(Error::BadJump { pc })
        }
    };
    let next = |len: usize| inside(pc as i64 + len as i64);
    if insn.code == LD_IMM64 {
        if pc + 1 >= hi {
            return Err(Error::BadLdImm64 { pc });
        }
        return Ok([Some(next(2)?), None]);
    }
    if class != JMP && class != JMP32 {
        return Ok([Some(next(1)?), None]);
    }
    let target = |delta: i64| inside(pc as i64 + 1 + delta);
    match insn.code & OP_MASK {
        EXIT if class == JMP => Ok([None, None]),
        CALL if class == JMP => Ok([Some(next(1)?), None]),
        JA if class == JMP => Ok([Some(target(i64::from(insn.off))?), None]),
        JA => Ok([Some(target(i64::from(insn.imm))?), None]),
        _ => Ok([Some(next(1)?), Some(target(i64::from(insn.off))?)]),
    }
}

/// Marks in `marks` (one per instruction) where points must go: before
/// the source of each retreating edge of a depth-first search of each
/// function (`starts`: the first instruction of each, increasing from 0)
/// over its graph without `may_goto` instructions. `state` and `stack` are
/// work buffers at least as long as the program.
pub fn place(
    insns: &[Insn],
    starts: &[usize],
    marks: &mut [bool],
    state: &mut [u8],
    stack: &mut [Frame],
) -> Result<Stats, Error> {
    let n = insns.len();
    if marks.len() < n || state.len() < n || stack.len() < n {
        return Err(Error::Buffers);
    }
    if starts.first() != Some(&0) || starts.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::BadSubprogs);
    }
    if starts.last().is_some_and(|&s| s >= n) {
        return Err(Error::BadSubprogs);
    }
    marks[..n].fill(false);
    state[..n].fill(UNSEEN);
    let mut stats = Stats::default();
    for (f, &lo) in starts.iter().enumerate() {
        let hi = starts.get(f + 1).copied().unwrap_or(n);
        // `may_goto`s are cut out of the graph (cycles through them have a
        // point already); the search starts at the entry and again after
        // every `may_goto`, so that what lies behind them is searched too.
        if !is_may_goto(&insns[lo]) {
            search(insns, lo, lo, hi, marks, state, stack, &mut stats)?;
        }
        for pc in lo..hi {
            if !is_may_goto(&insns[pc]) {
                continue;
            }
            stats.may_gotos += 1;
            for s in successors(insns, pc, lo, hi)?.into_iter().flatten() {
                if !is_may_goto(&insns[s]) && state[s] == UNSEEN {
                    search(insns, s, lo, hi, marks, state, stack, &mut stats)?;
                }
            }
        }
    }
    Ok(stats)
}

/// One depth-first search from `root` over the function `[lo, hi)` without
/// its `may_goto`s, marking the sources of retreating edges.
#[allow(clippy::too_many_arguments)]
fn search(
    insns: &[Insn],
    root: usize,
    lo: usize,
    hi: usize,
    marks: &mut [bool],
    state: &mut [u8],
    stack: &mut [Frame],
    stats: &mut Stats,
) -> Result<(), Error> {
    let mut depth = 1;
    stack[0] = Frame { pc: root as u32, next: 0 };
    state[root] = ON_STACK;
    while depth > 0 {
        let top = &mut stack[depth - 1];
        let pc = top.pc as usize;
        let succ = successors(insns, pc, lo, hi)?;
        let Some(&Some(s)) = succ.get(top.next as usize) else {
            state[pc] = DONE;
            depth -= 1;
            continue;
        };
        top.next += 1;
        if is_may_goto(&insns[s]) {
            continue;
        }
        match state[s] {
            UNSEEN => {
                if depth >= stack.len() {
                    return Err(Error::Buffers);
                }
                state[s] = ON_STACK;
                stack[depth] = Frame { pc: s as u32, next: 0 };
                depth += 1;
            }
            ON_STACK if !marks[pc] => {
                marks[pc] = true;
                stats.placed += 1;
            }
            _ => {}
        }
    }
    Ok(())
}
