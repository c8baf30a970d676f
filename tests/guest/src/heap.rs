// SPDX-License-Identifier: GPL-2.0

//! Extension heap and allocator tests (`tests/bpf/heap_test.bpf.c`).

use std::{
    collections::HashSet,
    os::fd::{AsFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::{
    libbpf_sys,
    skel::{OpenSkel, SkelBuilder},
    MapCore, ProgramInput,
};

use kflex_load::{guardmode::GuardMode, heapstats};

use crate::util::*;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/heap_test.skel.rs"));
}
use skel::*;

/// `BPF_F_MMAPABLE | BPF_F_KFLEX`, as `KFLEX_HEAP()` of `bpf/kflex.h` sets
/// them (from the kernel's UAPI header): read off the skeleton's heap map.
fn kflex_flags() -> Result<u32> {
    let open = HeapTestSkelBuilder::default().open(skel_storage())?;
    Ok(open.maps.heap.map_flags())
}
const GIB: u64 = 1 << 30;

/// Arguments of the syscall programs (`struct args`).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct Args {
    pub size: u64,
    pub n: u64,
    pub arg: u64,
    pub ret: u64,
}

/// A loaded heap_test skeleton with a heap of `size` bytes.
pub struct Loaded {
    pub skel: HeapTestSkel<'static>,
    pub size: u64,
}

impl Loaded {
    pub fn new(size: u64) -> Result<Loaded> {
        let mut open = HeapTestSkelBuilder::default().open(skel_storage())?;
        open.maps.heap.set_max_entries((size / 4096) as u32)?;
        let skel = open.load().context("loading heap_test")?;
        Ok(Loaded { skel, size })
    }

    /// Runs a syscall program with `args`; returns the updated args.
    pub fn run(&self, prog: &libbpf_rs::ProgramMut, mut args: Args) -> Result<Args> {
        // SAFETY: `Args` is plain old data.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(&mut args as *mut Args as *mut u8, size_of::<Args>())
        };
        let input = ProgramInput { context_in: Some(bytes), ..Default::default() };
        let out = prog
            .test_run(input)
            .with_context(|| format!("test_run {}", prog.name().to_string_lossy()))?;
        ensure!(out.return_value == 0, "program returned {}", out.return_value);
        Ok(args)
    }

    pub fn call(&self, prog: &libbpf_rs::ProgramMut, size: u64, n: u64, arg: u64) -> Result<u64> {
        Ok(self.run(prog, Args { size, n, arg, ret: 0 })?.ret)
    }

    /// Populates `bytes` ahead (bpf_kflex_reserve).
    pub fn reserve(&self, bytes: u64) -> Result<()> {
        let r = self.call(&self.skel.progs.reserve, 0, bytes, 0)? as i64;
        ensure!(r == 0, "bpf_kflex_reserve({bytes}) = {r}");
        Ok(())
    }

    pub fn bss(&self) -> &types::bss {
        self.skel.maps.bss_data.as_deref().expect("bss")
    }

    pub fn map_id(&self) -> Result<u32> {
        Ok(self.skel.maps.heap.info()?.info.id)
    }

    /// This heap's line of /proc/kflex/heaps.
    pub fn stats(&self) -> Result<HeapStats> {
        let id = self.map_id()?;
        heapstats::find(id)?.with_context(|| format!("heap {id} not in /proc/kflex/heaps"))
    }

    /// The program's .bss, writable (user space shares it with the program).
    pub fn bss_mut(&mut self) -> &mut types::bss {
        self.skel.maps.bss_data.as_deref_mut().expect("bss")
    }

    /// User address of the heap's first byte, from an allocated pointer.
    pub fn base_of(&self, ptr: u64) -> u64 {
        ptr & !(self.size - 1)
    }
}

/// One heap's line of /proc/kflex/heaps (the loader's parser).
pub use kflex_load::heapstats::Heap as HeapStats;

fn read_u64(addr: u64) -> u64 {
    // SAFETY: callers pass addresses inside the heap mapping of a live
    // skeleton in this process.
    unsafe { std::ptr::read_volatile(addr as *const u64) }
}

fn write_u64(addr: u64, v: u64) {
    // SAFETY: see `read_u64`.
    unsafe { std::ptr::write_volatile(addr as *mut u64, v) }
}

/// A list built by a syscall program is walked from user space through the
/// mapping; freeing it returns every byte.
pub fn list_walked_from_user_space() -> Result<()> {
    ensure_kflex()?;
    let h = Loaded::new(1 << 20)?;
    h.reserve(64 << 10)?;
    let n = 1000;
    let built = h.call(&h.skel.progs.build_list, 0, n, 5)?;
    ensure!(built == n, "built {built} of {n} nodes");
    let mut p = h.bss().list_head as u64;
    let base = h.base_of(p);
    let mut i = n;
    while p != 0 {
        ensure!(p >= base && p < base + h.size, "node {p:#x} outside the heap");
        i -= 1;
        let value = read_u64(p + 8);
        ensure!(value == i * 7 + 5, "node {i}: value {value}");
        p = read_u64(p);
    }
    ensure!(i == 0, "list ended {i} nodes early");
    let st = h.stats()?;
    ensure!(st.get("class16_bytes") == n * 16, "class16_bytes {}", st.get("class16_bytes"));
    let freed = h.call(&h.skel.progs.free_list, 0, 0, 0)?;
    ensure!(freed == n, "freed {freed}");
    let st = h.stats()?;
    ensure!(st.class_bytes() == 0, "bytes still allocated: {st:?}");
    ensure!(st.get("allocs") == n && st.get("frees") == n, "{st:?}");
    Ok(())
}

