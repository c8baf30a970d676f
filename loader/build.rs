// SPDX-License-Identifier: GPL-2.0

//! Compiles every `bpf/*.bpf.c` with clang-19 and generates its libbpf-rs
//! skeleton. The programs include `vmlinux.h`, generated from the BTF of the
//! KFlex kernel build: the Makefile passes its directory in
//! `KFLEX_VMLINUX_DIR`.

use std::{env, fs, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let bpf_dir = manifest.join("../bpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-env-changed=KFLEX_VMLINUX_DIR");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());

    let vmlinux_dir = match env::var("KFLEX_VMLINUX_DIR") {
        Ok(d) if PathBuf::from(&d).join("vmlinux.h").is_file() => d,
        _ => panic!(
            "KFLEX_VMLINUX_DIR must name a directory holding the KFlex kernel's vmlinux.h; \
             build through the top-level Makefile (`make tools`), which generates it"
        ),
    };
    println!("cargo:rerun-if-changed={vmlinux_dir}/vmlinux.h");

    let mut entries: Vec<_> = fs::read_dir(&bpf_dir)
        .expect("bpf/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for src in entries {
        let name = src
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.ends_with(".h") {
            println!("cargo:rerun-if-changed={}", src.display());
            continue;
        }
        let Some(stem) = name.strip_suffix(".bpf.c") else {
            continue;
        };
        println!("cargo:rerun-if-changed={}", src.display());
        let skel = out.join(format!("{stem}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
            .obj(out.join(format!("{stem}.bpf.o")))
            .clang("clang-19")
            .clang_args([
                "-I".to_string(),
                vmlinux_dir.clone(),
                "-I".to_string(),
                bpf_dir.display().to_string(),
                "-Wall".to_string(),
                "-Werror".to_string(),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building {name}: {e:#}"));
    }
}
