// SPDX-License-Identifier: GPL-2.0

//! Fixpoint driver of the guard pass: validates the program and finds its
//! basic blocks, iterates a worklist of block entry states (joined and
//! widened in [`super::domain`]) within a work budget, then walks every
//! block once more to record the decisions.

use super::{
    decode::Pass, domain::AbsState, transfer::Out, Error, Params, Stats, MAX_INSNS, WIDEN_ANY,
    WIDEN_LOOP,
};
use crate::logic::bpf::*;

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
/// scratch that [`run`](super::run) needs. Cheap (one scan, no allocation).
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

/// Temporary flags kept in the marks buffer during the analysis.
const TMP_LEADER: u8 = 0x80;
const TMP_SECOND: u8 = 0x40;
const TMP_LOOP: u8 = 0x20;

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

/// Runs the guard pass.
///
/// - `insns`: the program after the verifier's fixups.
/// - `subprog_starts`: sorted, strictly increasing instruction indices of the
///   subprograms; the first is 0. Every call to a subprogram and every
///   `LD_IMM64` of a subprogram address must name one of them.
/// - `blocks`: scratch, at least [`blocks_needed`] entries (the exact number
///   of basic blocks suffices; [`Error::ScratchTooSmall`] says how many).
/// - `marks`: at least `insns.len()` bytes; on success `marks[pc]` is the
///   [`Mark::encode`](super::Mark::encode)d decision for instruction `pc` (0 for the second slot of
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
