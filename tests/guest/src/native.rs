// SPDX-License-Identifier: GPL-2.0

//! The native data structures of the KFlex component (the benchmarks'
//! "KMod" baseline, `bpf_kflex_bench_native()`): random operations checked
//! against a model, then the structures walked from user space through the
//! heap mapping and their invariants checked.

use std::{
    collections::{BTreeSet, HashSet},
    os::fd::AsFd,
};

use anyhow::{bail, ensure, Context, Result};
use kflex_load::{
    ds::{self, NativeArgs},
    skel::native::*,
};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, MapFlags,
};

use kflex_load::{heapstats, rng::Rng};

use crate::util::*;

type Key = [u8; 32];

/// Bucket order of the hash map on kernel memory in these tests: 16
/// buckets, so its chains are long.
const KMEM_ORDER: u64 = 4;

struct Loaded {
    skel: NativeSkel<'static>,
    base: u64,
}

impl Loaded {
    fn new(keys: &[Key]) -> Result<Loaded> {
        let mut open = NativeSkelBuilder::default().open(skel_storage())?;
        open.maps.nat_keys.set_max_entries(keys.len() as u32)?;
        open.maps.nat_blocks.set_max_entries(ds::nat_blocks_for(keys.len()))?;
        let skel = open.load().context("loading native.bpf.c (CONFIG_KFLEX_BENCH?)")?;
        for (i, k) in keys.iter().enumerate() {
            skel.maps.nat_keys.update(&(i as u32).to_ne_bytes(), k, MapFlags::ANY)?;
        }
        ds::fill_nat_blocks(&skel.maps.nat_blocks, keys.concat().as_slice())?;
        let base = heap_base(&skel.maps.heap)?;
        let l = Loaded { skel, base };
        l.run(&mut NativeArgs::default(), true)?;
        Ok(l)
    }

    fn run(&self, a: &mut NativeArgs, init: bool) -> Result<()> {
        let prog = if init { &self.skel.progs.nat_init } else { &self.skel.progs.nat_run };
        ds::run_ctx(prog.as_fd(), a)?;
        Ok(())
    }

    /// One operation; returns whether the key was found or inserted.
    fn op(&self, ds: u64, op: u64, idx: usize) -> Result<bool> {
        let mut a = NativeArgs {
            ds,
            op,
            first: idx as u64,
            count: 1,
            arg: KMEM_ORDER,
            ..Default::default()
        };
        self.run(&mut a, false)?;
        ensure!(a.errors == 0, "ds {ds} op {op} key {idx}: the kfunc failed");
        Ok(a.found == 1)
    }

    fn root(&self, ds: usize) -> u64 {
        self.skel.maps.bss_data.as_deref().expect("bss").nat_roots[ds]
    }

    fn word(&self, user: u64, off: u64) -> u64 {
        // SAFETY: inside this process's mapping of the heap (checked by the
        // callers against the heap's range).
        unsafe { ((user + off) as *const u64).read_volatile() }
    }

    fn key(&self, user: u64) -> Key {
        // SAFETY: as in `word`.
        unsafe { (user as *const Key).read_volatile() }
    }

    /// User address of heap offset `off` (links are heap offsets).
    fn at(&self, off: u64) -> u64 {
        self.base + off
    }
}

fn keys(n: usize, rng: &mut Rng) -> Vec<Key> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut k = [0u8; 32];
        for c in k.chunks_mut(8) {
            c.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        if seen.insert(k) {
            out.push(k);
        }
    }
    out
}

/// Walks the list from user space: prev links match, keys = model.
fn check_list(l: &Loaded, model: &BTreeSet<Key>) -> Result<()> {
    let (mut n, mut prev, mut got) = (l.word(l.root(0), 0), 0, BTreeSet::new());
    while n != 0 {
        ensure!(l.word(l.at(n), 8) == prev, "list: bad prev link at {n:#x}");
        ensure!(got.insert(l.key(l.at(n) + 16)), "list: key twice");
        prev = n;
        n = l.word(l.at(n), 0);
        ensure!(got.len() <= model.len(), "list longer than the model (cycle?)");
    }
    ensure!(got == *model, "list: {} keys, model {}", got.len(), model.len());
    Ok(())
}

