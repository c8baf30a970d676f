// SPDX-License-Identifier: GPL-2.0

//! Allocator benchmarks (`bpf/bench/alloc.bpf.c`, built for the KFlex heap
//! and for the upstream arena):
//! - `alloc/{pairs,batch256}/<size>/<variant>` from `SEC("syscall")` and
//!   `alloc/xdp-pairs/<size>/<variant>` from XDP: the KFlex heap allocator
//!   (with its inline fast path, and `kflex-call` without it) against the
//!   BPF free list and bump allocator over the upstream arena and against
//!   `bpf_obj_new`/`bpf_obj_drop` (6.12's `bpf_mem_alloc`); every program
//!   passes its size as a constant, as `sizeof` does;
//! - `alloc/remote4096/<size>/<variant>`: 4096 objects allocated on CPU 0,
//!   then freed on CPU 1 (per object: one allocation and one remote free);
//! - `alloc/pairs/<size>/kmalloc`: `kmalloc`+`kfree` in a kernel loop, the
//!   native limit (no BPF, no kfunc calls);
//! - the cost of a KFlex pair taken apart: `alloc/kfunc-calls/kflex` (the
//!   two calls, returning at once), `alloc/parts/sections` (two allocator
//!   sections), `alloc/parts/sections+cache` (... taking the CPU's cache) and
//!   `alloc/parts/<size>/in-kernel-pair` (the whole pair in a kernel loop).

use std::{any::Any, io::Write as _, mem::MaybeUninit, os::fd::BorrowedFd, time::Duration};

use anyhow::{ensure, Context, Result};
use kflex_load::{
    ds::{self, Progs},
    skel::{alloc, alloc_arena},
};
use libbpf_rs::{
    skel::{OpenSkel, Skel, SkelBuilder},
    MapCore, MapFlags, MapHandle,
};

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
#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    KFlex,
    /// The KFlex heap without the inline fast path: the programs loaded
    /// with `kernel.kflex_fast_path=0`, so each allocation and free is a
    /// kfunc call (frees still try the magazine, in Rust, first).
    KFlexCall,
    ArenaFreeList,
    ArenaBump,
    /// `bpf_obj_new`/`bpf_obj_drop` (in the KFlex build).
    ObjNew,
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::KFlex,
        Variant::KFlexCall,
        Variant::ArenaFreeList,
        Variant::ArenaBump,
        Variant::ObjNew,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::KFlex => "kflex",
            Variant::KFlexCall => "kflex-call",
            Variant::ArenaFreeList => "arena-freelist",
            Variant::ArenaBump => "arena-bump",
            Variant::ObjNew => "bpf-obj-new",
        }
    }

    /// `bench_args.kind`.
    fn kind(self) -> u64 {
        match self {
            Variant::KFlex | Variant::KFlexCall | Variant::ArenaFreeList => 0,
            Variant::ArenaBump => 1,
            Variant::ObjNew => 2,
        }
    }

    /// Whether the variant has objects of `size` bytes (`bpf_mem_alloc`'s
    /// largest cache is 4096 bytes with its 8-byte header).
    fn has(self, size: u64) -> bool {
        self != Variant::ObjNew || size <= 256
    }
}

/// `enum kflex_bench_alloc_mode` (`bpf_kflex_bench_alloc()`).
const PART_SECTIONS: u64 = 0;
const PART_CACHE: u64 = 1;
const PART_PAIR: u64 = 2;
const PART_KMALLOC: u64 = 3;

/// Objects of one remote-free round (`REMOTE` in alloc.bpf.c).
const REMOTE: u64 = 4096;

/// The loaded allocator benchmark programs (KFlex heap and upstream
/// arena): `pairs`, `batches`, and on the KFlex heap `calls`.
struct Loaded {
    kflex: Progs,
    /// The KFlex build loaded without the inline fast path.
    kflex_call: Progs,
    arena: Progs,
    /// `xdp_args` of the two KFlex loads.
    xdp_args: MapHandle,
    xdp_args_call: MapHandle,
    /// Map id of the KFlex heap (for its statistics).
    heap_id: u32,
    /// The skeletons (maps stay alive with them).
    _skels: [Box<dyn Any>; 3],
}

