// SPDX-License-Identifier: GPL-2.0

//! `kflex-bench`: KFlex benchmarks, run inside a guest
//! (`make vm CMD='kflex-bench'`). Prints a table (or `--json`); timings are
//! only meaningful as ratios between variants of the same run.

use std::{
    io::Write as _,
    mem::MaybeUninit,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use kflex_load::{
    bench, guardbench,
    skel::{alloc, alloc_arena},
    status::{Status, STATUS_PATH},
};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    ProgramInput, ProgramMut,
};

/// KFlex benchmarks (run as root on a KFlex kernel).
#[derive(Parser, Debug)]
#[command(name = "kflex-bench", version)]
struct Cli {
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Only run benchmarks whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Operations per repetition.
    #[arg(long, default_value_t = 10_000)]
    ops: u64,
    /// Repetitions per benchmark (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// List the benchmarks and exit.
    #[arg(long)]
    list: bool,
}

/// Arguments of the benchmark programs (`struct bench_args`).
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
fn run_prog(prog: &ProgramMut, mut args: Args) -> Result<(Args, Duration)> {
    // SAFETY: `Args` is plain old data.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(&mut args as *mut Args as *mut u8, size_of::<Args>())
    };
    let input = ProgramInput { context_in: Some(bytes), ..Default::default() };
    let t = Instant::now();
    let out = prog.test_run(input).context("BPF_PROG_TEST_RUN")?;
    let elapsed = t.elapsed();
    ensure!(out.return_value == 0, "program returned {}", out.return_value);
    Ok((args, elapsed))
}

/// One allocator variant: which skeleton, which allocator kind.
#[derive(Clone, Copy, Debug)]
enum AllocVariant {
    KFlex,
    ArenaFreeList,
    ArenaBump,
}

impl AllocVariant {
    fn name(self) -> &'static str {
        match self {
            AllocVariant::KFlex => "kflex",
            AllocVariant::ArenaFreeList => "arena-freelist",
            AllocVariant::ArenaBump => "arena-bump",
        }
    }
}

/// The loaded allocator benchmark programs (KFlex heap and upstream arena).
struct AllocSkels {
    kflex: alloc::AllocSkel<'static>,
    arena: alloc_arena::AllocArenaSkel<'static>,
}

impl AllocSkels {
    fn load() -> Result<AllocSkels> {
        let kstore = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = alloc::AllocSkelBuilder::default().open(kstore)?;
        open.maps.heap.set_max_entries((1u64 << 30 >> 12) as u32)?;
        let kflex = open.load().context("loading the KFlex allocator benchmark")?;
        let astore = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = alloc_arena::AllocArenaSkelBuilder::default().open(astore)?;
        open.maps.heap.set_max_entries((2u64 << 30 >> 12) as u32)?;
        let arena = open.load().context("loading the arena allocator benchmark")?;
        // Populate the KFlex heap ahead so that the benchmark measures the
        // allocator, not the background worker.
        let (a, _) = run_prog(&kflex.progs.prepare, Args { n: 256 << 20, ..Default::default() })?;
        ensure!(a.ret == 0, "bpf_kflex_reserve failed: {}", a.ret as i64);
        Ok(AllocSkels { kflex, arena })
    }

    fn prog(&self, v: AllocVariant, batches: bool) -> &ProgramMut<'static> {
        match (v, batches) {
            (AllocVariant::KFlex, false) => &self.kflex.progs.pairs,
            (AllocVariant::KFlex, true) => &self.kflex.progs.batches,
            (_, false) => &self.arena.progs.pairs,
            (_, true) => &self.arena.progs.batches,
        }
    }
}

/// Runs one repetition of a benchmark; returns ns per operation.
type RunFn = Box<dyn Fn(&Setup) -> Result<f64>>;

/// A benchmark: name, baseline name, and how to run it.
struct Case {
    name: String,
    baseline: Option<String>,
    ops: u64,
    run: RunFn,
}

/// Everything loaded once per run.
struct Setup {
    alloc: AllocSkels,
}