/// Checks the subtree at `n`: order, parent links, no red-red; returns its
/// black height.
fn check_rb(
    l: &Loaded,
    n: u64,
    parent: u64,
    lo: Option<Key>,
    hi: Option<Key>,
    keys: &mut Vec<Key>,
) -> Result<u32> {
    if n == 0 {
        return Ok(1);
    }
    ensure!(keys.len() < 1 << 20, "rbtree: too many nodes (cycle?)");
    let u = l.at(n);
    let (left, right, up, black) = (l.word(u, 0), l.word(u, 8), l.word(u, 16), l.word(u, 24));
    let k = l.key(u + 32);
    ensure!(up == parent, "rbtree: bad parent link at {n:#x}");
    ensure!(lo.is_none_or(|lo| k > lo) && hi.is_none_or(|hi| k < hi), "rbtree: order broken");
    if black == 0 {
        for c in [left, right] {
            ensure!(c == 0 || l.word(l.at(c), 24) != 0, "rbtree: red node with a red child");
        }
    }
    let bl = check_rb(l, left, n, lo, Some(k), keys)?;
    keys.push(k);
    let br = check_rb(l, right, n, Some(k), hi, keys)?;
    ensure!(bl == br, "rbtree: black heights {bl} != {br}");
    Ok(bl + (black != 0) as u32)
}

/// Every level of the skiplist is sorted; level 0 holds exactly the model.
fn check_skiplist(l: &Loaded, model: &BTreeSet<Key>) -> Result<()> {
    let root = l.root(2);
    let top = l.word(root, 16);
    ensure!(top <= 32, "skiplist: level {top}");
    let mut level0 = Vec::new();
    for lvl in (0..top).rev() {
        let mut n = l.word(root, 32 + 8 * lvl);
        let mut last: Option<Key> = None;
        let mut steps = 0;
        while n != 0 {
            let u = l.at(n);
            let k = l.key(u);
            ensure!(last.is_none_or(|p| k > p), "skiplist: level {lvl} not sorted");
            ensure!(
                l.word(u, 96) > lvl,
                "skiplist: node of level {} on level {lvl}",
                l.word(u, 96)
            );
            ensure!(lvl > 0 || model.contains(&k), "skiplist: stray key");
            if lvl == 0 {
                level0.push(k);
            }
            last = Some(k);
            n = l.word(u, 104 + 8 * lvl);
            steps += 1;
            ensure!(steps <= model.len(), "skiplist: level {lvl} longer than the model");
        }
    }
    ensure!(level0.len() == model.len(), "skiplist: {} keys, model {}", level0.len(), model.len());
    Ok(())
}

/// `n` random operations (half updates, a third lookups, the rest deletes)
/// on structure `ds`, each result checked against a model; returns the
/// model.
fn random_ops(l: &Loaded, ds: u64, keys: &[Key], n: usize, rng: &mut Rng) -> Result<BTreeSet<Key>> {
    let mut model = BTreeSet::new();
    for _ in 0..n {
        let idx = (rng.next_u64() % keys.len() as u64) as usize;
        let op = match rng.next_u64() % 10 {
            0..=4 => 0,
            5..=7 => 1,
            _ => 2,
        };
        let got = l.op(ds, op, idx)?;
        let want = match op {
            0 => model.insert(keys[idx]),
            1 => model.contains(&keys[idx]),
            _ => model.remove(&keys[idx]),
        };
        ensure!(got == want, "ds {ds}: op {op} on key {idx}: kernel {got}, model {want}");
    }
    Ok(model)
}

