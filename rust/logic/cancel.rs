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
//! [`place_after_callbacks`] marks the instruction after every call of a
//! helper that calls a callback of the program before it returns: the point
//! there polls at once, so a run whose callbacks were stopped past the budget
//! is cancelled as soon as the helper returns. (The entries of those
//! callbacks get points too; the verifier knows them when it sets them up.)
//!
//! The program is the one the verifier is about to check (after its CFG
//! check): raw instructions, subprogram calls as `BPF_PSEUDO_CALL`
//! (not followed: another function), `LD_IMM64` as two slots.

use crate::logic::bpf::{
    jump_target, Insn, CALL, CLASS_MASK, EXIT, JA, JCOND, JMP, JMP32, LD_IMM64, OP_MASK,
};

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

/// BPF helpers that call a callback of the program before they return
/// (`is_sync_callback_calling_function()` in the 6.12 verifier), by
/// `enum bpf_func_id` value: `bpf_for_each_map_elem`, `bpf_find_vma`,
/// `bpf_loop`, `bpf_user_ringbuf_drain`.
pub const CALLBACK_HELPERS: [i32; 4] = [164, 180, 181, 209];

/// Whether `insn` calls a helper that calls back.
pub fn calls_back(insn: &Insn) -> bool {
    insn.code == JMP | CALL && insn.src == 0 && CALLBACK_HELPERS.contains(&insn.imm)
}

/// Marks in `polls` the instruction after every call of a helper that
/// calls back (never past the end: a call is not a function's last
/// instruction in a program the CFG check accepted). Returns how many.
pub fn place_after_callbacks(insns: &[Insn], polls: &mut [bool]) -> u32 {
    let mut n = 0u32;
    for (insn, next) in insns.iter().zip(polls.iter_mut().skip(1)) {
        if calls_back(insn) {
            *next = true;
            n = n.saturating_add(1);
        }
    }
    n
}

/// Whether `insn` is a `may_goto`.
pub fn is_may_goto(insn: &Insn) -> bool {
    insn.code == JMP | JCOND && insn.src == 0
}

/// `pc + 1 + delta` if it lies in the function `[lo, hi)`.
fn inside(pc: usize, delta: i64, lo: usize, hi: usize) -> Result<usize, Error> {
    jump_target(pc, delta, lo, hi).ok_or(Error::BadJump { pc })
}

/// Successors of the instruction at `pc` in the function `[lo, hi)`, in
/// the order the search takes them (fall-through first).
fn successors(
    insns: &[Insn],
    pc: usize,
    lo: usize,
    hi: usize,
) -> Result<[Option<usize>; 2], Error> {
    let insn = insns.get(pc).ok_or(Error::BadJump { pc })?;
    let class = insn.code & CLASS_MASK;
    if insn.code == LD_IMM64 {
        return match inside(pc, 1, lo, hi) {
            Ok(next) => Ok([Some(next), None]),
            Err(_) => Err(Error::BadLdImm64 { pc }),
        };
    }
    let next = inside(pc, 0, lo, hi);
    if class != JMP && class != JMP32 {
        return Ok([Some(next?), None]);
    }
    match insn.code & OP_MASK {
        EXIT if class == JMP => Ok([None, None]),
        CALL if class == JMP => Ok([Some(next?), None]),
        JA if class == JMP => Ok([Some(inside(pc, i64::from(insn.off), lo, hi)?), None]),
        JA => Ok([Some(inside(pc, i64::from(insn.imm), lo, hi)?), None]),
        _ => Ok([Some(next?), Some(inside(pc, i64::from(insn.off), lo, hi)?)]),
    }
}

/// Marks in `marks` (one per instruction) where points must go: before
/// the source of each retreating edge of a depth-first search of each
/// function (`starts`: the first instruction of each, increasing from 0)
/// over its graph without `may_goto` instructions. `state` and `stack` are
/// work buffers at least as long as the program. Indexes are checked, not
/// assumed: a malformed program is an error, never a panic.
pub fn place(
    insns: &[Insn],
    starts: &[usize],
    marks: &mut [bool],
    state: &mut [u8],
    stack: &mut [Frame],
) -> Result<Stats, Error> {
    let n = insns.len();
    let (Some(marks), Some(state)) = (marks.get_mut(..n), state.get_mut(..n)) else {
        return Err(Error::Buffers);
    };
    if stack.len() < n {
        return Err(Error::Buffers);
    }
    if starts.first() != Some(&0) || starts.windows(2).any(|w| w.first() >= w.get(1)) {
        return Err(Error::BadSubprogs);
    }
    if starts.last().is_some_and(|&s| s >= n) {
        return Err(Error::BadSubprogs);
    }
    marks.fill(false);
    state.fill(UNSEEN);
    let mut stats = Stats::default();
    let ends = starts.iter().skip(1).copied().chain(core::iter::once(n));
    for (&lo, hi) in starts.iter().zip(ends) {
        let mut w =
            Work { insns, lo, hi, marks: &mut *marks, state: &mut *state, stack: &mut *stack };
        if !may_goto_at(insns, lo) {
            w.search(lo, &mut stats)?;
        }
        for pc in lo..hi {
            if !may_goto_at(insns, pc) {
                continue;
            }
            stats.may_gotos = stats.may_gotos.saturating_add(1);
            for s in successors(insns, pc, lo, hi)?.into_iter().flatten() {
                if !may_goto_at(insns, s) && w.state.get(s) == Some(&UNSEEN) {
                    w.search(s, &mut stats)?;
                }
            }
        }
    }
    Ok(stats)
}

/// Whether the instruction at `pc` is a `may_goto`.
fn may_goto_at(insns: &[Insn], pc: usize) -> bool {
    insns.get(pc).is_some_and(is_may_goto)
}

/// The search over one function `[lo, hi)` and its buffers.
struct Work<'a> {
    insns: &'a [Insn],
    lo: usize,
    hi: usize,
    marks: &'a mut [bool],
    state: &'a mut [u8],
    stack: &'a mut [Frame],
}

impl Work<'_> {
    /// One depth-first search from `root` over the function without its
    /// `may_goto`s, marking the sources of retreating edges.
    fn search(&mut self, root: usize, stats: &mut Stats) -> Result<(), Error> {
        let buffers = Error::Buffers;
        *self.stack.first_mut().ok_or(buffers)? = Frame { pc: root as u32, next: 0 };
        *self.state.get_mut(root).ok_or(buffers)? = ON_STACK;
        let mut depth: usize = 1;
        while let Some(top) = depth.checked_sub(1).and_then(|d| self.stack.get_mut(d)) {
            let pc = top.pc as usize;
            let succ = successors(self.insns, pc, self.lo, self.hi)?;
            let Some(&Some(s)) = succ.get(usize::from(top.next)) else {
                *self.state.get_mut(pc).ok_or(buffers)? = DONE;
                depth = depth.saturating_sub(1);
                continue;
            };
            top.next = top.next.saturating_add(1);
            if may_goto_at(self.insns, s) {
                continue;
            }
            match self.state.get(s).copied().ok_or(buffers)? {
                UNSEEN => {
                    *self.stack.get_mut(depth).ok_or(buffers)? = Frame { pc: s as u32, next: 0 };
                    *self.state.get_mut(s).ok_or(buffers)? = ON_STACK;
                    depth = depth.saturating_add(1);
                }
                ON_STACK => {
                    let m = self.marks.get_mut(pc).ok_or(buffers)?;
                    if !*m {
                        *m = true;
                        stats.placed = stats.placed.saturating_add(1);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
