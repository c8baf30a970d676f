// SPDX-License-Identifier: GPL-2.0

//! What a cancelled run releases (`tests/bpf/cancel_release.bpf.c`): runs
//! that hold a kernel resource across an endless loop are cancelled and the
//! resource comes back, once: task references (the task's `rcu_users` count
//! is what it was), cgroups, cpumasks, `bpf_obj_new` objects, ring buffer
//! reservations and dynptrs (the consumer still receives later records and
//! never a cancelled one), socket references (the socket's reference count
//! in `/proc/net/tcp` is what it was), an RCU read-side section and
//! preemption disabled twice (a sleep afterwards is no "scheduling while
//! atomic"), and all of them at once with two heap locks (re-acquirable
//! afterwards). The per-kind counters of `/proc/kflex/progs` and
//! `/sys/kernel/kflex/cancel` match.

use std::{
    cell::RefCell,
    io::Read,
    net::{TcpListener, TcpStream},
    os::fd::AsFd,
    rc::Rc,
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    ProgramInput, RingBufferBuilder,
};

use kflex_load::{
    cancel::{counters, SysctlGuard},
    ds, progstats,
};

use crate::util::*;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/cancel_release.skel.rs"));
}
use skel::*;

const ECANCELED: i32 = 125;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// Cancelled runs per kind.
const RUNS: u64 = 8;

fn loaded() -> Result<CancelReleaseSkel<'static>> {
    let open = CancelReleaseSkelBuilder::default().open(skel_storage())?;
    let skel = open.load().context("loading cancel_release")?;
    let mut arg = 0u64;
    let (r, _) = ds::test_run_ctx(skel.progs.setup.as_fd(), &mut arg)?;
    ensure!(r == 0, "setup failed");
    Ok(skel)
}

fn bss<'a>(skel: &'a CancelReleaseSkel<'_>) -> Result<&'a types::bss> {
    skel.maps.bss_data.as_deref().context("no .bss")
}

fn bss_mut<'a>(skel: &'a mut CancelReleaseSkel<'_>) -> Result<&'a mut types::bss> {
    skel.maps.bss_data.as_deref_mut().context("no .bss")
}

fn syscall_run(prog: &libbpf_rs::ProgramMut) -> Result<i32> {
    let mut arg = 0u64;
    Ok(ds::test_run_ctx(prog.as_fd(), &mut arg)?.0)
}

fn xdp_run(prog: &libbpf_rs::ProgramMut) -> Result<u32> {
    let pkt = [0u8; 64];
    let out =
        prog.test_run(ProgramInput { data_in: Some(&pkt), repeat: 1, ..Default::default() })?;
    Ok(out.return_value)
}

/// The program's record.
fn record(prog: &libbpf_rs::ProgramMut) -> Result<progstats::Prog> {
    let id = libbpf_rs::Program::id_from_fd(prog.as_fd())?;
    progstats::find(id)?.with_context(|| format!("program {id} has no record"))
}

/// Global counters that a cancellation may move.
const GLOBAL: [&str; 12] = [
    "released_task",
    "released_cgroup",
    "released_cpumask",
    "released_obj",
    "released_sock",
    "released_ringbuf",
    "released_dynptr",
    "released_iter",
    "rcu_unlocks",
    "preempt_enables",
    "locks_released",
    "held_errors",
];

fn globals() -> Result<Vec<u64>> {
    let all = counters()?;
    GLOBAL
        .iter()
        .map(|c| all.get(*c).copied().with_context(|| format!("no global counter {c}")))
        .collect()
}

/// The moves of the global counters since `before`, by name, zeros left out.
fn moved(before: &[u64]) -> Result<Vec<(&'static str, u64)>> {
    let now = globals()?;
    Ok(GLOBAL
        .iter()
        .zip(now.iter().zip(before))
        .filter(|(_, (n, b))| n != b)
        .map(|(c, (n, b))| (*c, n - b))
        .collect())
}