/// Random operations on the native list, rbtree and skiplist match a model;
/// the structures' invariants hold; deleting everything frees every node.
pub fn native_structures_match_model() -> Result<()> {
    ensure_kflex()?;
    let mut rng = Rng::new(0x1234_5678_9abc_def1);
    let nkeys = 300;
    let keys = keys(nkeys, &mut rng);
    let l = Loaded::new(&keys)?;
    for ds in 0..3u64 {
        let model = random_ops(&l, ds, &keys, 3000, &mut rng)?;
        match ds {
            0 => check_list(&l, &model)?,
            1 => {
                let mut walked = Vec::new();
                let top = l.word(l.root(1), 8);
                if top != 0 {
                    ensure!(l.word(l.at(top), 24) != 0, "rbtree: red root");
                }
                check_rb(&l, top, 0, None, None, &mut walked)?;
                ensure!(walked.iter().copied().collect::<BTreeSet<_>>() == model, "rbtree keys");
                ensure!(walked.len() == model.len(), "rbtree: duplicate keys");
            }
            _ => check_skiplist(&l, &model)?,
        }
        println!("native ds {ds}: {} keys after 3000 operations, invariants hold", model.len());
        for k in model.clone() {
            let idx = keys.iter().position(|x| *x == k).context("key")?;
            ensure!(l.op(ds, 2, idx)?, "ds {ds}: delete of a present key failed");
        }
    }
    let id = l.skel.maps.heap.info()?.info.id;
    let st = heapstats::find(id)?.context("heap statistics")?;
    // Only the three 512-byte roots are left.
    if st.class_bytes() != 3 * 512 {
        bail!("nodes left after deleting everything: {st:?}");
    }
    Ok(())
}

/// The same structures on kernel memory (`rust/kmem.rs`, structures 3-6:
/// a list, the kernel crate's RBTree, a skiplist and a hash map of `KBox`es)
/// match the model too: every operation's result, then every key's
/// membership (one call each, and one batch call of
/// `bpf_kflex_bench_native_batch()` over all keys), then deleting
/// everything leaves nothing to find. They take no heap memory.
pub fn kmem_structures_match_model() -> Result<()> {
    ensure_kflex()?;
    let mut rng = Rng::new(0x0fed_cba9_8765_4321);
    let nkeys = 400;
    let keys = keys(nkeys, &mut rng);
    let l = Loaded::new(&keys)?;
    let id = l.skel.maps.heap.info()?.info.id;
    let before = heapstats::find(id)?.context("heap statistics")?.class_bytes();
    for ds in 3..7u64 {
        let model = random_ops(&l, ds, &keys, 4000, &mut rng)?;
        for (idx, k) in keys.iter().enumerate() {
            let got = l.op(ds, 1, idx)?;
            ensure!(got == model.contains(k), "ds {ds}: lookup of key {idx}: kernel {got}");
        }
        let mut a = NativeArgs {
            ds,
            op: 1,
            first: 0,
            count: nkeys as u64,
            arg: KMEM_ORDER,
            ..Default::default()
        };
        ds::run_ctx(l.skel.progs.nat_batch.as_fd(), &mut a)?;
        ensure!(
            a.found == model.len() as u64 && a.errors == 0,
            "ds {ds}: batch lookup found {} (errors {}), model {}",
            a.found,
            a.errors,
            model.len()
        );
        println!("kmem ds {ds}: {} keys after 4000 operations, every lookup agrees", model.len());
        for k in model.clone() {
            let idx = keys.iter().position(|x| *x == k).context("key")?;
            ensure!(l.op(ds, 2, idx)?, "ds {ds}: delete of a present key failed");
        }
        for idx in 0..nkeys {
            ensure!(!l.op(ds, 1, idx)?, "ds {ds}: key {idx} found after deleting everything");
        }
    }
    let after = heapstats::find(id)?.context("heap statistics")?.class_bytes();
    ensure!(after == before, "the kernel-memory structures used heap memory: {before} -> {after}");
    Ok(())
}

/// Heap offsets of every node of structure `ds`, walked from user space
/// (the structure must be intact).
fn nodes_of(l: &Loaded, ds: usize) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    match ds {
        0 => {
            let mut n = l.word(l.root(0), 0);
            while n != 0 && out.len() < 1 << 16 {
                out.push(n);
                n = l.word(l.at(n), 0);
            }
        }
        1 => {
            let mut stack = vec![l.word(l.root(1), 8)];
            while let Some(n) = stack.pop() {
                if n != 0 && out.len() < 1 << 16 {
                    out.push(n);
                    stack.extend([l.word(l.at(n), 0), l.word(l.at(n), 8)]);
                }
            }
        }
        _ => {
            let mut n = l.word(l.root(2), 32);
            while n != 0 && out.len() < 1 << 16 {
                out.push(n);
                n = l.word(l.at(n), 104);
            }
        }
    }
    Ok(out)
}