/// `kernel.kflex_fast_path`, which the verifier reads at load time.
const FAST_PATH: &str = "/proc/sys/kernel/kflex_fast_path";

/// Loads the KFlex build of the benchmark, with the inline fast path if
/// `fast`.
fn load_kflex(fast: bool) -> Result<alloc::AllocSkel<'static>> {
    let old = std::fs::read_to_string(FAST_PATH)
        .with_context(|| format!("reading {FAST_PATH} (a kernel without KFlex's fast path?)"))?;
    std::fs::write(FAST_PATH, if fast { "1" } else { "0" })
        .with_context(|| format!("writing {FAST_PATH}"))?;
    let store = Box::leak(Box::new(MaybeUninit::uninit()));
    let loaded = alloc::AllocSkelBuilder::default().open(store).and_then(|mut open| {
        open.maps.heap.set_max_entries((1u64 << 30 >> 12) as u32)?;
        open.load()
    });
    std::fs::write(FAST_PATH, old.trim()).with_context(|| format!("restoring {FAST_PATH}"))?;
    loaded.context("loading the KFlex allocator benchmark")
}

impl Loaded {
    fn load() -> Result<Loaded> {
        let kflex = load_kflex(true)?;
        let kflex_call = load_kflex(false)?;
        let astore = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = alloc_arena::AllocArenaSkelBuilder::default().open(astore)?;
        open.maps.heap.set_max_entries((2u64 << 30 >> 12) as u32)?;
        let arena = open.load().context("loading the arena allocator benchmark")?;
        let l = Loaded {
            kflex: Progs::of(kflex.object())?,
            kflex_call: Progs::of(kflex_call.object())?,
            arena: Progs::of(arena.object())?,
            xdp_args: MapHandle::try_from(&kflex.maps.xdp_args)?,
            xdp_args_call: MapHandle::try_from(&kflex_call.maps.xdp_args)?,
            heap_id: kflex.maps.heap.info()?.info.id,
            _skels: [Box::new(kflex), Box::new(kflex_call), Box::new(arena)],
        };
        // Populate the KFlex heaps ahead so that the benchmark measures the
        // allocator, not the background worker.
        for progs in [&l.kflex, &l.kflex_call] {
            let (a, _) =
                run_prog(progs.get("prepare")?, Args { n: 256 << 20, ..Default::default() })?;
            ensure!(a.ret == 0, "bpf_kflex_reserve failed: {}", a.ret as i64);
        }
        Ok(l)
    }

    /// Program `name` of variant `v`'s build.
    fn prog(&self, v: Variant, name: &str) -> Result<BorrowedFd<'_>> {
        match v {
            Variant::KFlex | Variant::ObjNew => self.kflex.get(name),
            Variant::KFlexCall => self.kflex_call.get(name),
            Variant::ArenaFreeList | Variant::ArenaBump => self.arena.get(name),
        }
    }

    /// Runs `xdp_pairs` of variant `v`'s KFlex build once on a 64-byte
    /// packet with `args`; returns the updated arguments and the wall time
    /// of the run.
    fn run_xdp(&self, v: Variant, args: Args) -> Result<(Args, Duration)> {
        use std::os::fd::AsRawFd;
        let map = if v == Variant::KFlexCall { &self.xdp_args_call } else { &self.xdp_args };
        let key = 0u32.to_ne_bytes();
        map.update(&key, as_bytes(&args), MapFlags::ANY)?;
        let prog = self.prog(v, "xdp_pairs")?;
        let pkt = [0u8; 64];
        // SAFETY: zeroed options are valid; `pkt` outlives the call.
        let mut opts = unsafe { std::mem::zeroed::<libbpf_rs::libbpf_sys::bpf_test_run_opts>() };
        opts.sz = std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_test_run_opts>() as _;
        opts.data_in = pkt.as_ptr().cast();
        opts.data_size_in = pkt.len() as u32;
        opts.repeat = 1;
        let t = std::time::Instant::now();
        // SAFETY: see above; the descriptor is a live program.
        let r =
            unsafe { libbpf_rs::libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
        let elapsed = t.elapsed();
        ensure!(r == 0, "BPF_PROG_TEST_RUN: {}", std::io::Error::from_raw_os_error(-r));
        ensure!(opts.retval == 2, "xdp_pairs returned {} (cancelled?)", opts.retval);
        let out = map.lookup(&key, MapFlags::ANY)?.context("xdp_args has no entry 0")?;
        ensure!(out.len() == std::mem::size_of::<Args>(), "xdp_args: {} bytes", out.len());
        // SAFETY: `Args` is plain old data of exactly these many bytes.
        let args = unsafe { std::ptr::read_unaligned(out.as_ptr().cast::<Args>()) };
        Ok((args, elapsed))
    }
}

