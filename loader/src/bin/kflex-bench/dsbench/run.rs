// SPDX-License-Identifier: GPL-2.0

//! Timing the data structures: one repetition of the three phases, on one
//! CPU or several, and a run of every selected unit with its results
//! checked between variants and repetitions.

use std::{
    io::Write as _,
    os::fd::{AsFd, OwnedFd},
    sync::Barrier,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use kflex_load::{
    ds::{self, Args as DsArgs, Dist, KeySet, WorkMaps},
    guardmode::GuardMode,
};

use super::{
    guard_table::{self, GuardRow},
    load::{load_impl, load_native, Compare, Impl, Kind},
    Sizes, Structure, Unit, Variant, OPS,
};
use crate::{pin_to, results};

/// One phase of a repetition: update, lookup or delete, each on its own
/// key stream (at 0, ops, 2 ops in the workload maps).
#[derive(Default, Clone, Copy, Debug)]
pub struct Phase {
    ns_per_op: f64,
    hits: u64,
    sum: u64,
}

/// Runs one repetition of the three phases on `cpus` CPUs (1 or 2).
fn run_rep(
    s: Structure,
    imp: &Impl,
    work: &WorkMaps,
    sz: Sizes,
    cpus: usize,
) -> Result<[Option<Phase>; 3]> {
    let ops = match &imp.kind {
        Kind::Programs(ops) => ops,
        Kind::Native(nds) => return run_native_rep(*nds, work, sz),
    };
    if let Some(init) = &ops.init {
        let arg = if matches!(imp.variant, Variant::KFlex(_) | Variant::KFlexCounter) {
            sz.reserve()
        } else {
            0
        };
        let flags = if s == Structure::Hashmap { sz.bucket_order() } else { 0 };
        let a = DsArgs { arg, flags, ..Default::default() };
        let (r, _) = ds::run(init.as_fd(), a).context("init")?;
        ensure!(r.fails == 0, "init failed: {}", r.fails as i64);
    }
    let mut out = [None; 3];
    for (i, prog) in [&ops.update, &ops.lookup, &ops.delete].into_iter().enumerate() {
        let Some(prog) = prog else { continue };
        let arg = if s == Structure::List { sz.list_walk } else { 0 };
        let start = i as u64 * sz.ops;
        let (r, t) = if cpus == 1 {
            ds::run_batched(prog.as_fd(), start, sz.ops, sz.batch, 0, arg)?
        } else {
            run_parallel(prog, start, sz, arg, cpus)?
        };
        ensure!(r.done == sz.ops, "{}: {} of {} operations done", OPS[i], r.done, sz.ops);
        if i == 0 {
            ensure!(r.fails == 0, "update: {} allocations failed", r.fails);
        }
        out[i] = Some(Phase {
            ns_per_op: t.as_nanos() as f64 / sz.ops as f64,
            hits: r.hits,
            sum: r.sum,
        });
    }
    let (r, _) =
        ds::run(ops.clear.as_ref().context("no clear program")?.as_fd(), DsArgs::default())
            .context("clear")?;
    ensure!(r.done == 1, "clear stopped early");
    Ok(out)
}

/// Operations of one `bpf_kflex_bench_native_batch()` call, at most.
const NATIVE_BATCH_MAX: u64 = 1 << 16;

/// One repetition of the three phases on the native structure `nds`.
fn run_native_rep(nds: u64, work: &WorkMaps, sz: Sizes) -> Result<[Option<Phase>; 3]> {
    let sk = load_native(work, sz)?;
    // One kfunc call per batch: the loop over the keys runs in the kernel.
    let prog = sk.progs.nat_batch.as_fd();
    // Structure 6 (the hash map on kernel memory) takes its bucket order.
    let arg = if nds == 6 { sz.bucket_order() } else { 0 };
    let mut out = [None; 3];
    for (i, slot) in out.iter_mut().enumerate() {
        let start = i as u64 * sz.ops;
        let (mut found, mut time, mut off) = (0, Duration::ZERO, 0);
        while off < sz.ops {
            let n = sz.batch.min(sz.ops - off).min(NATIVE_BATCH_MAX);
            let mut a = ds::NativeArgs {
                ds: nds,
                op: i as u64,
                first: start + off,
                count: n,
                arg,
                ..Default::default()
            };
            time += ds::run_ctx(prog, &mut a)?;
            ensure!(a.errors == 0, "{}: {} native operations failed", OPS[i], a.errors);
            found += a.found;
            off += n;
        }
        *slot =
            Some(Phase { ns_per_op: time.as_nanos() as f64 / sz.ops as f64, hits: found, sum: 0 });
    }
    Ok(out)
}

/// Runs `sz.ops` operations from `start` split over `cpus` threads, one
/// pinned to each CPU; returns the summed results and the wall time.
fn run_parallel(
    prog: &OwnedFd,
    start: u64,
    sz: Sizes,
    arg: u64,
    cpus: usize,
) -> Result<(DsArgs, Duration)> {
    let per = sz.ops.div_ceil(cpus as u64);
    let barrier = Barrier::new(cpus + 1);
    let fd = prog.as_fd();
    let (parts, time) = std::thread::scope(|sc| -> Result<(Vec<DsArgs>, Duration)> {
        let workers: Vec<_> = (0..cpus)
            .map(|c| {
                let barrier = &barrier;
                sc.spawn(move || -> Result<DsArgs> {
                    let pinned = pin_to(c);
                    barrier.wait();
                    pinned?;
                    let from = c as u64 * per;
                    let n = per.min(sz.ops.saturating_sub(from));
                    Ok(ds::run_batched(fd, start + from, n, sz.batch, 0, arg)?.0)
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let parts: Vec<Result<DsArgs>> =
            workers.into_iter().map(|w| w.join().expect("worker panicked")).collect();
        let time = t.elapsed();
        Ok((parts.into_iter().collect::<Result<Vec<_>>>()?, time))
    })?;
    let mut total = DsArgs::default();
    for p in parts {
        total.hits += p.hits;
        total.sum = total.sum.wrapping_add(p.sum);
        total.fails += p.fails;
        total.done += p.done;
    }
    Ok((total, time))
}

/// Fills the workload maps with the three key streams of `dist`.
fn fill(work: &mut WorkMaps, keys: &mut KeySet, dist: Dist, ops: u64) -> Result<()> {
    for phase in 0..3u64 {
        let stream = keys.draw(dist, ops as usize, phase + 1);
        work.set_keys((phase * ops) as usize, &stream)?;
    }
    Ok(())
}

/// State shared by the data-structure benchmarks of one run.
pub struct DsRun {
    pub sz: Sizes,
    pub reps: usize,
    /// The guard modes the kernel offers.
    pub modes: Vec<GuardMode>,
    pub work: WorkMaps,
    pub keys: KeySet,
    /// Names selected by the filter.
    pub wanted: Vec<String>,
    pub results: Vec<results::Result>,
    pub guards: Vec<GuardRow>,
}

impl DsRun {
    /// Runs every unit of structure `s` (loading its variants once).
    pub fn run_structure(&mut self, s: Structure, units: &[Unit]) -> Result<()> {
        let mine: Vec<Unit> = units
            .iter()
            .copied()
            .filter(|u| u.s == s && u.names(&self.modes).iter().any(|n| self.wanted.contains(n)))
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        // The variants some wanted result needs, and always KFlex in guard
        // mode 0, the reference the others are compared with, first: its
        // load prints the guard counts.
        for u in &mine {
            for op in OPS {
                let name = u.result_name(op, "kflex");
                if !self.wanted.contains(&name) {
                    self.wanted.push(name);
                }
            }
        }
        let mut variants: Vec<Variant> = Vec::new();
        for u in &mine {
            for v in u.variants(&self.modes) {
                let needed =
                    OPS.iter().any(|op| self.wanted.contains(&u.result_name(op, v.name(s))));
                if needed && !variants.contains(&v) {
                    variants.push(v);
                }
            }
        }
        let mut impls = Vec::new();
        for &v in &variants {
            eprintln!("loading {} ({})", s.name(), v.name(s));
            let loaded = {
                let _mode = v.guard_mode().set()?;
                // kflex-counter: the upstream may_goto counter, no points
                let _points = kflex_load::cancel::SysctlGuard::points(v != Variant::KFlexCounter)?;
                load_impl(s, v, &self.work, self.sz)
            };
            let Some(imp) = loaded.with_context(|| format!("{} ({})", s.name(), v.name(s)))? else {
                continue;
            };
            if v == Variant::KFlex(GuardMode::Full) {
                self.guards.extend(guard_table::rows(s, &guard_table::from_kernel_log()?));
            }
            impls.push(imp);
        }
        for u in mine {
            fill(&mut self.work, &mut self.keys, u.dist, self.sz.ops)?;
            self.run_unit(u, &impls)?;
        }
        Ok(())
    }

    fn run_unit(&mut self, u: Unit, impls: &[Impl]) -> Result<()> {
        let variants = u.variants(&self.modes);
        let run: Vec<&Impl> = impls
            .iter()
            .filter(|i| variants.contains(&i.variant))
            .filter(|i| OPS.iter().any(|op| self.wanted.contains(&u.result_name(op, i.name))))
            .collect();
        // Per variant and phase: time samples, and the (hits, sum) of the
        // repetitions, which must not change from one to the next.
        let mut samples: Vec<[Vec<f64>; 3]> = vec![Default::default(); run.len()];
        let mut seen: Vec<[Option<(u64, u64)>; 3]> = vec![[None; 3]; run.len()];
        // Repetitions go round the variants, so that drift in the guest
        // (translation caches, memory) spreads over all of them.
        for rep in 0..=self.reps {
            eprint!("{} rep {rep}/{}:", u.result_name("*", "*"), self.reps);
            for (v, imp) in run.iter().enumerate() {
                eprint!(" {}", imp.name);
                let _ = std::io::stderr().flush();
                let phases = run_rep(u.s, imp, &self.work, self.sz, u.cpus)
                    .with_context(|| u.result_name("*", imp.name))?;
                for (i, p) in phases.iter().enumerate() {
                    let Some(p) = p else { continue };
                    // On several CPUs, which of two updates of a key comes
                    // last is a race: the values (and lookup sums) vary,
                    // the counts do not.
                    let got = (p.hits, if u.cpus > 1 { 0 } else { p.sum });
                    match seen[v][i] {
                        Some(prev) => ensure!(
                            prev == got,
                            "{}: results changed between repetitions: {prev:?} then {got:?}",
                            u.result_name(OPS[i], imp.name)
                        ),
                        None => seen[v][i] = Some(got),
                    }
                    if rep > 0 {
                        samples[v][i].push(p.ns_per_op);
                    }
                }
            }
            eprintln!();
        }
        // Same operations, same results: every variant must agree with the
        // first one (KFlex). A BPF hash map's update does not say whether
        // the key was new, so its updates are not compared.
        let mut reference: [Option<(u64, u64)>; 3] = [None; 3];
        for (v, imp) in run.iter().enumerate() {
            for i in 0..3 {
                let Some(got) = seen[v][i] else { continue };
                let name = u.result_name(OPS[i], imp.name);
                let skip = imp.compare == Compare::Nothing
                    || (imp.variant == Variant::Kernel && u.s == Structure::Hashmap && i == 0);
                if skip {
                    continue;
                }
                match reference[i] {
                    None => reference[i] = Some(got),
                    Some(r) if imp.compare == Compare::Hits => {
                        ensure!(r.0 == got.0, "{name}: {} hits, the KFlex heap had {}", got.0, r.0)
                    }
                    Some(r) => ensure!(
                        r == got,
                        "{name}: (hits, sum) {got:?} differ from the KFlex heap's {r:?}"
                    ),
                }
            }
        }
        for (v, imp) in run.iter().enumerate() {
            let mut line = String::new();
            for (i, op) in OPS.iter().enumerate() {
                let name = u.result_name(op, imp.name);
                if samples[v][i].is_empty() || !self.wanted.contains(&name) {
                    continue;
                }
                let ns = results::median(&mut samples[v][i]);
                line.push_str(&format!(" {op}={ns:.1}"));
                let base = u.result_name(op, "kflex");
                self.results.push(results::Result {
                    name: name.clone(),
                    ns_per_op: ns,
                    ops: self.sz.ops,
                    baseline: (name != base).then_some(base),
                });
            }
            eprintln!("{}:{line} ns/op", u.result_name("*", imp.name));
        }
        Ok(())
    }
}