/// XDP programs allocate and free (test_run: real XDP context).
pub fn xdp_alloc_free_round_trips() -> Result<()> {
    ensure_kflex()?;
    let h = Loaded::new(1 << 20)?;
    h.reserve(64 << 10)?;
    let pkt = [0u8; 64];
    let run = |prog: &libbpf_rs::ProgramMut, repeat: u32| -> Result<()> {
        let input = ProgramInput { data_in: Some(&pkt), repeat, ..Default::default() };
        let out = prog.test_run(input)?;
        ensure!(out.return_value == 2, "XDP verdict {}", out.return_value);
        Ok(())
    };
    run(&h.skel.progs.xdp_alloc, 500)?;
    ensure!(h.bss().xdp_count == 500, "xdp_count {}", h.bss().xdp_count);
    let mut p = h.bss().xdp_head as u64;
    let mut seen = 0;
    while p != 0 {
        ensure!(read_u64(p + 8) == 64, "node value {}", read_u64(p + 8));
        p = read_u64(p);
        seen += 1;
    }
    ensure!(seen == 500, "walked {seen} nodes");
    run(&h.skel.progs.xdp_free, 500)?;
    ensure!(h.bss().xdp_count == 0, "xdp_count {}", h.bss().xdp_count);
    let st = h.stats()?;
    ensure!(st.class_bytes() == 0 && st.get("frees") == 500, "{st:?}");
    Ok(())
}

/// Creates a KFlex heap map directly; `Err(errno)` on failure.
fn libc_einval() -> i32 {
    nix::libc::EINVAL
}