/// The bytes of `a` (plain old data without padding).
fn as_bytes(a: &Args) -> &[u8] {
    // SAFETY: `Args` is four u64s: no padding, every byte initialised.
    unsafe {
        std::slice::from_raw_parts((a as *const Args).cast::<u8>(), std::mem::size_of::<Args>())
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
            for v in Variant::ALL.into_iter().filter(|v| v.has(size)) {
                let name = format!("alloc/{pattern}/{size}/{}", v.name());
                let baseline = match v {
                    Variant::KFlex => None,
                    _ => Some(format!("alloc/{pattern}/{size}/kflex")),
                };
                let kind = v.kind();
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
    // Remote frees: allocate on CPU 0, free on CPU 1.
    for size in [16u64, 64, 256] {
        for v in [Variant::KFlex, Variant::KFlexCall, Variant::ArenaFreeList] {
            cases.push(Case {
                name: format!("alloc/remote{REMOTE}/{size}/{}", v.name()),
                baseline: (v != Variant::KFlex)
                    .then(|| format!("alloc/remote{REMOTE}/{size}/kflex")),
                ops,
                run: Box::new(move |l: &Loaded| {
                    let rounds = ops.div_ceil(REMOTE).max(1);
                    let args = Args { size, n: REMOTE, kind: v.kind(), ret: 0 };
                    let mut total = Duration::ZERO;
                    for _ in 0..rounds {
                        crate::pin_to(0)?;
                        let (a, t) = run_prog(l.prog(v, "remote_alloc")?, args)?;
                        ensure!(a.ret == 0, "{} allocations failed", a.ret);
                        crate::pin_to(1)?;
                        let (_, u) = run_prog(l.prog(v, "remote_free")?, args)?;
                        total += t + u;
                    }
                    crate::pin_to(0)?;
                    Ok(total.as_nanos() as f64 / (rounds * REMOTE) as f64)
                }),
            });
        }
    }
    // From XDP: the arena's BPF allocators need sleepable programs on 6.12
    // (bpf_arena_alloc_pages), so only the KFlex heap and bpf_obj_new.
    for size in [16u64, 64, 256, 4096] {
        for v in [Variant::KFlex, Variant::KFlexCall, Variant::ObjNew]
            .into_iter()
            .filter(|v| v.has(size))
        {
            cases.push(Case {
                name: format!("alloc/xdp-pairs/{size}/{}", v.name()),
                baseline: (v != Variant::KFlex).then(|| format!("alloc/xdp-pairs/{size}/kflex")),
                ops,
                run: Box::new(move |l: &Loaded| {
                    let (a, t) = l.run_xdp(v, Args { size, n: ops, kind: v.kind(), ret: 0 })?;
                    ensure!(a.ret == 0, "{} allocations failed", a.ret);
                    Ok(t.as_nanos() as f64 / ops as f64)
                }),
            });
        }
    }
    // The native limit, and the pair taken apart.
    let part = |name: String, baseline: String, mode: u64, size: u64| Case {
        name,
        baseline: Some(baseline),
        ops,
        run: Box::new(move |l: &Loaded| {
            let prog = l.prog(Variant::KFlex, "parts")?;
            let (a, t) = run_prog(prog, Args { size, n: ops, kind: mode, ret: 0 })?;
            ensure!(a.ret == 0, "bpf_kflex_bench_alloc: {}", a.ret as i64);
            Ok(t.as_nanos() as f64 / ops as f64)
        }),
    };
    for size in [16u64, 64, 256, 4096] {
        let base = format!("alloc/pairs/{size}/kflex");
        cases.push(part(format!("alloc/pairs/{size}/kmalloc"), base.clone(), PART_KMALLOC, size));
        cases.push(part(format!("alloc/parts/{size}/in-kernel-pair"), base, PART_PAIR, size));
    }
    let base = "alloc/pairs/64/kflex".to_string();
    cases.push(part("alloc/parts/sections".into(), base.clone(), PART_SECTIONS, 64));
    cases.push(part("alloc/parts/sections+cache".into(), base, PART_CACHE, 64));
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

/// Arguments of the fragmentation program (`struct frag_args`).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct FragArgs {
    seed: u64,
    n: u64,
    live: u64,
    peak_live: u64,
    pages: u64,
    peak_pages: u64,
    fails: u64,
}

/// Operations of one run of `frag` (well within a run's budget).
const FRAG_CHUNK: u64 = 200_000;

/// One row of the fragmentation table.
pub struct FragRow {
    pub variant: &'static str,
    pub ops: u64,
    /// Peak of the requested bytes of live objects.
    pub peak_live: u64,
    /// Peak of the memory the allocator held (pages it carved or handed out).
    pub peak_held: u64,
    pub fails: u64,
}

/// The kernel's slab memory now (`Slab:` of /proc/meminfo), in bytes.
fn slab_bytes() -> Result<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let kib = m
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no Slab: line in /proc/meminfo")?;
    Ok(kib * 1024)
}

/// The fragmentation workload (`frag` in alloc.bpf.c): `ops` random
/// allocations and frees of memcached-like sizes over 65,536 slots, from
/// the same seed, on the KFlex heap, with the BPF free list on the
/// upstream arena and with `bpf_obj_new` (`frag_objnew`), each on a fresh
/// load. The memory held is sampled after every run of the program
/// ([`FRAG_CHUNK`] operations): the KFlex heap's populated pages (less its
/// reserve and user pages), the free list's pages, and for `bpf_obj_new`
/// the growth of the kernel's slab memory (`bpf_mem_alloc` takes its
/// objects from the kmalloc caches; other slab users add noise).
pub fn fragmentation(ops: u64, seed: u64) -> Result<Vec<FragRow>> {
    let mut rows = Vec::new();
    for v in [Variant::KFlex, Variant::ArenaFreeList, Variant::ObjNew] {
        let l = Loaded::load()?;
        let held = |a: &FragArgs| -> Result<u64> {
            Ok(match v {
                Variant::KFlex => crate::heapstats_held(l.heap_id)?,
                Variant::ObjNew => slab_bytes()?,
                _ => a.peak_pages * 4096,
            })
        };
        let mut a = FragArgs { seed: seed | 1, ..Default::default() };
        // (the free list's count starts at 0)
        let before = held(&a)?;
        let prog = if v == Variant::ObjNew { "frag_objnew" } else { "frag" };
        let (mut done, mut peak) = (0, 0);
        while done < ops {
            a.n = FRAG_CHUNK.min(ops - done);
            ds::run_ctx(l.prog(v, prog)?, &mut a)?;
            done += a.n;
            peak = peak.max(held(&a)?.saturating_sub(before));
        }
        rows.push(FragRow {
            variant: v.name(),
            ops,
            peak_live: a.peak_live,
            peak_held: peak,
            fails: a.fails,
        });
    }
    Ok(rows)
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
