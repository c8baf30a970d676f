// SPDX-License-Identifier: GPL-2.0

//! Guard-cost benchmark (`bpf/bench/guards.bpf.c`): the same program on the
//! upstream arena and on KFlex heaps loaded under each guard mode
//! (`kernel.kflex_guard_mode`), in one run. Ratios are to the unguarded
//! KFlex variant.

use std::{mem::MaybeUninit, os::fd::AsFd};

use anyhow::{Context, Result};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    ProgramMut,
};

use crate::{
    bench, ds,
    skel::{guards, guards_arena},
};

/// Variants: name and guard mode (`None`: the upstream arena).
pub const VARIANTS: [(&str, Option<u32>); 5] = [
    ("arena", None),
    ("all-guards", Some(3)),
    ("elision", Some(0)),
    ("perf", Some(1)),
    ("unguarded", Some(2)),
];

const MODE_PATH: &str = "/proc/sys/kernel/kflex_guard_mode";
const NODES: u64 = 1000;
/// Steps of the programs' inner loops (`GB_INNER` in guards.bpf.c).
const INNER: u64 = 64;

/// `struct gb_args`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Args {
    n: u64,
    rounds: u64,
    seed: u64,
    ret: u64,
}

/// Runs a benchmark program once with `a`; returns the wall time in ns.
fn run_prog(prog: &ProgramMut, mut a: Args) -> Result<f64> {
    Ok(ds::run_ctx(prog.as_fd(), &mut a)?.as_nanos() as f64)
}

/// Restores guard mode 0 when dropped.
struct ModeGuard;

impl Drop for ModeGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(MODE_PATH, "0");
    }
}

enum Loaded {
    KFlex(guards::GuardsSkel<'static>),
    Arena(guards_arena::GuardsArenaSkel<'static>),
}

impl Loaded {
    fn load(mode: Option<u32>) -> Result<Loaded> {
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let l = match mode {
            Some(m) => {
                std::fs::write(MODE_PATH, m.to_string())
                    .with_context(|| format!("setting {MODE_PATH} to {m}"))?;
                let skel = guards::GuardsSkelBuilder::default().open(storage)?.load()?;
                std::fs::write(MODE_PATH, "0")?;
                Loaded::KFlex(skel)
            }
            None => Loaded::Arena(
                guards_arena::GuardsArenaSkelBuilder::default().open(storage)?.load()?,
            ),
        };
        run_prog(l.prog("setup"), Args { n: NODES, ..Default::default() })
            .context("building the benchmark's list and array")?;
        Ok(l)
    }

    fn prog(&self, name: &str) -> &ProgramMut<'static> {
        match (self, name) {
            (Loaded::KFlex(s), "setup") => &s.progs.gb_setup,
            (Loaded::KFlex(s), "chase") => &s.progs.gb_chase,
            (Loaded::KFlex(s), _) => &s.progs.gb_scatter,
            (Loaded::Arena(s), "setup") => &s.progs.gb_setup,
            (Loaded::Arena(s), "chase") => &s.progs.gb_chase,
            (Loaded::Arena(s), _) => &s.progs.gb_scatter,
        }
    }
}

/// Runs the guard benchmarks whose name contains `filter`; `ops` is the
/// number of node visits or array increments per repetition. `progress`
/// is called with each result.
pub fn run(
    ops: u64,
    reps: usize,
    filter: Option<&str>,
    mut progress: impl FnMut(&bench::Result),
) -> Result<Vec<bench::Result>> {
    let _restore = ModeGuard;
    let mut results = Vec::new();
    let wanted = |name: &str| filter.is_none_or(|f| name.contains(f));
    if !VARIANTS
        .iter()
        .any(|(v, _)| ["chase", "scatter"].iter().any(|c| wanted(&format!("guards/{c}/{v}"))))
    {
        return Ok(results);
    }
    let loaded: Vec<(&str, Loaded)> = VARIANTS
        .iter()
        .map(|&(name, mode)| {
            Ok((name, Loaded::load(mode).with_context(|| format!("guard variant {name}"))?))
        })
        .collect::<Result<_>>()?;
    for case in ["chase", "scatter"] {
        let (args, per) = match case {
            "chase" => (
                Args { n: NODES, rounds: (ops / NODES).max(1), ..Default::default() },
                NODES * (ops / NODES).max(1),
            ),
            // gb_scatter runs rounds / INNER batches of INNER steps.
            _ => {
                let rounds = (ops / INNER).max(1) * INNER;
                (Args { rounds, seed: 0x9e37_79b9_7f4a_7c15, ..Default::default() }, rounds)
            }
        };
        let run: Vec<&(&str, Loaded)> =
            loaded.iter().filter(|(v, _)| wanted(&format!("guards/{case}/{v}"))).collect();
        // Repetitions go round the variants (the first one is a warm-up),
        // so that drift in the guest hits them alike.
        let mut samples = vec![Vec::with_capacity(reps); run.len()];
        for rep in 0..=reps {
            for ((_, l), s) in run.iter().zip(samples.iter_mut()) {
                let t = run_prog(l.prog(case), args)? / per as f64;
                if rep > 0 {
                    s.push(t);
                }
            }
        }
        for ((variant, _), mut s) in run.into_iter().zip(samples) {
            let r = bench::Result {
                name: format!("guards/{case}/{variant}"),
                ns_per_op: bench::median(&mut s),
                ops: per,
                baseline: Some(format!("guards/{case}/unguarded"))
                    .filter(|_| *variant != "unguarded"),
            };
            progress(&r);
            results.push(r);
        }
    }
    Ok(results)
}
