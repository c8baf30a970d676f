// SPDX-License-Identifier: GPL-2.0

//! Guard benchmarks (`guards/{chase,scatter}/<variant>`): the same program
//! (`bpf/bench/guards.bpf.c`) on the upstream arena and on KFlex heaps
//! loaded under each guard mode (`kernel.kflex_guard_mode`, set for each
//! load and then restored, see `kflex_load::guardmode`), in one run. Ratios
//! are to the unguarded KFlex variant.

use std::{any::Any, mem::MaybeUninit, os::fd::BorrowedFd};

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

use kflex_load::{
    ds::{self, Progs},
    guardmode::GuardMode,
    skel::{guards, guards_arena},
};

use crate::results;

/// Variants: name and guard mode (`None`: the upstream arena).
pub const VARIANTS: [(&str, Option<GuardMode>); 5] = [
    ("arena", None),
    ("all-guards", Some(GuardMode::AllGuards)),
    ("elision", Some(GuardMode::Full)),
    ("perf", Some(GuardMode::Performance)),
    ("unguarded", Some(GuardMode::Unguarded)),
];

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
fn run_prog(prog: BorrowedFd<'_>, mut a: Args) -> Result<f64> {
    Ok(ds::run_ctx(prog, &mut a)?.as_nanos() as f64)
}

/// One variant's loaded programs (`gb_setup`, `gb_chase`, `gb_scatter`).
struct Loaded {
    progs: Progs,
    /// The skeleton (maps stay alive with it).
    _skel: Box<dyn Any>,
}

impl Loaded {
    /// Loads the program for the upstream arena (`None`) or for a KFlex
    /// heap in guard mode `m` (set for the load, then restored).
    fn load(mode: Option<GuardMode>) -> Result<Loaded> {
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let (progs, skel): (Progs, Box<dyn Any>) = match mode {
            Some(m) => {
                let _mode = m.set()?;
                let skel = guards::GuardsSkelBuilder::default().open(storage)?.load()?;
                (Progs::of(skel.object())?, Box::new(skel))
            }
            None => {
                let skel = guards_arena::GuardsArenaSkelBuilder::default().open(storage)?.load()?;
                (Progs::of(skel.object())?, Box::new(skel))
            }
        };
        let l = Loaded { progs, _skel: skel };
        run_prog(l.prog("setup")?, Args { n: NODES, ..Default::default() })
            .context("building the benchmark's list and array")?;
        Ok(l)
    }

    /// Program `gb_<case>`.
    fn prog(&self, case: &str) -> Result<BorrowedFd<'_>> {
        self.progs.get(&format!("gb_{case}"))
    }
}

/// Runs the guard benchmarks whose name contains `filter`; `ops` is the
/// number of node visits or array increments per repetition. `progress`
/// is called with each result.
pub fn run(
    ops: u64,
    reps: usize,
    filter: Option<&str>,
    mut progress: impl FnMut(&results::Result),
) -> Result<Vec<results::Result>> {
    let mut out = Vec::new();
    let wanted = |name: &str| filter.is_none_or(|f| name.contains(f));
    if !VARIANTS
        .iter()
        .any(|(v, _)| ["chase", "scatter"].iter().any(|c| wanted(&format!("guards/{c}/{v}"))))
    {
        return Ok(out);
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
        let medians = results::interleaved(run.len(), reps, |i| {
            Ok(run_prog(run[i].1.prog(case)?, args)? / per as f64)
        })?;
        for ((variant, _), ns) in run.into_iter().zip(medians) {
            let r = results::Result {
                name: format!("guards/{case}/{variant}"),
                ns_per_op: ns,
                ops: per,
                baseline: Some(format!("guards/{case}/unguarded"))
                    .filter(|_| *variant != "unguarded"),
            };
            progress(&r);
            out.push(r);
        }
    }
    Ok(out)
}
