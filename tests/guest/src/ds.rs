// SPDX-License-Identifier: GPL-2.0

//! The data-structure library of `bpf/ds/` (programs `bpf/bench/ds_*.bpf.c`,
//! shared with kflex-bench): random operation sequences on every structure,
//! built for a KFlex heap and for the upstream arena, checked against a
//! model operation by operation (every result is recorded by the programs
//! and compared); the structures are walked from user space through the
//! heap mapping and their invariants checked; after everything is deleted
//! the KFlex heap has no byte allocated. The kernel baselines (BPF hash
//! map, sketches in a BPF array, graph kfuncs) are checked the same way.

use std::{
    any::Any,
    collections::{BTreeMap, BTreeSet, HashSet, VecDeque},
    os::fd::AsFd,
};

use anyhow::{ensure, Context, Result};
use kflex_load::{
    ds::{self, sketch::Sketch, Args, Key, Ops, WorkMaps, RECORD},
    heapstats::{self, Heap as HeapStats},
    load_ds_skel,
    rng::Rng,
    skel::{
        ds_graph, ds_hmap, ds_hmap_arena, ds_list, ds_list_arena, ds_maps, ds_rbtree,
        ds_rbtree_arena, ds_sketch, ds_sketch_arena, ds_skiplist, ds_skiplist_arena,
    },
};
use libbpf_rs::MapCore;

use crate::util::*;

/// Heap size of the test skeletons.
const HEAP: u64 = 16 << 20;
/// Bytes populated ahead on KFlex heaps.
const RESERVE: u64 = 2 << 20;
/// Hash map buckets (log2): few, so that chains are long.
const HM_ORDER: u64 = 5;
/// Nodes a list lookup looks at, at most.
const LIST_WALK: u64 = 48;
/// Keys the operations draw from (small: updates replace, deletes hit).
const POOL: u64 = 300;
/// Operations per sequence.
const OPS: usize = 3000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Update,
    Lookup,
    Delete,
}

/// The heap as user space sees it.
#[derive(Clone, Copy, Debug)]
struct Heap {
    base: u64,
    size: u64,
}

impl Heap {
    /// The word at `addr + off`, which must lie in the heap.
    fn word(&self, addr: u64, off: u64) -> Result<u64> {
        let a = addr.wrapping_add(off);
        ensure!(
            a >= self.base && a + 8 <= self.base + self.size && a.is_multiple_of(8),
            "pointer {addr:#x}+{off} outside the heap [{:#x}, +{:#x})",
            self.base,
            self.size
        );
        // SAFETY: inside the heap mapping of a live skeleton (checked).
        Ok(unsafe { std::ptr::read_volatile(a as *const u64) })
    }

    fn key(&self, addr: u64, off: u64) -> Result<Key> {
        let mut k = [0; 4];
        for (i, w) in k.iter_mut().enumerate() {
            *w = self.word(addr, off + 8 * i as u64)?;
        }
        Ok(k)
    }

    fn val(&self, addr: u64, off: u64) -> Result<ds::Val> {
        let mut v = [0; 8];
        for (i, w) in v.iter_mut().enumerate() {
            *w = self.word(addr, off + 8 * i as u64)?;
        }
        Ok(v)
    }
}

/// A structure under test: its programs, heap, and a reader of its roots
/// (the words of its struct in .bss).
struct Subject {
    name: String,
    ops: Ops,
    heap: Option<Heap>,
    heap_id: Option<u32>,
    roots: Box<dyn Fn() -> Vec<u64>>,
    _skel: Box<dyn Any>,
}

/// Reads word `i` of a root struct in a skeleton's .bss.
fn root_words<T>(p: *const T, n: usize) -> Vec<u64> {
    // SAFETY: `p` points to a struct of at least `n` words in the mapped
    // .bss of a skeleton that the caller keeps alive.
    (0..n).map(|i| unsafe { std::ptr::read_volatile((p as *const u64).add(i)) }).collect()
}

macro_rules! heap_subject {
    ($name:expr, $builder:path, $work:expr, $root:ident, $words:expr,
     $init:ident, $update:ident, $lookup:ident, $delete:ident, $clear:ident) => {{
        let sk = load_ds_skel!($builder, $work, |open| {
            open.maps.ds_heap.set_max_entries((HEAP >> 12) as u32)?;
        })?;
        let base = heap_base(&sk.maps.ds_heap)?;
        let id = sk.maps.ds_heap.info()?.info.id;
        let bss = sk.maps.bss_data.as_deref().context("no .bss")?;
        let root = &bss.$root as *const _ as usize;
        let ops = Ops {
            init: Some(ds::prog_fd(&sk.progs.$init)?),
            update: Some(ds::prog_fd(&sk.progs.$update)?),
            lookup: Some(ds::prog_fd(&sk.progs.$lookup)?),
            delete: Some(ds::prog_fd(&sk.progs.$delete)?),
            clear: Some(ds::prog_fd(&sk.progs.$clear)?),
        };
        Subject {
            name: $name.to_string(),
            ops,
            heap: Some(Heap { base, size: HEAP }),
            heap_id: Some(id),
            roots: Box::new(move || root_words(root as *const u64, $words)),
            _skel: Box::new(sk),
        }
    }};
}

