// SPDX-License-Identifier: GPL-2.0

//! Loop-termination benchmarks (`cancel/loop/<body>/<variant>`,
//! `bpf/bench/cancel.bpf.c`): the same inner loop and body bounded by
//! verifier exploration (`none`), by KFlex cancellation points (`points`),
//! by the upstream may_goto counter (`may_goto`), by `bpf_for` and by
//! `bpf_loop`. With cancellation points on, the kernel also puts a point on
//! every loop that has no may_goto (`bpf_for` loops, exploration-bounded
//! loops); `none`, `may_goto` and `bpf_for_upstream` are loaded with
//! `kernel.kflex_cancel_points=1`, i.e. as upstream runs them. ns per
//! iteration; ratios are to `none`. `cancel/entry/xdp-empty/<variant>`:
//! the per-run cost of the bookkeeping (exception-boundary prologue, point
//! slots) of an XDP program whose loop never runs, with and without points;
//! ns per run. `locks/pair/<variant>`: an uncontended lock/unlock pair on
//! one heap word, a KFlex heap lock (`kflex`) or a test-and-test-and-set
//! spin lock in BPF (`ttas`), or 6.12's `bpf_spin_lock` in a map value
//! (`bpf_spin_lock`); ns per pair. `locks/2cpu/<variant>`: the same pairs
//! run by two threads pinned to CPUs 0 and 1 at once, on the same lock
//! (8 times as many pairs each, started together): the slower thread's
//! time per pair, both threads' pairs counted. `locks/call/<variant>`:
//! a KFlex kfunc call that returns at once, and an unlock of a word not
//! held; ns per call. `cancel/latency/<budget>/{median,max}`: how long a
//! run of a loop that never ends takes until it is cancelled, under
//! budgets of 1, 10 and 100 ms (wall time of the test run, ns).

use std::{any::Any, mem::MaybeUninit, os::fd::BorrowedFd, time::Instant};

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

use kflex_load::{cancel::SysctlGuard, ds, skel::cancel};

use crate::results;

