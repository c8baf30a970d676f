// SPDX-License-Identifier: GPL-2.0

//! KFlex logic that needs no kernel API, shared by the kernel component and
//! the host tests: heap geometry, allocator bookkeeping, the BPF instruction
//! set, the guard pass and the placement of cancellation points.

pub mod alloc;
pub mod bpf;
pub mod cancel;
pub mod geometry;
pub mod guard;
