// SPDX-License-Identifier: GPL-2.0

//! `kflex-bench`: KFlex benchmarks, run inside a guest
//! (`make vm CMD='kflex-bench'`, `make bench`). Prints a table (or
//! `--json`); timings are only meaningful as ratios between variants of the
//! same run.
//!
//! Three groups:
//! - `alloc/...`: the heap allocator against the BPF allocators of the
//!   upstream arena;
//! - `guards/...`: the cost of guards in each guard mode
//!   (`kflex_load::guardbench`);
//! - `ds/<structure>/<op>/<dist>/<variant>`: the data structures of
//!   `bpf/ds/` (list, rbtree, hashmap, skiplist, cms, cs), each operation a
//!   separate program driven in batches by BPF_PROG_TEST_RUN, on the KFlex
//!   heap (in every guard mode the kernel offers), on the upstream arena, on
//!   the kernel's own alternative and, for the rbtree and the skiplist, as
//!   native code in the kernel (`bpf_kflex_bench_native()`, the paper's
//!   "KMod"); the ratio is to `kflex` (full guards with elision).
//!   `ds/hashmap-2cpu/...` runs the hash map on two CPUs.
//!
//! Also prints the guard table: per structure and operation, the heap
//! accesses the guard pass decided on and how many guards it elided (from
//! the kernel log), next to Table 3 of the KFlex paper.

use std::{
    any::Any,
    collections::{BTreeMap, HashMap},
    io::Write as _,
    mem::MaybeUninit,
    os::fd::{AsFd, OwnedFd},
    path::Path,
    sync::Barrier,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use kflex_load::{
    bench,
    ds::{self, Args as DsArgs, Dist, KeySet, Ops, WorkMaps},
    guardbench, load_ds_skel,
    skel::{
        alloc, alloc_arena, ds_graph, ds_hmap, ds_hmap_arena, ds_list, ds_list_arena, ds_maps,
        ds_rbtree, ds_rbtree_arena, ds_sketch, ds_sketch_arena, ds_skiplist, ds_skiplist_arena,
        native,
    },
    status::{Status, STATUS_PATH},
};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    ProgramMut,
};

/// KFlex benchmarks (run as root on a KFlex kernel).
#[derive(Parser, Debug)]
#[command(name = "kflex-bench", version)]
struct Cli {
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON to this file (the table still goes to stdout).
    #[arg(long, value_name = "PATH")]
    json_file: Option<String>,
    /// Only run benchmarks whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Data-structure operations per phase and repetition.
    #[arg(long, default_value_t = 100_000)]
    ops: u64,
    /// Operations per repetition of the allocator benchmarks (the arena
    /// bump allocator never frees: keep it well below the guest's memory /
    /// 4 KiB).
    #[arg(long, default_value_t = 10_000)]
    alloc_ops: u64,
    /// Heap accesses per repetition of the guard benchmarks (node visits or
    /// array increments; a few ns each).
    #[arg(long, default_value_t = 2_000_000)]
    guard_ops: u64,
    /// Keys in the data-structure key set.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Repetitions per benchmark (the median is reported), after one
    /// warm-up repetition.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Data-structure operations per BPF_PROG_TEST_RUN call.
    #[arg(long, default_value_t = 10_000)]
    batch: u64,
    /// Nodes a list lookup looks at, at most, from the front.
    #[arg(long, default_value_t = 128)]
    list_walk: u64,
    /// Zipf exponent of the skewed workload.
    #[arg(long, default_value_t = 0.99)]
    zipf: f64,
    /// Seed of the key set and the key streams.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Only print the guard table of the data structures (loads their
    /// KFlex programs, runs nothing).
    #[arg(long)]
    guard_table: bool,
    /// List the benchmarks and exit.
    #[arg(long)]
    list: bool,
}

