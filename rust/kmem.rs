// SPDX-License-Identifier: GPL-2.0

//! Native data structures on kernel memory: the "KMod" baseline as the
//! KFlex paper measured it, ordinary kernel code on the kernel's own memory.
//!
//! A singly linked list, the kernel crate's red-black tree
//! ([`kernel::rbtree::RBTree`]), a skiplist and a chained hash map, with the
//! benchmark workload's 32-byte keys and 64-byte values. Nodes are `KBox`es from
//! `kmalloc`; nothing is validated, because nothing but this file can reach
//! them (unlike [`crate::native`], whose nodes live in the BPF-writable heap).
//! One set per heap, behind a spinlock, freed with the heap; reached through
//! `bpf_kflex_bench_native()` and `bpf_kflex_bench_native_batch()`
//! (structures 3, 4, 5, 6), which the glue allows from process context only,
//! so the lock is never wanted by an interrupt.

use core::ptr;

use kernel::{
    alloc::{flags, Flags},
    new_spinlock,
    prelude::*,
    rbtree::RBTree,
    sync::SpinLock,
};

/// Key and value sizes of the workload; keys compare as four big-endian
/// words (like `memcmp` on their bytes).
type Key = [u64; 4];
type Val = [u64; 8];

/// Allocations are made under a spinlock.
fn gfp() -> Flags {
    flags::GFP_NOWAIT | flags::__GFP_NOWARN
}

/// Operations of `struct kflex_native_req`.
const OP_UPDATE: u32 = 0;
const OP_LOOKUP: u32 = 1;
const OP_DELETE: u32 = 2;

/// The value stored for `key` (as the BPF structures: the key, twice).
fn val_of(key: &Key) -> Val {
    let mut v = [0u64; 8];
    for (i, w) in v.iter_mut().enumerate() {
        *w = key[i % 4];
    }
    v
}

// ---- singly linked list, newest first ----

struct LNode {
    next: Option<KBox<LNode>>,
    key: Key,
    val: Val,
}

#[derive(Default)]
struct List {
    head: Option<KBox<LNode>>,
}

impl List {
    /// Position of `key` from the head, if present.
    fn find(&self, key: &Key) -> Option<usize> {
        let mut n = self.head.as_deref();
        let mut i = 0;
        while let Some(x) = n {
            if x.key == *key {
                return Some(i);
            }
            n = x.next.as_deref();
            i = i.wrapping_add(1);
        }
        None
    }

    /// The link that holds the node at position `i`.
    fn link_at(&mut self, i: usize) -> &mut Option<KBox<LNode>> {
        let mut cur = &mut self.head;
        for _ in 0..i {
            match cur {
                Some(n) => cur = &mut n.next,
                None => break,
            }
        }
        cur
    }

    fn op(&mut self, op: u32, key: &Key) -> Result<bool> {
        let at = self.find(key);
        match (op, at) {
            (OP_LOOKUP, at) => Ok(at.is_some()),
            (OP_UPDATE, Some(i)) => {
                if let Some(n) = self.link_at(i) {
                    n.val = val_of(key);
                }
                Ok(false)
            }
            (OP_UPDATE, None) => {
                let mut n = KBox::new(LNode { next: None, key: *key, val: val_of(key) }, gfp())?;
                n.next = self.head.take();
                self.head = Some(n);
                Ok(true)
            }
            (_, None) => Ok(false),
            (_, Some(i)) => {
                let link = self.link_at(i);
                Ok(match link.take() {
                    Some(mut n) => {
                        *link = n.next.take();
                        true
                    }
                    None => false,
                })
            }
        }
    }
}

impl Drop for List {
    fn drop(&mut self) {
        // Iteratively: a recursive drop of a long list would overflow the
        // kernel stack.
        let mut n = self.head.take();
        while let Some(mut x) = n {
            n = x.next.take();
        }
    }
}

// ---- skiplist, p = 1/4 ----

const MAX_LEVEL: usize = 16;

struct SNode {
    key: Key,
    val: Val,
    next: [*mut SNode; MAX_LEVEL],
}

/// A skiplist of `SNode`s.
///
/// # Invariants
///
/// Every non-null pointer in `head` and in the `next` arrays of reachable
/// nodes came from `KBox::into_raw` and is owned by the list; each node is
/// reachable from level 0 exactly once, so it is freed exactly once.
struct Skiplist {
    head: [*mut SNode; MAX_LEVEL],
    level: usize,
    rng: u64,
}

// SAFETY: the list owns its nodes (type invariant); they move with it.
unsafe impl Send for Skiplist {}

impl Default for Skiplist {
    fn default() -> Self {
        Skiplist { head: [ptr::null_mut(); MAX_LEVEL], level: 1, rng: 0x2545_f491_4f6c_dd1d }
    }
}

