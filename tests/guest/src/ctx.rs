// SPDX-License-Identifier: GPL-2.0

//! The allocator called from the contexts that break careless allocators
//! (`tests/bpf/ctx_test.bpf.c`, `ctx_other.bpf.c`): tracing programs inside
//! the scheduler and the workqueue code, perf-event programs, and kprobes
//! inside the allocator itself, on the same heap and on another one. Each
//! runs on both CPUs under load, allocating until the heap is exhausted,
//! freeing, and allocating again; the guest must not hang (the run has a
//! timeout), the kernel log must stay clean (`tests/vm.sh` fails on any
//! lockdep report, warning or splat), exhaustion must fail cleanly, and
//! every object must come back.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use kflex_load::ds;
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    Link, MapCore,
};

use kflex_load::heapstats::{self, Heap as HeapStats};

use crate::util::*;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/ctx_test.skel.rs"));
}
mod skel_other {
    include!(concat!(env!("OUT_DIR"), "/ctx_other.skel.rs"));
}
use skel::*;
use skel_other::*;

/// Which program, and how to make it fire on both CPUs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hook {
    SchedSwitch,
    QueueWork,
    PerfEvent,
    /// kprobe inside the allocator, allocating from the same heap.
    AllocLockSameHeap,
    /// perf event while both CPUs run the inline fast path in the
    /// program's class.
    PerfEventOverFastPath,
    /// kprobes on `bpf_kflex_alloc()` and `bpf_kflex_free()`, which the
    /// inline paths call for what they cannot do, under the same load.
    KfuncProbes,
}

/// Seconds per phase: allocate until exhausted, free, allocate again.
const PHASES: [(i32, u64); 3] = [(1, 8), (2, 6), (1, 6)];

/// The per-CPU counters of a program (summed).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    hits: u64,
    ok: u64,
    fail: u64,
    freed: u64,
}

fn sum(a: &[u64]) -> u64 {
    a.iter().sum()
}

/// A heap's line of /proc/kflex/heaps, by map id.
fn stats_of(id: u32) -> Result<HeapStats> {
    heapstats::find(id)?.with_context(|| format!("heap {id} not in /proc/kflex/heaps"))
}

/// Sets the flag when dropped: the load threads of a scope stop however the
/// scope's body ends (an early error return would otherwise wait for them
/// forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `work(cpu)` on CPU 0 and CPU 1 until `stop` is set.
fn load_on_both_cpus<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    stop: &'s AtomicBool,
    work: impl Fn(u64) -> Result<()> + Send + Sync + Copy + 's,
) -> Vec<std::thread::ScopedJoinHandle<'s, Result<()>>> {
    (0..2)
        .map(|cpu| {
            s.spawn(move || -> Result<()> {
                pin_to(cpu)?;
                while !stop.load(Ordering::Relaxed) {
                    work(cpu as u64)?;
                }
                Ok(())
            })
        })
        .collect()
}

/// One round of allocation churn on the heap of program `churn` (a raw
/// descriptor of a live skeleton's program) in pointer array `slot`.
fn churn_once(churn: i32, slot: u64) -> Result<()> {
    let mut a = [1u64, slot, 0];
    // SAFETY: the skeleton owning the program outlives its load threads.
    ds::run_ctx(unsafe { BorrowedFd::borrow_raw(churn) }, &mut a)?;
    Ok(())
}

/// Runs a syscall program that takes no arguments.
fn run_plain(prog: BorrowedFd<'_>) -> Result<()> {
    let mut unused = [0u64; 1];
    ds::run_ctx(prog, &mut unused)?;
    Ok(())
}