/// `RUNS` marked runs of a syscall program: each cancelled (-ECANCELED),
/// never past its loop; then one unmarked run finishes. The global counters
/// moved by exactly `want` (per run), and so did the program's record.
fn cancel_syscall(
    skel: &mut CancelReleaseSkel<'_>,
    name: &str,
    want: &[(&'static str, u64)],
) -> Result<()> {
    let before = globals()?;
    let after0 = bss(skel)?.after;
    bss_mut(skel)?.mark = 1;
    for i in 0..RUNS {
        let prog = prog_by_name(skel, name)?;
        let r = syscall_run(prog)?;
        ensure!(r == -ECANCELED, "{name}: marked run {i} returned {r}");
        // a sleep right after: a leaked RCU section or preemption count is
        // "scheduling while atomic" here
        std::thread::sleep(Duration::from_millis(1));
    }
    ensure!(bss(skel)?.after == after0, "{name}: code after the loop ran");
    let got = moved(&before)?;
    let want: Vec<_> = want.iter().map(|&(c, n)| (c, n * RUNS)).collect();
    ensure!(got == want, "{name}: counters moved by {got:?}, expected {want:?}");
    let rec = record(prog_by_name(skel, name)?)?;
    for (c, n) in &want {
        ensure!(rec.get(c) == *n, "{name}: record {c} = {} (expected {n}): {rec:?}", rec.get(c));
    }
    ensure!(rec.get("budget") == RUNS, "{name}: {rec:?}");
    bss_mut(skel)?.mark = 0;
    let r = syscall_run(prog_by_name(skel, name)?)?;
    ensure!(r == 0 && bss(skel)?.after == after0 + 1, "{name}: unmarked run returned {r}");
    println!("{name}: {RUNS} cancelled runs released {want:?}");
    Ok(())
}

fn prog_by_name<'a>(
    skel: &'a CancelReleaseSkel<'_>,
    name: &str,
) -> Result<&'a libbpf_rs::ProgramMut<'a>> {
    let p = &skel.progs;
    Ok(match name {
        "rel_task" => &p.rel_task,
        "rel_task_sub" => &p.rel_task_sub,
        "rel_cgroup" => &p.rel_cgroup,
        "rel_cpumask" => &p.rel_cpumask,
        "rel_obj" => &p.rel_obj,
        "rel_ringbuf" => &p.rel_ringbuf,
        "rel_dynptr" => &p.rel_dynptr,
        "rel_rcu" => &p.rel_rcu,
        "rel_preempt" => &p.rel_preempt,
        "rel_iter" => &p.rel_iter,
        _ => bail!("no program {name}"),
    })
}

/// No "scheduling while atomic", bad refcount or other splat since `mark`.
fn log_clean_since(mark: usize) -> Result<()> {
    let log = dmesg()?;
    let new: Vec<&str> = log.lines().skip(mark).collect();
    for bad in ["scheduling while atomic", "refcount_t", "BUG", "WARNING", "leak"] {
        if let Some(l) = new.iter().find(|l| l.contains(bad)) {
            bail!("kernel log: {l}");
        }
    }
    Ok(())
}

/// The child's `rcu_users` count as a program reads it (its own reference
/// included).
fn task_users(skel: &CancelReleaseSkel<'_>) -> Result<u64> {
    let r = syscall_run(&skel.progs.task_users)?;
    ensure!(r == 0, "task_users returned {r}");
    Ok(bss(skel)?.users)
}

/// Task (in a register, and in the caller's stack slot while a subprogram
/// loops), cgroup, cpumask and `bpf_obj_new` object references, an RCU
/// read-side section and preemption disabled twice: each cancelled run
/// releases them once.
pub fn cancelled_runs_release_objects() -> Result<()> {
    ensure_kflex()?;
    let _b = SysctlGuard::budget_us(2000)?;
    let mark = dmesg()?.lines().count();
    let mut skel = loaded()?;
    let mut child = std::process::Command::new("sleep").arg("600").spawn()?;
    {
        let b = bss_mut(&mut skel)?;
        b.pid = child.id() as i32;
        b.cgid = 1; // the root cgroup
    }
    let result = (|| -> Result<()> {
        let users = task_users(&skel)?;
        cancel_syscall(&mut skel, "rel_task", &[("released_task", 1)])?;
        ensure!(task_users(&skel)? == users, "task rcu_users {} -> {}", users, task_users(&skel)?);
        cancel_syscall(&mut skel, "rel_task_sub", &[("released_task", 1)])?;
        ensure!(task_users(&skel)? == users, "task rcu_users after rel_task_sub");
        println!("task rcu_users {users} before and after");
        cancel_syscall(&mut skel, "rel_cgroup", &[("released_cgroup", 1)])?;
        cancel_syscall(&mut skel, "rel_cpumask", &[("released_cpumask", 1)])?;
        cancel_syscall(&mut skel, "rel_obj", &[("released_obj", 1)])?;
        cancel_syscall(&mut skel, "rel_rcu", &[("rcu_unlocks", 1)])?;
        cancel_syscall(&mut skel, "rel_preempt", &[("preempt_enables", 2)])?;
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result?;
    log_clean_since(mark)
}

/// Ring buffer reservations and dynptrs of cancelled runs are discarded:
/// the consumer receives exactly the records of the runs that finished, in
/// order, and is never blocked by a cancelled reservation.
pub fn cancelled_reservations_are_discarded() -> Result<()> {
    ensure_kflex()?;
    let _b = SysctlGuard::budget_us(2000)?;
    let mut skel = loaded()?;
    let got = Rc::new(RefCell::new(Vec::new()));
    let sink = got.clone();
    let mut builder = RingBufferBuilder::new();
    builder.add(&skel.maps.rb, move |data: &[u8]| {
        if let Ok(b) = <[u8; 8]>::try_from(data) {
            sink.borrow_mut().push(u64::from_ne_bytes(b));
        }
        0
    })?;
    let ring = builder.build()?;
    let before = globals()?;
    let mut want = Vec::new();
    for round in 1..=RUNS {
        for (name, kind) in [("rel_ringbuf", "released_ringbuf"), ("rel_dynptr", "released_dynptr")]
        {
            let b = bss_mut(&mut skel)?;
            b.mark = 1;
            b.record = 1000 + round;
            let r = syscall_run(prog_by_name(&skel, name)?)?;
            ensure!(r == -ECANCELED, "{name}: marked run returned {r} ({kind})");
            let record = round * 10 + u64::from(name == "rel_dynptr");
            let b = bss_mut(&mut skel)?;
            b.mark = 0;
            b.record = record;
            let r = syscall_run(prog_by_name(&skel, name)?)?;
            ensure!(r == 0, "{name}: unmarked run returned {r}");
            want.push(record);
        }
    }
    ring.consume()?;
    let got = got.borrow().clone();
    ensure!(got == want, "records received {got:?}, expected {want:?}");
    let m = moved(&before)?;
    ensure!(
        m == [("released_ringbuf", RUNS), ("released_dynptr", RUNS)],
        "counters moved by {m:?}"
    );
    println!(
        "{} records received in order; {RUNS} reservations and {RUNS} dynptrs discarded",
        got.len()
    );
    Ok(())
}

/// Everything at once, in an XDP program: two heap locks, a task, an
/// object, a reservation, an RCU section and preemption disabled. The
/// cancelled run returns XDP_PASS; afterwards the locks are free (an
/// unmarked run takes both: XDP_TX) and every counter moved by one run's
/// worth; a sleep shows no leaked preemption count.
pub fn cancelled_run_releases_everything_at_once() -> Result<()> {
    ensure_kflex()?;
    let _b = SysctlGuard::budget_us(2000)?;
    let mark = dmesg()?.lines().count();
    let mut skel = loaded()?;
    bss_mut(&mut skel)?.pid = std::process::id() as i32;
    let before = globals()?;
    for i in 0..RUNS {
        bss_mut(&mut skel)?.mark = 1;
        let v = xdp_run(&skel.progs.rel_many)?;
        ensure!(v == XDP_PASS, "marked run {i}: verdict {v}");
        std::thread::sleep(Duration::from_millis(1));
        bss_mut(&mut skel)?.mark = 0;
        let v = xdp_run(&skel.progs.rel_many)?;
        ensure!(v == XDP_TX, "unmarked run after cancellation {i}: verdict {v} (locks held?)");
    }
    let m = moved(&before)?;
    let want = [
        ("released_task", RUNS),
        ("released_obj", RUNS),
        ("released_ringbuf", RUNS),
        ("rcu_unlocks", RUNS),
        ("preempt_enables", RUNS),
        ("locks_released", 2 * RUNS),
    ];
    ensure!(m == want, "counters moved by {m:?}, expected {want:?}");
    println!("{RUNS} cancellations released {want:?}");
    log_clean_since(mark)
}

/// mmap() and munmap() of a page in this process, in another thread: they
/// take the mmap lock for writing, so they hang while a leaked iterator
/// holds it for reading.
fn mmap_works() -> Result<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: an anonymous private mapping of one page, unmapped at once.
        let ok = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            p != libc::MAP_FAILED && libc::munmap(p, 4096) == 0
        };
        tx.send(ok).ok();
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(true) => Ok(()),
        Ok(false) => bail!("mmap/munmap failed"),
        Err(_) => bail!("mmap/munmap blocked for 20 s: the mmap lock is held"),
    }
}