impl Skiplist {
    /// The node after `at` (the head when null) at `level`.
    fn next(&self, at: *mut SNode, level: usize) -> *mut SNode {
        if at.is_null() {
            return self.head.get(level).copied().unwrap_or(ptr::null_mut());
        }
        // SAFETY: `at` is a node of this list (type invariant), alive while
        // `self` is borrowed.
        unsafe { (*at).next.get(level).copied().unwrap_or(ptr::null_mut()) }
    }

    /// Sets the link after `at` (the head when null) at `level`.
    fn set_next(&mut self, at: *mut SNode, level: usize, to: *mut SNode) {
        let slot = if at.is_null() {
            self.head.get_mut(level)
        } else {
            // SAFETY: as in `next`; `&mut self` makes this the only access.
            unsafe { (*at).next.get_mut(level) }
        };
        if let Some(s) = slot {
            *s = to;
        }
    }

    /// Predecessors of `key` at every level (null: the head) and the node
    /// at level 0 after the predecessor (a candidate match).
    fn preds(&self, key: &Key, preds: &mut [*mut SNode; MAX_LEVEL]) -> *mut SNode {
        let mut x: *mut SNode = ptr::null_mut();
        for lvl in (0..self.level).rev() {
            loop {
                let n = self.next(x, lvl);
                // SAFETY: a non-null link names a node of this list.
                if n.is_null() || unsafe { (*n).key >= *key } {
                    break;
                }
                x = n;
            }
            if let Some(p) = preds.get_mut(lvl) {
                *p = x;
            }
        }
        self.next(x, 0)
    }

    fn random_level(&mut self) -> usize {
        let mut s = self.rng;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        self.rng = s;
        ((s.trailing_ones() / 2) as usize).wrapping_add(1).min(MAX_LEVEL)
    }

    fn op(&mut self, op: u32, key: &Key) -> Result<bool> {
        let mut preds = [ptr::null_mut(); MAX_LEVEL];
        let cand = self.preds(key, &mut preds);
        // SAFETY: a non-null candidate is a node of this list.
        let found = !cand.is_null() && unsafe { (*cand).key == *key };
        match op {
            OP_LOOKUP => Ok(found),
            OP_UPDATE if found => {
                // SAFETY: as above; `&mut self` makes this the only access.
                unsafe { (*cand).val = val_of(key) };
                Ok(false)
            }
            OP_UPDATE => {
                let level = self.random_level();
                let node = KBox::new(
                    SNode { key: *key, val: val_of(key), next: [ptr::null_mut(); MAX_LEVEL] },
                    gfp(),
                )?;
                // INVARIANT: the node is linked at level 0 once, below.
                let n = KBox::into_raw(node);
                // Levels above the list's are still null in `preds`: the head.
                self.level = self.level.max(level);
                for (l, &p) in preds.iter().enumerate().take(level) {
                    let next = self.next(p, l);
                    self.set_next(n, l, next);
                    self.set_next(p, l, n);
                }
                Ok(true)
            }
            _ if !found => Ok(false),
            _ => {
                for (l, &p) in preds.iter().enumerate().take(self.level) {
                    if self.next(p, l) == cand {
                        let next = self.next(cand, l);
                        self.set_next(p, l, next);
                    }
                }
                // SAFETY: `cand` came from `KBox::into_raw` and is now
                // unlinked at every level (type invariant).
                drop(unsafe { KBox::from_raw(cand) });
                Ok(true)
            }
        }
    }
}

impl Drop for Skiplist {
    fn drop(&mut self) {
        let mut n = self.head.first().copied().unwrap_or(ptr::null_mut());
        while !n.is_null() {
            // SAFETY: `n` is owned by the list and reached once at level 0
            // (type invariant); it is read before it is freed.
            let next = unsafe { (*n).next.first().copied().unwrap_or(ptr::null_mut()) };
            // SAFETY: as above.
            drop(unsafe { KBox::from_raw(n) });
            n = next;
        }
    }
}

// ---- chained hash map (as bpf/ds/hashmap.h: 2^k buckets, full hash kept) ----

/// Buckets per chunk: one page of heads.
const CHUNK: usize = 512;
/// Largest bucket order: 2^20 buckets (8 MiB of heads), made under the
/// structures' spinlock in one go; the benchmark asks for 2^17.
const MAX_ORDER: u64 = 20;

struct HNode {
    next: Option<KBox<HNode>>,
    hash: u64,
    key: Key,
    val: Val,
}

/// Bucket heads in page-sized chunks (no large contiguous allocation under
/// the lock), made at the first operation.
#[derive(Default)]
struct HashMap {
    chunks: KVec<KVec<Option<KBox<HNode>>>>,
    mask: u64,
}

