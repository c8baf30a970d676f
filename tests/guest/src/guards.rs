// SPDX-License-Identifier: GPL-2.0

//! Guard tests (`tests/bpf/guard_test.bpf.c`): hostile heap accesses land
//! inside the heap or fault harmlessly, on heaps whose guard is an `and`
//! with an immediate (64 KiB), a 32-bit move (4 GiB) and an `and` with the
//! mask register (64 GiB); the per-program statistics line and the modes.

use anyhow::{ensure, Context, Result};
use kflex_load::guardmode::{self, GuardMode};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    ProgramInput, ProgramMut,
};

use crate::util::*;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/guard_test.skel.rs"));
}
use skel::*;

const GIB: u64 = 1 << 30;

/// `struct gargs`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Gargs {
    ptr: u64,
    var: u64,
    marker: u64,
    ret: u64,
}

struct Loaded {
    skel: GuardTestSkel<'static>,
    size: u64,
    base: u64,
}

impl Loaded {
    fn new(size: u64) -> Result<Loaded> {
        let mut open = GuardTestSkelBuilder::default().open(skel_storage())?;
        open.maps.heap.set_max_entries((size / 4096) as u32)?;
        let skel = open.load().context("loading guard_test")?;
        let base = heap_base(&skel.maps.heap)?;
        ensure!(base.is_multiple_of(size), "heap of {size} bytes mapped at {base:#x}");
        Ok(Loaded { skel, size, base })
    }

    fn run(&self, prog: &ProgramMut, mut a: Gargs) -> Result<Gargs> {
        // SAFETY: `Gargs` is plain old data.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(&mut a as *mut Gargs as *mut u8, size_of::<Gargs>())
        };
        let out = prog.test_run(ProgramInput { context_in: Some(bytes), ..Default::default() })?;
        ensure!(out.return_value == 0, "program returned {}", out.return_value);
        Ok(a)
    }

    /// Heap word at offset `off` (user view; populates the page).
    fn word(&self, off: u64) -> *mut u64 {
        (self.base + (off & (self.size - 1))) as *mut u64
    }

    fn read(&self, off: u64) -> u64 {
        // SAFETY: inside this process's mapping of the heap.
        unsafe { self.word(off).read_volatile() }
    }

    fn write(&self, off: u64, v: u64) {
        // SAFETY: inside this process's mapping of the heap.
        unsafe { self.word(off).write_volatile(v) }
    }
}

/// Runs every hostile program on a heap of `size` bytes.
fn hostile_on(size: u64) -> Result<()> {
    // Accesses into the guard zones read 0 / are dropped and the program
    // goes on (kflex_fault_mode=1); that they cancel the run in mode 0 is
    // cancel::heap_faults_cancel.
    let h = {
        let _faults = kflex_load::cancel::SysctlGuard::faults_cancel(false)?;
        Loaded::new(size)?
    };
    let mask = size - 1;
    let p = &h.skel.progs;

    // A pointer forged from heap data: a kernel address stored in the heap.
    let kaddr = 0xffff_8880_0000_3008u64;
    h.write(0x1000, kaddr);
    h.write(kaddr & mask, 0);
    h.run(&p.g_forge, Gargs { ptr: h.base + 0x1000, marker: 0xf0f0, ..Default::default() })?;
    ensure!(h.read(kaddr & mask) == 0xf0f0, "forged pointer: marker not at {:#x}", kaddr & mask);

    // A huge variable offset.
    let var = 0x0123_4567_0000_0010u64;
    let want = (0x2000 + var) & mask;
    h.write(want, 0);
    h.run(&p.g_varoff, Gargs { ptr: h.base + 0x2000, var, marker: 0xbeef, ..Default::default() })?;
    ensure!(h.read(want) == 0xbeef, "variable offset: marker not at {want:#x}");

    // Constant arithmetic out of the window, then overflowing.
    let o1 = 0x2008u64.wrapping_sub(40000) & mask;
    let o2 = (o1 + 2 * 0x7fff_0800) & mask;
    h.write(o1, 0);
    if o2 + 8 < size {
        h.write(o2 + 8, 0);
    }
    h.run(&p.g_const, Gargs { ptr: h.base + 0x2008, marker: 0xc0de, ..Default::default() })?;
    ensure!(h.read(o1) == 0xc0de, "constant offset: marker not at {o1:#x}");
    if o2 + 8 < size {
        ensure!(h.read(o2 + 8) == 0xc0de, "overflowed pointer: marker not at {:#x}", o2 + 8);
    }

    // The largest instruction offsets, from the last word of the heap: the
    // store and load above fault in the guard zone (the load reads 0), the
    // store below lands in the heap.
    let below = size - 8 - 32768;
    h.write(below, 0);
    let r =
        h.run(&p.g_bigoff, Gargs { ptr: h.base + size - 8, marker: 0xb16, ..Default::default() })?;
    ensure!(r.ret == 0, "load from the guard zone returned {:#x}", r.ret);
    ensure!(h.read(below) == 0xb16, "store at -32768 not at {below:#x}");

    // A loop moving the pointer by a variable: wraps around the heap.
    let start = size - 2 * 4096;
    for i in 0..16u64 {
        h.write(start + i * 4096, u64::MAX);
    }
    h.run(&p.g_loop, Gargs { ptr: h.base + start, var: 4096, ..Default::default() })?;
    for i in 0..16u64 {
        let off = (start + i * 4096) & mask;
        ensure!(h.read(off) == i, "loop round {i}: {:#x} at {off:#x}", h.read(off));
    }
    println!("hostile accesses confined in a {}-byte heap", size);
    Ok(())
}

