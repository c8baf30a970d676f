// SPDX-License-Identifier: GPL-2.0

//! Cancellation points (`tests/bpf/cancel_test.bpf.c`,
//! `tests/bpf/cancel_refused.bpf.c`): a KFlex program's may_goto never
//! jumps; a run that goes past `kernel.kflex_budget_us` is cancelled and
//! returns its type's default verdict, whichever frame it is in; a callback
//! called by a helper leaves its loop instead; points reached while holding
//! what a cancelled run could not release are refused at load.

use std::{
    os::fd::AsFd,
    sync::{Mutex, OnceLock},
};

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    PrintLevel, ProgramInput,
};

use kflex_load::{
    cancel::{counter, SysctlGuard},
    ds,
};

use crate::util::*;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/cancel_test.skel.rs"));
}
mod refused {
    include!(concat!(env!("OUT_DIR"), "/cancel_refused.skel.rs"));
}
use refused::CancelRefusedSkelBuilder;
use skel::*;

const MARK: u8 = 0xCA;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const ECANCELED: i32 = 125;

fn loaded() -> Result<CancelTestSkel<'static>> {
    let open = CancelTestSkelBuilder::default().open(skel_storage())?;
    let skel = open.load().context("loading cancel_test")?;
    let out = skel.progs.make_ring.test_run(ProgramInput::default())?;
    ensure!(out.return_value == 0, "make_ring failed");
    Ok(skel)
}

/// One XDP test run of `prog` on a 64-byte packet starting with `first`:
/// (verdict, run time in µs as the kernel measured it).
fn xdp_run(prog: &libbpf_rs::ProgramMut, first: u8) -> Result<(u32, u64)> {
    let mut pkt = [0u8; 64];
    pkt[0] = first;
    let out =
        prog.test_run(ProgramInput { data_in: Some(&pkt), repeat: 1, ..Default::default() })?;
    Ok((out.return_value, out.duration.as_micros() as u64))
}

/// A cancelled run never ends before its budget, and ends within
/// [budget, 2 × budget + 1 ms]. The budget starts at the run's first poll
/// (after 1024 points), so a run is a little longer than its budget. Under
/// QEMU TCG a run is now and then stretched by the host (the emulated clock
/// keeps going while the vCPU thread waits): a single run may take up to
/// 50 ms more; the median of a series must be within the bound.
fn check_time(what: &str, us: u64, budget: u64) -> Result<()> {
    ensure!(
        us >= budget && us <= 2 * budget + 50_000,
        "{what}: cancelled after {us} µs with a budget of {budget} µs"
    );
    Ok(())
}

fn check_median(what: &str, times: &mut [u64], budget: u64) -> Result<()> {
    times.sort_unstable();
    let median = times[times.len() / 2];
    ensure!(
        median <= 2 * budget + 1000,
        "{what}: median {median} µs of {times:?} with a budget of {budget} µs"
    );
    Ok(())
}