fn create_heap(pages: u32) -> std::result::Result<OwnedFd, i32> {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        map_flags: kflex_flags().map_err(|_| libc_einval())?,
        ..Default::default()
    };
    // SAFETY: valid options; a NULL name is allowed.
    let fd = unsafe {
        libbpf_sys::bpf_map_create(
            libbpf_sys::BPF_MAP_TYPE_ARENA,
            std::ptr::null(),
            0,
            0,
            pages,
            &opts,
        )
    };
    if fd < 0 {
        Err(-fd)
    } else {
        // SAFETY: a new descriptor this function owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Valid sizes are any power of two from 64 KiB to 256 GiB; others are
/// refused with an error and a log line saying why.
pub fn heap_sizes_validated() -> Result<()> {
    ensure_kflex()?;
    for (pages, errno, why) in [
        (24u32, 22, "size is not a power of two"),
        (8, 22, "size is below 64 KiB"),
        (1 << 27, 7, "size is above 256 GiB"),
    ] {
        match create_heap(pages) {
            Ok(_) => bail!("heap of {pages} pages accepted"),
            Err(e) => ensure!(e == errno, "{pages} pages: errno {e}, want {errno}"),
        }
        let log = dmesg()?;
        ensure!(
            log.contains(&format!("heap of {pages} pages refused: {why}")),
            "no log line for {pages}"
        );
    }
    for size in [64u64 << 10, 4 * GIB, 64 * GIB, 256 * GIB] {
        let map = create_heap((size / 4096) as u32)
            .map_err(|e| anyhow::anyhow!("heap of {size} bytes: errno {e}"))?;
        // mmap places it at an address aligned to its size.
        let addr = unsafe {
            nix::sys::mman::mmap(
                None,
                std::num::NonZeroUsize::new(size as usize).context("size")?,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                map.as_fd(),
                0,
            )
        }
        .with_context(|| format!("mmap of a {size}-byte heap"))?;
        let a = addr.as_ptr() as u64;
        ensure!(a.is_multiple_of(size), "heap of {size} bytes mapped at {a:#x}");
        // Touch the first and the last page: populated on demand.
        write_u64(a + 4096, 0x1234);
        write_u64(a + size - 8, 0x5678);
        ensure!(read_u64(a + 4096) == 0x1234 && read_u64(a + size - 8) == 0x5678, "readback");
        // SAFETY: unmapping what was mapped above.
        unsafe { nix::sys::mman::munmap(addr, size as usize)? };
    }
    Ok(())
}

/// A 64 GiB heap used sparsely: user space and the program share pages
/// 40 GiB into it; an access to an unpopulated page reads 0
/// (kflex_fault_mode=1; in mode 0 it cancels the run, see
/// cancel::heap_faults_cancel), no oops.
pub fn big_heap_used_sparsely() -> Result<()> {
    ensure_kflex()?;
    let h = {
        let _faults = kflex_load::cancel::SysctlGuard::faults_cancel(false)?;
        Loaded::new(64 * GIB)?
    };
    h.reserve(64 << 10)?;
    ensure!(h.call(&h.skel.progs.alloc_n, 16, 1, 0)? == 1, "first allocation failed");
    let base = h.base_of(h.bss().ptrs[0] as u64);
    let far = base + 40 * GIB;
    write_u64(far, 0xfeed_f00d);
    ensure!(h.call(&h.skel.progs.peek, 0, 0, far)? == 0xfeed_f00d, "program misread user data");
    ensure!(h.call(&h.skel.progs.poke, 0, 77, far + 8)? == 77, "poke");
    ensure!(read_u64(far + 8) == 77, "user space does not see the program's write");
    // Unpopulated page: the load reads 0 through the exception table.
    ensure!(h.call(&h.skel.progs.peek, 0, 0, base + 50 * GIB)? == 0, "unpopulated read");
    let st = h.stats()?;
    ensure!(st.get("pages_populated") < 1024, "dense population: {st:?}");
    ensure!(st.get("pages_user") == 1, "pages_user {}", st.get("pages_user"));
    Ok(())
}

/// Exhaustion returns NULL and the program goes on; after frees the heap
/// serves the same amount again.
pub fn exhaustion_and_recovery() -> Result<()> {
    ensure_kflex()?;
    // 64 KiB heaps: 16 pages, page 0 is never used, so 15 pages of objects.
    for (size, max) in [(16u64, 15 * 256), (100, 15 * 32), (4096, 15), (8192, 7)] {
        let h = Loaded::new(64 << 10)?;
        h.reserve(60 << 10)?;
        let got = h.call(&h.skel.progs.alloc_n, size, 4096, 0)?;
        ensure!(got > 0 && got <= max, "size {size}: {got} objects (at most {max})");
        let failed = h.stats()?.get("failed_allocs");
        ensure!(failed >= 1, "size {size}: no failed allocation counted");
        h.call(&h.skel.progs.free_n, 0, 0, 0)?;
        let again = h.call(&h.skel.progs.alloc_n, size, 4096, 0)?;
        ensure!(again >= got, "size {size}: {again} after frees, {got} before");
        h.call(&h.skel.progs.free_n, 0, 0, 0)?;
        let st = h.stats()?;
        ensure!(st.class_bytes() == 0 && st.get("large_bytes") == 0, "size {size}: {st:?}");
        println!("exhaustion: size {size}: {got} objects, again {again}");
    }
    Ok(())
}

/// Large frees become free runs, as many as there are, merged with their
/// neighbours: 400 two-page allocations, every other one freed (200
/// separate runs; the pool used to remember 32 and push the rest page by
/// page onto the free-page stack, where no two-page allocation can use
/// them), then 200 two-page allocations take exactly those pages
/// (`pages_free` back where it was). Then everything is freed: the runs
/// merge into one, and one allocation of all its pages comes from it.
pub fn freed_runs_are_reused() -> Result<()> {
    ensure_kflex()?;
    const N: u64 = 400;
    const SIZE: u64 = 8192;
    let h = Loaded::new(64 << 20)?;
    h.reserve(16 << 20)?;
    let got = h.call(&h.skel.progs.alloc_at, SIZE, N, 0)?;
    ensure!(got == N, "{got} of {N} allocations of {SIZE} bytes");
    let free0 = h.stats()?.get("pages_free");
    for i in (0..N).step_by(2) {
        h.call(&h.skel.progs.free_n, 0, 1, i)?;
    }
    let free1 = h.stats()?.get("pages_free");
    ensure!(free1 == free0 + N, "pages_free {free0} -> {free1} after freeing {} pages", N);
    let again = h.call(&h.skel.progs.alloc_at, SIZE, N / 2, N)?;
    ensure!(again == N / 2, "{again} of {} allocations again", N / 2);
    let free2 = h.stats()?.get("pages_free");
    println!(
        "runs: pages_free {free0} -> {free1} with {} two-page runs -> {free2} after {} two-page allocations",
        N / 2,
        N / 2
    );
    ensure!(free2 == free0, "the allocations left {} freed pages unused", free2 - free0);
    // Everything back: one run of N * 2 pages (the allocations were carved
    // from fresh pages in order), which one allocation takes whole.
    h.call(&h.skel.progs.free_n, 0, N + N / 2, 0)?;
    let free3 = h.stats()?.get("pages_free");
    ensure!(free3 == free0 + 2 * N, "pages_free {free0} -> {free3} after freeing everything");
    let big = h.call(&h.skel.progs.alloc_one, 2 * N * 4096, 0, 0)?;
    let free4 = h.stats()?.get("pages_free");
    println!(
        "runs: all freed: pages_free {free3}; one {}-page allocation: pages_free {free4}",
        2 * N
    );
    ensure!(big != 0 && free4 == free0, "the merged run did not serve {} pages", 2 * N);
    h.call(&h.skel.progs.free_ptr, 0, 0, big)?;
    let st = h.stats()?;
    ensure!(st.get("large_bytes") == 0 && st.get("corrupt_links") == 0, "{st:?}");
    Ok(())
}

/// Pages the allocator holds (populated, less the reserve and user pages:
/// class pages, large allocations and free pages) and, of those, the pages
/// in use (less the free pages).
fn pages_held(h: &Loaded) -> Result<(u64, u64)> {
    let st = h.stats()?;
    let held = st
        .get("pages_populated")
        .saturating_sub(st.get("pages_reserve"))
        .saturating_sub(st.get("pages_user"));
    Ok((held, held.saturating_sub(st.get("pages_free"))))
}

/// Producer on CPU 0, consumer on CPU 1: 300 rounds in which CPU 0
/// allocates 4096 objects of 64 B (64 pages' worth) and CPU 1 frees them
/// all. Every free lands in CPU 1's cache, which must spill to the global
/// list (where CPU 0 refills from) instead of growing. A cache that kept
/// everything would take 64 more pages per round, 17,920 over the rounds
/// compared. What the test allows: the pages in use may move by two rounds'
/// worth (the worker's reclaim pass holds the detached list for a while,
/// and the producer then carves fresh pages), and the pages held by the
/// free pages the worker keeps before giving any back (`FREE_HIGH`, 1024).
pub fn producer_consumer_stays_bounded() -> Result<()> {
    ensure_kflex()?;
    const ROUNDS: u64 = 300;
    const N: u64 = 4096;
    let h = Loaded::new(64 << 20)?;
    h.reserve(8 << 20)?;
    let (mut warm, mut end) = ((0, 0), (0, 0));
    for round in 0..ROUNDS {
        pin_to(0)?;
        let got = h.call(&h.skel.progs.alloc_n, 64, N, 0)?;
        ensure!(got == N, "round {round}: {got} of {N} allocations");
        pin_to(1)?;
        h.call(&h.skel.progs.free_n, 0, 0, 0)?;
        let (held, in_use) = pages_held(&h)?;
        if (10..20).contains(&round) {
            warm = (warm.0.max(held), warm.1.max(in_use));
        }
        if round >= ROUNDS - 20 {
            end = (end.0.max(held), end.1.max(in_use));
        }
    }
    pin_to_all()?;
    let st = h.stats()?;
    println!(
        "producer/consumer: {ROUNDS} rounds of {N} x 64 B: pages held {} in rounds 10-19, {} in \
         the last 20; in use {} and {}; pages_reclaimed {}, frees_deferred {}",
        warm.0,
        end.0,
        warm.1,
        end.1,
        st.get("pages_reclaimed"),
        st.get("frees_deferred")
    );
    ensure!(st.class_bytes() == 0 && st.get("corrupt_links") == 0, "{st:?}");
    ensure!(
        end.1 <= warm.1 + 128 && end.0 <= warm.0 + 1024 + 64,
        "pages grew: held {} -> {}, in use {} -> {}: a per-CPU cache grows",
        warm.0,
        end.0,
        warm.1,
        end.1
    );
    Ok(())
}

/// Waits until at least `pages` pages are populated.
fn wait_reserve(h: &Loaded, pages: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.stats()?.get("pages_populated") < pages {
        ensure!(Instant::now() < deadline, "reserve not populated: {:?}", h.stats()?);
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Without bpf_kflex_reserve(), the background worker populates the reserve
/// and allocations succeed.
pub fn worker_populates_reserve() -> Result<()> {
    ensure_kflex()?;
    let h = Loaded::new(16 << 20)?;
    wait_reserve(&h, 32)?;
    let got = h.call(&h.skel.progs.alloc_n, 64, 1000, 0)?;
    ensure!(got == 1000, "allocated {got} of 1000 from the background reserve");
    h.call(&h.skel.progs.free_n, 0, 0, 0)?;
    Ok(())
}

/// Two CPUs allocate and free concurrently; afterwards every count matches
/// and nothing is left allocated.
pub fn two_cpus_churn() -> Result<()> {
    ensure_kflex()?;
    let h = Loaded::new(64 << 20)?;
    h.reserve(8 << 20)?;
    let rounds = 40u64;
    let fails = std::thread::scope(|s| -> Result<u64> {
        let workers: Vec<_> = (0..2)
            .map(|cpu| {
                let h = &h;
                s.spawn(move || -> Result<u64> {
                    pin_to(cpu)?;
                    let mut fails = 0;
                    for r in 0..rounds {
                        fails += h.call(&h.skel.progs.churn, 0, 5000, (cpu as u64) << 32 | r)?;
                    }
                    Ok(fails)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    })?;
    let st = h.stats()?;
    println!("churn: {} allocs, {} frees, {} failed", st.get("allocs"), st.get("frees"), fails);
    ensure!(st.get("allocs") == st.get("frees"), "allocs != frees: {st:?}");
    ensure!(st.get("allocs") > rounds * 2 * 1000, "too few allocations: {st:?}");
    ensure!(st.class_bytes() == 0 && st.get("large_bytes") == 0, "leak: {st:?}");
    for k in ["refused_foreign", "refused_misaligned", "refused_double", "corrupt_links"] {
        ensure!(st.get(k) == 0, "{k} = {}", st.get(k));
    }
    Ok(())
}

/// The inline fast path (allocations of a constant size, frees) hands out
/// each object once, on two CPUs, with remote frees in between; frees
/// twice (of objects in magazines, caches and global lists), misaligned or
/// foreign are refused and counted; the statistics add up; a program loaded
/// with `kernel.kflex_fast_path=0` keeps the calls.
pub fn fast_path_keeps_the_invariants() -> Result<()> {
    ensure_kflex()?;
    // The test pins this thread: the tests after it must not inherit that.
    let r = fast_path_pinned();
    pin_to_all()?;
    r
}

fn fast_path_pinned() -> Result<()> {
    let h = Loaded::new(16 << 20)?;
    h.reserve(4 << 20)?;
    let fast = |first: u64, n: u64| -> Result<u64> {
        let a = h.run(&h.skel.progs.fast_n, Args { size: 0, n, arg: first, ret: 0 })?;
        ensure!(a.ret == n, "{} of {n} allocations from slot {first}", a.ret);
        ensure!(a.size == 0, "{} of {n} objects from slot {first} handed out twice", a.size);
        Ok(a.ret)
    };
    // CPU 0 allocates 2048, CPU 1 frees them (remote frees into its
    // magazine), then both allocate again while the other frees.
    pin_to(0)?;
    fast(0, 2048)?;
    pin_to(1)?;
    h.call(&h.skel.progs.free_n, 0, 2048, 0)?;
    std::thread::scope(|s| -> Result<()> {
        let a = s.spawn(|| -> Result<()> {
            pin_to(0)?;
            for _ in 0..20 {
                fast(0, 2048)?;
                h.call(&h.skel.progs.free_n, 0, 2048, 0)?;
            }
            Ok(())
        });
        let b = s.spawn(|| -> Result<()> {
            pin_to(1)?;
            for _ in 0..20 {
                fast(2048, 2048)?;
                h.call(&h.skel.progs.free_n, 0, 2048, 2048)?;
            }
            Ok(())
        });
        a.join().expect("cpu 0")?;
        b.join().expect("cpu 1")
    })?;
    // Everything allocated once more, from both CPUs, and checked at once.
    pin_to(0)?;
    fast(0, 2048)?;
    pin_to(1)?;
    fast(2048, 2048)?;
    let ptrs: Vec<u64> = h.bss().ptrs.iter().map(|p| *p as u64).collect();
    let mut sorted = ptrs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    ensure!(sorted.len() == ptrs.len(), "{} distinct of {} objects", sorted.len(), ptrs.len());
    let st = h.stats()?;
    println!(
        "fast path: fast_allocs {} fast_frees {} of allocs {} frees {}",
        st.get("fast_allocs"),
        st.get("fast_frees"),
        st.get("allocs"),
        st.get("frees")
    );
    ensure!(st.get("fast_allocs") > 40 * 2048 / 2, "the inline path served too few: {st:?}");
    ensure!(st.get("fast_frees") > 40 * 2048 / 2, "the magazines took too few frees: {st:?}");
    ensure!(st.get("allocs") == st.get("frees") + 4096, "allocs/frees do not add up: {st:?}");
    ensure!(st.class_bytes() == 4096 * 64, "class bytes with 4096 objects live: {st:?}");
    // Hostile frees: misaligned and foreign while allocated, then every
    // object twice (the first frees fill the magazines, so the second
    // ones find objects in magazines, caches and global lists alike).
    for &p in ptrs.iter().take(100) {
        h.call(&h.skel.progs.free_ptr, 0, 0, p + 8)?;
        h.call(&h.skel.progs.free_ptr, 0, 0, p ^ (h.size << 1))?;
    }
    h.call(&h.skel.progs.free_n, 0, 4096, 0)?;
    for &p in &ptrs {
        h.call(&h.skel.progs.free_ptr, 0, 0, p)?;
    }
    let st = h.stats()?;
    ensure!(st.get("refused_misaligned") == 100, "misaligned frees: {st:?}");
    ensure!(st.get("refused_foreign") == 100, "foreign frees: {st:?}");
    ensure!(st.get("refused_double") == 4096, "double frees: {st:?}");
    ensure!(st.get("allocs") == st.get("frees") && st.class_bytes() == 0, "leak: {st:?}");
    ensure!(st.get("corrupt_links") == 0, "corrupt links: {st:?}");
    // Without the inline path, the same program makes no fast allocation.
    let old = std::fs::read_to_string("/proc/sys/kernel/kflex_fast_path")?;
    std::fs::write("/proc/sys/kernel/kflex_fast_path", "0")?;
    let slow = Loaded::new(16 << 20);
    std::fs::write("/proc/sys/kernel/kflex_fast_path", old.trim())?;
    let slow = slow?;
    let a = slow.run(&slow.skel.progs.fast_n, Args { size: 0, n: 1000, arg: 0, ret: 0 })?;
    ensure!(
        a.ret == 1000 && a.size == 0,
        "without the inline path: {} objects, {} bad",
        a.ret,
        a.size
    );
    let st = slow.stats()?;
    ensure!(st.get("fast_allocs") == 0, "kflex_fast_path=0 still inlined: {st:?}");
    ensure!(st.get("allocs") == 1000, "without the inline path: {st:?}");
    Ok(())
}

/// A hostile program scribbles over free objects (the global list's links),
/// frees garbage and frees twice: everything is refused and counted, the
/// allocator never hands out memory outside the heap or the same object
/// twice.
pub fn hostile_program_is_contained() -> Result<()> {
    ensure_kflex()?;
    let mut h = Loaded::new(1 << 20)?;
    h.reserve(512 << 10)?;
    let n = 2000;
    for (round, forge) in [(0, None), (1, Some(()))] {
        ensure!(h.call(&h.skel.progs.alloc_n, 16, n, 0)? == n, "round {round}: alloc");
        let stale: Vec<u64> = h.bss().ptrs[..n as usize].iter().map(|&p| p as u64).collect();
        let base = h.base_of(stale[0]);
        h.call(&h.skel.progs.free_n, 0, 0, 0)?;
        // Restore the stale pointers and scribble through them.
        let target = match forge {
            // Links to kernel addresses.
            None => 0xffff_8880_0000_0000,
            // Links that all name the same (soon allocated) object.
            Some(()) => stale[n as usize - 1],
        };
        for (i, &p) in stale.iter().enumerate() {
            h.bss_mut().ptrs[i] = p as _;
        }
        h.call(&h.skel.progs.scribble, if forge.is_some() { 0 } else { 16 }, n, target)?;
        let before = h.stats()?;
        // Garbage frees.
        h.call(&h.skel.progs.free_ptr, 0, 0, 0xffff_8880_1234_0000)?; // kernel address
        h.call(&h.skel.progs.free_ptr, 0, 0, base + h.size + 4096)?; // past the heap
        h.call(&h.skel.progs.free_ptr, 0, 0, stale[5] + 1)?; // inside an object
        h.call(&h.skel.progs.free_ptr, 0, 0, stale[6])?; // already free
        let after = h.stats()?;
        ensure!(
            after.get("refused_foreign") == before.get("refused_foreign") + 2,
            "foreign: {after:?}"
        );
        ensure!(
            after.get("refused_misaligned") == before.get("refused_misaligned") + 1,
            "misaligned"
        );
        ensure!(after.get("refused_double") == before.get("refused_double") + 1, "double");
        // Allocate again: every object is in the heap, aligned, distinct.
        let got = h.call(&h.skel.progs.alloc_n, 16, n, 0)?;
        ensure!(got == n, "round {round}: re-allocated {got} of {n}");
        let mut seen = HashSet::new();
        for &p in &h.bss().ptrs[..n as usize] {
            let p = p as u64;
            ensure!(p >= base + 4096 && p < base + h.size, "object {p:#x} outside the heap");
            ensure!(p.is_multiple_of(16), "misaligned object {p:#x}");
            ensure!(seen.insert(p), "object {p:#x} handed out twice");
        }
        h.call(&h.skel.progs.free_n, 0, 0, 0)?;
    }
    let st = h.stats()?;
    println!("hostile: corrupt_links {}", st.get("corrupt_links"));
    ensure!(st.get("corrupt_links") >= 2, "corrupted links not detected: {st:?}");
    ensure!(st.class_bytes() == 0, "{st:?}");
    Ok(())
}

fn mem_free_kib() -> Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    let line = info.lines().find(|l| l.starts_with("MemFree:")).context("MemFree")?;
    Ok(line.split_whitespace().nth(1).context("MemFree value")?.parse()?)
}

/// Closing the last reference releases every page (heap statistics and
/// /proc/meminfo); with the module variant, rmmod is refused while a heap
/// exists and succeeds after.
pub fn close_releases_everything() -> Result<()> {
    ensure_kflex()?;
    // Earlier tests' heaps are released in the background: let that finish
    // so MemFree only moves because of this heap.
    wait_no_heaps()?;
    settle_mem_free()?;
    // The heap is made in a memory cgroup of its own, where its population
    // shows whatever earlier heaps still give back meanwhile (MemFree alone
    // missed it once: 54.5 of 64 MiB while such pages were being freed).
    let (h, free0, free1) = in_memcg("kflex-close-test", |current| {
        let (free0, cg0) = (mem_free_kib()?, current()?);
        let h = Loaded::new(128 << 20)?;
        h.reserve(64 << 20)?;
        let (free1, cg1) = (mem_free_kib()?, current()?);
        println!(
            "meminfo: MemFree {free0} kB -> {free1} kB, memory.current {} -> {} kB with 64 MiB \
             populated",
            cg0 >> 10,
            cg1 >> 10
        );
        ensure!(cg1 > cg0 + (56 << 20), "populating 64 MiB did not show in the memcg");
        Ok((h, free0, free1))
    })?;
    let id = h.map_id()?;
    let st = h.stats()?;
    ensure!(st.get("pages_populated") >= 16384, "{st:?}");
    if variant() == "m" {
        let r = run("rmmod", &["kflex"])?;
        ensure!(!r.status.success(), "rmmod succeeded while a heap exists");
        ensure!(kflex_status()?.starts_with("active "), "KFlex gone while in use");
    }
    drop(h);
    let deadline = Instant::now() + Duration::from_secs(10);
    while heapstats::read()?.iter().any(|s| s.get("id") == id as u64) {
        ensure!(Instant::now() < deadline, "heap {id} still listed after close");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The pages are freed right after the heap leaves the list; freed pages
    // may sit in per-CPU page lists for a while. At least 60 of the 64 MiB
    // must come back (a leak would keep all of it); comparing with the
    // MemFree before the heap existed is left to the log, since the rest of
    // the guest (page cache, kernel page tables) moves it by a few MiB.
    let mut free2 = mem_free_kib()?;
    while free2 < free1 + 60 * 1024 && Instant::now() < deadline + Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        free2 = mem_free_kib()?;
    }
    println!("meminfo: MemFree {free2} kB after close ({free0} kB before the heap)");
    ensure!(
        free2 >= free1 + 60 * 1024,
        "memory not returned: {free1} kB with the heap, {free2} kB after close"
    );
    if variant() == "m" {
        sh("rmmod", &["kflex"])?;
        ensure!(kflex_status()? == "absent", "status after rmmod");
        sh("insmod", &[&kflex_ko()?])?;
    }
    Ok(())
}

/// Memory goes back: 512 MiB of large objects (96, 128 and 160 KiB, 4096
/// of them), some read through the user mapping, all freed: the worker
/// gives the free pages above its watermark back to the system. MemFree and
/// the memory cgroup's usage come back to within 5% of the 512 MiB of what
/// they were before the allocations (the heap existing, with a 16 MiB
/// reserve; what stays is its free pages below the watermark and the page
/// descriptors, 72 bytes a page), `/proc/kflex/heaps` counts the pages
/// returned, a user read of a returned page finds a fresh zeroed page, and
/// allocating everything again works.
pub fn memory_goes_back() -> Result<()> {
    ensure_kflex()?;
    wait_no_heaps()?;
    std::thread::sleep(Duration::from_millis(300));
    in_memcg("kflex-memback-test", |current| {
        const TOTAL: u64 = 512 << 20;
        const SLACK: u64 = TOTAL / 20;
        // Before: the heap exists with a 16 MiB reserve, which stays after
        // the allocations (they take the 512 MiB populated on top of it).
        let h = Loaded::new(1 << 30)?;
        h.reserve(16 << 20)?;
        // An earlier test's heap may still be freeing its pages.
        settle_mem_free()?;
        let (free0, cg0) = (mem_free_kib()? << 10, current()?);
        h.reserve(TOTAL + (16 << 20))?;
        let sizes =
            [(0u64, 1365u64, 96u64 << 10), (1365, 1365, 128 << 10), (2730, 1366, 160 << 10)];
        let alloc_all = || -> Result<()> {
            for &(first, n, size) in &sizes {
                let got = h.call(&h.skel.progs.alloc_at, size, n, first)?;
                ensure!(got == n, "{got} of {n} allocations of {size} bytes");
            }
            Ok(())
        };
        alloc_all()?;
        let ptrs: Vec<u64> = h.bss().ptrs.iter().map(|p| *p as u64).collect();
        // Write a marker into every object through the user mapping: user
        // PTEs the worker must zap.
        const MARK: u64 = 0x6b66_6c65_785f_6d6b;
        for &p in &ptrs {
            // SAFETY: `p` is an object of this heap, mapped at its user
            // address in this process (libbpf maps the heap at load).
            unsafe { std::ptr::write_volatile(p as *mut u64, MARK) };
        }
        let sum = ptrs.len();
        let (free1, cg1) = (mem_free_kib()? << 10, current()?);
        println!(
            "memback: MemFree {} -> {} MiB, memory.current {} -> {} MiB with 512 MiB allocated ({sum} objects marked)",
            free0 >> 20, free1 >> 20, cg0 >> 20, cg1 >> 20
        );
        ensure!(cg1 > cg0 + TOTAL - SLACK, "allocating 512 MiB did not show in the memcg");
        h.call(&h.skel.progs.free_n, 0, 4096, 0)?;
        let (free2, cg2) = wait_given_back(&h, current, (free0, cg0), SLACK, 30)?;
        let st = h.stats()?;
        println!(
            "memback: after freeing: MemFree {} MiB, memory.current {} MiB; pages_populated {} pages_free {} pages_returned {}",
            free2 >> 20, cg2 >> 20, st.get("pages_populated"), st.get("pages_free"),
            st.get("pages_returned")
        );
        ensure!(st.get("pages_returned") >= (TOTAL - SLACK) >> 12, "{st:?}");
        // A returned page reads as a fresh zeroed page from user space (one
        // user fault each); one not returned still holds the marker.
        let user0 = st.get("pages_user");
        let mut zeroed = 0u64;
        for &p in &ptrs {
            // SAFETY: as above; the heap is still mapped here.
            match unsafe { std::ptr::read_volatile(p as *const u64) } {
                0 => zeroed += 1,
                MARK => {}
                v => bail!("object {p:#x} reads {v:#x} after it was freed"),
            }
        }
        let user1 = h.stats()?.get("pages_user");
        println!(
            "memback: {zeroed} of {} objects read as fresh pages, pages_user {user0} -> {user1}",
            ptrs.len()
        );
        ensure!(
            zeroed >= 3968 && user1 == user0 + zeroed,
            "{zeroed} fresh pages, pages_user {user0} -> {user1}"
        );
        // Everything can be allocated again.
        h.reserve(TOTAL + (16 << 20))?;
        alloc_all()?;
        h.call(&h.skel.progs.free_n, 0, 4096, 0)?;
        drop(h);
        Ok(())
    })
}

/// Small objects' pages go back too: 512 MiB of 64, 256 and 1024-byte
/// objects (about 3.6 million, in lists built by the program), all freed:
/// the worker's reclaim pass finds the class pages whose objects are all on
/// their class's free list, moves them to the free-page stack and gives
/// them back. MemFree and the memory cgroup's usage come back to within 5%
/// of the 512 MiB, `pages_reclaimed` counts the class pages, and allocating
/// everything again works.
pub fn small_objects_go_back() -> Result<()> {
    ensure_kflex()?;
    wait_no_heaps()?;
    std::thread::sleep(Duration::from_millis(300));
    let _budget = kflex_load::cancel::SysctlGuard::budget_us(1_000_000)?;
    in_memcg("kflex-smallback-test", |current| {
        const TOTAL: u64 = 512 << 20;
        const SLACK: u64 = TOTAL / 20;
        const SIZES: [u64; 3] = [64, 256, 1024];
        let h = Loaded::new(1 << 30)?;
        h.reserve(16 << 20)?;
        // An earlier test's heap may still be freeing its pages.
        settle_mem_free()?;
        let (free0, cg0) = (mem_free_kib()? << 10, current()?);
        let build = || -> Result<u64> {
            h.reserve(TOTAL + (16 << 20))?;
            let mut objs = 0;
            for size in SIZES {
                let mut n = (TOTAL / 3) / size;
                while n > 0 {
                    let chunk = n.min(100_000);
                    let got = h.call(&h.skel.progs.build_list, size, chunk, 0)?;
                    ensure!(got == chunk, "{got} of {chunk} allocations of {size} bytes");
                    n -= chunk;
                    objs += chunk;
                }
            }
            Ok(objs)
        };
        let free_all = || -> Result<u64> {
            let mut freed = 0;
            loop {
                let n = h.call(&h.skel.progs.free_list, 0, 0, 0)?;
                freed += n;
                if n == 0 {
                    return Ok(freed);
                }
            }
        };
        let objs = build()?;
        let (free1, cg1) = (mem_free_kib()? << 10, current()?);
        println!(
            "smallback: {objs} objects: MemFree {} -> {} MiB, memory.current {} -> {} MiB",
            free0 >> 20,
            free1 >> 20,
            cg0 >> 20,
            cg1 >> 20
        );
        ensure!(cg1 > cg0 + TOTAL - SLACK, "allocating 512 MiB did not show in the memcg");
        ensure!(free_all()? == objs, "not every object freed");
        let (free2, cg2) = wait_given_back(&h, current, (free0, cg0), SLACK, 60)?;
        let st = h.stats()?;
        println!(
            "smallback: after freeing: MemFree {} MiB, memory.current {} MiB; pages_populated {} pages_reclaimed {} pages_returned {} corrupt_links {}",
            free2 >> 20, cg2 >> 20, st.get("pages_populated"), st.get("pages_reclaimed"),
            st.get("pages_returned"), st.get("corrupt_links")
        );
        ensure!(st.get("pages_reclaimed") >= (TOTAL - SLACK) >> 12, "{st:?}");
        ensure!(st.get("corrupt_links") == 0, "{st:?}");
        // Everything again, and back again.
        ensure!(build()? == objs, "allocating again");
        ensure!(free_all()? == objs, "freeing again");
        drop(h);
        Ok(())
    })
}

/// Without kflex.ko, creating a KFlex heap fails and the log says why.
pub fn heap_refused_without_module() -> Result<()> {
    unload_kflex()?;
    match create_heap(16) {
        Ok(_) => bail!("heap created without the module"),
        Err(e) => ensure!(e == 95, "errno {e}, want EOPNOTSUPP"),
    }
    ensure!(dmesg()?.contains("heap refused: KFlex is not loaded"), "no log line");
    ensure_kflex()
}

/// Runs `f` with this process in memory cgroup `name` (made if needed);
/// `f` gets a reader of the cgroup's `memory.current`.
fn in_memcg<T>(name: &str, f: impl FnOnce(&dyn Fn() -> Result<u64>) -> Result<T>) -> Result<T> {
    let cg = format!("/sys/fs/cgroup/{name}");
    let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
    let _ = std::fs::create_dir(&cg);
    let current = || -> Result<u64> {
        Ok(std::fs::read_to_string(format!("{cg}/memory.current"))?.trim().parse()?)
    };
    std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string())
        .context("moving the test into a memory cgroup")?;
    let result = f(&current);
    std::fs::write("/sys/fs/cgroup/cgroup.procs", std::process::id().to_string())?;
    result
}

/// Waits (up to 10 s) until MemFree moves by less than 2 MiB in 200 ms.
fn settle_mem_free() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = mem_free_kib()?;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = mem_free_kib()?;
        if now.abs_diff(last) < 2048 {
            return Ok(());
        }
        last = now;
    }
    Ok(())
}

/// Waits up to `secs` for MemFree and the cgroup's usage (`current`) to
/// come back within `slack` bytes of `before`; returns them.
fn wait_given_back(
    h: &Loaded,
    current: &dyn Fn() -> Result<u64>,
    (free0, cg0): (u64, u64),
    slack: u64,
    secs: u64,
) -> Result<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (free, cg) = (mem_free_kib()? << 10, current()?);
        if free + slack >= free0 && cg <= cg0 + slack {
            return Ok((free, cg));
        }
        ensure!(
            Instant::now() < deadline,
            "memory not given back: MemFree {} MiB (before {}), memory.current {} MiB (before {}); {:?}",
            free >> 20,
            free0 >> 20,
            cg >> 20,
            cg0 >> 20,
            h.stats()?
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pages populated for a heap are charged to the memory cgroup of the
/// process that created it.
pub fn charged_to_creator_memcg() -> Result<()> {
    ensure_kflex()?;
    wait_no_heaps()?;
    in_memcg("kflex-memcg-test", |current| {
        let before = current()?;
        let h = Loaded::new(64 << 20)?;
        // bpf_kflex_reserve() populates from this task; the worker uses the
        // same path (bpf_map_alloc_pages charges the map's memory cgroup).
        h.reserve(16 << 20)?;
        wait_reserve(&h, 4096)?;
        let after = current()?;
        println!("memcg: memory.current {before} -> {after} bytes with 16 MiB populated");
        ensure!(after >= before + (16 << 20), "heap pages not charged: {before} -> {after}");
        drop(h);
        Ok(())
    })
}

/// The allocator's only in-heap metadata are the links of the classes'
/// free lists. A hostile user-space writer points them at pages in every
/// other state -- a class page of another class, a large allocation's head
/// and tail, pages of a free run and of the free-page stack, a user page, a
/// reserve page, the system page -- and at extreme values, then two CPUs
/// allocate at once: every object handed out is a distinct 16-byte object
/// of the heap outside every page still in use for something else, and
/// everything frees back to zero.
pub fn forged_links_to_every_page_state() -> Result<()> {
    ensure_kflex()?;
    let size = 4u64 << 20;
    let h = Loaded::new(size)?;
    h.reserve(2 << 20)?;
    let one = |bytes: u64| -> Result<u64> {
        let p = h.call(&h.skel.progs.alloc_one, bytes, 0, 0)?;
        ensure!(p != 0, "allocating {bytes} bytes failed");
        Ok(p)
    };
    let free = |p: u64| h.call(&h.skel.progs.free_ptr, 0, 0, p);
    let class64 = one(64)?;
    let base = h.base_of(class64);
    let large = one(3 * 4096)?;
    // 2-page allocations; freeing every other one leaves more separate free
    // runs than the pool remembers (32), so the last ones go to the stack.
    let mut pairs = Vec::new();
    for _ in 0..70 {
        pairs.push(one(2 * 4096)?);
    }
    for p in pairs.iter().step_by(2) {
        free(*p)?;
    }
    let (run_page, stack_page) = (pairs[0] - base, pairs[68] - base);
    let user_page = 3u64 << 20;
    write_u64(base + user_page, 7); // a user page, populated by this fault
    let reserve_page = 500 * 4096;
    let targets: Vec<u64> = vec![
        class64 - base,
        large - base,
        large - base + 4096,
        large - base + 2 * 4096 + 16,
        run_page,
        run_page + 4096 + 32,
        stack_page,
        stack_page + 16,
        user_page,
        user_page + 16,
        reserve_page,
        16, // the system page
        u64::MAX,
        u64::MAX - 7,
        1,
        size,
        size + 8,
        0u64.wrapping_sub(16),
        0xffff_8880_0000_0000,
        base + 4096, // a user address, not an offset
    ];
    let n = 2000usize;
    ensure!(h.call(&h.skel.progs.alloc_n, 16, n as u64, 0)? == n as u64, "first allocation");
    let stale: Vec<u64> = h.bss().ptrs[..n].iter().map(|&p| p as u64).collect();
    h.call(&h.skel.progs.free_n, 0, 0, 0)?;
    for (i, &p) in stale.iter().enumerate() {
        write_u64(p, targets[i % targets.len()]);
    }
    // Two CPUs pop the forged lists at once.
    let per_cpu = 1500u64;
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..2u64)
            .map(|cpu| {
                let h = &h;
                s.spawn(move || -> Result<u64> {
                    pin_to(cpu as usize)?;
                    h.call(&h.skel.progs.alloc_at, 16, per_cpu, cpu * 2000)
                })
            })
            .collect();
        for w in workers {
            let got = w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
            ensure!(got == per_cpu, "allocated {got} of {per_cpu} after forging");
        }
        Ok(())
    })?;
    let busy_pages: HashSet<u64> = [class64 - base, user_page, 0]
        .into_iter()
        .chain((0..3).map(|i| large - base + i * 4096))
        .chain(pairs.iter().skip(1).step_by(2).flat_map(|p| [p - base, p - base + 4096]))
        .map(|off| off / 4096)
        .collect();
    let mut seen = HashSet::new();
    for cpu in 0..2usize {
        for &p in &h.bss().ptrs[cpu * 2000..cpu * 2000 + per_cpu as usize] {
            let p = p as u64;
            ensure!(p >= base + 4096 && p < base + size, "object {p:#x} outside the heap");
            ensure!(p.is_multiple_of(16), "misaligned object {p:#x}");
            ensure!(!busy_pages.contains(&((p - base) / 4096)), "object {p:#x} in a page in use");
            ensure!(seen.insert(p), "object {p:#x} handed out twice");
        }
    }
    for cpu in 0..2u64 {
        h.call(&h.skel.progs.free_n, 0, per_cpu, cpu * 2000)?;
    }
    for p in [class64, large].into_iter().chain(pairs.iter().skip(1).step_by(2).copied()) {
        free(p)?;
    }
    let st = h.stats()?;
    println!("forged links: corrupt_links {}", st.get("corrupt_links"));
    ensure!(st.get("corrupt_links") > 0, "forged links not detected: {st:?}");
    ensure!(st.class_bytes() == 0 && st.get("large_bytes") == 0, "leak: {st:?}");
    for k in ["refused_foreign", "refused_misaligned", "refused_double"] {
        ensure!(st.get(k) == 0, "{k}: {st:?}");
    }
    Ok(())
}

/// One `bpf_kflex_reserve()` call is bounded: above KFLEX_RESERVE_MAX
/// (1 GiB) it fails with -E2BIG without populating anything, and in a memory
/// cgroup with a 64 MiB limit a 256 MiB request stops with -ENOMEM at the
/// limit instead of invoking the OOM killer; the heap still works.
pub fn reserve_is_bounded() -> Result<()> {
    ensure_kflex()?;
    let h = Loaded::new(256 << 30)?;
    let before = h.stats()?.get("pages_populated");
    let r = h.call(&h.skel.progs.reserve, 0, (1 << 30) + 1, 0)? as i64;
    ensure!(r == -7, "reserve(1 GiB + 1) = {r}, want -E2BIG");
    ensure!(h.stats()?.get("pages_populated") == before, "an over-large reserve populated pages");
    drop(h);
    let cg = "/sys/fs/cgroup/kflex-reserve";
    let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
    let _ = std::fs::create_dir(cg);
    std::fs::write(format!("{cg}/memory.max"), "64M").context("memory.max")?;
    // The heap is charged to the cgroup its creator is in when it is made.
    std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string())
        .context("moving the test into a memory cgroup")?;
    let made = Loaded::new(1 << 30);
    std::fs::write("/sys/fs/cgroup/cgroup.procs", std::process::id().to_string())?;
    let h = made?;
    let r = h.call(&h.skel.progs.reserve, 0, 256 << 20, 0)? as i64;
    let populated = h.stats()?.get("pages_populated");
    let got = h.call(&h.skel.progs.alloc_n, 64, 1000, 0)?;
    h.call(&h.skel.progs.free_n, 0, 0, 0)?;
    drop(h);
    let oom = std::fs::read_to_string(format!("{cg}/memory.events")).unwrap_or_default();
    println!(
        "reserve in a 64 MiB cgroup: {r}, {populated} pages populated, {got} allocations; {oom:?}"
    );
    let _ = std::fs::remove_dir(cg);
    ensure!(r == -12, "reserve(256 MiB) under a 64 MiB limit = {r}, want -ENOMEM");
    ensure!(populated < (64 << 20) / 4096, "populated past the limit: {populated} pages");
    ensure!(got == 1000, "the heap does not work after hitting the limit: {got}");
    ensure!(oom.lines().any(|l| l == "oom_kill 0"), "the OOM killer ran: {oom}");
    Ok(())
}

/// Selecting guard mode 1 (no guards on heap loads) is logged; the kernel is
/// not locked down here, so it is allowed (a locked-down kernel refuses it
/// with EPERM: the guest kernel has no lockdown LSM to show that).
pub fn guard_mode_1_is_logged() -> Result<()> {
    ensure_kflex()?;
    let mode = GuardMode::Performance.set().context("setting guard mode 1")?;
    let log = dmesg()?;
    drop(mode);
    ensure!(
        log.contains("kflex_guard_mode=1 (performance): heap loads are not guarded"),
        "no log line for guard mode 1"
    );
    Ok(())
}