// ---------------------------------------------------------------------------
// Allocator benchmarks.

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
fn run_prog(prog: &ProgramMut, mut args: Args) -> Result<(Args, Duration)> {
    let t = ds::run_ctx(prog.as_fd(), &mut args)?;
    Ok((args, t))
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
type RunFn = Box<dyn Fn(&AllocSkels) -> Result<f64>>;

/// An allocator benchmark: name, baseline name, and how to run it.
struct Case {
    name: String,
    baseline: Option<String>,
    ops: u64,
    run: RunFn,
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
                    run: Box::new(move |s: &AllocSkels| {
                        let prog = s.prog(v, batches);
                        let (a, t) = run_prog(prog, Args { size, n: ops, kind, ret: 0 })?;
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
        run: Box::new(move |s: &AllocSkels| {
            let (_, t) = run_prog(&s.kflex.progs.calls, Args { n: ops, ..Default::default() })?;
            Ok(t.as_nanos() as f64 / ops as f64)
        }),
    });
    cases
}

fn run_alloc(cases: &[Case], reps: usize, results: &mut Vec<bench::Result>) -> Result<()> {
    if cases.is_empty() {
        return Ok(());
    }
    let skels = AllocSkels::load()?;
    let total = cases.len();
    for (i, c) in cases.iter().enumerate() {
        eprint!("[{}/{total}] {} ...", i + 1, c.name);
        let _ = std::io::stderr().flush();
        (c.run)(&skels).with_context(|| format!("{} (warm-up)", c.name))?;
        let mut samples = Vec::with_capacity(reps);
        for _ in 0..reps {
            samples.push((c.run)(&skels).with_context(|| c.name.clone())?);
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
    Ok(())
}

// ---------------------------------------------------------------------------
// Data-structure benchmarks.

/// The data structures of `bpf/ds/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Structure {
    List,
    Rbtree,
    Hashmap,
    Skiplist,
    Cms,
    Cs,
}

const STRUCTURES: [Structure; 6] = [
    Structure::List,
    Structure::Rbtree,
    Structure::Hashmap,
    Structure::Skiplist,
    Structure::Cms,
    Structure::Cs,
];

const OPS: [&str; 3] = ["update", "lookup", "delete"];

impl Structure {
    fn name(self) -> &'static str {
        match self {
            Structure::List => "list",
            Structure::Rbtree => "rbtree",
            Structure::Hashmap => "hashmap",
            Structure::Skiplist => "skiplist",
            Structure::Cms => "cms",
            Structure::Cs => "cs",
        }
    }

    /// Prefix of the structure's program names.
    fn prefix(self) -> &'static str {
        match self {
            Structure::List => "list",
            Structure::Rbtree => "rbt",
            Structure::Hashmap => "hmap",
            Structure::Skiplist => "skl",
            Structure::Cms => "cms",
            Structure::Cs => "cs",
        }
    }

    /// The kernel alternative: variant name, and whether its operations
    /// mean the same as the heap structure's (so results must agree).
    fn kernel_alternative(self) -> Option<(&'static str, bool)> {
        match self {
            Structure::List => Some(("bpf-graph", true)),
            Structure::Rbtree => Some(("bpf-graph", false)),
            Structure::Hashmap => Some(("bpf-hash", true)),
            Structure::Skiplist => None,
            Structure::Cms | Structure::Cs => Some(("bpf-array", true)),
        }
    }

    /// Guards / elided of Table 3 of the KFlex paper (update, lookup,
    /// delete).
    fn paper(self) -> Option<[(u32, u32); 3]> {
        match self {
            Structure::List => Some([(4, 4), (1, 1), (2, 2)]),
            Structure::Hashmap => Some([(10, 8), (2, 0), (4, 3)]),
            Structure::Rbtree => Some([(16, 16), (2, 2), (31, 27)]),
            Structure::Skiplist => Some([(15, 10), (3, 2), (9, 4)]),
            Structure::Cms | Structure::Cs => None,
        }
    }
}

/// How the programs of a variant are built and loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// KFlex heap loaded in guard mode `kernel.kflex_guard_mode`.
    KFlex(u32),
    /// Upstream arena (`*_arena` skeletons).
    Arena,
    /// The kernel's own alternative.
    Kernel,
    /// Native code in the kernel over the same heap (rbtree, skiplist).
    Native,
}

const MODE_SYSCTL: &str = "/proc/sys/kernel/kflex_guard_mode";

fn mode_name(m: u32) -> &'static str {
    match m {
        0 => "kflex",
        1 => "kflex-perf",
        2 => "kflex-noguard",
        _ => "kflex-noelide",
    }
}

fn variant_name(s: Structure, v: Variant) -> &'static str {
    match v {
        Variant::KFlex(m) => mode_name(m),
        Variant::Arena => "arena",
        Variant::Kernel => s.kernel_alternative().map_or("kernel", |k| k.0),
        Variant::Native => "native",
    }
}

/// The guard modes the kernel offers (0 full with elision, 1 performance,
/// 2 unguarded, 3 full without elision): mode 0 always, the others when the
/// sysctl exists and accepts them.
fn guard_modes() -> Vec<u32> {
    let Ok(orig) = std::fs::read_to_string(MODE_SYSCTL) else {
        return vec![0];
    };
    let mut modes = vec![0];
    for m in 1..=3 {
        if std::fs::write(MODE_SYSCTL, format!("{m}\n")).is_ok() {
            modes.push(m);
        }
    }
    let _ = std::fs::write(MODE_SYSCTL, orig);
    modes
}

/// Sets the guard mode for programs loaded from now on (mode 0 without the
/// sysctl).
fn set_guard_mode(m: u32) -> Result<()> {
    if m == 0 && !Path::new(MODE_SYSCTL).exists() {
        return Ok(());
    }
    std::fs::write(MODE_SYSCTL, format!("{m}\n"))
        .with_context(|| format!("setting {MODE_SYSCTL} to {m}"))
}