/// An endless heap-list walk in an XDP program, in the main frame and four
/// subprogram frames deep, and two nested `bpf_repeat(BPF_MAX_LOOPS)`
/// (2^46 steps: iterator loops, whose points the kernel placed): cancelled
/// within the budget, XDP_PASS, the code after the loop never runs; unmarked packets are unaffected; the run time
/// follows the budget (1, 10, 100 ms); kernel log lines and counters.
pub fn endless_loops_are_cancelled() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let before = counter("cancelled_budget")?;
    let mut cancelled = 0;
    let mut report = Vec::new();
    for budget in [1000u64, 10_000, 100_000] {
        let _b = SysctlGuard::budget_us(budget)?;
        for (name, prog) in [
            ("main", &skel.progs.spin_main),
            ("subprog", &skel.progs.spin_sub),
            ("bpf_repeat", &skel.progs.spin_repeat),
        ] {
            // A first run translates the code (TCG): not timed.
            ensure!(xdp_run(prog, MARK)?.0 == XDP_PASS, "{name}: first run not cancelled");
            cancelled += 1;
            let mut times = Vec::new();
            for _ in 0..5 {
                let spins = skel.maps.bss_data.as_deref().context("no .bss")?.spins;
                let (verdict, us) = xdp_run(prog, MARK)?;
                ensure!(verdict == XDP_PASS, "{name}: verdict {verdict} (XDP_PASS expected)");
                check_time(name, us, budget)?;
                let bss = skel.maps.bss_data.as_deref().context("no .bss")?;
                // The loops count their steps: a few per ns at most.
                let steps = bss.spins.wrapping_sub(spins);
                ensure!(
                    steps > 0 && steps < us * 1000,
                    "{name}: {steps} steps counted in {us} µs (spins {spins} before, {} after)",
                    bss.spins
                );
                ensure!(bss.finished == 0, "{name}: code after the endless loop ran");
                cancelled += 1;
                times.push(us);
            }
            let (verdict, _) = xdp_run(prog, 0)?;
            ensure!(verdict == XDP_DROP, "{name}: unmarked packet: verdict {verdict}");
            report.push(format!("{name} budget {budget} µs: runs {times:?} µs"));
            check_median(name, &mut times, budget)?;
        }
    }
    let after = counter("cancelled_budget")?;
    ensure!(
        after - before == cancelled,
        "cancelled_budget moved by {} for {cancelled} runs",
        after - before
    );
    let log = dmesg()?;
    ensure!(
        log.contains("kflex: cancelled prog=spin_main") && log.contains("cause=budget"),
        "no cancellation line in the kernel log"
    );
    // spin_main: its may_goto; spin_repeat: at least one point per
    // bpf_repeat loop (how many depends on how the compiler laid them out).
    for (prog, least, most) in [("spin_main", 1, 1), ("spin_repeat", 2, 4)] {
        let needle = format!("kflex: prog={prog} ");
        let line = log.lines().rev().find(|l| l.contains(&needle)).context("no statistics line")?;
        let n: u32 = line
            .rsplit_once("cancel_points=")
            .and_then(|(_, n)| n.trim().parse().ok())
            .with_context(|| format!("{prog}: no point count in {line:?}"))?;
        ensure!((least..=most).contains(&n), "{prog}: {n} points ({line})");
    }
    println!("{}", report.join("\n"));
    Ok(())
}

/// One run of `spin_syscall` with argument `arg`: its return value and the
/// wall time of the call in µs.
fn spin_syscall(skel: &CancelTestSkel<'_>, mut arg: u64) -> Result<(i32, u64)> {
    let (r, t) = ds::test_run_ctx(skel.progs.spin_syscall.as_fd(), &mut arg)?;
    Ok((r, t.as_micros() as u64))
}

/// A syscall program's cancelled run returns -ECANCELED; unmarked, 0.
pub fn syscall_run_returns_ecanceled() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let _b = SysctlGuard::budget_us(5000)?;
    let (r, us) = spin_syscall(&skel, u64::from(MARK))?;
    ensure!(r == -ECANCELED, "marked run returned {r} (-ECANCELED expected)");
    ensure!(us >= 5000, "cancelled after {us} µs, budget 5000 µs");
    let (r, _) = spin_syscall(&skel, 0)?;
    ensure!(r == 0, "unmarked run returned {r}");
    ensure!(
        skel.maps.bss_data.as_deref().context("no .bss")?.finished == 0,
        "code after the loop ran"
    );
    Ok(())
}