/// Loop bodies.
pub const BODIES: [&str; 3] = ["empty", "load", "chase"];
/// Variants: name, program suffix, and whether points are on at load.
pub const VARIANTS: [(&str, &str, bool); 7] = [
    ("none", "none", false),
    ("none_points", "none", true),
    ("points", "points", true),
    ("may_goto", "points", false),
    ("bpf_for", "for", true),
    ("bpf_for_upstream", "for", false),
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

/// Entry-cost variants: name and whether points are on at load.
pub const ENTRY: [(&str, bool); 2] = [("plain", false), ("kflex", true)];
/// Runs per BPF_PROG_TEST_RUN call of the entry benchmark.
const ENTRY_RUNS: u32 = 100_000;

/// Lock-pair variants: name and program.
pub const LOCKS: [(&str, &str); 5] = [
    ("pair/ttas", "lk_ttas"),
    ("pair/kflex", "lk_kflex"),
    ("pair/bpf_spin_lock", "lk_spin"),
    ("call/kfunc-return", "lk_call"),
    ("call/unlock-not-held", "lk_unheld"),
];

/// Lock pairs on two CPUs at once: name and program.
pub const LOCKS_2CPU: [(&str, &str); 3] =
    [("2cpu/ttas", "lk_ttas"), ("2cpu/kflex", "lk_kflex"), ("2cpu/bpf_spin_lock", "lk_spin")];

/// Cancellation latency: name, budget (µs) and runs.
pub const LATENCY: [(&str, u64, usize); 3] =
    [("1ms", 1_000, 15), ("10ms", 10_000, 9), ("100ms", 100_000, 5)];

/// Every benchmark name.
pub fn names() -> Vec<String> {
    BODIES
        .iter()
        .flat_map(|b| VARIANTS.iter().map(move |(v, _, _)| format!("cancel/loop/{b}/{v}")))
        .chain(ENTRY.iter().map(|(v, _)| format!("cancel/entry/xdp-empty/{v}")))
        .chain(LOCKS.iter().map(|(v, _)| format!("locks/{v}")))
        .chain(LOCKS_2CPU.iter().map(|(v, _)| format!("locks/{v}")))
        .chain(
            LATENCY
                .iter()
                .flat_map(|(b, _, _)| ["median", "max"].map(|s| format!("cancel/latency/{b}/{s}"))),
        )
        .collect()
}

/// `ENTRY_RUNS` XDP test runs of `prog` on a 64-byte packet: the kernel's
/// mean ns per run.
fn xdp_runs(prog: BorrowedFd<'_>) -> Result<f64> {
    use std::os::fd::AsRawFd;
    let pkt = [0u8; 64];
    // SAFETY: zeroed options are valid; `pkt` outlives the call.
    let mut opts = unsafe { std::mem::zeroed::<libbpf_rs::libbpf_sys::bpf_test_run_opts>() };
    opts.sz = std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_test_run_opts>() as _;
    opts.data_in = pkt.as_ptr().cast();
    opts.data_size_in = pkt.len() as u32;
    opts.repeat = ENTRY_RUNS as i32;
    // SAFETY: see above; the descriptor is a live program.
    let r = unsafe { libbpf_rs::libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    anyhow::ensure!(r == 0, "BPF_PROG_TEST_RUN: {}", std::io::Error::from_raw_os_error(-r));
    anyhow::ensure!(opts.retval == 2, "ce_entry returned {}", opts.retval);
    Ok(f64::from(opts.duration))
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
    // The run's budget is the largest (main sets it for every benchmark).
    let with_points = Loaded::load(true).context("loading with cancellation points")?;
    let with_counter = Loaded::load(false).context("loading with the may_goto counter")?;
    let entry: Vec<_> = ENTRY
        .iter()
        .filter(|(v, _)| wanted.contains(&format!("cancel/entry/xdp-empty/{v}")))
        .collect();
    let medians = results::interleaved(entry.len(), reps, |i| {
        let l = if entry[i].1 { &with_points } else { &with_counter };
        xdp_runs(l.progs.get("ce_entry")?)
    })?;
    for ((variant, _), ns) in entry.into_iter().zip(medians) {
        let r = results::Result {
            name: format!("cancel/entry/xdp-empty/{variant}"),
            ns_per_op: ns,
            ops: u64::from(ENTRY_RUNS),
            baseline: Some("cancel/entry/xdp-empty/plain".to_string())
                .filter(|_| *variant != "plain"),
        };
        progress(&r);
        out.push(r);
    }
    let locks: Vec<_> =
        LOCKS.iter().filter(|(v, _)| wanted.contains(&format!("locks/{v}"))).collect();
    let pairs = (iters / 16).max(1);
    let medians = results::interleaved(locks.len(), reps, |i| {
        let mut a = Args { outer: pairs, ret: 0 };
        Ok(ds::run_ctx(with_points.progs.get(locks[i].1)?, &mut a)?.as_nanos() as f64
            / pairs as f64)
    })?;
    for ((variant, _), ns) in locks.into_iter().zip(medians) {
        let r = results::Result {
            name: format!("locks/{variant}"),
            ns_per_op: ns,
            ops: pairs,
            baseline: Some("locks/pair/ttas".to_string()).filter(|_| *variant != "pair/ttas"),
        };
        progress(&r);
        out.push(r);
    }
    let two: Vec<_> =
        LOCKS_2CPU.iter().filter(|(v, _)| wanted.contains(&format!("locks/{v}"))).collect();
    // Long enough runs that the two threads overlap for nearly all of it;
    // each thread's time counts from the barrier both pass once pinned.
    let pairs2 = 8 * pairs;
    let medians = results::interleaved(two.len(), reps, |i| {
        let prog = with_points.progs.get(two[i].1)?;
        let barrier = std::sync::Barrier::new(2);
        let times = std::thread::scope(|scope| -> Result<Vec<f64>> {
            let threads: Vec<_> = (0..2)
                .map(|cpu| {
                    let barrier = &barrier;
                    scope.spawn(move || -> Result<f64> {
                        crate::pin_to(cpu)?;
                        barrier.wait();
                        let t = Instant::now();
                        ds::run_ctx(prog, &mut Args { outer: pairs2, ret: 0 })?;
                        Ok(t.elapsed().as_nanos() as f64)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().map_err(|_| anyhow::anyhow!("a lock thread panicked"))?)
                .collect()
        })?;
        // The slower thread's time over both threads' pairs.
        Ok(times.iter().copied().fold(0.0, f64::max) / (2 * pairs2) as f64)
    })?;
    for ((variant, _), ns) in two.into_iter().zip(medians) {
        let r = results::Result {
            name: format!("locks/{variant}"),
            ns_per_op: ns,
            ops: 2 * pairs2,
            baseline: Some("locks/2cpu/ttas".to_string()).filter(|_| *variant != "2cpu/ttas"),
        };
        progress(&r);
        out.push(r);
    }
    for (label, budget, runs) in LATENCY {
        let names = ["median", "max"].map(|s| format!("cancel/latency/{label}/{s}"));
        if !names.iter().any(|n| wanted.contains(n)) {
            continue;
        }
        let _b = SysctlGuard::budget_us(budget)?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let (ret, t) =
                ds::test_run_ctx(with_points.progs.get("cl_forever")?, &mut Args::default())?;
            anyhow::ensure!(
                ret == -(nix::errno::Errno::ECANCELED as i32),
                "cl_forever returned {ret} (-ECANCELED expected)"
            );
            times.push(t.as_nanos() as f64);
        }
        let max = times.iter().copied().fold(0.0, f64::max);
        let median = results::median(&mut times);
        for (name, ns) in names.into_iter().zip([median, max]) {
            if wanted.contains(&name) {
                let r = results::Result { name, ns_per_op: ns, ops: runs as u64, baseline: None };
                progress(&r);
                out.push(r);
            }
        }
    }
    let outer = (iters / INNER).max(1);
    let per = outer * INNER;
    for body in BODIES {
        let run: Vec<_> = VARIANTS
            .iter()
            .filter(|(v, _, _)| wanted.contains(&format!("cancel/loop/{body}/{v}")))
            .collect();
        let medians = results::interleaved(run.len(), reps, |i| {
            let (_, suffix, points) = run[i];
            let l = if *points { &with_points } else { &with_counter };
            let mut a = Args { outer, ret: 0 };
            Ok(ds::run_ctx(l.prog(body, suffix)?, &mut a)?.as_nanos() as f64 / per as f64)
        })?;
        for ((variant, _, _), ns) in run.into_iter().zip(medians) {
            let r = results::Result {
                name: format!("cancel/loop/{body}/{variant}"),
                ns_per_op: ns,
                ops: per,
                baseline: Some(format!("cancel/loop/{body}/none")).filter(|_| *variant != "none"),
            };
            progress(&r);
            out.push(r);
        }
    }
    Ok(out)
}