/// Sizes of a run.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    ops: u64,
    keys: u64,
    batch: u64,
    list_walk: u64,
}

impl Sizes {
    /// Heap bytes: room for every key (nodes up to 512 bytes) and at least
    /// 256 MiB, a power of two.
    fn heap_bytes(self) -> u64 {
        (self.ops.max(self.keys) * 512).max(256 << 20).next_power_of_two()
    }

    /// Bytes to populate ahead on a KFlex heap.
    fn reserve(self) -> u64 {
        (self.ops.min(self.keys) * 256 + (4 << 20)).min(self.heap_bytes() / 2)
    }

    /// log2 of the hash map's buckets: at least one bucket per key.
    fn bucket_order(self) -> u64 {
        self.keys.max(2).next_power_of_two().trailing_zeros() as u64
    }
}

/// What the results of a variant are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compare {
    /// Hits and lookup checksums must equal the KFlex heap's.
    HitsAndSums,
    /// Hits must (values differ: native code stores other values).
    Hits,
    /// Different operations: nothing to compare.
    Nothing,
}

/// How a variant runs.
enum Kind {
    /// Data-structure programs (struct ds_args), loaded once.
    Programs(Ops),
    /// `native.bpf.c`, loaded afresh for every repetition (its structures
    /// have no clear operation); data structure number for nat_run.
    Native(u64),
}

/// One loaded implementation of a structure.
struct Impl {
    variant: Variant,
    name: &'static str,
    kind: Kind,
    compare: Compare,
    /// The skeleton (maps and programs stay alive with it).
    _skel: Box<dyn Any>,
}

fn fd(p: &ProgramMut<'_>) -> Result<Option<OwnedFd>> {
    Ok(Some(ds::prog_fd(p)?))
}

/// Sets the heap's size in an opened skeleton.
macro_rules! heap_size {
    ($open:ident, $bytes:expr) => {
        $open.maps.ds_heap.set_max_entries(($bytes >> 12) as u32)?;
    };
}