/// Hostile accesses on 64 KiB, 4 GiB and 64 GiB heaps stay in the heap.
pub fn hostile_accesses_confined() -> Result<()> {
    ensure_kflex()?;
    let _mode = GuardMode::Full.set()?;
    for size in [64 << 10, 4 * GIB, 64 * GIB] {
        hostile_on(size).with_context(|| format!("heap of {size} bytes"))?;
    }
    Ok(())
}

/// The last statistics line the kernel printed for program `prog`.
fn stats_line(prog: &str) -> Result<String> {
    let log = dmesg()?;
    let needle = format!("kflex: prog={prog} ");
    log.lines()
        .rev()
        .find_map(|l| l.find(&needle).map(|i| l[i..].to_string()))
        .with_context(|| format!("no statistics line for {prog}"))
}

/// The statistics line of a hand-written program: 4 accesses, 3 elided, no
/// loop (no cancellation point); and in the other modes.
pub fn stats_line_and_modes() -> Result<()> {
    ensure_kflex()?;
    // Mode 0 for the test (and the mode before it back after it); each
    // load below sets its own mode for the load.
    let _mode = GuardMode::Full.set()?;
    for (mode, want) in [
        (GuardMode::Full, "range_analysis_call=4 elided=3 cancel_points=0"),
        (GuardMode::AllGuards, "range_analysis_call=4 elided=0 cancel_points=0"),
        (GuardMode::Performance, "range_analysis_call=3 elided=2 cancel_points=0"),
        (GuardMode::Unguarded, "range_analysis_call=0 elided=0 cancel_points=0"),
    ] {
        let h = {
            let _load = mode.set()?;
            Loaded::new(64 << 10)?
        };
        let line = stats_line("g_count")?;
        ensure!(line.ends_with(want), "mode {mode}: {line:?}, want {want}");
        // The program still works in every mode.
        h.write(0x3010, 99);
        let r = h.run(
            &h.skel.progs.g_count,
            Gargs { ptr: h.base + 0x3000, var: 64, marker: 5, ..Default::default() },
        )?;
        ensure!(r.ret == 99 && h.read(0x3040) == 5, "mode {mode}: program misbehaved");
    }
    ensure!(GuardMode::current()? == Some(GuardMode::Full), "mode not restored after the loads");
    let tainted: u64 = std::fs::read_to_string("/proc/sys/kernel/tainted")?.trim().parse()?;
    ensure!(tainted & (1 << 6) != 0, "unguarded mode did not taint the kernel ({tainted})");
    ensure!(dmesg()?.contains("program loaded WITHOUT heap guards"), "no warning for mode 2");
    // Only root may change the mode.
    let out = run(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            &format!("echo 2 > {}", guardmode::SYSCTL),
        ],
    )?;
    ensure!(!out.status.success(), "an unprivileged user changed the guard mode");
    ensure!(GuardMode::current()? == Some(GuardMode::Full), "mode changed");
    ensure!(std::fs::write(guardmode::SYSCTL, "4").is_err(), "mode 4 accepted");
    Ok(())
}
