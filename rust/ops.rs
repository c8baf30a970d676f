// SPDX-License-Identifier: GPL-2.0

//! The component's entry points, registered with the built-in glue as a
//! `struct kflex_ops` (see `include/linux/kflex.h`).

use core::ffi::c_int;

use kernel::{bindings, prelude::*, types::ForeignOwnable};

use crate::{
    heap::{Heap, LockError},
    logic::{
        held::{self, Fact, Kind, Place},
        verdict::{self, Refusal},
    },
    planner,
};

// Object tables: the C glue's layout and kinds.
const _: () = {
    use bindings::*;
    assert!(held::MAX == KFLEX_HELD_MAX as usize);
    assert!(held::KINDS == kflex_held_kind_KFLEX_HELD_NR as usize);
    assert!(Kind::Task as u32 == kflex_held_kind_KFLEX_HELD_TASK);
    assert!(Kind::Cgroup as u32 == kflex_held_kind_KFLEX_HELD_CGROUP);
    assert!(Kind::Cpumask as u32 == kflex_held_kind_KFLEX_HELD_CPUMASK);
    assert!(Kind::Obj as u32 == kflex_held_kind_KFLEX_HELD_OBJ);
    assert!(Kind::Sock as u32 == kflex_held_kind_KFLEX_HELD_SOCK);
    assert!(Kind::Ringbuf as u32 == kflex_held_kind_KFLEX_HELD_RINGBUF);
    assert!(Kind::RingbufDynptr as u32 == kflex_held_kind_KFLEX_HELD_RINGBUF_DYNPTR);
    assert!(Kind::Iter as u32 == kflex_held_kind_KFLEX_HELD_ITER);
};

// The verdict table names program and attach types by their UAPI values.
const _: () = {
    use verdict::{attach_type as a, prog_type as t};
    assert!(t::SCHED_CLS == bindings::bpf_prog_type_BPF_PROG_TYPE_SCHED_CLS);
    assert!(t::SCHED_ACT == bindings::bpf_prog_type_BPF_PROG_TYPE_SCHED_ACT);
    assert!(t::XDP == bindings::bpf_prog_type_BPF_PROG_TYPE_XDP);
    assert!(t::CGROUP_SKB == bindings::bpf_prog_type_BPF_PROG_TYPE_CGROUP_SKB);
    assert!(t::CGROUP_SOCK == bindings::bpf_prog_type_BPF_PROG_TYPE_CGROUP_SOCK);
    assert!(t::SK_SKB == bindings::bpf_prog_type_BPF_PROG_TYPE_SK_SKB);
    assert!(t::CGROUP_DEVICE == bindings::bpf_prog_type_BPF_PROG_TYPE_CGROUP_DEVICE);
    assert!(t::SK_MSG == bindings::bpf_prog_type_BPF_PROG_TYPE_SK_MSG);
    assert!(t::CGROUP_SOCK_ADDR == bindings::bpf_prog_type_BPF_PROG_TYPE_CGROUP_SOCK_ADDR);
    assert!(t::CGROUP_SYSCTL == bindings::bpf_prog_type_BPF_PROG_TYPE_CGROUP_SYSCTL);
    assert!(t::CGROUP_SOCKOPT == bindings::bpf_prog_type_BPF_PROG_TYPE_CGROUP_SOCKOPT);
    assert!(t::LSM == bindings::bpf_prog_type_BPF_PROG_TYPE_LSM);
    assert!(t::SYSCALL == bindings::bpf_prog_type_BPF_PROG_TYPE_SYSCALL);
    assert!(a::SK_SKB_STREAM_PARSER == bindings::bpf_attach_type_BPF_SK_SKB_STREAM_PARSER);
};

/// What `kflex_heap_info.priv` owns: the heap, from `heap_init` to
/// `heap_fini`.
type Owned = Pin<KBox<Heap>>;

/// The heap behind `info`.
///
/// # Safety
///
/// `info` must belong to a heap whose `heap_init` succeeded and whose
/// `heap_fini` has not run.
unsafe fn heap<'a>(info: *mut bindings::kflex_heap_info) -> Pin<&'a Heap> {
    // SAFETY: per the contract, `priv_` holds the pointer `into_foreign`
    // returned in `heap_init`, and `from_foreign` has not been called yet.
    unsafe { Owned::borrow((*info).priv_) }
}