/// [`heap_subject!`] for build `b`: the skeleton built for the KFlex heap
/// or the one built for the upstream arena.
macro_rules! build_subject {
    ($b:expr, $name:expr, $kflex:path, $arena:path, $($rest:tt)*) => {
        match $b {
            Build::KFlex => heap_subject!($name, $kflex, $($rest)*),
            Build::Arena => heap_subject!($name, $arena, $($rest)*),
        }
    };
}

/// The builds of every heap structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Build {
    KFlex,
    Arena,
}

const BUILDS: [Build; 2] = [Build::KFlex, Build::Arena];

impl Build {
    fn name(self) -> &'static str {
        match self {
            Build::KFlex => "kflex",
            Build::Arena => "arena",
        }
    }
}

impl Subject {
    fn run(
        &self,
        prog: &Option<std::os::fd::OwnedFd>,
        start: usize,
        n: usize,
        arg: u64,
    ) -> Result<Args> {
        let prog = prog.as_ref().context("no such program")?;
        let a =
            Args { start: start as u64, count: n as u64, flags: RECORD, arg, ..Default::default() };
        let (r, _) = ds::run(prog.as_fd(), a).with_context(|| self.name.clone())?;
        ensure!(r.done == n as u64, "{}: {} of {n} operations done", self.name, r.done);
        Ok(r)
    }

    fn init(&self, build: Build, flags: u64) -> Result<()> {
        if let Some(init) = &self.ops.init {
            let arg = if build == Build::KFlex { RESERVE } else { 0 };
            let (r, _) = ds::run(init.as_fd(), Args { arg, flags, ..Default::default() })?;
            ensure!(r.fails == 0, "{}: init failed ({})", self.name, r.fails as i64);
        }
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        let clear = self.ops.clear.as_ref().context("no clear program")?;
        let (r, _) = ds::run(clear.as_fd(), Args::default())?;
        ensure!(r.done == 1, "{}: clear stopped early", self.name);
        Ok(())
    }

    fn stats(&self) -> Result<Option<HeapStats>> {
        let Some(id) = self.heap_id else { return Ok(None) };
        heapstats::find(id)
    }

    /// Bytes allocated in the heap (KFlex only: None on the arena).
    fn allocated(&self) -> Result<Option<u64>> {
        Ok(self.stats()?.map(|s| s.class_bytes() + s.get("large_bytes")))
    }

    fn root(&self, i: usize) -> u64 {
        (self.roots)()[i]
    }
}

/// Expected results, per structure kind.
trait Model {
    /// The result the program records for `op` on `k` at workload index
    /// `idx`; updates the model.
    fn apply(&mut self, op: Op, k: &Key, idx: u64) -> u64;
    /// Keys present (for deleting everything at the end).
    fn keys(&self) -> Vec<Key>;
}

/// Keyed structures (rbtree, hash map, skiplist): key -> index of the
/// update that wrote its value.
#[derive(Default)]
struct MapModel(BTreeMap<Key, u64>);

impl Model for MapModel {
    fn apply(&mut self, op: Op, k: &Key, idx: u64) -> u64 {
        match op {
            Op::Update => match self.0.insert(*k, idx) {
                None => 1,
                Some(_) => 2,
            },
            Op::Lookup => self.0.get(k).map_or(0, |&i| ds::csum(&ds::make_val(k, i))),
            Op::Delete => self.0.remove(k).is_some() as u64,
        }
    }

    fn keys(&self) -> Vec<Key> {
        self.0.keys().copied().collect()
    }
}

/// The list: a queue, front first, of (key, index).
#[derive(Default)]
struct ListModel(VecDeque<(Key, u64)>);

impl Model for ListModel {
    fn apply(&mut self, op: Op, k: &Key, idx: u64) -> u64 {
        match op {
            Op::Update => {
                self.0.push_front((*k, idx));
                1
            }
            Op::Lookup => self
                .0
                .iter()
                .take(LIST_WALK as usize)
                .find(|(x, _)| x == k)
                .map_or(0, |(x, i)| ds::csum(&ds::make_val(x, *i))),
            Op::Delete => self.0.pop_back().map_or(0, |(x, _)| ds::key_csum(&x)),
        }
    }