/// Opens a perf event on `cpu` that fires often: a hardware cycle counter
/// (NMI) if the CPU has a PMU, else the software CPU clock (hard interrupt).
fn perf_event(cpu: i32) -> Result<(OwnedFd, &'static str)> {
    for (kind, config, what) in [
        (
            libbpf_rs::libbpf_sys::PERF_TYPE_HARDWARE,
            libbpf_rs::libbpf_sys::PERF_COUNT_HW_CPU_CYCLES,
            "NMI (cycles)",
        ),
        (
            libbpf_rs::libbpf_sys::PERF_TYPE_SOFTWARE,
            libbpf_rs::libbpf_sys::PERF_COUNT_SW_CPU_CLOCK,
            "hard interrupt (cpu-clock)",
        ),
    ] {
        // SAFETY: zeroed is a valid perf_event_attr.
        let mut attr: libbpf_rs::libbpf_sys::perf_event_attr = unsafe { std::mem::zeroed() };
        attr.size = size_of::<libbpf_rs::libbpf_sys::perf_event_attr>() as u32;
        attr.type_ = kind;
        attr.config = config as u64;
        // Sample often: every 100,000 cycles, or 100 us of CPU clock.
        attr.__bindgen_anon_1.sample_period = 100_000;
        // SAFETY: a valid attr; pid -1 with a CPU is a per-CPU event.
        let fd = unsafe {
            libc_perf_event_open(
                &mut attr,
                -1,
                cpu,
                -1,
                libbpf_rs::libbpf_sys::PERF_FLAG_FD_CLOEXEC as u64,
            )
        };
        if fd >= 0 {
            // SAFETY: a new descriptor we own.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd as i32) }, what));
        }
    }
    anyhow::bail!("perf_event_open failed for both the cycle counter and the CPU clock")
}

/// `perf_event_open(2)` (libc has no wrapper).
///
/// # Safety
///
/// `attr` must be a valid, initialised attribute structure.
unsafe fn libc_perf_event_open(
    attr: *mut libbpf_rs::libbpf_sys::perf_event_attr,
    pid: i32,
    cpu: i32,
    group: i32,
    flags: u64,
) -> i64 {
    // SAFETY: per the contract; the other arguments are plain integers.
    unsafe { nix::libc::syscall(nix::libc::SYS_perf_event_open, attr, pid, cpu, group, flags) }
}

