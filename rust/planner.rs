// SPDX-License-Identifier: GPL-2.0

//! The guard pass as the verifier calls it: decodes the program, runs the
//! range analysis of [`crate::logic::guard`] and turns its marks into the
//! verifier's (register + 1 where a guard must precede the instruction).

use kernel::{alloc::KVVec, prelude::*};

use crate::logic::guard::{self, BlockState, Insn, Mark, Mode, Params};

/// Guard modes (`kernel.kflex_guard_mode`).
fn mode(m: u32) -> Result<Mode> {
    match m {
        0 => Ok(Mode::Full),
        1 => Ok(Mode::Performance),
        2 => Ok(Mode::Unguarded),
        _ => Err(EINVAL),
    }
}

/// Marks guards for `raw` (`struct bpf_insn`s). Returns (heap accesses that
/// needed a decision, guards elided).
pub(crate) fn plan(
    raw: &[[u8; 8]],
    starts: &[u32],
    heap_size: u64,
    mode_nr: u32,
    marks: &mut [u8],
) -> Result<(u32, u32)> {
    if marks.len() != raw.len() {
        return Err(EINVAL);
    }
    let params = Params { heap_size, mode: mode(mode_nr)? };
    let mut insns = KVVec::with_capacity(raw.len(), GFP_KERNEL)?;
    for r in raw {
        insns.push(Insn::from_raw(*r), GFP_KERNEL)?;
    }
    let mut subprogs = KVVec::with_capacity(starts.len(), GFP_KERNEL)?;
    for s in starts {
        subprogs.push(*s as usize, GFP_KERNEL)?;
    }
    let nblocks = guard::blocks_needed(&insns, &subprogs);
    let mut blocks = KVVec::from_elem(BlockState::EMPTY, nblocks, GFP_KERNEL)?;
    let mut out = KVVec::from_elem(0u8, raw.len(), GFP_KERNEL)?;
    let stats = guard::run(&insns, &subprogs, &params, &mut blocks, &mut out).map_err(|e| {
        pr_warn!("guard pass refused the program: {:?}\n", e);
        EINVAL
    })?;
    for (m, o) in marks.iter_mut().zip(out.iter()) {
        *m = match Mark::decode(*o) {
            Some(Mark::Guard(reg)) => reg + 1,
            _ => 0,
        };
    }
    if stats.fallback {
        pr_info!("guard pass: analysis budget exhausted, per-block analysis used\n");
    }
    Ok((stats.accesses, stats.elided))
}
