// SPDX-License-Identifier: GPL-2.0

//! Heap locks (`tests/bpf/locks_test.bpf.c`): `bpf_kflex_lock` /
//! `bpf_kflex_unlock` on words of one heap object. A lock that would
//! deadlock (AA; ABBA between two CPUs), a wait past the run's budget and a
//! ninth lock cancel the run (`-ECANCELED` for these syscall programs) and
//! release its locks; a return with locks held releases them; an unlock of a
//! lock the run does not hold is refused; a program taking heap locks may
//! not call what sleeps, and the point after a lock call is checked like
//! any other. Lock words are read through the heap mapping afterwards: free.

use std::{os::fd::AsFd, ptr, time::Instant};

use anyhow::{ensure, Context, Result};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    ProgramInput,
};

use kflex_load::{
    cancel::{counter, SysctlGuard},
    ds,
};

use crate::{cancel::load_refused, util::*};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/locks_test.skel.rs"));
}
use skel::*;

const ECANCELED: i32 = 125;
const EPERM: i32 = 1;
const EINVAL: i32 = 22;
const NWORDS: usize = 16;

/// `struct lock_args` of the BPF side.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
struct LockArgs {
    first: u32,
    n: u32,
    release: u32,
    second: u32,
    spin: u32,
    ret: i32,
    taken: u32,
    done: u32,
}

fn loaded() -> Result<LocksTestSkel<'static>> {
    let open = LocksTestSkelBuilder::default().open(skel_storage())?;
    let skel = open.load().context("loading locks_test")?;
    let out = skel.progs.setup.test_run(ProgramInput::default())?;
    ensure!(out.return_value == 0, "setup failed: {}", out.return_value);
    Ok(skel)
}

/// Runs `prog` with `args`; returns its return value (args updated).
fn run(prog: &libbpf_rs::ProgramMut, args: &mut LockArgs) -> Result<i32> {
    Ok(ds::test_run_ctx(prog.as_fd(), args)?.0)
}

/// The lock words, read through the heap mapping.
fn words(skel: &LocksTestSkel<'_>) -> Result<[u32; NWORDS]> {
    let addr = skel.maps.bss_data.as_deref().context("no .bss")?.words as u64;
    ensure!(addr != 0, "no lock words");
    let mut w = [0u32; NWORDS];
    for (i, v) in w.iter_mut().enumerate() {
        // SAFETY: `words` is a heap object of NWORDS u32 that libbpf mapped
        // at this address in this process (heap pointers are user addresses).
        *v = unsafe { ptr::read_volatile((addr as *const u32).add(i)) };
    }
    Ok(w)
}

/// Writes lock word `i` from user space (a forged hold, or its release).
fn set_word(skel: &LocksTestSkel<'_>, i: usize, v: u32) -> Result<()> {
    let addr = skel.maps.bss_data.as_deref().context("no .bss")?.words as u64;
    ensure!(addr != 0 && i < NWORDS, "no lock word {i}");
    // SAFETY: as in `words`, for writing.
    unsafe { ptr::write_volatile((addr as *mut u32).add(i), v) };
    Ok(())
}

fn all_free(skel: &LocksTestSkel<'_>) -> Result<()> {
    let w = words(skel)?;
    ensure!(w.iter().all(|&v| v == 0), "lock words not free: {w:?}");
    Ok(())
}

/// Counter deltas around `f`.
fn deltas<T>(names: &[&str], f: impl FnOnce() -> Result<T>) -> Result<(T, Vec<u64>)> {
    let before = names.iter().map(|n| counter(n)).collect::<Result<Vec<_>>>()?;
    let r = f()?;
    let after = names.iter().map(|n| counter(n)).collect::<Result<Vec<_>>>()?;
    Ok((r, after.iter().zip(&before).map(|(a, b)| a - b).collect()))
}

/// Takes and releases 1 and 8 locks; a second run re-acquires them.
pub fn take_and_release() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    for n in [1, 8] {
        for round in 0..2 {
            let mut a = LockArgs { first: 3, n, release: 1, ..Default::default() };
            let r = run(&skel.progs.take, &mut a)?;
            ensure!(r == 0 && a.done == 1 && a.taken == n, "{n} locks, round {round}: {r} {a:?}");
            all_free(&skel)?;
        }
    }
    Ok(())
}