/// An open-coded iterator over this process's VMAs (it holds the task and
/// the mmap lock for reading) held by cancelled runs is destroyed: mmap()
/// and munmap() still work afterwards, and the task reference comes back.
pub fn cancelled_run_destroys_an_iterator() -> Result<()> {
    ensure_kflex()?;
    let _b = SysctlGuard::budget_us(2000)?;
    let mark = dmesg()?.lines().count();
    let mut skel = loaded()?;
    bss_mut(&mut skel)?.pid = std::process::id() as i32;
    let users = task_users(&skel)?;
    cancel_syscall(&mut skel, "rel_iter", &[("released_task", 1), ("released_iter", 1)])?;
    mmap_works()?;
    ensure!(task_users(&skel)? == users, "task rcu_users {users} -> {}", task_users(&skel)?);
    println!("mmap and munmap work after {RUNS} cancelled iterations; task rcu_users {users}");
    log_clean_since(mark)
}

/// The reference count of the socket with local port `lport` and remote
/// port `rport` in `/proc/net/tcp`.
fn tcp_refcnt(lport: u16, rport: u16) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp")?;
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let port = |s: &str| s.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
        if f.len() > 10 && port(f[1]) == Some(lport) && port(f[2]) == Some(rport) {
            return f[10].parse().context("refcount column");
        }
    }
    bail!("no socket {lport} -> {rport} in /proc/net/tcp")
}

