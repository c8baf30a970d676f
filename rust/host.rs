// SPDX-License-Identifier: GPL-2.0

//! Host build of the KFlex logic that needs no kernel API.
//!
//! The files under `logic/` are compiled twice: into the kernel component
//! (as `mod logic` of `kflex.rs`) and here, so that `cargo test` exercises
//! exactly the code the kernel runs.

#![cfg_attr(not(test), no_std)]

pub mod logic;
