// SPDX-License-Identifier: GPL-2.0

//! Compiles `bpf/*.bpf.c` (the programs kflex-load attaches) and
//! `bpf/bench/*.bpf.c` (kflex-bench) into libbpf-rs skeletons; the benchmark
//! programs are also built for the upstream arena (`*_arena` skeletons).

use std::{env, path::PathBuf};

fn main() {
    let bpf =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../bpf");
    // The shared headers (bpf/ds/, arena_alloc.h): rebuild when they change.
    println!("cargo:rerun-if-changed={}", bpf.display());
    kflex_bpf_build::build(&bpf, &bpf, &[], "");
    kflex_bpf_build::build(&bpf.join("bench"), &bpf, &[], "");
    kflex_bpf_build::build(&bpf.join("bench"), &bpf, &["-DKFLEX_UPSTREAM_ARENA"], "_arena");
}
