// SPDX-License-Identifier: GPL-2.0

//! Cancellation points (`tests/bpf/cancel_test.bpf.c`,
//! `tests/bpf/cancel_refused.bpf.c`): a KFlex program's may_goto never
//! jumps; a run that goes past `kernel.kflex_budget_us` is cancelled and
//! returns its type's default verdict, whichever frame it is in; a callback
//! called by a helper leaves its loop instead; points reached while holding
//! what a cancelled run could not release are refused at load (what it
//! releases: `release.rs`).

use std::{
    os::fd::AsFd,
    sync::{Mutex, OnceLock},
};

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, PrintLevel, ProgramInput,
};

use kflex_load::{
    cancel::{counter, SysctlGuard},
    ds, progstats,
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
/// from the kernel, where the main frame cannot be reached: past the budget
/// (counted from the callbacks' first poll in the helper call the program
/// armed) the callback's loop exits and the point after the helper call
/// cancels the run. A bpf_loop() callback is either inlined by the verifier
/// (then its own point cancels the run) or called by the helper (as
/// bpf_for_each_map_elem()). Nested bpf_loop(BPF_MAX_LOOPS) whose callbacks
/// have no loop (2^46 calls), inlined and called by the helper: the points
/// in the inlined loops, or at the callbacks' entries, end it. Every run:
/// XDP_PASS within the budget's bounds, the code after the call never runs,
/// one budget cancellation.
pub fn callback_loops_end() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let _b = SysctlGuard::budget_us(10_000)?;
    for (name, prog) in [
        ("bpf_for_each_map_elem", &skel.progs.spin_foreach),
        ("bpf_loop", &skel.progs.spin_callback),
        ("nested bpf_loop, inlined", &skel.progs.nested_loops),
        ("nested bpf_loop, helper", &skel.progs.nested_loops_helper),
    ] {
        let finished = skel.maps.bss_data.as_deref().context("no .bss")?.finished;
        let (exits, cancels) = (counter("callback_exits")?, counter("cancelled_budget")?);
        let (verdict, us) = xdp_run(prog, MARK)?;
        check_time(name, us, 10_000)?;
        let (exits, cancels) =
            (counter("callback_exits")? - exits, counter("cancelled_budget")? - cancels);
        let ran = skel.maps.bss_data.as_deref().context("no .bss")?.finished - finished;
        ensure!(
            verdict == XDP_PASS && cancels == 1 && ran == 0,
            "{name}: verdict {verdict}, cancellations {cancels}, after-call runs {ran}"
        );
        println!(
            "{name}: verdict {verdict}, {us} µs, callback stops {exits}, cancellations {cancels}"
        );
    }
    // unmarked packets do not loop
    ensure!(xdp_run(&skel.progs.nested_loops_helper, 0)?.0 == XDP_DROP, "unmarked run");
    Ok(())
}

/// Anonymous pages registered with a userfaultfd: a read of one blocks the
/// reader (in the kernel, too) until [`Uffd::fill`] maps it.
struct Uffd {
    fd: std::os::fd::OwnedFd,
    base: *mut libc::c_void,
    len: usize,
}

// <linux/userfaultfd.h>: _IOWR(0xAA, nr, size).
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

impl Uffd {
    fn new(pages: usize) -> Result<Self> {
        use std::os::fd::FromRawFd;
        let len = pages * 4096;
        // SAFETY: plain system call; the descriptor is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        ensure!(fd >= 0, "userfaultfd: {} (CONFIG_USERFAULTFD?)", std::io::Error::last_os_error());
        // SAFETY: a new descriptor nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let mut api = [UFFD_API, 0, 0];
        // SAFETY: struct uffdio_api is three u64s.
        ensure!(unsafe { libc::ioctl(raw, UFFDIO_API, api.as_mut_ptr()) } == 0, "UFFDIO_API");
        // SAFETY: a fresh anonymous mapping, unmapped in drop().
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        ensure!(base != libc::MAP_FAILED, "mmap");
        let uffd = Self { fd, base, len };
        let mut reg = [base as u64, len as u64, UFFDIO_REGISTER_MODE_MISSING, 0];
        // SAFETY: struct uffdio_register is {start, len, mode, ioctls}.
        let r = unsafe { libc::ioctl(raw, UFFDIO_REGISTER, reg.as_mut_ptr()) };
        ensure!(r == 0, "UFFDIO_REGISTER: {}", std::io::Error::last_os_error());
        Ok(uffd)
    }