/// Loads structure `s` built for variant `v` (the guard mode must be set).
fn load_impl(s: Structure, v: Variant, work: &WorkMaps, sz: Sizes) -> Result<Option<Impl>> {
    let hb = sz.heap_bytes();
    macro_rules! heap_impl {
        ($builder:path, $init:ident, $update:ident, $lookup:ident, $delete:ident, $clear:ident) => {{
            let sk = load_ds_skel!($builder, work, |open| {
                heap_size!(open, hb);
            })?;
            let ops = Ops {
                init: fd(&sk.progs.$init)?,
                update: fd(&sk.progs.$update)?,
                lookup: fd(&sk.progs.$lookup)?,
                delete: fd(&sk.progs.$delete)?,
                clear: fd(&sk.progs.$clear)?,
            };
            (ops, Box::new(sk) as Box<dyn Any>)
        }};
    }
    macro_rules! kernel_impl {
        ($builder:path, $update:ident, $delete:ident, $clear:ident $(, $lookup:ident)?) => {{
            let keys = sz.keys;
            let sk = load_ds_skel!($builder, work, |open| {
                maybe_size_bhash(&mut open.maps, keys)?;
            })?;
            #[allow(unused_mut)]
            let mut ops = Ops {
                init: None,
                update: fd(&sk.progs.$update)?,
                lookup: None,
                delete: fd(&sk.progs.$delete)?,
                clear: fd(&sk.progs.$clear)?,
            };
            $(ops.lookup = fd(&sk.progs.$lookup)?;)?
            (ops, Box::new(sk) as Box<dyn Any>)
        }};
    }
    if v == Variant::Native {
        let ds = match s {
            Structure::Rbtree => 1,
            Structure::Skiplist => 2,
            _ => return Ok(None),
        };
        if !native_available() {
            eprintln!(
                "skipping {}/native: the kernel has no bpf_kflex_bench_native() \
                 (build it with CONFIG_KFLEX_BENCH=y)",
                s.name()
            );
            return Ok(None);
        }
        // Check once that the native structures load.
        let sk = load_native(work, sz)?;
        drop(sk);
        let kind = Kind::Native(ds);
        return Ok(Some(Impl {
            variant: v,
            name: "native",
            kind,
            compare: Compare::Hits,
            _skel: Box::new(()),
        }));
    }
    let (ops, skel) = match (s, v) {
        (Structure::List, Variant::KFlex(_)) => heap_impl!(
            ds_list::DsListSkelBuilder,
            list_init,
            list_update,
            list_lookup,
            list_delete,
            list_clear
        ),
        (Structure::List, Variant::Arena) => heap_impl!(
            ds_list_arena::DsListArenaSkelBuilder,
            list_init,
            list_update,
            list_lookup,
            list_delete,
            list_clear
        ),
        (Structure::Rbtree, Variant::KFlex(_)) => heap_impl!(
            ds_rbtree::DsRbtreeSkelBuilder,
            rbt_init,
            rbt_update,
            rbt_lookup,
            rbt_delete,
            rbt_clear
        ),
        (Structure::Rbtree, Variant::Arena) => heap_impl!(
            ds_rbtree_arena::DsRbtreeArenaSkelBuilder,
            rbt_init,
            rbt_update,
            rbt_lookup,
            rbt_delete,
            rbt_clear
        ),
        (Structure::Hashmap, Variant::KFlex(_)) => heap_impl!(
            ds_hmap::DsHmapSkelBuilder,
            hmap_init,
            hmap_update,
            hmap_lookup,
            hmap_delete,
            hmap_clear
        ),
        (Structure::Hashmap, Variant::Arena) => heap_impl!(
            ds_hmap_arena::DsHmapArenaSkelBuilder,
            hmap_init,
            hmap_update,
            hmap_lookup,
            hmap_delete,
            hmap_clear
        ),
        (Structure::Skiplist, Variant::KFlex(_)) => heap_impl!(
            ds_skiplist::DsSkiplistSkelBuilder,
            skl_init,
            skl_update,
            skl_lookup,
            skl_delete,
            skl_clear
        ),
        (Structure::Skiplist, Variant::Arena) => heap_impl!(
            ds_skiplist_arena::DsSkiplistArenaSkelBuilder,
            skl_init,
            skl_update,
            skl_lookup,
            skl_delete,
            skl_clear
        ),
        (Structure::Cms, Variant::KFlex(_)) => heap_impl!(
            ds_sketch::DsSketchSkelBuilder,
            cms_init,
            cms_update,
            cms_lookup,
            cms_delete,
            cms_clear
        ),
        (Structure::Cms, Variant::Arena) => heap_impl!(
            ds_sketch_arena::DsSketchArenaSkelBuilder,
            cms_init,
            cms_update,
            cms_lookup,
            cms_delete,
            cms_clear
        ),
        (Structure::Cs, Variant::KFlex(_)) => heap_impl!(
            ds_sketch::DsSketchSkelBuilder,
            cs_init,
            cs_update,
            cs_lookup,
            cs_delete,
            cs_clear
        ),
        (Structure::Cs, Variant::Arena) => heap_impl!(
            ds_sketch_arena::DsSketchArenaSkelBuilder,
            cs_init,
            cs_update,
            cs_lookup,
            cs_delete,
            cs_clear
        ),
        (Structure::List, Variant::Kernel) => {
            kernel_impl!(ds_graph::DsGraphSkelBuilder, glist_update, glist_delete, glist_clear)
        }
        (Structure::Rbtree, Variant::Kernel) => {
            kernel_impl!(ds_graph::DsGraphSkelBuilder, grbt_update, grbt_delete, grbt_clear)
        }
        (Structure::Hashmap, Variant::Kernel) => kernel_impl!(
            ds_maps::DsMapsSkelBuilder,
            bhash_update,
            bhash_delete,
            bhash_clear,
            bhash_lookup
        ),
        (Structure::Cms, Variant::Kernel) => kernel_impl!(
            ds_maps::DsMapsSkelBuilder,
            acms_update,
            acms_delete,
            acms_clear,
            acms_lookup
        ),
        (Structure::Cs, Variant::Kernel) => {
            kernel_impl!(ds_maps::DsMapsSkelBuilder, acs_update, acs_delete, acs_clear, acs_lookup)
        }
        (Structure::Skiplist, Variant::Kernel) | (_, Variant::Native) => return Ok(None),
    };
    let compare = match v {
        // A BPF hash map's update does not say whether the key was new.
        Variant::Kernel if s == Structure::Hashmap => Compare::Hits,
        Variant::Kernel if !s.kernel_alternative().is_some_and(|k| k.1) => Compare::Nothing,
        _ => Compare::HitsAndSums,
    };
    Ok(Some(Impl {
        variant: v,
        name: variant_name(s, v),
        kind: Kind::Programs(ops),
        compare,
        _skel: skel,
    }))
}

/// Whether the running kernel has the native structures (CONFIG_KFLEX_BENCH).
fn native_available() -> bool {
    std::fs::read_to_string("/proc/kallsyms")
        .is_ok_and(|s| s.lines().any(|l| l.ends_with(" bpf_kflex_bench_native")))
}

