// SPDX-License-Identifier: GPL-2.0

//! Compiles `bpf/*.bpf.c` and generates their libbpf-rs skeletons.

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bpf");
    kflex_bpf_build::build(&dir, &[], "");
}
