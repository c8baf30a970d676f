// SPDX-License-Identifier: GPL-2.0

//! Allocator benchmarks (`alloc/{pairs,batch256}/<size>/<variant>`,
//! `alloc/kfunc-calls/kflex`): the KFlex heap allocator against the BPF
//! allocators of the upstream arena (`bpf/bench/alloc.bpf.c`, built for
//! both).

use std::{any::Any, io::Write as _, mem::MaybeUninit, os::fd::BorrowedFd, time::Duration};

use anyhow::{ensure, Context, Result};
use kflex_load::{
    ds::{self, Progs},
    skel::{alloc, alloc_arena},
};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

use crate::results;

/// Arguments of the allocator benchmark programs (`struct bench_args`).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Args {
    size: u64,
    n: u64,
    kind: u64,
    ret: u64,
}

/// Runs a syscall program once with `args`; returns the updated arguments
/// and the wall time of the run.
fn run_prog(prog: BorrowedFd<'_>, mut args: Args) -> Result<(Args, Duration)> {
    let t = ds::run_ctx(prog, &mut args)?;
    Ok((args, t))
}

/// One allocator variant: which build, which allocator kind.
#[derive(Clone, Copy, Debug)]
enum Variant {
    KFlex,
    ArenaFreeList,
    ArenaBump,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::KFlex => "kflex",
            Variant::ArenaFreeList => "arena-freelist",
            Variant::ArenaBump => "arena-bump",
        }
    }
}

/// The loaded allocator benchmark programs (KFlex heap and upstream
/// arena): `pairs`, `batches`, and on the KFlex heap `calls`.
struct Loaded {
    kflex: Progs,
    arena: Progs,
    /// The skeletons (maps stay alive with them).
    _skels: [Box<dyn Any>; 2],
}

impl Loaded {
    fn load() -> Result<Loaded> {
        let kstore = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = alloc::AllocSkelBuilder::default().open(kstore)?;
        open.maps.heap.set_max_entries((1u64 << 30 >> 12) as u32)?;
        let kflex = open.load().context("loading the KFlex allocator benchmark")?;
        let astore = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = alloc_arena::AllocArenaSkelBuilder::default().open(astore)?;
        open.maps.heap.set_max_entries((2u64 << 30 >> 12) as u32)?;
        let arena = open.load().context("loading the arena allocator benchmark")?;
        let l = Loaded {
            kflex: Progs::of(kflex.object())?,
            arena: Progs::of(arena.object())?,
            _skels: [Box::new(kflex), Box::new(arena)],
        };
        // Populate the KFlex heap ahead so that the benchmark measures the
        // allocator, not the background worker.
        let (a, _) =
            run_prog(l.kflex.get("prepare")?, Args { n: 256 << 20, ..Default::default() })?;
        ensure!(a.ret == 0, "bpf_kflex_reserve failed: {}", a.ret as i64);
        Ok(l)
    }

    /// Program `name` of variant `v`'s build.
    fn prog(&self, v: Variant, name: &str) -> Result<BorrowedFd<'_>> {
        match v {
            Variant::KFlex => self.kflex.get(name),
            Variant::ArenaFreeList | Variant::ArenaBump => self.arena.get(name),
        }
    }
}

/// Runs one repetition of a benchmark; returns ns per operation.
type RunFn = Box<dyn Fn(&Loaded) -> Result<f64>>;

/// An allocator benchmark: name, baseline name, and how to run it.
pub struct Case {
    pub name: String,
    baseline: Option<String>,
    ops: u64,
    run: RunFn,
}

/// Every allocator benchmark, with `ops` operations per repetition.
pub fn cases(ops: u64) -> Vec<Case> {
    let mut cases = Vec::new();
    for batches in [false, true] {
        let (pattern, prog) = if batches { ("batch256", "batches") } else { ("pairs", "pairs") };
        for size in [16u64, 64, 256, 4096] {
            for v in [Variant::KFlex, Variant::ArenaFreeList, Variant::ArenaBump] {
                let name = format!("alloc/{pattern}/{size}/{}", v.name());
                let baseline = match v {
                    Variant::KFlex => None,
                    _ => Some(format!("alloc/{pattern}/{size}/kflex")),
                };
                let kind = matches!(v, Variant::ArenaBump) as u64;
                cases.push(Case {
                    name,
                    baseline,
                    ops,
                    run: Box::new(move |l: &Loaded| {
                        let (a, t) =
                            run_prog(l.prog(v, prog)?, Args { size, n: ops, kind, ret: 0 })?;
                        ensure!(a.ret == 0, "{} allocations failed", a.ret);
                        Ok(t.as_nanos() as f64 / ops as f64)
                    }),
                });
            }
        }
    }
    // How much of a pair is the two kfunc calls themselves.
    cases.push(Case {
        name: "alloc/kfunc-calls/kflex".into(),
        baseline: Some("alloc/pairs/64/kflex".into()),
        ops,
        run: Box::new(move |l: &Loaded| {
            let prog = l.prog(Variant::KFlex, "calls")?;
            let (_, t) = run_prog(prog, Args { n: ops, ..Default::default() })?;
            Ok(t.as_nanos() as f64 / ops as f64)
        }),
    });
    cases
}

/// Runs `cases` (a warm-up, then `reps` repetitions each; the median is
/// the result) and appends their results to `out`.
pub fn run(cases: &[Case], reps: usize, out: &mut Vec<results::Result>) -> Result<()> {
    if cases.is_empty() {
        return Ok(());
    }
    let loaded = Loaded::load()?;
    let total = cases.len();
    for (i, c) in cases.iter().enumerate() {
        eprint!("[{}/{total}] {} ...", i + 1, c.name);
        let _ = std::io::stderr().flush();
        (c.run)(&loaded).with_context(|| format!("{} (warm-up)", c.name))?;
        let mut samples = Vec::with_capacity(reps);
        for _ in 0..reps {
            samples.push((c.run)(&loaded).with_context(|| c.name.clone())?);
        }
        let ns = results::median(&mut samples);
        eprintln!(" {ns:.1} ns/op");
        out.push(results::Result {
            name: c.name.clone(),
            ns_per_op: ns,
            ops: c.ops,
            baseline: c.baseline.clone(),
        });
    }
    Ok(())
}