/// Loads `native.bpf.c`, copies the workload's keys into its key array and
/// runs its nat_init.
fn load_native(work: &WorkMaps, sz: Sizes) -> Result<native::NativeSkel<'static>> {
    use libbpf_rs::{MapCore as _, MapFlags};

    let n = (3 * sz.ops) as usize;
    let storage = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = native::NativeSkelBuilder::default().open(storage)?;
    open.maps.nat_keys.set_max_entries(n as u32)?;
    open.maps.heap.set_max_entries((sz.heap_bytes() >> 12) as u32)?;
    let sk = open
        .load()
        .context("loading native.bpf.c (needs a kernel built with CONFIG_KFLEX_BENCH)")?;
    let idx: Vec<u8> = (0..n as u32).flat_map(u32::to_ne_bytes).collect();
    let keys: Vec<u8> =
        work.keys(0, n)?.iter().flat_map(|k| k.iter().flat_map(|w| w.to_ne_bytes())).collect();
    sk.maps
        .nat_keys
        .update_batch(&idx, &keys, n as u32, MapFlags::ANY, MapFlags::ANY)
        .context("copying the keys to nat_keys")?;
    // nat_init populates `count` bytes of the heap ahead, as the heap
    // structures' init programs do.
    let mut a = ds::NativeArgs { count: sz.reserve(), ..Default::default() };
    ds::run_ctx(sk.progs.nat_init.as_fd(), &mut a).context("nat_init")?;
    Ok(sk)
}

/// One repetition of the three phases on the native structure `nds`.
fn run_native_rep(nds: u64, work: &WorkMaps, sz: Sizes) -> Result<[Option<Phase>; 3]> {
    let sk = load_native(work, sz)?;
    let prog = sk.progs.nat_run.as_fd();
    let mut out = [None; 3];
    for (i, slot) in out.iter_mut().enumerate() {
        let start = i as u64 * sz.ops;
        let (mut found, mut time, mut off) = (0, Duration::ZERO, 0);
        while off < sz.ops {
            let n = sz.batch.min(sz.ops - off);
            let mut a = ds::NativeArgs {
                ds: nds,
                op: i as u64,
                first: start + off,
                count: n,
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

/// Sizes the BPF hash map of the ds_maps skeleton to the key set (other
/// skeletons have no such map).
trait MaybeBhash {
    fn size_bhash(&mut self, keys: u64) -> Result<()>;
}

impl MaybeBhash for ds_maps::OpenDsMapsMaps<'_> {
    fn size_bhash(&mut self, keys: u64) -> Result<()> {
        self.bhash.set_max_entries(keys.max(1) as u32)?;
        Ok(())
    }
}

impl MaybeBhash for ds_graph::OpenDsGraphMaps<'_> {
    fn size_bhash(&mut self, _keys: u64) -> Result<()> {
        Ok(())
    }
}

fn maybe_size_bhash(maps: &mut impl MaybeBhash, keys: u64) -> Result<()> {
    maps.size_bhash(keys)
}

/// The guard pass's counts per program, from the kernel log: the last
/// `kflex: prog=<name> range_analysis_call=<N> elided=<M>` line of each.
fn guard_lines() -> Result<HashMap<String, (u32, u32)>> {
    let out = std::process::Command::new("dmesg").output().context("running dmesg")?;
    ensure!(out.status.success(), "dmesg failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(parse_guard_lines(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_guard_lines(log: &str) -> HashMap<String, (u32, u32)> {
    let mut m = HashMap::new();
    for line in log.lines() {
        let Some(rest) = line.split("kflex: prog=").nth(1) else { continue };
        let mut w = rest.split_whitespace();
        let (Some(name), Some(n), Some(e)) = (w.next(), w.next(), w.next()) else { continue };
        let n = n.strip_prefix("range_analysis_call=").and_then(|x| x.parse().ok());
        let e = e.strip_prefix("elided=").and_then(|x| x.parse().ok());
        if let (Some(n), Some(e)) = (n, e) {
            m.insert(name.to_string(), (n, e));
        }
    }
    m
}

/// One row of the guard table.
#[derive(Debug, Clone)]
struct GuardRow {
    structure: Structure,
    op: &'static str,
    ours: Option<(u32, u32)>,
    paper: Option<(u32, u32)>,
}

fn guard_rows(s: Structure, log: &HashMap<String, (u32, u32)>) -> Vec<GuardRow> {
    OPS.iter()
        .enumerate()
        .map(|(i, op)| GuardRow {
            structure: s,
            op,
            ours: log.get(&format!("{}_{op}", s.prefix())).copied(),
            paper: s.paper().map(|p| p[i]),
        })
        .collect()
}

fn fmt_pair(p: Option<(u32, u32)>) -> String {
    p.map_or("-".into(), |(n, e)| format!("{n}/{e}"))
}

fn guard_table(rows: &[GuardRow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ =
        writeln!(out, "Guards (KFlex heap, guard mode 0): heap accesses decided / guards elided");
    let _ = writeln!(
        out,
        "{:<10} {:<7} {:>10} {:>8} {:>8}  {:>10}",
        "structure", "op", "ours", "guards", "elided%", "paper"
    );
    for r in rows {
        let (g, pct) = match r.ours {
            Some((n, e)) if n > 0 => {
                ((n - e).to_string(), format!("{:.0}%", 100.0 * e as f64 / n as f64))
            }
            Some((n, e)) => ((n - e).to_string(), "-".into()),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<7} {:>10} {:>8} {:>8}  {:>10}",
            r.structure.name(),
            r.op,
            fmt_pair(r.ours),
            g,
            pct,
            fmt_pair(r.paper)
        );
    }
    out
}

fn guards_json(rows: &[GuardRow]) -> serde_json::Value {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "structure": r.structure.name(),
                "op": r.op,
                "accesses": r.ours.map(|o| o.0),
                "elided": r.ours.map(|o| o.1),
                "paper_guards": r.paper.map(|p| p.0),
                "paper_elided": r.paper.map(|p| p.1),
            })
        })
        .collect()
}