/// AA: the second acquisition of a lock the run holds cancels it at once;
/// the lock is free afterwards and can be taken again.
pub fn aa_cancels_at_once() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let _b = SysctlGuard::budget_us(1_000_000)?;
    let mut a = LockArgs { first: 5, ..Default::default() };
    let t = Instant::now();
    let (r, d) = deltas(&["cancelled_deadlock", "locks_released"], || run(&skel.progs.aa, &mut a))?;
    let us = t.elapsed().as_micros();
    ensure!(r == -ECANCELED && a.done == 0, "AA run returned {r}, {a:?}");
    ensure!(d == [1, 1], "cancelled_deadlock, locks_released grew by {d:?}");
    // at once: far below the 1 s budget
    ensure!(us < 200_000, "AA cancelled after {us} µs");
    all_free(&skel)?;
    let mut a = LockArgs { first: 5, n: 1, release: 1, ..Default::default() };
    ensure!(run(&skel.progs.take, &mut a)? == 0, "lock not re-acquirable: {a:?}");
    let log = dmesg()?;
    ensure!(log.contains("cause=deadlock") && log.contains("released=1"), "no log line");
    Ok(())
}

/// ABBA between two threads pinned to CPU 0 and 1, 1,000 rounds each: every
/// round completes or is cancelled (-ECANCELED), none hangs; cancellations
/// are counted as deadlocks (or lock budget); the locks are free at the end.
pub fn abba_on_two_cpus() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let _b = SysctlGuard::budget_us(100_000)?;
    let prog = skel.progs.abba.as_fd();
    const ROUNDS: u32 = 1000;
    let mut spin = 50;
    for attempt in 0..4 {
        let (results, d) = deltas(&["cancelled_deadlock", "cancelled_lock_budget"], || {
            std::thread::scope(|scope| {
                let threads: Vec<_> = [(0u32, 1u32), (1, 0)]
                    .into_iter()
                    .enumerate()
                    .map(|(cpu, (first, second))| {
                        scope.spawn(move || -> Result<(u32, u32)> {
                            pin_to(cpu)?;
                            let (mut done, mut cancelled) = (0, 0);
                            for _ in 0..ROUNDS {
                                let mut a = LockArgs { first, second, spin, ..Default::default() };
                                match ds::test_run_ctx(prog, &mut a)?.0 {
                                    0 if a.done == 1 => done += 1,
                                    r if r == -ECANCELED => cancelled += 1,
                                    r => anyhow::bail!("round returned {r}: {a:?}"),
                                }
                            }
                            Ok((done, cancelled))
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().map_err(|_| anyhow::anyhow!("thread panicked"))?)
                    .collect::<Result<Vec<_>>>()
            })
        })?;
        let cancelled: u32 = results.iter().map(|r| r.1).sum();
        let done: u32 = results.iter().map(|r| r.0).sum();
        ensure!(done + cancelled == 2 * ROUNDS, "rounds lost: {results:?}");
        ensure!(
            u64::from(cancelled) == d[0] + d[1],
            "{cancelled} rounds cancelled, counters grew by {d:?}"
        );
        all_free(&skel)?;
        println!(
            "spin {spin}: {done} rounds completed, {cancelled} cancelled ({} deadlock, {} lock budget)",
            d[0], d[1]
        );
        if d[0] > 0 {
            return Ok(());
        }
        // no overlap yet: hold the first lock longer
        spin *= 10;
        ensure!(attempt < 3, "no ABBA deadlock in 4 attempts");
    }
    Ok(())
}

/// A word held (written) by user space stalls the run until its budget
/// ends: cancelled as lock_budget within [budget, budget + 1 s] (TCG); the
/// word keeps what user space wrote.
pub fn wait_past_budget_cancels() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    const BUDGET: u64 = 20_000;
    let _b = SysctlGuard::budget_us(BUDGET)?;
    set_word(&skel, 2, 0xdead)?;
    let mut a = LockArgs { first: 2, n: 1, release: 1, ..Default::default() };
    let t = Instant::now();
    let (r, d) = deltas(&["cancelled_lock_budget"], || run(&skel.progs.take, &mut a))?;
    let us = t.elapsed().as_micros() as u64;
    ensure!(r == -ECANCELED && a.taken == 0, "run returned {r}: {a:?}");
    ensure!(d == [1], "cancelled_lock_budget grew by {d:?}");
    ensure!((BUDGET..BUDGET + 1_000_000).contains(&us), "cancelled after {us} µs");
    ensure!(words(&skel)?[2] == 0xdead, "the word changed");
    set_word(&skel, 2, 0)?;
    ensure!(run(&skel.progs.take, &mut a)? == 0, "not acquirable after release: {a:?}");
    println!("waited {us} µs for budget {BUDGET} µs");
    Ok(())
}

/// The ninth lock held on a CPU cancels the run; its eight are released.
pub fn ninth_lock_cancels() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let mut a = LockArgs { first: 0, n: 9, release: 1, ..Default::default() };
    let (r, d) =
        deltas(&["cancelled_lock_table_full", "locks_released"], || run(&skel.progs.take, &mut a))?;
    ensure!(r == -ECANCELED && a.taken == 8, "run returned {r}: {a:?}");
    ensure!(d == [1, 8], "cancelled_lock_table_full, locks_released grew by {d:?}");
    all_free(&skel)
}

