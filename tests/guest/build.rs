// SPDX-License-Identifier: GPL-2.0

//! Compiles the test programs `tests/bpf/*.bpf.c` and generates their
//! libbpf-rs skeletons.

use std::{env, path::PathBuf};

fn main() {
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    kflex_bpf_build::build(&dir.join("../bpf"), &dir.join("../../bpf"), &[], "");
}
