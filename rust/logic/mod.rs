// SPDX-License-Identifier: GPL-2.0

//! KFlex logic that needs no kernel API, shared by the kernel component and
//! the host tests: heap geometry, allocator bookkeeping, the BPF instruction
//! set, the guard pass, the placement of cancellation points, the heap-lock
//! rules, the verdict of a cancelled run and what it releases.

pub mod alloc;
pub mod bpf;
pub mod cancel;
pub mod geometry;
pub mod guard;
pub mod held;
pub mod locks;
pub mod runs;
pub mod verdict;