/// A socket reference from bpf_sk_lookup_tcp() held by a cancelled XDP run
/// is released: the accepted socket's reference count is unchanged after
/// the runs, and the connection still works and closes.
pub fn cancelled_run_releases_a_socket() -> Result<()> {
    ensure_kflex()?;
    let _b = SysctlGuard::budget_us(2000)?;
    let mut skel = loaded()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let sport = listener.local_addr()?.port();
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || -> Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        tx.send(buf).ok();
        Ok(())
    });
    let mut client = TcpStream::connect(("127.0.0.1", sport))?;
    let cport = client.local_addr()?.port();
    // the server's socket: local sport, remote cport
    std::thread::sleep(Duration::from_millis(100));
    let refs = tcp_refcnt(sport, cport)?;
    {
        let b = bss_mut(&mut skel)?;
        let lo = u32::from_ne_bytes([127, 0, 0, 1]);
        b.saddr = lo;
        b.daddr = lo;
        b.sport = cport.to_be();
        b.dport = sport.to_be();
    }
    let before = globals()?;
    for i in 0..RUNS {
        bss_mut(&mut skel)?.mark = 1;
        let v = xdp_run(&skel.progs.rel_sock)?;
        ensure!(v == XDP_PASS, "marked run {i}: verdict {v} (XDP_DROP: socket not found)");
    }
    bss_mut(&mut skel)?.mark = 0;
    let v = xdp_run(&skel.progs.rel_sock)?;
    ensure!(v == XDP_TX, "unmarked run: verdict {v}");
    let after = tcp_refcnt(sport, cport)?;
    ensure!(after == refs, "socket refcount {refs} before, {after} after {RUNS} cancelled runs");
    let m = moved(&before)?;
    ensure!(m == [("released_sock", RUNS)], "counters moved by {m:?}");
    std::io::Write::write_all(&mut client, b"ping")?;
    let got = rx.recv_timeout(Duration::from_secs(10)).context("server got nothing")?;
    ensure!(&got == b"ping", "server got {got:?}");
    server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    drop(client);
    ensure!(record(&skel.progs.rel_sock)?.get("released_sock") == RUNS, "record");
    println!("socket refcount {refs} before and after {RUNS} cancelled lookups");
    Ok(())
}
