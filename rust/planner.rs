// SPDX-License-Identifier: GPL-2.0

//! The guard pass as the verifier calls it: decodes the program, runs the
//! range analysis of [`crate::logic::guard`] and turns its marks into the
//! verifier's: register + 1 where a guard must precede the instruction.
//! Also the placement of cancellation points ([`crate::logic::cancel`]).
//!
//! Casts to the kernel view are not the pass's business: the JIT always
//! translates them (`dst = src & mask`, the heap offset of a user address),
//! in every mode, as the upstream arena does with a 32-bit move.

use kernel::{alloc::KVVec, bindings, prelude::*};

use crate::logic::{
    bpf::{Insn, CLASS_MASK, LDX, REG_AX, REG_FP},
    cancel::{self, Frame},
    guard::{self, BlockState, Mark, Mode, Params, MAX_GUARD_REG},
};

// The marks contract with `kflex_instrument()` (`kernel/bpf/verifier.c`): a
// mark is the guarded register + 1, and the C side refuses any register
// above `BPF_REG_9`, the bound the pass itself keeps (`MAX_GUARD_REG`): never
// `r10` (`BPF_REG_10`) nor `BPF_REG_AX` (`MAX_BPF_REG`, i.e. `__MAX_BPF_REG`
// in `include/uapi/linux/bpf.h`).
const _: () = assert!(MAX_GUARD_REG as u32 == bindings::BPF_REG_9);
// The helpers that call back, by their UAPI ids.
const _: () = {
    use bindings::*;
    let h = cancel::CALLBACK_HELPERS;
    assert!(h[0] as u32 == bpf_func_id_BPF_FUNC_for_each_map_elem);
    assert!(h[1] as u32 == bpf_func_id_BPF_FUNC_find_vma);
    assert!(h[2] as u32 == bpf_func_id_BPF_FUNC_loop);
    assert!(h[3] as u32 == bpf_func_id_BPF_FUNC_user_ringbuf_drain);
};
const _: () = assert!(REG_FP as u32 == bindings::BPF_REG_10);
const _: () = assert!(REG_AX as u32 == bindings::__MAX_BPF_REG);

/// Guard modes (`kernel.kflex_guard_mode`): 0 full (guards with range
/// analysis), 1 performance (no guards on loads), 2 unguarded (no guards on
/// accesses; measurement only), 3 all (a guard on every access, no
/// elision; measurement only). Returns the pass's mode and whether elision
/// is disabled.
fn mode(m: u32) -> Result<(Mode, bool)> {
    match m {
        0 => Ok((Mode::Full, false)),
        1 => Ok((Mode::Performance, false)),
        2 => Ok((Mode::Unguarded, false)),
        3 => Ok((Mode::Full, true)),
        _ => Err(EINVAL),
    }
}

/// The register holding the address of heap access `insn`: the source of a
/// load, the destination of a store or atomic.
fn address_reg(insn: &Insn) -> u8 {
    if insn.code & CLASS_MASK == LDX {
        insn.src
    } else {
        insn.dst
    }
}

/// The instructions of `raw` (`struct bpf_insn`s) and the function starts,
/// in the forms the passes take.
fn decode(raw: &[[u8; 8]], starts: &[u32]) -> Result<(KVVec<Insn>, KVVec<usize>)> {
    let mut insns = KVVec::with_capacity(raw.len(), GFP_KERNEL)?;
    for r in raw {
        insns.push(Insn::from_raw(*r), GFP_KERNEL)?;
    }
    let mut subprogs = KVVec::with_capacity(starts.len(), GFP_KERNEL)?;
    for s in starts {
        subprogs.push(*s as usize, GFP_KERNEL)?;
    }
    Ok((insns, subprogs))
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
    let (pass_mode, no_elision) = mode(mode_nr)?;
    let params = Params { heap_size, mode: pass_mode };
    let (insns, subprogs) = decode(raw, starts)?;
    let nblocks = guard::blocks_needed(&insns, &subprogs);
    let mut blocks = KVVec::from_elem(BlockState::EMPTY, nblocks, GFP_KERNEL)?;
    let mut out = KVVec::from_elem(0u8, raw.len(), GFP_KERNEL)?;
    let stats = guard::run(&insns, &subprogs, &params, &mut blocks, &mut out).map_err(|e| {
        pr_warn!("guard pass refused the program: {:?}\n", e);
        EINVAL
    })?;
    for ((m, o), insn) in marks.iter_mut().zip(out.iter()).zip(insns.iter()) {
        *m = match Mark::decode(*o) {
            Some(Mark::Guard(reg)) => reg + 1,
            // A register number is at most 10.
            Some(Mark::Elided) if no_elision => address_reg(insn).wrapping_add(1),
            _ => 0,
        };
    }
    if stats.fallback {
        pr_info!("guard pass: analysis budget exhausted, per-block analysis used\n");
    }
    let elided = if no_elision { 0 } else { stats.elided };
    Ok((stats.accesses, elided))
}

/// Marks where the loops of `raw` (before verification) need a
/// cancellation point: 1 before each marked instruction. Returns how many.
pub(crate) fn plan_points(raw: &[[u8; 8]], starts: &[u32], marks: &mut [u8]) -> Result<u32> {
    if marks.len() != raw.len() {
        return Err(EINVAL);
    }
    let (insns, subprogs) = decode(raw, starts)?;
    let mut placed = KVVec::from_elem(false, raw.len(), GFP_KERNEL)?;
    let mut state = KVVec::from_elem(0u8, raw.len(), GFP_KERNEL)?;
    let mut stack = KVVec::from_elem(Frame::default(), raw.len(), GFP_KERNEL)?;
    let stats = cancel::place(&insns, &subprogs, &mut placed, &mut state, &mut stack).map_err(|e| {
        pr_warn!("cancellation point placement refused the program: {:?}\n", e);
        EINVAL
    })?;
    let mut polls = KVVec::from_elem(false, raw.len(), GFP_KERNEL)?;
    let after = cancel::place_after_callbacks(&insns, &mut polls);
    // 1: a loop's point, 2: a point that polls at once (the verifier's
    // KFLEX_POINT_LOOP + 1 and KFLEX_POINT_POLL)
    for ((m, p), q) in marks.iter_mut().zip(placed.iter()).zip(polls.iter()) {
        *m = if *q { 2 } else { u8::from(*p) };
    }
    Ok(stats.placed.saturating_add(after))
}
