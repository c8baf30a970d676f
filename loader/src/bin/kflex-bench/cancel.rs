// SPDX-License-Identifier: GPL-2.0

//! Loop-termination benchmarks (`cancel/loop/<body>/<variant>`,
//! `bpf/bench/cancel.bpf.c`): the same inner loop and body bounded by
//! verifier exploration (`none`), by KFlex cancellation points (`points`),
//! by the upstream may_goto counter (`may_goto`: the same program loaded
//! with `kernel.kflex_cancel_points=1`), by `bpf_for` and by `bpf_loop`.
//! ns per iteration; ratios are to `none`.

use std::{any::Any, mem::MaybeUninit, os::fd::BorrowedFd};

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

use kflex_load::{cancel::SysctlGuard, ds, skel::cancel};

use crate::results;

/// Loop bodies.
pub const BODIES: [&str; 3] = ["empty", "load", "chase"];
/// Variants: name, program suffix, and whether points are on at load.
pub const VARIANTS: [(&str, &str, bool); 5] = [
    ("none", "none", true),
    ("points", "points", true),
    ("may_goto", "points", false),
    ("bpf_for", "for", true),
    ("bpf_loop", "loop", true),
];
/// Steps of the inner loop (`CL_INNER`).
const INNER: u64 = 64;

/// `struct cl_args`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Args {
    outer: u64,
    ret: u64,
}

struct Loaded {
    progs: ds::Progs,
    _skel: Box<dyn Any>,
}

impl Loaded {
    fn load(points: bool) -> Result<Loaded> {
        let _points = SysctlGuard::points(points)?;
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let skel = cancel::CancelSkelBuilder::default().open(storage)?.load()?;
        let l = Loaded { progs: ds::Progs::of(skel.object())?, _skel: Box::new(skel) };
        ds::run_ctx(l.progs.get("cl_setup")?, &mut Args::default())
            .context("building the benchmark's ring and words")?;
        Ok(l)
    }

    fn prog(&self, body: &str, suffix: &str) -> Result<BorrowedFd<'_>> {
        self.progs.get(&format!("cl_{body}_{suffix}"))
    }
}

/// Every benchmark name.
pub fn names() -> Vec<String> {
    BODIES
        .iter()
        .flat_map(|b| VARIANTS.iter().map(move |(v, _, _)| format!("cancel/loop/{b}/{v}")))
        .collect()
}

/// Runs the benchmarks named in `wanted`, about `iters` loop steps per
/// repetition; `progress` gets each result.
pub fn run(
    iters: u64,
    reps: usize,
    wanted: &[String],
    mut progress: impl FnMut(&results::Result),
) -> Result<Vec<results::Result>> {
    let mut out = Vec::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    // Programs run for at most a few ms here; the budget must not cut them.
    let _budget = SysctlGuard::budget_us(1_000_000)?;
    let with_points = Loaded::load(true).context("loading with cancellation points")?;
    let with_counter = Loaded::load(false).context("loading with the may_goto counter")?;
    let outer = (iters / INNER).max(1);
    let per = outer * INNER;
    for body in BODIES {
        let run: Vec<_> = VARIANTS
            .iter()
            .filter(|(v, _, _)| wanted.contains(&format!("cancel/loop/{body}/{v}")))
            .collect();
        // Repetitions go round the variants (the first one is a warm-up).
        let mut samples = vec![Vec::with_capacity(reps); run.len()];
        for rep in 0..=reps {
            for ((_, suffix, points), s) in run.iter().zip(samples.iter_mut()) {
                let l = if *points { &with_points } else { &with_counter };
                let mut a = Args { outer, ret: 0 };
                let t = ds::run_ctx(l.prog(body, suffix)?, &mut a)?.as_nanos() as f64;
                if rep > 0 {
                    s.push(t / per as f64);
                }
            }
        }
        for ((variant, _, _), mut s) in run.into_iter().zip(samples) {
            let r = results::Result {
                name: format!("cancel/loop/{body}/{variant}"),
                ns_per_op: results::median(&mut s),
                ops: per,
                baseline: Some(format!("cancel/loop/{body}/none")).filter(|_| *variant != "none"),
            };
            progress(&r);
            out.push(r);
        }
    }
    Ok(out)
}