fn alloc_cases(ops: u64) -> Vec<Case> {
    let mut cases = Vec::new();
    for batches in [false, true] {
        let pattern = if batches { "batch256" } else { "pairs" };
        for size in [16u64, 64, 256, 4096] {
            for v in [AllocVariant::KFlex, AllocVariant::ArenaFreeList, AllocVariant::ArenaBump] {
                let name = format!("alloc/{pattern}/{size}/{}", v.name());
                let baseline = match v {
                    AllocVariant::KFlex => None,
                    _ => Some(format!("alloc/{pattern}/{size}/kflex")),
                };
                let kind = matches!(v, AllocVariant::ArenaBump) as u64;
                cases.push(Case {
                    name,
                    baseline,
                    ops,
                    run: Box::new(move |s: &Setup| {
                        let prog = s.alloc.prog(v, batches);
                        let (a, t) = run_prog(prog, Args { size, n: ops, kind, ret: 0 })?;
                        ensure!(a.ret == 0, "{} allocations failed", a.ret);
                        Ok(t.as_nanos() as f64 / ops as f64)
                    }),
                });
            }
        }
    }
    cases
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("kflex-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let mut cases = alloc_cases(cli.ops);
    if let Some(f) = &cli.filter {
        cases.retain(|c| c.name.contains(f.as_str()));
    }
    let guard_names: Vec<String> = ["chase", "scatter"]
        .iter()
        .flat_map(|c| guardbench::VARIANTS.iter().map(move |(v, _)| format!("guards/{c}/{v}")))
        .filter(|n| cli.filter.as_deref().is_none_or(|f| n.contains(f)))
        .collect();
    if cli.list {
        for c in &cases {
            println!("{}", c.name);
        }
        for n in &guard_names {
            println!("{n}");
        }
        return Ok(());
    }
    if cases.is_empty() && guard_names.is_empty() {
        bail!("no benchmark matches the filter (see --list)");
    }
    if cli.reps == 0 || cli.ops < 256 {
        bail!("--reps must be at least 1 and --ops at least 256");
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "kflex-bench must run as root (it loads BPF programs); try `make vm CMD=kflex-bench`"
        );
    }
    Status::read_from(Path::new(STATUS_PATH))?.require_active()?;
    let mut results = Vec::new();
    if !guard_names.is_empty() {
        let n = guard_names.len();
        let mut i = 0;
        results = guardbench::run(cli.ops, cli.reps, cli.filter.as_deref(), |r| {
            i += 1;
            eprintln!("[guards {i}/{n}] {} {:.1} ns/op", r.name, r.ns_per_op);
        })?;
    }
    let setup = Setup { alloc: AllocSkels::load()? };
    let total = cases.len();
    for (i, c) in cases.iter().enumerate() {
        eprint!("[{}/{total}] {} ...", i + 1, c.name);
        let _ = std::io::stderr().flush();
        (c.run)(&setup).with_context(|| format!("{} (warm-up)", c.name))?;
        let mut samples = Vec::with_capacity(cli.reps);
        for _ in 0..cli.reps {
            samples.push((c.run)(&setup).with_context(|| c.name.clone())?);
        }
        let ns = bench::median(&mut samples);
        eprintln!(" {ns:.1} ns/op");
        results.push(bench::Result {
            name: c.name.clone(),
            ns_per_op: ns,
            ops: c.ops,
            baseline: c.baseline.clone(),
        });
    }
    if cli.json {
        let uname = nix::sys::utsname::uname()?;
        let ctx = serde_json::json!({
            "kernel": uname.release().to_string_lossy(),
            "kflex": std::fs::read_to_string(STATUS_PATH).unwrap_or_default().trim(),
            "ops": cli.ops,
            "reps": cli.reps,
            "note": "TCG guest: compare ratios within one run only",
        });
        println!("{}", bench::json(&results, ctx));
    } else {
        print!("{}", bench::table(&results));
    }
    Ok(())
}
