// SPDX-License-Identifier: GPL-2.0

//! KFlex logic that needs no kernel API, shared by the kernel component and
//! the host tests: heap geometry, allocator bookkeeping, the BPF instruction
//! set and the guard pass.

pub mod alloc;
pub mod bpf;
pub mod geometry;
pub mod guard;