/// The budget follows `kernel.kflex_budget_us` from one run to the next:
/// 1 ms, 10 ms and 100 ms runs of the same endless loop are cancelled after
/// at least their budget and well before the next one's.
pub fn budget_follows_the_sysctl() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let mut times = Vec::new();
    for budget in [1_000u64, 10_000, 100_000] {
        let _b = SysctlGuard::budget_us(budget)?;
        let (r, us) = spin_syscall(&skel, u64::from(MARK))?;
        ensure!(r == -ECANCELED, "budget {budget}: returned {r}");
        // emulated: the syscall and the first 1024 points around the run
        ensure!(
            (budget..2 * budget + 20_000).contains(&us),
            "budget {budget} µs: cancelled after {us} µs"
        );
        times.push(us);
    }
    println!("budgets 1/10/100 ms: cancelled after {times:?} µs");
    Ok(())
}

/// Endless loops in callbacks. bpf_for_each_map_elem() calls its callback
/// from the kernel, where the main frame cannot be reached: the callback's
/// points keep a budget of their own frame and leave the loop past it, and
/// the program goes on (XDP_TX). A bpf_loop() callback is either inlined by
/// the verifier (then the run is cancelled: XDP_PASS) or called by the
/// helper (then it leaves its loop: XDP_TX). Either way the run ends within
/// the budget's bounds.
pub fn callback_loops_end() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let _b = SysctlGuard::budget_us(10_000)?;
    for (name, prog, inlinable) in [
        ("bpf_for_each_map_elem", &skel.progs.spin_foreach, false),
        ("bpf_loop", &skel.progs.spin_callback, true),
    ] {
        let finished = skel.maps.bss_data.as_deref().context("no .bss")?.finished;
        let (exits, cancels) = (counter("callback_exits")?, counter("cancelled_budget")?);
        let (verdict, us) = xdp_run(prog, MARK)?;
        check_time(name, us, 10_000)?;
        let (exits, cancels) =
            (counter("callback_exits")? - exits, counter("cancelled_budget")? - cancels);
        let ran = skel.maps.bss_data.as_deref().context("no .bss")?.finished - finished;
        match verdict {
            XDP_TX => ensure!(
                exits == 1 && cancels == 0 && ran == 1,
                "{name}: left the callback: exits {exits}, cancels {cancels}, after-loop runs {ran}"
            ),
            XDP_PASS if inlinable => ensure!(
                cancels == 1 && ran == 0,
                "{name}: cancelled: cancels {cancels}, after-loop runs {ran}"
            ),
            v => bail!("{name}: verdict {v}"),
        }
        println!(
            "{name}: verdict {verdict}, {us} µs, callback exits {exits}, cancellations {cancels}"
        );
    }
    Ok(())
}

/// libbpf's messages while loading, for the verifier's log.
fn libbpf_log() -> &'static Mutex<String> {
    static LOG: OnceLock<Mutex<String>> = OnceLock::new();
    LOG.get_or_init(|| Mutex::new(String::new()))
}

fn capture(_: PrintLevel, msg: String) {
    if let Ok(mut l) = libbpf_log().lock() {
        l.push_str(&msg);
    }
}

/// Loads only program `name` of cancel_refused; returns the libbpf log.
pub(crate) fn load_refused(name: &str) -> Result<(bool, String)> {
    let mut open = CancelRefusedSkelBuilder::default().open(skel_storage())?;
    for mut p in open.open_object_mut().progs_mut() {
        let keep = p.name().to_string_lossy() == name;
        p.set_autoload(keep);
    }
    libbpf_log().lock().map_err(|_| anyhow::anyhow!("log lock"))?.clear();
    let prev = libbpf_rs::set_print(Some((PrintLevel::Warn, capture)));
    let ok = open.load().is_ok();
    libbpf_rs::set_print(prev);
    let log = libbpf_log().lock().map_err(|_| anyhow::anyhow!("log lock"))?.clone();
    Ok((ok, log))
}