/// The hash of bpf/ds/ds.h (`ds_hash`): multiply-xorshift over the words.
fn hash(k: &Key) -> u64 {
    const M1: u64 = 0xff51_afd7_ed55_8ccd;
    const M2: u64 = 0xc4ce_b9fe_1a85_ec53;
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, w) in k.iter().enumerate() {
        h = (h ^ w).wrapping_mul(M1);
        if i < 3 {
            h ^= h >> 32;
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(M1);
    h ^= h >> 33;
    h = h.wrapping_mul(M2);
    h ^ (h >> 33)
}

impl HashMap {
    /// Makes `2^order` empty buckets if there are none yet.
    fn ensure(&mut self, order: u64) -> Result {
        if !self.chunks.is_empty() {
            return Ok(());
        }
        let n = 1usize << order.min(MAX_ORDER);
        let mut chunks = KVec::new();
        for _ in 0..n.div_ceil(CHUNK) {
            let mut c = KVec::with_capacity(CHUNK, gfp())?;
            for _ in 0..CHUNK.min(n) {
                c.push(None, gfp())?;
            }
            chunks.push(c, gfp())?;
        }
        self.chunks = chunks;
        self.mask = n.wrapping_sub(1) as u64;
        Ok(())
    }

    fn bucket(&mut self, h: u64) -> Option<&mut Option<KBox<HNode>>> {
        let i = (h & self.mask) as usize;
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    fn op(&mut self, op: u32, key: &Key, order: u64) -> Result<bool> {
        self.ensure(order)?;
        let h = hash(key);
        let Some(head) = self.bucket(h) else { return Err(EINVAL) };
        // Position of the key in its chain.
        let mut at = None;
        let mut n = head.as_deref();
        let mut i = 0usize;
        while let Some(x) = n {
            if x.hash == h && x.key == *key {
                at = Some(i);
                break;
            }
            n = x.next.as_deref();
            i = i.wrapping_add(1);
        }
        let mut link = head;
        for _ in 0..at.unwrap_or(0) {
            match link {
                Some(x) => link = &mut x.next,
                None => break,
            }
        }
        match (op, at) {
            (OP_LOOKUP, at) => Ok(at.is_some()),
            (OP_UPDATE, Some(_)) => {
                if let Some(x) = link {
                    x.val = val_of(key);
                }
                Ok(false)
            }
            (OP_UPDATE, None) => {
                let mut x = KBox::new(
                    HNode { next: None, hash: h, key: *key, val: val_of(key) },
                    gfp(),
                )?;
                x.next = link.take();
                *link = Some(x);
                Ok(true)
            }
            (_, None) => Ok(false),
            (_, Some(_)) => Ok(match link.take() {
                Some(mut x) => {
                    *link = x.next.take();
                    true
                }
                None => false,
            }),
        }
    }
}

impl Drop for HashMap {
    fn drop(&mut self) {
        for c in self.chunks.iter_mut() {
            for b in c.iter_mut() {
                let mut n = b.take();
                while let Some(mut x) = n {
                    n = x.next.take();
                }
            }
        }
    }
}

/// The structures of one heap.
#[cfg_attr(not(CONFIG_KFLEX_BENCH), allow(dead_code))]
pub(crate) struct Structs {
    list: List,
    rbtree: RBTree<Key, Val>,
    skiplist: Skiplist,
    hashmap: HashMap,
}

/// A new empty set behind its lock.
pub(crate) fn new() -> impl PinInit<SpinLock<Structs>> {
    new_spinlock!(
        Structs {
            list: List::default(),
            rbtree: RBTree::new(),
            skiplist: Skiplist::default(),
            hashmap: HashMap::default(),
        },
        "kflex_kmem"
    )
}

/// One operation `op` on structure `ds` (0 list, 1 rbtree, 2 skiplist,
/// 3 hash map of `2^arg` buckets, made at its first operation): whether the
/// key was found (lookup, delete) or inserted (update). Process context
/// only.
#[cfg_attr(not(CONFIG_KFLEX_BENCH), allow(dead_code))]
pub(crate) fn run(
    structs: &SpinLock<Structs>,
    ds: u32,
    op: u32,
    key: &Key,
    arg: u64,
) -> Result<bool> {
    if op > OP_DELETE {
        return Err(EINVAL);
    }
    let mut s = structs.lock();
    match ds {
        0 => s.list.op(op, key),
        1 => {
            let t = &mut s.rbtree;
            match op {
                OP_LOOKUP => Ok(t.get(key).is_some()),
                OP_UPDATE => match t.get_mut(key) {
                    Some(v) => {
                        *v = val_of(key);
                        Ok(false)
                    }
                    None => {
                        t.try_create_and_insert(*key, val_of(key), gfp())?;
                        Ok(true)
                    }
                },
                _ => Ok(t.remove(key).is_some()),
            }
        }
        2 => s.skiplist.op(op, key),
        3 => s.hashmap.op(op, key, arg),
        _ => Err(EINVAL),
    }
}