/// Phases of one repetition: update, lookup, delete on their own key
/// streams (at 0, ops, 2 ops in the workload maps).
#[derive(Default, Clone, Copy, Debug)]
struct Phase {
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
        let arg = if matches!(imp.variant, Variant::KFlex(_)) { sz.reserve() } else { 0 };
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

fn pin_to(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning to CPU {cpu}"))
}

/// A data-structure benchmark unit: one structure, distribution and CPU
/// count, run for every variant.
#[derive(Clone, Copy, Debug)]
struct Unit {
    s: Structure,
    dist: Dist,
    cpus: usize,
}

impl Unit {
    fn group(self) -> String {
        if self.cpus > 1 {
            format!("{}-{}cpu", self.s.name(), self.cpus)
        } else {
            self.s.name().to_string()
        }
    }

    fn result_name(self, op: &str, variant: &str) -> String {
        format!("ds/{}/{op}/{}/{variant}", self.group(), self.dist.name())
    }

    /// Variants measured: on two CPUs only the hash map's KFlex, arena and
    /// BPF-map variants (the others are single-CPU structures).
    fn variants(self, modes: &[u32]) -> Vec<Variant> {
        let mut v: Vec<Variant> = if self.cpus > 1 {
            vec![Variant::KFlex(0)]
        } else {
            modes.iter().map(|&m| Variant::KFlex(m)).collect()
        };
        v.push(Variant::Arena);
        if self.s.kernel_alternative().is_some() {
            v.push(Variant::Kernel);
        }
        if self.cpus == 1 && matches!(self.s, Structure::Rbtree | Structure::Skiplist) {
            v.push(Variant::Native);
        }
        v
    }