/// Every link word of structure `ds` (its root's and its nodes'), as user
/// addresses to overwrite.
fn link_words(l: &Loaded, ds: usize) -> Result<Vec<u64>> {
    let root = l.root(ds);
    let mut words = match ds {
        0 => vec![root],
        1 => vec![root + 8],
        _ => (0..32).map(|lvl| root + 32 + 8 * lvl).collect(),
    };
    for n in nodes_of(l, ds)? {
        let u = l.at(n);
        match ds {
            0 => words.extend([u, u + 8]),
            1 => words.extend([u, u + 8, u + 16]),
            _ => {
                let level = l.word(u, 96).min(32);
                words.extend((0..level).map(|lvl| u + 104 + 8 * lvl));
            }
        }
    }
    Ok(words)
}

fn write_word(user: u64, v: u64) {
    // SAFETY: callers pass link words of nodes walked inside this process's
    // mapping of the heap.
    unsafe { (user as *mut u64).write_volatile(v) }
}

/// A hostile user-space writer fills every link of the native list, rbtree
/// and skiplist with extreme values (0, all ones, unaligned, the guard zones,
/// another structure's node, the node itself, kernel and user addresses);
/// then every operation on every key returns a result or an error -- the
/// kernel does not crash, loop, or touch memory outside the heap -- and the
/// heap closes with all its memory.
pub fn hostile_links_are_contained() -> Result<()> {
    ensure_kflex()?;
    let mut rng = Rng::new(0x5eed_f114_b5c0);
    let nkeys = 100;
    let keys = keys(nkeys, &mut rng);
    type Pick = fn(u64, u64, u64) -> u64;
    // (name, value from (this node's offset, another structure's node, heap
    // user base)).
    let values: [(&str, Pick); 11] = [
        ("zero", |_, _, _| 0),
        ("all-ones", |_, _, _| u64::MAX),
        ("all-ones-7", |_, _, _| u64::MAX - 7),
        ("unaligned", |n, _, _| n + 4),
        ("guard-above", |_, _, _| 1 << 28),
        ("guard-above-far", |_, _, _| (1 << 28) + 32760),
        ("guard-below", |_, _, _| 0u64.wrapping_sub(8)),
        ("self", |n, _, _| n),
        ("other-structure", |_, o, _| o),
        ("kernel", |_, _, _| 0xffff_8880_0000_0000),
        ("user-address", |n, _, base| base + n),
    ];
    for (name, pick) in values {
        let l = Loaded::new(&keys)?;
        let id = l.skel.maps.heap.info()?.info.id;
        for ds in 0..3u64 {
            let mut a =
                NativeArgs { ds, op: 0, first: 0, count: nkeys as u64, ..Default::default() };
            l.run(&mut a, false)?;
            ensure!(a.found == nkeys as u64 && a.errors == 0, "{name}: building ds {ds}: {a:?}");
        }
        let other = nodes_of(&l, 1)?.first().copied().unwrap_or(0);
        let mut written = 0;
        for ds in 0..3usize {
            for w in link_words(&l, ds)? {
                let node = w - l.base;
                write_word(w, pick(node & !7, other, l.base));
                written += 1;
            }
        }
        let mut errors = 0;
        for ds in 0..3u64 {
            for op in [1, 0, 2, 1] {
                let mut a =
                    NativeArgs { ds, op, first: 0, count: nkeys as u64, ..Default::default() };
                l.run(&mut a, false)?;
                errors += a.errors;
            }
        }
        println!("native hostile {name}: {written} links overwritten, {errors} operations failed");
        drop(l);
        wait_heap_gone(id)?;
    }
    Ok(())
}

/// Waits until heap `id` is gone from /proc/kflex/heaps (closed, memory
/// freed).
fn wait_heap_gone(id: u32) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while heapstats::read()?.iter().any(|s| s.get("id") == u64::from(id)) {
        ensure!(std::time::Instant::now() < deadline, "heap {id} still open");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}
