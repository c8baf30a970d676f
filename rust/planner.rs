// SPDX-License-Identifier: GPL-2.0

//! The guard pass as the verifier calls it: decides which heap accesses of
//! a program get a guard.
//!
//! This version guards every heap access (no range analysis yet): it is
//! sound because a guarded pointer is in `[0, size)` and the guard zones
//! cover any 16-bit offset.

use kernel::prelude::*;

const BPF_LDX: u8 = 0x01;
const BPF_ST: u8 = 0x02;
const BPF_STX: u8 = 0x03;
const BPF_PROBE_MEM32: u8 = 0xa0;
const BPF_PROBE_ATOMIC: u8 = 0xe0;

/// Guard modes (`kernel.kflex_guard_mode`).
const MODE_FULL: u32 = 0;
const MODE_PERF: u32 = 1;

/// Marks guards for `insns` (raw `struct bpf_insn`s). Returns (heap
/// accesses, guards elided).
pub(crate) fn plan(
    insns: &[[u8; 8]],
    _starts: &[u32],
    heap_size: u64,
    mode: u32,
    marks: &mut [u8],
) -> Result<(u32, u32)> {
    if !heap_size.is_power_of_two() || marks.len() != insns.len() {
        return Err(EINVAL);
    }
    let (mut accesses, mut elided) = (0u32, 0u32);
    for (insn, mark) in insns.iter().zip(marks.iter_mut()) {
        let code = insn[0];
        let (dst, src) = (insn[1] & 0xf, insn[1] >> 4);
        let (class, mode_bits) = (code & 0x07, code & 0xe0);
        let reg = match (class, mode_bits) {
            (BPF_LDX, BPF_PROBE_MEM32) => src,
            (BPF_ST | BPF_STX, BPF_PROBE_MEM32) | (BPF_STX, BPF_PROBE_ATOMIC) => dst,
            _ => continue,
        };
        accesses += 1;
        let load = class == BPF_LDX;
        if mode == MODE_FULL || (mode == MODE_PERF && !load) {
            *mark = reg + 1;
        } else {
            elided += 1;
        }
    }
    Ok((accesses, elided))
}