    fn keys(&self) -> Vec<Key> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// A sketch: every update counts, every delete uncounts.
struct SketchModel(Sketch);

impl Model for SketchModel {
    fn apply(&mut self, op: Op, k: &Key, _idx: u64) -> u64 {
        match op {
            Op::Update => {
                self.0.add(k, 1);
                1
            }
            Op::Lookup => self.0.query(k) as u64,
            Op::Delete => {
                self.0.add(k, -1);
                1
            }
        }
    }

    fn keys(&self) -> Vec<Key> {
        Vec::new()
    }
}

/// Random segments of operations, writing the keys to the workload maps;
/// every recorded result is compared with the model's. `check` walks the
/// structure after some segments. `growing` biases the first half towards
/// updates and the second towards deletes.
struct Driver {
    work: WorkMaps,
    pool: Vec<Key>,
    rng: Rng,
    cursor: usize,
}

impl Driver {
    fn new(seed: u64) -> Result<Driver> {
        Ok(Driver {
            work: WorkMaps::new(4 * OPS + 4 * POOL as usize)?,
            pool: (0..POOL).map(|i| ds::key_of(seed, i)).collect(),
            rng: Rng::new(seed),
            cursor: 0,
        })
    }

    /// Runs `op` on `keys` (one program call) and checks every result.
    fn segment(&mut self, s: &Subject, m: &mut dyn Model, op: Op, keys: &[Key]) -> Result<()> {
        if self.cursor + keys.len() > self.work.capacity() {
            self.cursor = 0;
        }
        let at = self.cursor;
        self.work.set_keys(at, keys)?;
        let (prog, arg) = match op {
            Op::Update => (&s.ops.update, 0),
            Op::Lookup => (&s.ops.lookup, LIST_WALK),
            Op::Delete => (&s.ops.delete, 0),
        };
        s.run(prog, at, keys.len(), arg)?;
        let got = self.work.results(at, keys.len())?;
        for (i, k) in keys.iter().enumerate() {
            let want = m.apply(op, k, (at + i) as u64);
            ensure!(
                got[i] == want,
                "{}: {op:?} #{} (key {:x?}): result {:#x}, model {want:#x}",
                s.name,
                at + i,
                &k[..1],
                got[i]
            );
        }
        self.cursor += keys.len();
        Ok(())
    }

