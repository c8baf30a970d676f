// SPDX-License-Identifier: GPL-2.0

//! Build-script helper shared by the crates that embed BPF programs: compiles
//! every `*.bpf.c` of a directory with clang-19 and generates its libbpf-rs
//! skeleton `<stem>.skel.rs` in `OUT_DIR`.
//!
//! The programs include `vmlinux.h`, generated from the BTF of the KFlex
//! kernel build: the Makefile passes its directory in `KFLEX_VMLINUX_DIR`.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use libbpf_cargo::SkeletonBuilder;

/// Builds the programs of `src_dir`, with `repo_bpf` (the repository's
/// `bpf/`, for `kflex.h`) and `vmlinux.h` on the include path. Extra clang
/// arguments (e.g. `-DKFLEX_UPSTREAM_ARENA`) are applied to every program;
/// `suffix` is appended to the skeleton names.
pub fn build(src_dir: &Path, repo_bpf: &Path, extra_args: &[&str], suffix: &str) {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-env-changed=KFLEX_VMLINUX_DIR");
    println!("cargo:rerun-if-changed={}", src_dir.display());
    println!("cargo:rerun-if-changed={}", repo_bpf.join("kflex.h").display());

    let vmlinux_dir = match env::var("KFLEX_VMLINUX_DIR") {
        Ok(d) if Path::new(&d).join("vmlinux.h").is_file() => d,
        _ => panic!(
            "KFLEX_VMLINUX_DIR must name a directory holding the KFlex kernel's vmlinux.h; \
             build through the top-level Makefile (`make tools`), which generates it"
        ),
    };
    println!("cargo:rerun-if-changed={vmlinux_dir}/vmlinux.h");
    println!("cargo:rerun-if-changed={vmlinux_dir}/linux/kflex.h");

    let mut sources: Vec<PathBuf> = fs::read_dir(src_dir)
        .expect("BPF source directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    sources.sort();
    for src in sources {
        let name = src.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        println!("cargo:rerun-if-changed={}", src.display());
        let Some(stem) = name.strip_suffix(".bpf.c") else { continue };
        let mut args = vec![
            "-I".to_string(),
            vmlinux_dir.clone(),
            "-I".to_string(),
            repo_bpf.display().to_string(),
            "-I".to_string(),
            src_dir.display().to_string(),
            "-Wall".to_string(),
            "-Werror".to_string(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        SkeletonBuilder::new()
            .source(&src)
            .obj(out.join(format!("{stem}{suffix}.bpf.o")))
            .clang("clang-19")
            .clang_args(args)
            .build_and_generate(out.join(format!("{stem}{suffix}.skel.rs")))
            .unwrap_or_else(|e| panic!("building {name}: {e:#}"));
    }
}