    fn page(&self, i: usize) -> u64 {
        self.base as u64 + (i * 4096) as u64
    }

    /// Waits (at most `secs`) for the next missing-page fault: its page.
    fn wait_fault(&self, secs: u64) -> Result<u64> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, (secs * 1000) as i32) };
        ensure!(r == 1, "no userfaultfd fault within {secs} s");
        let mut msg = [0u8; 32];
        // SAFETY: struct uffd_msg is 32 bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), msg.as_mut_ptr().cast(), 32) };
        ensure!(n == 32 && msg[0] == UFFD_EVENT_PAGEFAULT, "userfaultfd read {n}: {msg:?}");
        let addr = u64::from_ne_bytes(msg[16..24].try_into()?);
        Ok(addr & !4095)
    }

    /// Maps a zero page at `page`, waking whoever waits on it.
    fn fill(&self, page: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        let mut zp = [page, 4096, 0, 0];
        // SAFETY: struct uffdio_zeropage is {start, len, mode, zeropage}.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE, zp.as_mut_ptr()) };
        ensure!(r == 0, "UFFDIO_ZEROPAGE: {}", std::io::Error::last_os_error());
        Ok(())
    }
}

impl Drop for Uffd {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new().
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Runs syscall program `prog` with argument `arg` on CPU `cpu`.
fn run_on_cpu(prog: std::os::fd::BorrowedFd<'_>, cpu: usize, mut arg: u64) -> Result<(i32, u64)> {
    pin_to(cpu)?;
    let (r, t) = ds::test_run_ctx(prog, &mut arg)?;
    Ok((r, t.as_micros() as u64))
}

/// Callback arming follows the task. A sleepable run parks inside an armed
/// helper call (its callback sleeps in bpf_copy_from_user() on a
/// userfaultfd page); a second run on the same CPU arms a helper call and
/// parks too. Woken first, the sleeper's callbacks see their own arming: the
/// loop stops past the budget and the run is cancelled (-ECANCELED, one
/// budget cancellation, far fewer than BPF_MAX_LOOPS calls). With one
/// arming per CPU they saw the parker's and ran all 2^23 calls. Then the
/// parker finishes untouched (1).
pub fn sleeping_callbacks_keep_their_arming() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let _b = SysctlGuard::budget_us(10_000)?;
    let uffd = Uffd::new(2)?;
    let (sleeper, parker) = (skel.progs.sleeper.as_fd(), skel.progs.parker.as_fd());
    let cancels = counter("cancelled_budget")?;
    let (page0, page1) = (uffd.page(0), uffd.page(1));
    let (s, p, woke_us) = std::thread::scope(|scope| -> Result<_> {
        let s = scope.spawn(move || run_on_cpu(sleeper, 1, page0));
        let parked = |page, who| -> Result<()> {
            let got = uffd.wait_fault(30);
            if !matches!(got, Ok(p) if p == page) {
                // let the threads finish before the scope joins them
                let _ = (uffd.fill(page0), uffd.fill(page1));
                bail!("{who} did not park on its page: {got:?}");
            }
            Ok(())
        };
        parked(page0, "the sleeper")?;
        let p = scope.spawn(move || run_on_cpu(parker, 1, page1));
        parked(page1, "the parker")?;
        let woke = std::time::Instant::now();
        let filled = uffd.fill(page0);
        let s = s.join().map_err(|_| anyhow::anyhow!("sleeper panicked"))?;
        let woke_us = woke.elapsed().as_micros() as u64;
        let filled = filled.and(uffd.fill(page1));
        let p = p.join().map_err(|_| anyhow::anyhow!("parker panicked"))?;
        filled?;
        Ok((s?, p?, woke_us))
    })?;
    let cancels = counter("cancelled_budget")? - cancels;
    let bss = skel.maps.bss_data.as_deref().context("no .bss")?;
    println!(
        "sleeper: returned {} after {woke_us} µs awake, {} callbacks; parker: returned {}; \
         budget cancellations {cancels}",
        s.0, bss.sleeper_calls, p.0
    );
    ensure!(
        s.0 == -ECANCELED && bss.sleeper_calls < 1 << 23 && bss.finished == 0,
        "the sleeper's callbacks ran {} times, it returned {} (-ECANCELED expected)",
        bss.sleeper_calls,
        s.0
    );
    ensure!(p.0 == 1 && bss.parker_runs == 1, "the parker returned {}", p.0);
    ensure!(cancels == 1, "{cancels} budget cancellations (1 expected)");
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

/// Runs `load` (a skeleton's load) with libbpf's messages captured: its
/// result and the messages, the verifier's log among them.
fn load_logged<T>(load: impl FnOnce() -> libbpf_rs::Result<T>) -> Result<(Option<T>, String)> {
    libbpf_log().lock().map_err(|_| anyhow::anyhow!("log lock"))?.clear();
    let prev = libbpf_rs::set_print(Some((PrintLevel::Warn, capture)));
    let loaded = load().ok();
    libbpf_rs::set_print(prev);
    let log = libbpf_log().lock().map_err(|_| anyhow::anyhow!("log lock"))?.clone();
    Ok((loaded, log))
}

/// Loads only program `name` of cancel_refused; returns the libbpf log.
pub(crate) fn load_refused(name: &str) -> Result<(bool, String)> {
    let mut open = CancelRefusedSkelBuilder::default().open(skel_storage())?;
    for mut p in open.open_object_mut().progs_mut() {
        let keep = p.name().to_string_lossy() == name;
        p.set_autoload(keep);
    }
    let (skel, log) = load_logged(|| open.load())?;
    Ok((skel.is_some(), log))
}

/// Points reached holding what no object table can describe are refused
/// with a message naming it: a bpf_spin_lock, different holdings on
/// different paths, a reference kept only in a calling function's register,
/// a per-CPU object, a task across bpf_loop() or across a call of a global
/// function that loops; the same loop holding nothing loads.
pub fn points_holding_resources_refused() -> Result<()> {
    ensure_kflex()?;
    for (prog, what) in [
        ("hold_spin", "a bpf_spin_lock"),
        ("hold_paths", "on different paths"),
        ("hold_in_caller", "kept only where cancellation cannot find it"),
        ("hold_percpu", "of a kind cancellation cannot release"),
        ("hold_across_loop", "bpf_loop at insn"),
        ("hold_across_global", "global function call at insn"),
    ] {
        let (ok, log) = load_refused(prog)?;
        ensure!(!ok, "{prog} loaded");
        ensure!(
            (log.contains("cancellation point (")
                || log.contains("kflex: bpf_loop")
                || log.contains("kflex: global function"))
                && log.contains(what),
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
/// runs, `cancelled_fault` counts them, the kernel logs `cause=fault`. Heap
/// atomics likewise (an add above, a fetch-add below). Made holding what a
/// cancellation releases, the fault cancels too and releases it (patch
/// 0028): a load and a fetch-add under an RCU read lock (`rcu_unlocks`), a
/// load holding a `bpf_obj_new` object (`released_obj`), a store with
/// preemption disabled (`preempt_enables`), a store of an immediate under an
/// RCU read lock (rewritten into a store of `BPF_REG_AX`, whose mark has room
/// for the object table). A load in a callback the kernel calls reads 0 and
/// the program goes on (`fault_zeroed`). Loaded in mode 1, every fault reads
/// 0 / is dropped.
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
        // what, where, whether mode 0 cancels, what the cancellation releases
        let cases = [
            ("load above", base + SIZE - 8, true, None),
            ("store below", base, true, None),
            ("load in a subprogram", base + SIZE - 8, true, None),
            ("load under an RCU lock", base + SIZE - 8, true, Some("rcu_unlocks")),
            ("load in a callback", base + SIZE - 8, false, None),
            ("atomic add above", base + SIZE - 8, true, None),
            ("atomic fetch-add below", base, true, None),
            ("atomic fetch-add under an RCU lock", base + SIZE - 8, true, Some("rcu_unlocks")),
            ("load holding a bpf_obj_new object", base + SIZE - 8, true, Some("released_obj")),
            ("store with preemption disabled", base, true, Some("preempt_enables")),
            ("store of an immediate under an RCU lock", base, true, Some("rcu_unlocks")),
        ];
        for (i, (what, ptr, cancels, releases)) in cases.into_iter().enumerate() {
            let cancels = cancels && !mode1;
            let bss = skel.maps.bss_data.as_deref_mut().context("no .bss")?;
            bss.fault_ptr = ptr;
            bss.fault_val = 0xdead;
            let finished = bss.finished;
            let (before, zeroed) = (counter("cancelled_fault")?, counter("fault_zeroed")?);
            let released = releases.map(counter).transpose()?;
            let prog = match i {
                0 => &skel.progs.fault_load,
                1 => &skel.progs.fault_store,
                2 => &skel.progs.fault_sub,
                3 => &skel.progs.fault_rcu,
                4 => &skel.progs.fault_callback,
                5 => &skel.progs.fault_atomic_add,
                6 => &skel.progs.fault_atomic_fetch,
                7 => &skel.progs.fault_atomic_rcu,
                8 => &skel.progs.fault_obj,
                9 => &skel.progs.fault_preempt,
                _ => &skel.progs.fault_imm_rcu,
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
                if let (Some(name), Some(before)) = (releases, released) {
                    let now = counter(name)?;
                    ensure!(now == before + 1, "{tag}, {what}: {name} {before} -> {now}");
                }
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

/// The record of a loaded program (`/proc/kflex/progs`).
fn record(prog: &libbpf_rs::ProgramMut) -> Result<progstats::Prog> {
    let id = libbpf_rs::Program::id_from_fd(prog.as_fd())?;
    progstats::find(id)?.with_context(|| format!("program {id} has no record in /proc/kflex/progs"))
}

/// Every KFlex program has a record: its verdict, points and heap, its
/// cancellations by cause with the shortest and longest budget-cancelled
/// run, where the last one happened; the record goes away with the program.
pub fn program_records() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let _b = SysctlGuard::budget_us(2000)?;
    for _ in 0..3 {
        let (r, _) = spin_syscall(&skel, u64::from(MARK))?;
        ensure!(r == -ECANCELED, "marked run returned {r}");
    }
    ensure!(spin_syscall(&skel, 0)?.0 == 0, "unmarked run cancelled");
    let p = record(&skel.progs.spin_syscall)?;
    let heap = skel.maps.heap.info()?.info.id;
    ensure!(
        p.name() == "spin_syscall"
            && p.get("heap") == u64::from(heap)
            && p.get("points") == 1
            && p.verdict() == -i64::from(ECANCELED)
            && p.get("verdict_overridden") == 0,
        "spin_syscall (heap {heap}): {p:?}"
    );
    ensure!(
        p.get("cancelled") == 3 && p.get("budget") == 3 && p.text("last_cause") == Some("budget"),
        "three budget cancellations expected: {p:?}"
    );
    let (min, max) = (p.get("min_ran_us"), p.get("max_ran_us"));
    ensure!(2000 <= min && min <= max && max <= 2 * 2000 + 50_000, "run times {min}..{max} µs");
    ensure!(
        p.text("last_at").is_some_and(|a| a.contains("spin_syscall")),
        "last cancellation not placed in spin_syscall: {p:?}"
    );
    for (prog, verdict) in [(&skel.progs.spin_main, XDP_PASS), (&skel.progs.spin_sub, XDP_PASS)] {
        let p = record(prog)?;
        ensure!(p.verdict() == i64::from(verdict) && p.get("cancelled") == 0, "{p:?}");
    }
    let id = libbpf_rs::Program::id_from_fd(skel.progs.spin_syscall.as_fd())?;
    println!("{}", progstats::table(&[p]));
    drop(skel);
    // freed with the program (after an RCU grace period and a work item)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while progstats::find(id)?.is_some() {
        ensure!(std::time::Instant::now() < deadline, "record of program {id} outlived it");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// Path of the forced-cancellation knob.
const FORCE: &str = "/sys/kernel/kflex/force_cancel";

/// One endless `spin_syscall` run on CPU 1, cancelled by writing `how` to
/// the force knob once the loop is running: returns the run's result and
/// wall time in µs.
fn forced_run(skel: &CancelTestSkel<'_>, how: &str) -> Result<(i32, u64)> {
    let prog = skel.progs.spin_syscall.as_fd();
    let spins = || -> Result<u64> {
        let bss = skel.maps.bss_data.as_deref().context("no .bss")?;
        // SAFETY: `spins` is a u64 in the mapped .bss, written by the run.
        Ok(unsafe { std::ptr::read_volatile(&bss.spins) })
    };
    let before = spins()?;
    std::thread::scope(|scope| {
        let run = scope.spawn(move || run_on_cpu(prog, 1, u64::from(MARK)));
        // past the first poll (1024 points) before asking
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(800);
        while spins()? < before + 4096 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::fs::write(FORCE, how).with_context(|| format!("writing {how:?} to {FORCE}"))?;
        run.join().map_err(|_| anyhow::anyhow!("run thread panicked"))?
    })
}

/// `/sys/kernel/kflex/force_cancel` cancels the runs in progress on a CPU
/// (by number, or "all") well before their budget, cause `forced`; a run
/// that starts after the request keeps its budget; bad input is refused.
pub fn forced_cancellation() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    for bad in ["x", "4096", "-1", "1 2"] {
        ensure!(std::fs::write(FORCE, bad).is_err(), "{FORCE} accepted {bad:?}");
    }
    let mut times = Vec::new();
    {
        let _b = SysctlGuard::budget_us(1_000_000)?;
        for how in ["1", "all"] {
            let (r, us) = forced_run(&skel, how)?;
            ensure!(r == -ECANCELED, "forced ({how}): returned {r}");
            ensure!(us < 900_000, "forced ({how}): ran {us} µs of a 1 s budget");
            times.push(us);
        }
    }
    // a later run is not affected by the earlier requests
    let _b = SysctlGuard::budget_us(5000)?;
    let (r, us) = spin_syscall(&skel, u64::from(MARK))?;
    ensure!(r == -ECANCELED && us >= 5000, "run after the requests: {r} after {us} µs");
    let p = record(&skel.progs.spin_syscall)?;
    ensure!(
        p.get("forced") == 2 && p.get("budget") == 1 && p.text("last_cause") == Some("budget"),
        "forced 2 and budget 1 expected: {p:?}"
    );
    ensure!(dmesg()?.contains("cause=forced"), "no cause=forced line in the kernel log");
    println!("forced runs ended after {times:?} µs (budget 1 s)");
    Ok(())
}

mod verdict_skel {
    include!(concat!(env!("OUT_DIR"), "/cancel_verdict.skel.rs"));
}

/// A program's `kflex_cancel_verdict` is what its cancelled runs return
/// (XDP_DROP here, set before load); a program of the object that does not
/// use it keeps its type's default; a value the hook cannot return is
/// refused at load with the hook's range.
pub fn own_verdict() -> Result<()> {
    use verdict_skel::*;
    ensure_kflex()?;
    let _b = SysctlGuard::budget_us(2000)?;
    for (value, loads) in [(XDP_DROP, true), (0, true), (7, false), (u32::MAX, false)] {
        let mut open = CancelVerdictSkelBuilder::default().open(skel_storage())?;
        open.maps.rodata_data.as_deref_mut().context("no .rodata")?.kflex_cancel_verdict = value;
        let (skel, log) = load_logged(|| open.load())?;
        let skel = match (skel, loads) {
            (Some(s), true) => s,
            (None, false) => {
                ensure!(
                    log.contains(&format!("kflex_cancel_verdict={} is not a value", value as i32))
                        && log.contains("(0..4)"),
                    "value {value}: refusal without the range:\n{log}"
                );
                continue;
            }
            (Some(_), false) => bail!("kflex_cancel_verdict={value} loaded"),
            (None, true) => bail!("kflex_cancel_verdict={value} refused:\n{log}"),
        };
        let out = skel.progs.make_ring.test_run(ProgramInput::default())?;
        ensure!(out.return_value == 0, "make_ring failed");
        let (v, _) = xdp_run(&skel.progs.spin_own_verdict, MARK)?;
        ensure!(v == value, "cancelled run returned {v}, its kflex_cancel_verdict is {value}");
        ensure!(xdp_run(&skel.progs.spin_own_verdict, 0)?.0 == XDP_TX, "unmarked packet");
        let p = record(&skel.progs.spin_own_verdict)?;
        ensure!(p.get("verdict_overridden") == 1 && p.verdict() == i64::from(value), "{p:?}");
        let (r, _) = ds::test_run_ctx(skel.progs.spin_default.as_fd(), &mut 0u64)?;
        ensure!(r == -ECANCELED, "spin_default (no override used) returned {r}");
    }
    Ok(())
}

/// One phase of [`udp_traffic_marked_packets_cancelled`]: what was sent
/// and received and what the program's record says.
struct UdpPhase {
    budget: u64,
    marked: u64,
    unmarked: u64,
    got_marked: u64,
    got_unmarked: u64,
    record: progstats::Prog,
}

/// `secs` seconds of UDP traffic from the namespace to the outer end of
/// `net` (where `spin_udp`, or with `callbacks` `spin_udp_cb`, is
/// attached): an unmarked datagram every 2 ms and a marked one every
/// `every` ms. Returns the counts.
fn udp_phase(
    net: &VethNs,
    callbacks: bool,
    budget: u64,
    secs: u64,
    every: u64,
) -> Result<UdpPhase> {
    use std::{
        net::UdpSocket,
        time::{Duration, Instant},
    };
    let _b = SysctlGuard::budget_us(budget)?;
    let skel = loaded()?;
    let ifindex = net.outer_ifindex()?;
    let prog = if callbacks { &skel.progs.spin_udp_cb } else { &skel.progs.spin_udp };
    let link = prog.attach_xdp(ifindex as i32).context("attaching the UDP program")?;
    let sock = UdpSocket::bind(format!("{}:7777", net.outer_ip))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let receiver = std::thread::spawn(move || -> (u64, u64) {
        let (mut marked, mut unmarked, mut buf) = (0, 0, [0u8; 64]);
        let mut idle = 0;
        // until 3 s without a datagram after the first
        while idle < 15 {
            match sock.recv(&mut buf) {
                Ok(n) if n > 0 && buf[0] == MARK => (marked, idle) = (marked + 1, 0),
                Ok(_) => (unmarked, idle) = (unmarked + 1, 0),
                Err(_) => idle += usize::from(marked + unmarked > 0),
            }
        }
        (marked, unmarked)
    });
    let target = format!("{}:7777", net.outer_ip);
    let ping_target = net.outer_ip.clone();
    let ns = net.ns.clone();
    let ping = std::thread::spawn(move || {
        sh("ip", &["netns", "exec", &ns, "ping", "-c", "3", "-i", "0.5", "-W", "5", &ping_target])
    });
    let (marked, unmarked) = net.in_ns(move || -> Result<(u64, u64)> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        let (start, mut next_mark) = (Instant::now(), Duration::ZERO);
        let (mut marked, mut unmarked) = (0u64, 0u64);
        while start.elapsed() < Duration::from_secs(secs) {
            if start.elapsed() >= next_mark {
                s.send_to(&[MARK; 16], &target)?;
                marked += 1;
                next_mark += Duration::from_millis(every);
            }
            s.send_to(&[0u8; 16], &target)?;
            unmarked += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok((marked, unmarked))
    })?;
    let (got_marked, got_unmarked) =
        receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let pinged = ping.join().map_err(|_| anyhow::anyhow!("ping thread panicked"))?;
    let pinged = pinged.with_context(|| format!("ping over the veth (budget {budget} µs)"))?;
    ensure!(pinged.contains("3 received"), "ping: {pinged}");
    let record = record(prog)?;
    let bss = skel.maps.bss_data.as_deref().context("no .bss")?;
    ensure!(
        bss.udp_marked == marked && bss.udp_unmarked == unmarked && bss.finished == 0,
        "budget {budget}: the program saw {} marked / {} unmarked of {marked} / {unmarked} sent \
         (after-loop runs {})",
        bss.udp_marked,
        bss.udp_unmarked,
        bss.finished
    );
    drop(link);
    Ok(UdpPhase { budget, marked, unmarked, got_marked, got_unmarked, record })
}

/// Real traffic: `spin_udp` at XDP on a veth, UDP datagrams from another
/// namespace for 10 s (budget 10 ms) and 3 s each with budgets 1 ms and
/// 100 ms. Every marked datagram's run is cancelled with cause budget and
/// passed (XDP_PASS) to the socket behind, within [budget, 2 × budget + 1 ms]
/// (the longest run may stretch by 50 ms under TCG); unmarked datagrams all
/// arrive; ping over the veth answers meanwhile.
pub fn udp_traffic_marked_packets_cancelled() -> Result<()> {
    ensure_kflex()?;
    let net = VethNs::new(12)?;
    let before = counter("cancelled_budget")?;
    let mut total = 0;
    let mut lines = Vec::new();
    for (budget, secs, every) in [(10_000u64, 10, 100), (1000, 3, 50), (100_000, 3, 300)] {
        let p = udp_phase(&net, false, budget, secs, every)?;
        let r = &p.record;
        lines.push(format!(
            "budget {:>6} µs: {} marked sent, {} cancelled (budget), {} passed to the socket; \
             {} / {} unmarked arrived; run {}..{} µs",
            p.budget,
            p.marked,
            r.get("budget"),
            p.got_marked,
            p.got_unmarked,
            p.unmarked,
            r.get("min_ran_us"),
            r.get("max_ran_us")
        ));
        ensure!(
            r.get("budget") == p.marked && r.get("cancelled") == p.marked,
            "budget {budget}: {} cancellations for {} marked datagrams: {r:?}",
            r.get("cancelled"),
            p.marked
        );
        ensure!(
            p.got_marked == p.marked && p.got_unmarked == p.unmarked,
            "budget {budget}: received {}/{} marked, {}/{} unmarked",
            p.got_marked,
            p.marked,
            p.got_unmarked,
            p.unmarked
        );
        let (min, max) = (r.get("min_ran_us"), r.get("max_ran_us"));
        ensure!(
            min >= budget && max <= 2 * budget + 1000 + 50_000,
            "budget {budget}: runs took {min}..{max} µs"
        );
        total += p.marked;
    }
    let after = counter("cancelled_budget")?;
    ensure!(after - before == total, "cancelled_budget moved by {} for {total}", after - before);
    println!("{}", lines.join("\n"));
    Ok(())
}

/// Callbacks in softirq context: `spin_udp_cb` at XDP on a veth runs
/// nested `bpf_loop(BPF_MAX_LOOPS)` that the helper calls back on every
/// marked datagram, in the receiving softirq, where the callbacks' arming
/// is this CPU's (patch 0033 moved a task's into the task). 3 s of traffic,
/// budget 10 ms: every marked datagram's callbacks are stopped
/// (`callback_exits`) and its run cancelled with cause budget, the datagram
/// passed to the socket; unmarked ones all arrive. (The record's run times
/// stay 0 for such runs: the main frame's clock starts at its first poll,
/// which here is the one after the helper call that cancels it.)
pub fn callbacks_cancelled_in_softirq() -> Result<()> {
    ensure_kflex()?;
    let net = VethNs::new(15)?;
    let exits = counter("callback_exits")?;
    let budget = 10_000;
    let p = udp_phase(&net, true, budget, 3, 100)?;
    let exits = counter("callback_exits")? - exits;
    let r = &p.record;
    println!(
        "callbacks in softirq: {} marked sent, {} cancelled (budget), {exits} callback stops, \
         {} passed to the socket; {} / {} unmarked arrived",
        p.marked,
        r.get("budget"),
        p.got_marked,
        p.got_unmarked,
        p.unmarked
    );
    ensure!(
        r.get("budget") == p.marked && r.get("cancelled") == p.marked && exits >= p.marked,
        "{} cancellations, {exits} callback stops for {} marked datagrams: {r:?}",
        r.get("cancelled"),
        p.marked
    );
    ensure!(
        p.got_marked == p.marked && p.got_unmarked == p.unmarked,
        "received {}/{} marked, {}/{} unmarked",
        p.got_marked,
        p.marked,
        p.got_unmarked,
        p.unmarked
    );
    Ok(())
}

/// Unload under load: `spin_udp` at XDP on a veth spins on a marked
/// datagram (budget 1 s); detaching the program (dropping its link) cancels
/// the spinning run at its next poll (cause `forced`), long before its
/// budget; the datagram is passed (the default verdict) to the socket
/// behind. Three rounds with the same program: each run is forced by its
/// own detach. The run is known to be in progress by its spin counter
/// still moving, and to have ended by the datagram reaching the socket (the
/// softirq that runs it is the sender's on some kernels, ksoftirqd's on the
/// debug kernel's).
pub fn detach_cancels_running_runs() -> Result<()> {
    use std::{
        net::UdpSocket,
        time::{Duration, Instant},
    };
    ensure_kflex()?;
    let net = VethNs::new(13)?;
    let _b = SysctlGuard::budget_us(1_000_000)?;
    let skel = loaded()?;
    let ifindex = net.outer_ifindex()?;
    let sock = UdpSocket::bind(format!("{}:7777", net.outer_ip))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let spins = || -> Result<u64> {
        let bss = skel.maps.bss_data.as_deref().context("no .bss")?;
        // SAFETY: `spins` is a u64 in the mapped .bss, written by the runs.
        Ok(unsafe { std::ptr::read_volatile(&bss.spins) })
    };
    let mut ended = Vec::new();
    for round in 0..3 {
        let link = skel.progs.spin_udp.attach_xdp(ifindex as i32).context("attaching spin_udp")?;
        let before = spins()?;
        let target = format!("{}:7777", net.outer_ip);
        let ns = format!("/run/netns/{}", net.ns);
        let sender = std::thread::spawn(move || -> Result<()> {
            let fd = std::fs::File::open(&ns).with_context(|| format!("opening {ns}"))?;
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            UdpSocket::bind("0.0.0.0:0")?.send_to(&[MARK; 16], &target)?;
            Ok(())
        });
        // the run is spinning, past its first poll (1024 points)
        let deadline = Instant::now() + Duration::from_millis(800);
        while spins()? < before + 4096 {
            ensure!(Instant::now() < deadline, "round {round}: the marked run is not spinning");
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = spins()?;
        std::thread::sleep(Duration::from_millis(5));
        ensure!(spins()? > s, "round {round}: the run ended before the detach");
        let t0 = Instant::now();
        drop(link);
        // the datagram reaches the socket when the run ends (XDP_PASS)
        let mut buf = [0u8; 64];
        let n =
            sock.recv(&mut buf).with_context(|| format!("round {round}: datagram not passed"))?;
        ended.push(t0.elapsed().as_micros() as u64);
        ensure!(n == 16 && buf[0] == MARK, "round {round}: got {n} bytes {:?}", &buf[..n]);
        sender.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
    }
    let r = record(&skel.progs.spin_udp)?;
    ensure!(
        r.get("forced") == 3 && r.get("budget") == 0 && r.get("cancelled") == 3,
        "3 forced cancellations expected (runs ended {ended:?} µs after the detach): {r:?}"
    );
    ensure!(
        ended.iter().all(|&us| us < 500_000) && r.get("max_ran_us") < 900_000,
        "runs ended {ended:?} µs after the detach, longest run {} µs, budget 1 s",
        r.get("max_ran_us")
    );
    let bss = skel.maps.bss_data.as_deref().context("no .bss")?;
    ensure!(bss.finished == 0, "a spinning run finished");
    println!("detach with a run spinning: runs ended {ended:?} µs after the detach (budget 1 s)");
    Ok(())
}