unsafe extern "C" fn heap_init(
    info: *mut bindings::kflex_heap_info,
    pages: u32,
    map_extra: u64,
) -> c_int {
    match Heap::create(info, pages, map_extra) {
        Ok(h) => {
            // SAFETY: `info` is the glue's heap being created; `heap_fini`
            // takes the heap back.
            unsafe { (*info).priv_ = h.into_foreign().cast_mut() };
            0
        }
        Err(e) => e.to_errno(),
    }
}

unsafe extern "C" fn heap_fini(info: *mut bindings::kflex_heap_info) {
    // SAFETY: `info` is valid; `priv_` is the pointer stored by `heap_init`
    // (or NULL if it failed), taken exactly once here.
    let raw = unsafe {
        core::ptr::replace(core::ptr::addr_of_mut!((*info).priv_), core::ptr::null_mut())
    };
    if raw.is_null() {
        return;
    }
    // SAFETY: `raw` came from `into_foreign` in `heap_init` and is taken back
    // once; nothing uses the heap any more (no program, mapping or
    // statistics reader is left when the glue calls this).
    let heap = unsafe { Owned::from_foreign(raw) };
    heap.fini();
    drop(heap);
}

unsafe extern "C" fn heap_fault(
    info: *mut bindings::kflex_heap_info,
    off: u64,
) -> *mut bindings::page {
    // SAFETY: the glue calls this for a live heap (a mapping pins it).
    unsafe { heap(info) }.fault(off)
}

unsafe extern "C" fn heap_stats(
    info: *mut bindings::kflex_heap_info,
    stats: *mut bindings::kflex_heap_stats,
) {
    // SAFETY: live heap (the glue holds it on its list); `stats` is a valid
    // zeroed buffer.
    unsafe { heap(info).stats(&mut *stats) }
}

unsafe extern "C" fn alloc(info: *mut bindings::kflex_heap_info, size: u64) -> u64 {
    // SAFETY: a running program pins its heap.
    unsafe { heap(info) }.alloc(size)
}

unsafe extern "C" fn free(info: *mut bindings::kflex_heap_info, uaddr: u64) {
    // SAFETY: a running program pins its heap.
    unsafe { heap(info) }.free(uaddr)
}

unsafe extern "C" fn reserve(info: *mut bindings::kflex_heap_info, bytes: u64) -> c_int {
    // SAFETY: a running program pins its heap.
    unsafe { heap(info) }.reserve(bytes)
}

/// Takes a heap lock for the run tagged `run` on CPU `cpu`: 0, `-EINVAL`
/// for a word that is not a lock word of the heap, `-EAGAIN` when it is
/// held and `deadline` is 0 (do not wait), or the cause (`KFLEX_CAUSE_*`,
/// > 0) for which the run must be cancelled.
unsafe extern "C" fn lock(
    info: *mut bindings::kflex_heap_info,
    uaddr: u64,
    run: u64,
    deadline: u64,
    cpu: u32,
) -> c_int {
    // SAFETY: a running program pins its heap.
    match unsafe { heap(info) }.lock(uaddr, run, deadline, cpu as usize) {
        Ok(()) => 0,
        Err(LockError::BadWord) => EINVAL.to_errno(),
        Err(LockError::Busy) => EAGAIN.to_errno(),
        Err(LockError::Cancel(cause)) => cause as c_int,
    }
}

/// Releases a heap lock the run holds: 0, or `-EPERM` if it does not.
unsafe extern "C" fn unlock(
    info: *mut bindings::kflex_heap_info,
    uaddr: u64,
    run: u64,
    cpu: u32,
) -> c_int {
    // SAFETY: a running program pins its heap.
    if unsafe { heap(info) }.unlock(uaddr, run, cpu as usize) {
        0
    } else {
        EPERM.to_errno()
    }
}