    fn random<M: Model>(
        &mut self,
        s: &Subject,
        m: &mut M,
        ops: &[Op],
        check: &dyn Fn(&Subject, &M) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0;
        let mut segments = 0;
        while done < OPS {
            let w = self.rng.below(100);
            let growing = done < OPS / 2;
            let op = match (growing, w) {
                (true, 0..50) | (false, 0..20) => Op::Update,
                (true, 50..80) | (false, 20..50) => Op::Lookup,
                _ => Op::Delete,
            };
            if !ops.contains(&op) {
                continue;
            }
            let n = 1 + self.rng.below(40) as usize;
            let keys: Vec<Key> = (0..n).map(|_| self.pool[self.rng.below(POOL) as usize]).collect();
            self.segment(s, m, op, &keys)?;
            done += n;
            segments += 1;
            if segments % 8 == 0 {
                check(s, m).with_context(|| format!("{}: after {done} operations", s.name))?;
            }
        }
        check(s, m)
    }
}

fn seed() -> u64 {
    std::env::var("KFLEX_DS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed)
}

/// Deletes everything the model holds, then checks the structure is empty
/// (`check`) and, on a KFlex heap, that `residual` bytes remain allocated
/// (the roots), and none after clear.
fn empty_and_clear<M: Model>(
    d: &mut Driver,
    s: &Subject,
    m: &mut M,
    residual: u64,
    check: &dyn Fn(&Subject, &M) -> Result<()>,
) -> Result<()> {
    // (List pops take the back whatever the key: as many as it holds.)
    for chunk in m.keys().chunks(64) {
        d.segment(s, m, Op::Delete, chunk)?;
    }
    ensure!(m.keys().is_empty(), "{}: model not empty", s.name);
    check(s, m)?;
    if let Some(b) = s.allocated()? {
        ensure!(
            b == residual,
            "{}: {b} bytes allocated after deleting everything, want {residual}",
            s.name
        );
    }
    s.clear()?;
    if let Some(b) = s.allocated()? {
        ensure!(b == 0, "{}: {b} bytes allocated after clear: {:?}", s.name, s.stats()?);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// List.

fn list_subject(b: Build, work: &WorkMaps) -> Result<Subject> {
    let name = format!("list/{}", b.name());
    Ok(build_subject!(
        b,
        name,
        ds_list::DsListSkelBuilder,
        ds_list_arena::DsListArenaSkelBuilder,
        work,
        list,
        3,
        list_init,
        list_update,
        list_lookup,
        list_delete,
        list_clear
    ))
}

/// Walks the list both ways: links agree, ends and length match, nodes
/// hold the model's keys and values in order.
fn check_list(s: &Subject, m: &ListModel) -> Result<()> {
    let h = s.heap.context("no heap")?;
    let (head, tail, len) = (s.root(0), s.root(1), s.root(2));
    let mut n = head;
    let mut prev = 0;
    let mut i = 0;
    while n != 0 {
        ensure!(i < m.0.len(), "list longer than the model ({})", m.0.len());
        ensure!(h.word(n, 8)? == prev, "node {i}: prev link {:#x}, want {prev:#x}", h.word(n, 8)?);
        let (k, idx) = m.0[i];
        ensure!(h.key(n, 16)? == k, "node {i}: key differs from the model");
        ensure!(h.val(n, 48)? == ds::make_val(&k, idx), "node {i}: value differs");
        prev = n;
        n = h.word(n, 0)?;
        i += 1;
    }
    ensure!(i == m.0.len(), "list has {i} nodes, model {}", m.0.len());
    ensure!(tail == prev, "tail {tail:#x}, last node {prev:#x}");
    ensure!(len == i as u64, "len {len}, nodes {i}");
    Ok(())
}

/// Pushes, bounded lookups and pops on the list match a queue model; the
/// list is walked both ways; the heap is empty afterwards.
pub fn list_matches_model() -> Result<()> {
    ensure_kflex()?;
    for b in BUILDS {
        let mut d = Driver::new(seed())?;
        let s = list_subject(b, &d.work)?;
        s.init(b, 0)?;
        let mut m = ListModel::default();
        d.random(&s, &mut m, &[Op::Update, Op::Lookup, Op::Delete], &check_list)?;
        println!("{}: {} nodes at the end", s.name, m.0.len());
        empty_and_clear(&mut d, &s, &mut m, 0, &check_list)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Red-black tree.

fn rbtree_subject(b: Build, work: &WorkMaps) -> Result<Subject> {
    let name = format!("rbtree/{}", b.name());
    Ok(build_subject!(
        b,
        name,
        ds_rbtree::DsRbtreeSkelBuilder,
        ds_rbtree_arena::DsRbtreeArenaSkelBuilder,
        work,
        rbt,
        2,
        rbt_init,
        rbt_update,
        rbt_lookup,
        rbt_delete,
        rbt_clear
    ))
}

const RB_RED: u64 = 0;
const RB_BLACK: u64 = 1;

/// Checks the subtree at `n` (parent `p`): parent links, colours (a red
/// node has black children), key order within (lo, hi); appends its
/// entries in order; returns its black height.
fn check_rb_node(
    h: &Heap,
    n: u64,
    p: u64,
    lo: Option<Key>,
    hi: Option<Key>,
    out: &mut Vec<(Key, ds::Val)>,
    depth: u32,
) -> Result<u32> {
    if n == 0 {
        return Ok(1);
    }
    ensure!(depth < 64, "tree deeper than 64 (cycle?)");
    let (l, r, parent, color) = (h.word(n, 0)?, h.word(n, 8)?, h.word(n, 16)?, h.word(n, 24)?);
    let k = h.key(n, 32)?;
    ensure!(parent == p, "node {n:#x}: parent {parent:#x}, want {p:#x}");
    ensure!(color == RB_RED || color == RB_BLACK, "node {n:#x}: colour {color}");
    ensure!(lo.is_none_or(|lo| k > lo) && hi.is_none_or(|hi| k < hi), "node {n:#x}: out of order");
    if color == RB_RED {
        for c in [l, r] {
            ensure!(c == 0 || h.word(c, 24)? == RB_BLACK, "red node {n:#x} has a red child");
        }
    }
    let bl = check_rb_node(h, l, n, lo, Some(k), out, depth + 1)?;
    out.push((k, h.val(n, 64)?));
    let br = check_rb_node(h, r, n, Some(k), hi, out, depth + 1)?;
    ensure!(bl == br, "node {n:#x}: black heights {bl} and {br}");
    Ok(bl + (color == RB_BLACK) as u32)
}

fn check_rbtree(s: &Subject, m: &MapModel) -> Result<()> {
    let h = s.heap.context("no heap")?;
    let (root, count) = (s.root(0), s.root(1));
    ensure!(root == 0 || h.word(root, 24)? == RB_BLACK, "red root");
    let mut entries = Vec::new();
    check_rb_node(&h, root, 0, None, None, &mut entries, 0)?;
    let want: Vec<(Key, ds::Val)> = m.0.iter().map(|(k, &i)| (*k, ds::make_val(k, i))).collect();
    ensure!(entries.len() == want.len(), "{} nodes, model {}", entries.len(), want.len());
    ensure!(entries == want, "tree entries differ from the model");
    ensure!(count == m.0.len() as u64, "count {count}, model {}", m.0.len());
    Ok(())
}

/// Upserts, lookups and deletes on the red-black tree match a map model;
/// colours, black heights, order and parent links hold throughout.
pub fn rbtree_matches_model() -> Result<()> {
    ensure_kflex()?;
    for b in BUILDS {
        let mut d = Driver::new(seed() ^ 1)?;
        let s = rbtree_subject(b, &d.work)?;
        s.init(b, 0)?;
        let mut m = MapModel::default();
        d.random(&s, &mut m, &[Op::Update, Op::Lookup, Op::Delete], &check_rbtree)?;
        // A tree of every key in order (the fix-up's worst case), then
        // empty it in order.
        let all = d.pool.clone();
        let mut sorted = all.clone();
        sorted.sort();
        for chunk in sorted.chunks(50) {
            d.segment(&s, &mut m, Op::Update, chunk)?;
        }
        check_rbtree(&s, &m)?;
        println!("{}: {} keys before emptying", s.name, m.0.len());
        empty_and_clear(&mut d, &s, &mut m, 0, &check_rbtree)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Hash map.

fn hashmap_subject(b: Build, work: &WorkMaps) -> Result<Subject> {
    let name = format!("hashmap/{}", b.name());
    Ok(build_subject!(
        b,
        name,
        ds_hmap::DsHmapSkelBuilder,
        ds_hmap_arena::DsHmapArenaSkelBuilder,
        work,
        hmap,
        4,
        hmap_init,
        hmap_update,
        hmap_lookup,
        hmap_delete,
        hmap_clear
    ))
}

/// Every chain: its nodes hash to its bucket (by the full hash they
/// store, which is the key's), locks are free, no key twice; together the
/// chains hold exactly the model.
fn check_hashmap(s: &Subject, m: &MapModel) -> Result<()> {
    let h = s.heap.context("no heap")?;
    let (buckets, mask, count) = (s.root(0), s.root(1), s.root(2));
    ensure!(buckets != 0, "no buckets");
    ensure!(mask == (1 << HM_ORDER) - 1, "mask {mask:#x}");
    let mut seen = BTreeMap::new();
    for b in 0..=mask {
        let bucket = buckets + 16 * b;
        ensure!(h.word(bucket, 0)? == 0, "bucket {b} left locked");
        let mut n = h.word(bucket, 8)?;
        while n != 0 {
            ensure!(seen.len() <= m.0.len(), "more nodes than the model (cycle?)");
            let k = h.key(n, 16)?;
            let hash = h.word(n, 8)?;
            ensure!(hash == ds::hash(&k), "node {n:#x}: stored hash is not the key's");
            ensure!(hash & mask == b, "node {n:#x} in bucket {b}, hashes to {}", hash & mask);
            ensure!(seen.insert(k, h.val(n, 48)?).is_none(), "key twice");
            n = h.word(n, 0)?;
        }
    }
    let want: BTreeMap<Key, ds::Val> = m.0.iter().map(|(k, &i)| (*k, ds::make_val(k, i))).collect();
    ensure!(seen == want, "{} entries, model {} (or values differ)", seen.len(), want.len());
    ensure!(count == m.0.len() as u64, "count {count}, model {}", m.0.len());
    Ok(())
}

/// Upserts, lookups and deletes on the chained hash map (32 buckets, long
/// chains) match a map model; chain membership holds throughout; only the
/// bucket array is left after deleting everything, nothing after clear.
pub fn hashmap_matches_model() -> Result<()> {
    ensure_kflex()?;
    for b in BUILDS {
        let mut d = Driver::new(seed() ^ 2)?;
        let s = hashmap_subject(b, &d.work)?;
        s.init(b, HM_ORDER)?;
        let mut m = MapModel::default();
        d.random(&s, &mut m, &[Op::Update, Op::Lookup, Op::Delete], &check_hashmap)?;
        println!("{}: {} keys before emptying", s.name, m.0.len());
        // The bucket array (32 x 16 bytes) stays until clear.
        empty_and_clear(&mut d, &s, &mut m, 512, &check_hashmap)?;
    }
    Ok(())
}

/// Two CPUs update and delete the same keys at once: the bucket locks keep
/// every chain intact, each key is inserted and deleted exactly once.
pub fn hashmap_two_cpus() -> Result<()> {
    ensure_kflex()?;
    let n = 4000usize;
    for b in BUILDS {
        let mut work = WorkMaps::new(4 * n)?;
        let keys: Vec<Key> = (0..n as u64).map(|i| ds::key_of(seed() ^ 3, i)).collect();
        // Thread 0 sees the keys in order, thread 1 reversed.
        let rev: Vec<Key> = keys.iter().rev().copied().collect();
        work.set_keys(0, &keys)?;
        work.set_keys(n, &rev)?;
        work.set_keys(2 * n, &keys)?;
        work.set_keys(3 * n, &rev)?;
        let s = hashmap_subject(b, &work)?;
        s.init(b, 8)?;
        for (phase, prog) in [(0, &s.ops.update), (1, &s.ops.delete)] {
            let fd = prog.as_ref().context("program")?.as_fd();
            let hits = std::thread::scope(|sc| -> Result<u64> {
                let t: Vec<_> = (0..2)
                    .map(|cpu| {
                        sc.spawn(move || -> Result<u64> {
                            pin_to(cpu)?;
                            let start = (2 * phase + cpu) * n;
                            let (r, _) = ds::run_batched(fd, start as u64, n as u64, 500, 0, 0)?;
                            Ok(r.hits)
                        })
                    })
                    .collect();
                t.into_iter().map(|t| t.join().expect("thread")).sum()
            })?;
            ensure!(hits == n as u64, "{}: phase {phase}: {hits} hits, want {n}", s.name);
            if phase == 0 {
                // Values are those of either thread's update of the key.
                let h = s.heap.context("heap")?;
                let (buckets, mask, count) = (s.root(0), s.root(1), s.root(2));
                ensure!(count == n as u64, "count {count}");
                let mut seen = HashSet::new();
                for bk in 0..=mask {
                    ensure!(h.word(buckets + 16 * bk, 0)? == 0, "bucket {bk} locked");
                    let mut node = h.word(buckets + 16 * bk, 8)?;
                    while node != 0 {
                        let k = h.key(node, 16)?;
                        ensure!(ds::hash(&k) & mask == bk, "key in the wrong bucket");
                        ensure!(seen.insert(k), "key twice");
                        ensure!(seen.len() <= n, "chains longer than the key set");
                        node = h.word(node, 0)?;
                    }
                }
                ensure!(seen.len() == n, "{} keys in the chains, want {n}", seen.len());
            }
        }
        ensure!(s.root(2) == 0, "{}: count {} after deleting everything", s.name, s.root(2));
        if let Some(bytes) = s.allocated()? {
            ensure!(bytes == 256 * 16, "{}: {bytes} bytes left (want the buckets)", s.name);
        }
        s.clear()?;
        if let Some(bytes) = s.allocated()? {
            ensure!(bytes == 0, "{}: {bytes} bytes after clear", s.name);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Skiplist.

fn skiplist_subject(b: Build, work: &WorkMaps) -> Result<Subject> {
    let name = format!("skiplist/{}", b.name());
    Ok(build_subject!(
        b,
        name,
        ds_skiplist::DsSkiplistSkelBuilder,
        ds_skiplist_arena::DsSkiplistArenaSkelBuilder,
        work,
        skl,
        3,
        skl_init,
        skl_update,
        skl_lookup,
        skl_delete,
        skl_clear
    ))
}

const SKL_NEXT: u64 = 104;

/// Every level is sorted and holds exactly the nodes taller than it; level
/// 0 holds the model; heights are the keys'; the list's level is the
/// tallest node's; levels above it are empty.
fn check_skiplist(s: &Subject, m: &MapModel) -> Result<()> {
    let h = s.heap.context("no heap")?;
    let (head, level, count) = (s.root(0), s.root(1), s.root(2));
    ensure!(head != 0, "no head");
    ensure!(h.word(head, 96)? == 32, "head height {}", h.word(head, 96)?);
    let mut level0 = Vec::new();
    let mut heights = BTreeMap::new();
    for lvl in 0..32u64 {
        let mut n = h.word(head, SKL_NEXT + 8 * lvl)?;
        ensure!(lvl < level || n == 0 || lvl == 0, "level {lvl} used above the list's {level}");
        let mut last: Option<Key> = None;
        let mut on_level = BTreeSet::new();
        while n != 0 {
            ensure!(on_level.len() <= m.0.len(), "level {lvl} longer than the model");
            let k = h.key(n, 0)?;
            let ht = h.word(n, 96)?;
            ensure!(ht > lvl, "node of height {ht} on level {lvl}");
            ensure!(last.is_none_or(|p| k > p), "level {lvl} not sorted");
            last = Some(k);
            on_level.insert(k);
            if lvl == 0 {
                ensure!(ht == ds::sl_height(ds::hash(&k)), "height {ht} is not the key's");
                heights.insert(k, ht);
                level0.push((k, h.val(n, 32)?));
            }
            n = h.word(n, SKL_NEXT + 8 * lvl)?;
        }
        let want: BTreeSet<Key> =
            heights.iter().filter(|(_, &ht)| ht > lvl).map(|(k, _)| *k).collect();
        ensure!(on_level == want, "level {lvl}: {} nodes, want {}", on_level.len(), want.len());
    }
    let want: Vec<(Key, ds::Val)> = m.0.iter().map(|(k, &i)| (*k, ds::make_val(k, i))).collect();
    ensure!(level0 == want, "level 0: {} entries, model {}", level0.len(), want.len());
    let tallest = heights.values().copied().max().unwrap_or(1);
    ensure!(level == tallest, "list level {level}, tallest node {tallest}");
    ensure!(count == m.0.len() as u64, "count {count}, model {}", m.0.len());
    Ok(())
}

/// Upserts, lookups and deletes on the skiplist match a map model; level
/// order and membership hold throughout; only the head is left after
/// deleting everything, nothing after clear.
pub fn skiplist_matches_model() -> Result<()> {
    ensure_kflex()?;
    for b in BUILDS {
        let mut d = Driver::new(seed() ^ 4)?;
        let s = skiplist_subject(b, &d.work)?;
        s.init(b, 0)?;
        let mut m = MapModel::default();
        d.random(&s, &mut m, &[Op::Update, Op::Lookup, Op::Delete], &check_skiplist)?;
        println!("{}: {} keys, level {} before emptying", s.name, m.0.len(), s.root(1));
        // The head (104 + 32 * 8 bytes: class 512) stays until clear.
        empty_and_clear(&mut d, &s, &mut m, 512, &check_skiplist)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Sketches.

fn sketch_subject(b: Build, work: &WorkMaps, count_sketch: bool) -> Result<Subject> {
    let name = format!("{}/{}", if count_sketch { "cs" } else { "cms" }, b.name());
    Ok(if count_sketch {
        build_subject!(
            b,
            name,
            ds_sketch::DsSketchSkelBuilder,
            ds_sketch_arena::DsSketchArenaSkelBuilder,
            work,
            cs_tab,
            1,
            cs_init,
            cs_update,
            cs_lookup,
            cs_delete,
            cs_clear
        )
    } else {
        build_subject!(
            b,
            name,
            ds_sketch::DsSketchSkelBuilder,
            ds_sketch_arena::DsSketchArenaSkelBuilder,
            work,
            cms_tab,
            1,
            cms_init,
            cms_update,
            cms_lookup,
            cms_delete,
            cms_clear
        )
    })
}

/// The table in the heap holds the model's counters.
fn check_sketch_table(h: &Heap, tab: u64, m: &SketchModel) -> Result<()> {
    ensure!(tab != 0, "no table");
    for (r, row) in m.0.c.iter().enumerate() {
        for (c, &want) in row.iter().enumerate() {
            let off = 4 * (r * ds::sketch::COLS + c) as u64;
            let w = h.word(tab, off & !7)?;
            let got = (w >> (8 * (off & 7))) as u32 as i32;
            ensure!(got == want, "counter [{r}][{c}] = {got}, model {want}");
        }
    }
    Ok(())
}

fn check_sketch(s: &Subject, m: &SketchModel) -> Result<()> {
    check_sketch_table(&s.heap.context("no heap")?, s.root(0), m)
}

/// Counts, estimates and uncounts of both sketches match the model (every
/// estimate exactly, every counter); count-min never underestimates; the
/// table is freed by clear.
pub fn sketches_match_model() -> Result<()> {
    ensure_kflex()?;
    for b in BUILDS {
        for cs in [false, true] {
            let mut d = Driver::new(seed() ^ 5)?;
            let s = sketch_subject(b, &d.work, cs)?;
            s.init(b, 0)?;
            let mut m = SketchModel(Sketch::new(cs));
            d.random(&s, &mut m, &[Op::Update, Op::Lookup, Op::Delete], &check_sketch)?;
            // Count-min with only additions: estimates bound the truth.
            if !cs {
                let mut fresh = Driver::new(seed() ^ 6)?;
                let s2 = sketch_subject(b, &fresh.work, false)?;
                s2.init(b, 0)?;
                let mut m2 = SketchModel(Sketch::new(false));
                let mut truth: BTreeMap<Key, i64> = BTreeMap::new();
                for i in 0..20 {
                    let keys: Vec<Key> = (0..40).map(|j| fresh.pool[(i * 7 + j) % 300]).collect();
                    for k in &keys {
                        *truth.entry(*k).or_default() += 1;
                    }
                    fresh.segment(&s2, &mut m2, Op::Update, &keys)?;
                }
                let keys: Vec<Key> = truth.keys().copied().collect();
                fresh.segment(&s2, &mut m2, Op::Lookup, &keys)?;
                let at = fresh.cursor - keys.len();
                let est = fresh.work.results(at, keys.len())?;
                for (k, e) in keys.iter().zip(est) {
                    ensure!(e as i64 >= truth[k], "count-min underestimates");
                }
                s2.clear()?;
            }
            s.clear()?;
            if let Some(bytes) = s.allocated()? {
                ensure!(bytes == 0, "{}: {bytes} bytes after clear", s.name);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Kernel baselines.

/// The BPF hash map and the array sketches match the same models as the
/// heap structures; the graph-kfunc list pops in FIFO order and the graph
/// rbtree pops keys in ascending order (duplicates included).
pub fn baselines_match_models() -> Result<()> {
    ensure_kflex()?;
    let mut d = Driver::new(seed() ^ 7)?;
    let maps = load_ds_skel!(ds_maps::DsMapsSkelBuilder, d.work, |open| {
        open.maps.bhash.set_max_entries(POOL as u32)?;
    })?;
    let graph = load_ds_skel!(ds_graph::DsGraphSkelBuilder, d.work, |_open| {})?;
    let subject = |name: &str, u, l: Option<_>, del, c| -> Result<Subject> {
        Ok(Subject {
            name: name.into(),
            ops: Ops {
                init: None,
                update: Some(ds::prog_fd(u)?),
                lookup: match l {
                    Some(l) => Some(ds::prog_fd(l)?),
                    None => None,
                },
                delete: Some(ds::prog_fd(del)?),
                clear: Some(ds::prog_fd(c)?),
            },
            heap: None,
            heap_id: None,
            roots: Box::new(Vec::new),
            _skel: Box::new(()),
        })
    };
    let p = &maps.progs;
    // bhash_update records 3: the map does not say whether the key was new.
    struct HashModel(MapModel);
    impl Model for HashModel {
        fn apply(&mut self, op: Op, k: &Key, idx: u64) -> u64 {
            let r = self.0.apply(op, k, idx);
            if op == Op::Update {
                3
            } else {
                r
            }
        }
        fn keys(&self) -> Vec<Key> {
            self.0.keys()
        }
    }
    let s = subject(
        "bpf-hash",
        &p.bhash_update,
        Some(&p.bhash_lookup),
        &p.bhash_delete,
        &p.bhash_clear,
    )?;
    let mut m = HashModel(MapModel::default());
    d.random(&s, &mut m, &[Op::Update, Op::Lookup, Op::Delete], &|_, _| Ok(()))?;
    s.clear()?;
    let left = m.keys();
    d.segment(&s, &mut MapModel::default(), Op::Lookup, &left)?;

    for (cs, u, l, del, c) in [
        (false, &p.acms_update, &p.acms_lookup, &p.acms_delete, &p.acms_clear),
        (true, &p.acs_update, &p.acs_lookup, &p.acs_delete, &p.acs_clear),
    ] {
        let s = subject(if cs { "bpf-array-cs" } else { "bpf-array-cms" }, u, Some(l), del, c)?;
        let mut m = SketchModel(Sketch::new(cs));
        d.random(&s, &mut m, &[Op::Update, Op::Lookup, Op::Delete], &|_, _| Ok(()))?;
        s.clear()?;
    }

    let g = &graph.progs;
    let s = subject("bpf-graph-list", &g.glist_update, None, &g.glist_delete, &g.glist_clear)?;
    let mut m = ListModel::default();
    d.random(&s, &mut m, &[Op::Update, Op::Delete], &|_, _| Ok(()))?;
    s.clear()?;
    // Empty after clear: a pop finds nothing.
    d.segment(&s, &mut ListModel::default(), Op::Delete, &left_or_one(&d))?;

    /// Graph rbtree: inserts keep duplicates, deletes pop the minimum.
    #[derive(Default)]
    struct MinModel(BTreeMap<Key, u64>);
    impl Model for MinModel {
        fn apply(&mut self, op: Op, k: &Key, _idx: u64) -> u64 {
            match op {
                Op::Update => {
                    *self.0.entry(*k).or_default() += 1;
                    1
                }
                Op::Lookup => unreachable!("no lookup"),
                Op::Delete => {
                    let Some((&min, &n)) = self.0.iter().next() else { return 0 };
                    if n == 1 {
                        self.0.remove(&min);
                    } else {
                        self.0.insert(min, n - 1);
                    }
                    ds::key_csum(&min)
                }
            }
        }
        fn keys(&self) -> Vec<Key> {
            self.0.keys().copied().collect()
        }
    }
    let s = subject("bpf-graph-rbtree", &g.grbt_update, None, &g.grbt_delete, &g.grbt_clear)?;
    let mut m = MinModel::default();
    d.random(&s, &mut m, &[Op::Update, Op::Delete], &|_, _| Ok(()))?;
    println!("bpf-graph-rbtree: {} keys left for clear", m.0.len());
    s.clear()?;
    d.segment(&s, &mut MinModel::default(), Op::Delete, &left_or_one(&d))?;
    Ok(())
}

/// One key of the pool (for an operation on an emptied structure).
fn left_or_one(d: &Driver) -> Vec<Key> {
    vec![d.pool[0]]
}