/// Points reached holding an RCU read lock (at a may_goto and in a
/// `bpf_for` loop), preemption disabled or a task reference are refused
/// with a message naming it; the same loop holding nothing loads.
pub fn points_holding_resources_refused() -> Result<()> {
    ensure_kflex()?;
    for (prog, what) in [
        ("hold_rcu", "an RCU read lock"),
        ("hold_rcu_for", "an RCU read lock"),
        ("hold_preempt", "preemption disabled"),
        ("hold_task", "a referenced kernel object"),
    ] {
        let (ok, log) = load_refused(prog)?;
        ensure!(!ok, "{prog} loaded");
        ensure!(
            log.contains("cancellation point (") && log.contains(what),
            "{prog}: no refusal naming {what:?} in the log:\n{}",
            log.lines().rev().take(8).collect::<Vec<_>>().join("\n")
        );
    }
    let (ok, log) = load_refused("hold_nothing")?;
    ensure!(ok, "hold_nothing refused:\n{log}");
    Ok(())
}

/// Heap faults. In mode 0 (the default) a load past the heap's end and a
/// store before its start (the guard zones), in the main program and in a
/// subprogram, cancel the run: XDP_PASS, the code after the access never
/// runs, `cancelled_fault` counts them, the kernel logs `cause=fault`. The
/// same load under an RCU read lock (which a cancelled run could not
/// release) and in a callback the kernel calls read 0 and the program goes
/// on (`fault_zeroed`). Loaded in mode 1, every fault reads 0 / is dropped.
pub fn heap_faults_cancel() -> Result<()> {
    ensure_kflex()?;
    const SIZE: u64 = 1 << 16;
    let run = |mode1: bool| -> Result<()> {
        let mut skel = {
            let _mode = SysctlGuard::faults_cancel(!mode1)?;
            loaded()?
        };
        let base = heap_base(&skel.maps.heap)?;
        let tag = if mode1 { "mode 1" } else { "mode 0" };
        let cases = [
            ("load above", base + SIZE - 8, true),
            ("store below", base, true),
            ("load in a subprogram", base + SIZE - 8, true),
            ("load under an RCU lock", base + SIZE - 8, false),
            ("load in a callback", base + SIZE - 8, false),
        ];
        for (i, (what, ptr, cancels)) in cases.into_iter().enumerate() {
            let cancels = cancels && !mode1;
            let bss = skel.maps.bss_data.as_deref_mut().context("no .bss")?;
            bss.fault_ptr = ptr;
            bss.fault_val = 0xdead;
            let finished = bss.finished;
            let (before, zeroed) = (counter("cancelled_fault")?, counter("fault_zeroed")?);
            let prog = match i {
                0 => &skel.progs.fault_load,
                1 => &skel.progs.fault_store,
                2 => &skel.progs.fault_sub,
                3 => &skel.progs.fault_rcu,
                _ => &skel.progs.fault_callback,
            };
            let (verdict, _) = xdp_run(prog, MARK)?;
            let (cancelled, zeroed) =
                (counter("cancelled_fault")? - before, counter("fault_zeroed")? - zeroed);
            let bss = skel.maps.bss_data.as_deref().context("no .bss")?;
            let ran = bss.finished - finished;
            if cancels {
                ensure!(
                    verdict == XDP_PASS && ran == 0 && cancelled == 1 && zeroed == 0,
                    "{tag}, {what}: verdict {verdict}, after-access runs {ran}, cancelled {cancelled}, zeroed {zeroed}"
                );
            } else {
                ensure!(
                    verdict == XDP_TX && ran == 1 && cancelled == 0 && zeroed == 1,
                    "{tag}, {what}: verdict {verdict}, after-access runs {ran}, cancelled {cancelled}, zeroed {zeroed}"
                );
                if what.starts_with("load") {
                    ensure!(
                        bss.fault_val == 0,
                        "{tag}, {what}: the load read {:#x}",
                        bss.fault_val
                    );
                }
            }
        }
        Ok(())
    };
    run(false)?;
    run(true)?;
    let log = dmesg()?;
    ensure!(
        log.contains("cause=fault") && log.contains("kflex: cancelled prog=fault_sub"),
        "no cause=fault line in the kernel log"
    );
    Ok(())
}