/// Releases every heap lock the run holds on this CPU; returns how many.
unsafe extern "C" fn unlock_run(info: *mut bindings::kflex_heap_info, run: u64, cpu: u32) -> u32 {
    // SAFETY: a running program pins its heap.
    unsafe { heap(info) }.unlock_run(run, cpu as usize)
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn plan(
    insns: *const bindings::bpf_insn,
    cnt: u32,
    starts: *const u32,
    nsub: u32,
    heap_size: u64,
    mode: u32,
    marks: *mut u8,
    stats: *mut bindings::kflex_plan_stats,
) -> c_int {
    if insns.is_null() || starts.is_null() || marks.is_null() || stats.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY: the verifier passes arrays of `cnt` instructions and marks and
    // `nsub` subprogram starts, valid for the duration of the call.
    let (insns, starts, marks, stats) = unsafe {
        (
            core::slice::from_raw_parts(insns.cast::<[u8; 8]>(), cnt as usize),
            core::slice::from_raw_parts(starts, nsub as usize),
            core::slice::from_raw_parts_mut(marks, cnt as usize),
            &mut *stats,
        )
    };
    match planner::plan(insns, starts, heap_size, mode, marks) {
        Ok((accesses, elided)) => {
            stats.accesses = accesses;
            stats.elided = elided;
            0
        }
        Err(e) => e.to_errno(),
    }
}

unsafe extern "C" fn points(
    insns: *const bindings::bpf_insn,
    cnt: u32,
    starts: *const u32,
    nsub: u32,
    marks: *mut u8,
    placed: *mut u32,
) -> c_int {
    if insns.is_null() || starts.is_null() || marks.is_null() || placed.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY: the verifier passes arrays of `cnt` instructions and marks and
    // `nsub` function starts, valid for the duration of the call.
    let (insns, starts, marks, placed) = unsafe {
        (
            core::slice::from_raw_parts(insns.cast::<[u8; 8]>(), cnt as usize),
            core::slice::from_raw_parts(starts, nsub as usize),
            core::slice::from_raw_parts_mut(marks, cnt as usize),
            &mut *placed,
        )
    };
    match planner::plan_points(insns, starts, marks) {
        Ok(n) => {
            *placed = n;
            0
        }
        Err(e) => e.to_errno(),
    }
}

#[cfg(CONFIG_KFLEX_BENCH)]
unsafe extern "C" fn native(
    info: *mut bindings::kflex_heap_info,
    req: *mut bindings::kflex_native_req,
    key: *const u8,
) -> c_int {
    if req.is_null() || key.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY: the glue checked the sizes of both buffers (the request and a
    // 32-byte key), which the verifier vouches for; a running program pins
    // its heap.
    let (heap, req, key) =
        unsafe { (heap(info), &mut *req, &*(key as *const [u8; crate::native::KEY])) };
    match crate::native::run(heap.get_ref(), req.root, req.ds, req.op, key) {
        Ok(found) => {
            req.result = found as u64;
            0
        }
        Err(e) => e.to_errno(),
    }
}

#[cfg(CONFIG_KFLEX_BENCH)]
unsafe extern "C" fn bench_alloc(
    info: *mut bindings::kflex_heap_info,
    mode: u32,
    size: u64,
    n: u64,
) -> u64 {
    use crate::heap::BenchAlloc;
    let mode = match mode {
        bindings::kflex_bench_alloc_mode_KFLEX_BENCH_SECTION => BenchAlloc::Section,
        bindings::kflex_bench_alloc_mode_KFLEX_BENCH_CACHE => BenchAlloc::Cache,
        bindings::kflex_bench_alloc_mode_KFLEX_BENCH_PAIR => BenchAlloc::Pair,
        _ => return 0,
    };
    // SAFETY: a running program pins its heap.
    unsafe { heap(info) }.bench_alloc(mode, size, n)
}

/// The verdict of a cancelled run of a program (`logic::verdict`): its
/// override (`has_over`, `over`) when its hook accepts it. `-EOPNOTSUPP` when
/// the hook has no safe verdict, `-ERANGE` with the accepted range in
/// `range` when the override is outside it.
unsafe extern "C" fn verdict(
    prog_type: u32,
    attach_type: u32,
    has_over: bool,
    over: u32,
    out: *mut u32,
    range: *mut i32,
) -> c_int {
    if out.is_null() || range.is_null() {
        return EINVAL.to_errno();
    }
    match verdict::verdict(prog_type, attach_type, has_over.then_some(over)) {
        Ok(v) => {
            // SAFETY: the verifier passes a valid `u32`.
            unsafe { *out = v };
            0
        }
        Err(Refusal::NoDefault) => -(bindings::EOPNOTSUPP as c_int),
        Err(Refusal::OutOfRange { min, max }) => {
            // SAFETY: the verifier passes an array of two `s32`.
            unsafe {
                *range = min;
                *range.add(1) = max;
            }
            ERANGE.to_errno()
        }
    }
}

fn table_from_c(c: &bindings::kflex_held) -> held::Table {
    held::Table {
        rcu: c.rcu != 0,
        preempt: c.preempt,
        n: c.n,
        ents: c.ent,
        aux: c.aux,
    }
}

/// The object table of a cancellation point (`logic::held::build`) from the
/// verifier's facts; on a refusal `*bad` is the index into `ids` of the
/// reference concerned.
unsafe extern "C" fn held(
    facts: *const bindings::kflex_held_fact,
    nfacts: u32,
    ids: *const u32,
    nids: u32,
    rcu: bool,
    preempt: u32,
    out: *mut bindings::kflex_held,
    bad: *mut u32,
) -> c_int {
    if out.is_null() || bad.is_null() || facts.is_null() || ids.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY: the verifier passes arrays of `nfacts` facts and `nids` ids
    // (non-null, possibly empty), alive for the call.
    let (raw, ids) = unsafe {
        (
            core::slice::from_raw_parts(facts, nfacts as usize),
            core::slice::from_raw_parts(ids, nids as usize),
        )
    };
    let fact = |f: &bindings::kflex_held_fact| {
        let place = if f.stack != 0 {
            Place::Stack { frame: f.frame, off: f.off }
        } else {
            Place::Reg(f.reg)
        };
        Fact { id: f.id, kind: Kind::from_u8(f.kind), place, aux: f.aux }
    };
    let (err, at) = match held::build_from(raw, fact, ids, rcu, preempt) {
        Ok(t) => {
            // SAFETY: `out` is the verifier's table, valid for writing.
            unsafe {
                *out = bindings::kflex_held {
                    rcu: t.rcu.into(),
                    preempt: t.preempt,
                    n: t.n,
                    ent: t.ents,
                    aux: t.aux,
                    ..Default::default()
                }
            };
            return 0;
        }
        Err(held::Refusal::TooMany) => (E2BIG.to_errno(), 0),
        Err(held::Refusal::Nowhere { id }) => (ENOENT.to_errno(), id),
        Err(held::Refusal::Unreleasable { id, .. }) => (-(bindings::EOPNOTSUPP as c_int), id),
        Err(held::Refusal::Mixed { id }) => (EINVAL.to_errno(), id),
    };
    // SAFETY: `bad` is valid for writing (checked non-null above).
    unsafe { *bad = at as u32 };
    err
}

/// The merge rule (`logic::held::merge`).
unsafe extern "C" fn held_same(a: *const bindings::kflex_held, b: *const bindings::kflex_held) -> bool {
    if a.is_null() || b.is_null() {
        return false;
    }
    // SAFETY: the verifier passes two valid tables.
    let (a, b) = unsafe { (table_from_c(&*a), table_from_c(&*b)) };
    held::merge(&a, &b).is_ok()
}

/// Entry `i` of a table, decoded (`logic::held::entries`), for the
/// cancellation that releases it.
unsafe extern "C" fn held_entry(
    t: *const bindings::kflex_held,
    i: u32,
    out: *mut bindings::kflex_held_fact,
) -> c_int {
    if t.is_null() || out.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY: the glue passes a table of a live program and a buffer.
    let t = table_from_c(unsafe { &*t });
    let i = i as usize;
    if i >= (t.n as usize).min(held::MAX) {
        return ENOENT.to_errno();
    }
    let Some((kind, place)) = held::decode(t.ents[i]) else {
        return EINVAL.to_errno();
    };
    let mut f = bindings::kflex_held_fact {
        kind: kind as u8,
        aux: t.aux[i],
        ..Default::default()
    };
    match place {
        Place::Reg(r) => f.reg = r,
        Place::Stack { frame, off } => {
            f.stack = 1;
            f.frame = frame;
            f.off = off;
        }
    }
    // SAFETY: `out` is valid for writing.
    unsafe { *out = f };
    0
}

/// Fills an ops table with this component's entry points.
pub(crate) fn table(owner: *mut bindings::module, version: *const u8) -> bindings::kflex_ops {
    bindings::kflex_ops {
        owner,
        version: version.cast(),
        heap_init: Some(heap_init),
        heap_fini: Some(heap_fini),
        heap_fault: Some(heap_fault),
        heap_stats: Some(heap_stats),
        alloc: Some(alloc),
        free: Some(free),
        reserve: Some(reserve),
        plan: Some(plan),
        #[cfg(CONFIG_KFLEX_BENCH)]
        native: Some(native),
        #[cfg(not(CONFIG_KFLEX_BENCH))]
        native: None,
        #[cfg(CONFIG_KFLEX_BENCH)]
        bench_alloc: Some(bench_alloc),
        #[cfg(not(CONFIG_KFLEX_BENCH))]
        bench_alloc: None,
        points: Some(points),
        lock: Some(lock),
        unlock: Some(unlock),
        unlock_run: Some(unlock_run),
        verdict: Some(verdict),
        held: Some(held),
        held_same: Some(held_same),
        held_entry: Some(held_entry),
    }
}