/// One hook: load, attach, drive the phases under load, detach, free what is
/// left, check the heap's accounting.
fn exercise(hook: Hook) -> Result<()> {
    ensure_kflex()?;
    let mut skel =
        CtxTestSkelBuilder::default().open(skel_storage())?.load().context("loading ctx_test")?;
    let id = skel.maps.heap.info()?.info.id;
    let mut kind = "";
    let mut links: Vec<Link> = Vec::new();
    let mut _perf_fds = Vec::new();
    match hook {
        Hook::SchedSwitch => links.push(skel.progs.on_sched_switch.attach()?),
        Hook::QueueWork => links.push(skel.progs.on_queue_work.attach()?),
        Hook::AllocLockSameHeap => links.push(skel.progs.on_alloc_lock.attach()?),
        Hook::KfuncProbes => {
            links.push(skel.progs.on_alloc_kfunc.attach()?);
            links.push(skel.progs.on_free_kfunc.attach()?);
        }
        Hook::PerfEvent | Hook::PerfEventOverFastPath => {
            for cpu in 0..2 {
                let (fd, what) = perf_event(cpu)?;
                kind = what;
                links.push(skel.progs.on_perf_event.attach_perf_event(fd.as_raw_fd())?);
                _perf_fds.push(fd);
            }
        }
    }
    let churn = skel.progs.churn.as_fd().as_raw_fd();
    let churn_nodes = skel.progs.churn_nodes.as_fd().as_raw_fd();
    let stop = AtomicBool::new(false);
    let mut per_phase = Vec::new();
    std::thread::scope(|s| -> Result<()> {
        let _stop = StopOnDrop(&stop);
        let workers = match hook {
            // Context switches: short sleeps on both CPUs.
            Hook::SchedSwitch | Hook::PerfEvent => load_on_both_cpus(s, &stop, |_| {
                std::thread::sleep(Duration::from_micros(50));
                Ok(())
            }),
            // Work items: freeing a BPF map queues one.
            Hook::QueueWork => load_on_both_cpus(s, &stop, |_| {
                // SAFETY: plain map creation; the descriptor is closed
                // right away by OwnedFd.
                let fd = unsafe {
                    libbpf_rs::libbpf_sys::bpf_map_create(
                        libbpf_rs::libbpf_sys::BPF_MAP_TYPE_ARRAY,
                        std::ptr::null(),
                        4,
                        8,
                        1,
                        std::ptr::null(),
                    )
                };
                ensure!(fd >= 0, "bpf_map_create: {fd}");
                // SAFETY: a new descriptor we own.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                Ok(())
            }),
            // The allocator taking its locks: churn on the same heap.
            Hook::AllocLockSameHeap => {
                load_on_both_cpus(s, &stop, move |cpu| churn_once(churn, cpu))
            }
            Hook::PerfEventOverFastPath | Hook::KfuncProbes => {
                load_on_both_cpus(s, &stop, move |cpu| churn_once(churn_nodes, cpu))
            }
        };
        for (i, (mode, secs)) in PHASES.into_iter().enumerate() {
            if hook == Hook::AllocLockSameHeap && i == 1 {
                // Nested allocations all fail, so give the nested frees
                // something to free: nodes allocated from user context.
                let mut a = [2000u64, 0, 0];
                eprintln!("ctx {hook:?}: filling");
                ds::run_ctx(skel.progs.fill.as_fd(), &mut a)?;
                eprintln!("ctx {hook:?}: filled");
            }
            let bss = skel.maps.bss_data.as_deref_mut().context("bss")?;
            bss.mode = mode;
            std::thread::sleep(Duration::from_secs(secs));
            let bss = skel.maps.bss_data.as_deref().context("bss")?;
            per_phase.push(Counts {
                hits: sum(&bss.hits),
                ok: sum(&bss.ok),
                fail: sum(&bss.nfail),
                freed: sum(&bss.freed),
            });
            eprintln!("ctx {hook:?}: phase {i} (mode {mode}): {:?}", per_phase[i]);
        }
        skel.maps.bss_data.as_deref_mut().context("bss")?.mode = 0;
        stop.store(true, Ordering::Relaxed);
        eprintln!("ctx {hook:?}: stopping the load");
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        }
        Ok(())
    })?;
    drop(links);
    run_plain(skel.progs.free_all.as_fd())?;
    let [a, f, b] = [per_phase[0], per_phase[1], per_phase[2]];
    println!("ctx {hook:?} {kind}: after alloc {a:?}; after free {f:?}; after realloc {b:?}");
    let st = wait_settled(id)?;
    println!("ctx {hook:?}: heap {st:?}");
    ensure!(a.hits > 0, "{hook:?}: the program never ran");
    if hook == Hook::AllocLockSameHeap {
        // Always nested inside the allocator of its own heap: every
        // allocation fails cleanly, every free is deferred and completed.
        ensure!(a.ok == 0 && a.fail > 0, "{hook:?}: nested allocations {a:?}");
        ensure!(f.freed > 0, "{hook:?}: no nested free: {f:?}");
        ensure!(st.get("frees_deferred") > 0, "{hook:?}: no free was deferred: {st:?}");
    } else {
        ensure!(a.fail > 0, "{hook:?}: the 1 MiB heap was never exhausted: {a:?}");
        ensure!(f.freed > 0, "{hook:?}: nothing freed in the free phase: {f:?}");
        ensure!(b.ok > f.ok, "{hook:?}: allocations did not succeed again after frees: {b:?}");
    }
    check_balanced(&st)?;
    if hook == Hook::PerfEventOverFastPath {
        // Interrupts landed inside the interrupted run's fast path: the
        // program's own fast path found the magazine taken and called the
        // kfunc, whose slow path found it taken too, and went on without it.
        ensure!(st.get("fast_busy") > 0, "{hook:?}: no magazine was ever found taken: {st:?}");
    }
    Ok(())
}