    /// Result names this unit can produce.
    fn names(self, modes: &[u32]) -> Vec<String> {
        let mut names = Vec::new();
        for v in self.variants(modes) {
            for op in OPS {
                if v == Variant::Kernel && op == "lookup" && !has_kernel_lookup(self.s) {
                    continue;
                }
                names.push(self.result_name(op, variant_name(self.s, v)));
            }
        }
        names
    }
}

fn has_kernel_lookup(s: Structure) -> bool {
    !matches!(s, Structure::List | Structure::Rbtree)
}

fn units(zipf: f64) -> Vec<Unit> {
    let mut u = Vec::new();
    for s in STRUCTURES {
        for dist in [Dist::Uniform, Dist::Zipf(zipf)] {
            u.push(Unit { s, dist, cpus: 1 });
        }
    }
    for dist in [Dist::Uniform, Dist::Zipf(zipf)] {
        u.push(Unit { s: Structure::Hashmap, dist, cpus: 2 });
    }
    u
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
struct DsRun<'a> {
    cli: &'a Cli,
    sz: Sizes,
    modes: Vec<u32>,
    work: WorkMaps,
    keys: KeySet,
    /// Names selected by the filter.
    wanted: Vec<String>,
    results: Vec<bench::Result>,
    guards: Vec<GuardRow>,
    notes: Vec<String>,
}

impl DsRun<'_> {
    /// Runs every unit of structure `s` (loading its variants once).
    fn run_structure(&mut self, s: Structure, units: &[Unit]) -> Result<()> {
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
                let needed = OPS
                    .iter()
                    .any(|op| self.wanted.contains(&u.result_name(op, variant_name(s, v))));
                if needed && !variants.contains(&v) {
                    variants.push(v);
                }
            }
        }
        let mut impls = Vec::new();
        for &v in &variants {
            eprintln!("loading {} ({})", s.name(), variant_name(s, v));
            if let Variant::KFlex(m) = v {
                set_guard_mode(m)?;
            }
            let loaded = load_impl(s, v, &self.work, self.sz);
            set_guard_mode(0)?;
            let Some(imp) = loaded.with_context(|| format!("{} ({})", s.name(), v.name(s)))? else {
                continue;
            };
            if v == Variant::KFlex(0) {
                self.guards.extend(guard_rows(s, &guard_lines()?));
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
        for rep in 0..=self.cli.reps {
            eprint!("{} rep {rep}/{}:", u.result_name("*", "*"), self.cli.reps);
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
                let ns = bench::median(&mut samples[v][i]);
                line.push_str(&format!(" {op}={ns:.1}"));
                let base = u.result_name(op, "kflex");
                self.results.push(bench::Result {
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

impl Variant {
    fn name(self, s: Structure) -> &'static str {
        variant_name(s, self)
    }
}

fn ds_notes(sz: Sizes, cli: &Cli) -> Vec<String> {
    vec![
        format!(
            "ds: {} keys of 32 B, values of 64 B; per repetition {} updates, then {} lookups, \
             then {} deletes, each phase on its own key stream (uniform, or Zipf({})), seed {}; \
             {} operations per BPF_PROG_TEST_RUN; median of {} repetitions after a warm-up",
            sz.keys, sz.ops, sz.ops, sz.ops, cli.zipf, cli.seed, sz.batch, cli.reps
        ),
        format!(
            "list: update pushes to the front, lookup looks at most {} nodes from the front, \
             delete pops the back",
            sz.list_walk
        ),
        "rbtree/bpf-graph: 6.12's bpf_rbtree cannot search: update inserts without looking \
         for the key (duplicates stay), delete removes the smallest key, no lookup"
            .into(),
        "hashmap/bpf-hash: preallocated BPF_MAP_TYPE_HASH; cms, cs/bpf-array: the same \
         sketch code on a BPF array"
            .into(),
        "kflex-perf: no guards on loads; kflex-noguard: no guards (measurement only); \
         kflex-noelide: a guard on every access"
            .into(),
        "hashmap-2cpu: each phase split over two threads pinned to CPUs 0 and 1 (bucket \
         locks; lookups lock-free)"
            .into(),
        "native: the rbtree and skiplist of the KFlex component in Rust over the same heap, \
         one bpf_kflex_bench_native() call per operation (validated accesses)"
            .into(),
    ]
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("kflex-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if cli.reps == 0 || cli.ops < 256 || cli.alloc_ops < 256 || cli.guard_ops < 1024 {
        bail!(
            "--reps must be at least 1, --ops and --alloc-ops at least 256, --guard-ops at least 1024"
        );
    }
    ensure!(cli.keys >= 1 && cli.keys <= 1 << 24, "--keys must be 1 to 2^24");
    ensure!(cli.ops <= 1 << 24, "--ops must be at most 2^24");
    ensure!(cli.batch >= 1, "--batch must be at least 1");
    ensure!(cli.zipf > 0.0, "--zipf must be positive");
    let sz = Sizes { ops: cli.ops, keys: cli.keys, batch: cli.batch, list_walk: cli.list_walk };
    let listing = cli.list && !nix::unistd::geteuid().is_root();
    // Guard modes are probed (as root) so that --list names the variants
    // this kernel offers.
    let modes = if listing { vec![0] } else { guard_modes() };
    let mut alloc = alloc_cases(cli.alloc_ops);
    let mut guard_names: Vec<String> = ["chase", "scatter"]
        .iter()
        .flat_map(|c| guardbench::VARIANTS.iter().map(move |(v, _)| format!("guards/{c}/{v}")))
        .collect();
    let units = units(cli.zipf);
    let mut ds_names: Vec<String> = units.iter().flat_map(|u| u.names(&modes)).collect();
    if let Some(f) = &cli.filter {
        alloc.retain(|c| c.name.contains(f.as_str()));
        guard_names.retain(|n| n.contains(f.as_str()));
        ds_names.retain(|n| n.contains(f.as_str()));
    }
    if cli.guard_table {
        alloc.clear();
        guard_names.clear();
        ds_names.clear();
    }
    if cli.list {
        for n in alloc.iter().map(|c| &c.name).chain(&guard_names).chain(&ds_names) {
            println!("{n}");
        }
        return Ok(());
    }
    if alloc.is_empty() && guard_names.is_empty() && ds_names.is_empty() && !cli.guard_table {
        bail!("no benchmark matches the filter (see --list)");
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "kflex-bench must run as root (it loads BPF programs); try `make vm CMD=kflex-bench`"
        );
    }
    Status::read_from(Path::new(STATUS_PATH))?.require_active()?;
    pin_to(0)?;

    let mut results = Vec::new();
    if !guard_names.is_empty() {
        let n = guard_names.len();
        let mut i = 0;
        results = guardbench::run(cli.guard_ops, cli.reps, cli.filter.as_deref(), |r| {
            i += 1;
            eprintln!("[guards {i}/{n}] {} {:.1} ns/op", r.name, r.ns_per_op);
        })?;
    }
    run_alloc(&alloc, cli.reps, &mut results)?;

    let mut guards = Vec::new();
    let mut notes = Vec::new();
    if cli.guard_table {
        let work = WorkMaps::new(256)?;
        let small = Sizes { ops: 256, keys: 256, ..sz };
        for s in STRUCTURES {
            if s == Structure::Cs {
                // Loaded with the count-min sketch (same skeleton).
                guards.extend(guard_rows(s, &guard_lines()?));
                continue;
            }
            set_guard_mode(0)?;
            let imp = load_impl(s, Variant::KFlex(0), &work, small)?;
            guards.extend(guard_rows(s, &guard_lines()?));
            drop(imp);
        }
        print!("{}", guard_table(&guards));
        return Ok(());
    }
    if !ds_names.is_empty() {
        let work = WorkMaps::new((3 * cli.ops) as usize)?;
        let mut r = DsRun {
            cli: &cli,
            sz,
            modes,
            work,
            keys: KeySet::new(cli.seed, cli.keys),
            wanted: ds_names,
            results: Vec::new(),
            guards: Vec::new(),
            notes: ds_notes(sz, &cli),
        };
        for s in STRUCTURES {
            r.run_structure(s, &units)?;
        }
        results.extend(r.results);
        guards = r.guards;
        notes = r.notes;
    }
    // One guard row per structure and operation (a structure loaded for
    // several units reports once).
    let mut seen = BTreeMap::new();
    guards.retain(|g| seen.insert((g.structure, g.op), ()).is_none());

    let uname = nix::sys::utsname::uname()?;
    let ctx = serde_json::json!({
        "kernel": uname.release().to_string_lossy(),
        "kflex": std::fs::read_to_string(STATUS_PATH).unwrap_or_default().trim(),
        "ops": cli.ops,
        "alloc_ops": cli.alloc_ops,
        "guard_ops": cli.guard_ops,
        "keys": cli.keys,
        "reps": cli.reps,
        "batch": cli.batch,
        "seed": cli.seed,
        "zipf": cli.zipf,
        "notes": notes,
        "guards": guards_json(&guards),
        "note": "TCG guest: compare ratios within one run only",
    });
    let json = bench::json(&results, ctx);
    if let Some(path) = &cli.json_file {
        std::fs::write(path, format!("{json}\n")).with_context(|| format!("writing {path}"))?;
    }
    if cli.json {
        println!("{json}");
    } else {
        print!("{}", bench::table(&results));
        if !notes.is_empty() {
            println!();
            for n in &notes {
                println!("note: {n}");
            }
        }
        if !guards.is_empty() {
            println!();
            print!("{}", guard_table(&guards));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_lines_parse() {
        let log = "[    1.0] kflex: prog=list_update range_analysis_call=15 elided=15\n\
                   [    2.0] other line\n\
                   [    3.0] kflex: prog=list_update range_analysis_call=9 elided=2\n\
                   [    4.0] kflex: prog=rbt_lookup range_analysis_call=13 elided=x\n";
        let m = parse_guard_lines(log);
        assert_eq!(m.get("list_update"), Some(&(9, 2)));
        assert_eq!(m.get("rbt_lookup"), None);
        let rows = guard_rows(Structure::List, &m);
        assert_eq!(rows[0].ours, Some((9, 2)));
        assert_eq!(rows[0].paper, Some((4, 4)));
        assert_eq!(rows[1].ours, None);
        let t = guard_table(&rows);
        assert!(t.contains("9/2") && t.contains("4/4") && t.contains("22%"), "{t}");
    }

    #[test]
    fn names_and_variants() {
        let u = Unit { s: Structure::Rbtree, dist: Dist::Zipf(0.99), cpus: 1 };
        let names = u.names(&[0, 1]);
        assert!(names.contains(&"ds/rbtree/update/zipf/kflex".to_string()));
        assert!(names.contains(&"ds/rbtree/lookup/zipf/kflex-perf".to_string()));
        assert!(names.contains(&"ds/rbtree/delete/zipf/bpf-graph".to_string()));
        assert!(!names.contains(&"ds/rbtree/lookup/zipf/bpf-graph".to_string()));
        let u2 = Unit { s: Structure::Hashmap, dist: Dist::Uniform, cpus: 2 };
        let n2 = u2.names(&[0, 1, 2]);
        assert!(n2.contains(&"ds/hashmap-2cpu/lookup/uniform/bpf-hash".to_string()));
        assert!(!n2.iter().any(|n| n.contains("kflex-perf")));
        let sz = Sizes { ops: 100_000, keys: 100_000, batch: 1, list_walk: 1 };
        assert_eq!(sz.bucket_order(), 17);
        assert_eq!(sz.heap_bytes(), 64 << 20 << 2);
        assert!(sz.reserve() < sz.heap_bytes());
    }
}