/// Unlocking a lock the run does not hold is refused (-EPERM, counted),
/// whether the word is free or written by someone else; a word outside the
/// heap's objects is -EINVAL.
pub fn foreign_unlock_refused() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let mut a = LockArgs { first: 3, ..Default::default() };
    let (r, d) = deltas(&["bad_unlocks"], || run(&skel.progs.unlock_only, &mut a))?;
    ensure!(r == 0 && a.ret == -EPERM && d == [1], "free word: {a:?}, bad_unlocks +{d:?}");
    set_word(&skel, 3, 7)?;
    let (_, d) = deltas(&["bad_unlocks"], || run(&skel.progs.unlock_only, &mut a))?;
    ensure!(a.ret == -EPERM && d == [1], "held word: {a:?}, bad_unlocks +{d:?}");
    ensure!(words(&skel)?[3] == 7, "a refused unlock changed the word");
    set_word(&skel, 3, 0)?;
    let (_, d) = deltas(&["bad_lock_words"], || run(&skel.progs.bad_word, &mut a))?;
    ensure!(a.ret == -EINVAL && d == [1], "bad word: {a:?}, bad_lock_words +{d:?}");
    Ok(())
}

/// A run that returns holding locks has them released at exit (counted as
/// leaked_locks); they can be taken again. A sleeping call afterwards does
/// not find preemption disabled.
pub fn return_with_locks_releases_them() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let mut a = LockArgs { first: 10, n: 3, release: 0, ..Default::default() };
    let (r, d) = deltas(&["leaked_locks"], || run(&skel.progs.take, &mut a))?;
    ensure!(r == 0 && a.taken == 3 && a.done == 1, "run returned {r}: {a:?}");
    ensure!(d == [3], "leaked_locks grew by {d:?}");
    all_free(&skel)?;
    a.release = 1;
    ensure!(run(&skel.progs.take, &mut a)? == 0, "not re-acquirable: {a:?}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let log = dmesg()?;
    ensure!(!log.contains("scheduling while atomic"), "scheduling while atomic");
    Ok(())
}

/// Nesting: a kprobe program that runs inside the outer run's
/// `bpf_kflex_unlock()` (same CPU) asks for a lock the outer run holds: the
/// inner run alone is cancelled (deadlock, nothing of its own to release),
/// the outer run completes and releases both locks.
pub fn nested_run_cancelled_alone() -> Result<()> {
    ensure_kflex()?;
    let skel = loaded()?;
    let _link = skel.progs.inner.attach().context("attaching the kprobe")?;
    let mut a = LockArgs::default();
    let (r, d) =
        deltas(&["cancelled_deadlock", "locks_released"], || run(&skel.progs.outer, &mut a))?;
    let bss = skel.maps.bss_data.as_deref().context("no .bss")?;
    ensure!(bss.inner_runs == 1, "the inner program ran {} times", bss.inner_runs);
    ensure!(bss.inner_done == 0, "the inner program got the outer run's lock");
    ensure!(r == 0 && a.done == 1 && a.ret == 0, "outer run returned {r}: {a:?}");
    ensure!(d == [1, 0], "cancelled_deadlock, locks_released grew by {d:?}");
    all_free(&skel)
}

/// A program that takes heap locks and calls a kfunc that may sleep is
/// refused naming it; the point after a lock call (in a subprogram) reached
/// while the caller keeps a task reference in its register is refused
/// naming the point.
pub fn lock_refusals() -> Result<()> {
    ensure_kflex()?;
    let (ok, log) = load_refused("lock_and_sleep")?;
    ensure!(!ok, "a program taking heap locks and calling bpf_kflex_reserve loaded");
    ensure!(
        log.contains("takes heap locks cannot call kfunc bpf_kflex_reserve"),
        "no message naming the kfunc:\n{log}"
    );
    let (ok, log) = load_refused("lock_in_sub_holding")?;
    ensure!(!ok, "lock_in_sub_holding loaded");
    ensure!(
        log.contains("cancellation point (after bpf_kflex_lock)")
            && log.contains("kept only where cancellation cannot find it"),
        "no refusal naming the point and the reference:\n{}",
        log.lines().rev().take(8).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}