/// Waits until deferred frees are completed and returns the heap's stats.
fn wait_settled(id: u32) -> Result<HeapStats> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = stats_of(id)?;
        if st.get("allocs") == st.get("frees") || Instant::now() > deadline {
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check_balanced(st: &HeapStats) -> Result<()> {
    ensure!(st.get("allocs") == st.get("frees"), "allocs != frees: {st:?}");
    ensure!(st.class_bytes() == 0 && st.get("large_bytes") == 0, "leak: {st:?}");
    for k in [
        "refused_foreign",
        "refused_misaligned",
        "refused_double",
        "corrupt_links",
        "frees_dropped",
    ] {
        ensure!(st.get(k) == 0, "{k} = {}: {st:?}", st.get(k));
    }
    Ok(())
}

pub fn alloc_in_sched_switch() -> Result<()> {
    exercise(Hook::SchedSwitch)
}

pub fn alloc_in_workqueue_tracepoint() -> Result<()> {
    exercise(Hook::QueueWork)
}

pub fn alloc_in_perf_event() -> Result<()> {
    exercise(Hook::PerfEvent)
}

/// A perf-event program allocates and frees nodes while both CPUs allocate
/// and free nodes of the same class through the inline fast path, so that
/// it interrupts runs that hold the magazine it needs.
pub fn alloc_in_perf_event_over_fast_path() -> Result<()> {
    exercise(Hook::PerfEventOverFastPath)
}

/// kprobe programs on the allocator's kfuncs allocate and free nodes each
/// time the inline paths of a churn in their class fall back to a call.
pub fn alloc_in_kprobes_on_the_kfuncs() -> Result<()> {
    exercise(Hook::KfuncProbes)
}

pub fn alloc_inside_allocator_same_heap() -> Result<()> {
    exercise(Hook::AllocLockSameHeap)
}

/// A kprobe inside the allocator of heap A allocates from heap B while two
/// CPUs churn on heap A: heap B's allocator runs nested and only tries its
/// locks; both heaps end balanced.
pub fn alloc_inside_allocator_other_heap() -> Result<()> {
    ensure_kflex()?;
    let skel_a = CtxTestSkelBuilder::default().open(skel_storage())?.load().context("ctx_test")?;
    let mut skel_b =
        CtxOtherSkelBuilder::default().open(skel_storage())?.load().context("ctx_other")?;
    let (id_a, id_b) = (skel_a.maps.heap.info()?.info.id, skel_b.maps.heap.info()?.info.id);
    let link = skel_b.progs.on_other_heap_lock.attach()?;
    let churn = skel_a.progs.churn.as_fd().as_raw_fd();
    let stop = AtomicBool::new(false);
    let mut per_phase = Vec::new();
    std::thread::scope(|s| -> Result<()> {
        let _stop = StopOnDrop(&stop);
        let workers = load_on_both_cpus(s, &stop, move |cpu| churn_once(churn, cpu));
        for (mode, secs) in PHASES {
            skel_b.maps.bss_data.as_deref_mut().context("bss")?.mode = mode;
            std::thread::sleep(Duration::from_secs(secs));
            let bss = skel_b.maps.bss_data.as_deref().context("bss")?;
            per_phase.push(Counts {
                hits: sum(&bss.hits),
                ok: sum(&bss.ok),
                fail: sum(&bss.nfail),
                freed: sum(&bss.freed),
            });
        }
        skel_b.maps.bss_data.as_deref_mut().context("bss")?.mode = 0;
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        }
        Ok(())
    })?;
    drop(link);
    run_plain(skel_b.progs.free_all.as_fd())?;
    println!("ctx other heap: phases {per_phase:?}");
    ensure!(
        per_phase[0].ok > 0,
        "no nested allocation from the other heap succeeded: {per_phase:?}"
    );
    for id in [id_a, id_b] {
        let st = wait_settled(id)?;
        println!("ctx other heap: heap {id} {st:?}");
        check_balanced(&st)?;
    }
    Ok(())
}
