// SPDX-License-Identifier: GPL-2.0

//! Native data structures over heap memory: the "KMod" baseline of the
//! KFlex paper, built only with `CONFIG_KFLEX_BENCH`.
//!
//! A doubly linked list, a red-black tree and a skiplist, with the benchmark
//! workload's 32-byte keys and 64-byte values, implemented in Rust in the
//! kernel and reached through the benchmark kfunc `bpf_kflex_bench_native()`.
//! Nodes are allocated from the same heap with the same allocator as the BPF
//! versions; links are heap offsets. Every access goes through
//! [`Heap::object_ptr`], which only yields memory of pages the allocator
//! handed out, so a program that scribbles over these nodes makes an
//! operation fail (`-EFAULT`), never the kernel touch memory outside the heap.

use core::{cmp::Ordering, ptr};

use kernel::prelude::*;

use crate::heap::Heap;

/// Key and value sizes of the benchmark workload.
pub(crate) const KEY: usize = 32;
const VAL: usize = 64;

/// Data structures and operations of `struct kflex_native_req`.
const DS_LIST: u32 = 0;
const DS_RBTREE: u32 = 1;
const DS_SKIPLIST: u32 = 2;
/// Structures `DS_KMEM + 0..=2`: the same three on kernel memory, and
/// `DS_KMEM + 3` a hash map there ([`crate::kmem`]); `root` is the hash
/// map's bucket order.
const DS_KMEM: u32 = 3;
const OP_UPDATE: u32 = 0;
const OP_LOOKUP: u32 = 1;
const OP_DELETE: u32 = 2;

/// Root object (at `req.root`, at least [`ROOT_SIZE`] zeroed bytes).
const ROOT_LIST: u64 = 0;
const ROOT_RB: u64 = 8;
const ROOT_SKL_LEVEL: u64 = 16;
const ROOT_SKL_RNG: u64 = 24;
const ROOT_SKL_NEXT: u64 = 32;
const ROOT_SIZE: u64 = ROOT_SKL_NEXT + 8 * MAX_LEVEL as u64;

/// Bound on the steps of any walk (corruption cannot make one endless).
/// 2^17 steps covers the benchmark's 100,000-key list; with interrupts on
/// but preemption possibly off (XDP), one call stays in the milliseconds.
const MAX_STEPS: u32 = 1 << 17;
const MAX_LEVEL: usize = 32;

/// A key as four big-endian words: comparing them orders keys like
/// `memcmp` on their bytes, with four loads instead of 32.
type Key = [u64; KEY / 8];

/// The [`Key`] of 32 key bytes.
fn key_of(bytes: &[u8; KEY]) -> Key {
    let mut k = [0u64; KEY / 8];
    for (w, b) in k.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        *w = u64::from_be_bytes(word);
    }
    k
}

/// Typed access to heap memory through validated kernel pointers. Words are
/// 8-byte aligned: an offset that is not (a corrupt link) fails the access.
struct Mem<'a> {
    heap: &'a Heap,
}

impl Mem<'_> {
    /// Kernel pointer to `len` bytes at field `field` of the node at heap
    /// offset `node` (a link read from the heap: any value), if it is
    /// 8-byte aligned and in pages the allocator handed out.
    #[inline]
    fn words(&self, node: u64, field: u64, len: u64) -> Option<*mut u64> {
        let off = node.checked_add(field)?;
        if off % 8 != 0 {
            return None;
        }
        self.heap.object_ptr(off, len).map(|p| p.cast())
    }

    #[inline]
    fn get(&self, node: u64, field: u64) -> Option<u64> {
        let p = self.words(node, field, 8)?;
        // SAFETY: `object_ptr` vouches for 8 bytes of mapped heap memory;
        // the program may write it concurrently, hence the volatile read.
        Some(unsafe { ptr::read_volatile(p) })
    }

    #[inline]
    fn set(&self, node: u64, field: u64, v: u64) -> Option<()> {
        let p = self.words(node, field, 8)?;
        // SAFETY: as in `get`.
        unsafe { ptr::write_volatile(p, v) };
        Some(())
    }

    /// The key stored at `node + field` (32 bytes, read as four words).
    #[inline]
    fn key(&self, node: u64, field: u64) -> Option<Key> {
        let p = self.words(node, field, KEY as u64)?;
        let mut k = [0u64; KEY / 8];
        for (i, w) in k.iter_mut().enumerate() {
            // SAFETY: `words` vouches for KEY aligned bytes of heap memory;
            // word `i` is inside them.
            *w = u64::from_be(unsafe { ptr::read_volatile(p.add(i)) });
        }
        Some(k)
    }

    /// Stores `key` at `node + field` in its byte form.
    #[inline]
    fn set_key(&self, node: u64, field: u64, key: &Key) -> Option<()> {
        let p = self.words(node, field, KEY as u64)?;
        for (i, w) in key.iter().enumerate() {
            // SAFETY: as in `key`, for writing.
            unsafe { ptr::write_volatile(p.add(i), w.to_be()) };
        }
        Some(())
    }

    /// Allocates `size` zeroed bytes; returns the heap offset.
    fn alloc(&self, size: u64) -> Option<u64> {
        let off = self.heap.offset_of(self.heap.alloc(size))?;
        let p = self.heap.object_ptr(off, size)?;
        // SAFETY: `object_ptr` vouches for `size` bytes.
        unsafe { ptr::write_bytes(p, 0, size as usize) };
        Some(off)
    }

    fn free(&self, off: u64) {
        self.heap.free(self.heap.user_addr(off));
    }

    /// The value written for `key` at `node + field`: the key twice.
    fn set_value(&self, node: u64, field: u64, key: &Key) -> Option<()> {
        self.set_key(node, field, key)?;
        self.set_key(node, field.checked_add(KEY as u64)?, key)
    }
}

// ---- doubly linked list: next, prev, key, value ----

const L_NEXT: u64 = 0;
const L_PREV: u64 = 8;
const L_KEY: u64 = 16;
const L_VAL: u64 = 48;
const L_SIZE: u64 = L_VAL + VAL as u64;

fn list_find(m: &Mem<'_>, root: u64, key: &Key) -> Option<u64> {
    let mut n = m.get(root, ROOT_LIST)?;
    for _ in 0..MAX_STEPS {
        if n == 0 || m.key(n, L_KEY)? == *key {
            return Some(n);
        }
        n = m.get(n, L_NEXT)?;
    }
    None
}

fn list_op(m: &Mem<'_>, root: u64, op: u32, key: &Key) -> Option<bool> {
    let n = list_find(m, root, key)?;
    match op {
        OP_LOOKUP => Some(n != 0),
        OP_UPDATE if n != 0 => m.set_value(n, L_VAL, key).map(|_| false),
        OP_UPDATE => {
            let n = m.alloc(L_SIZE)?;
            let head = m.get(root, ROOT_LIST)?;
            m.set(n, L_NEXT, head)?;
            m.set_key(n, L_KEY, key)?;
            m.set_value(n, L_VAL, key)?;
            if head != 0 {
                m.set(head, L_PREV, n)?;
            }
            m.set(root, ROOT_LIST, n)?;
            Some(true)
        }
        _ if n == 0 => Some(false),
        _ => {
            let (next, prev) = (m.get(n, L_NEXT)?, m.get(n, L_PREV)?);
            if prev != 0 {
                m.set(prev, L_NEXT, next)?;
            } else {
                m.set(root, ROOT_LIST, next)?;
            }
            if next != 0 {
                m.set(next, L_PREV, prev)?;
            }
            m.free(n);
            Some(true)
        }
    }
}

// ---- red-black tree: left, right, parent, colour, key, value ----

const R_LEFT: u64 = 0;
const R_RIGHT: u64 = 8;
const R_PARENT: u64 = 16;
const R_BLACK: u64 = 24;
const R_KEY: u64 = 32;
const R_VAL: u64 = 64;
const R_SIZE: u64 = R_VAL + VAL as u64;

/// Red-black tree operations over heap nodes; 0 is the (black) nil node.
struct Rb<'a, 'b> {
    m: &'a Mem<'b>,
    root: u64,
}

impl Rb<'_, '_> {
    fn top(&self) -> Option<u64> {
        self.m.get(self.root, ROOT_RB)
    }
    fn left(&self, n: u64) -> Option<u64> {
        self.m.get(n, R_LEFT)
    }
    fn right(&self, n: u64) -> Option<u64> {
        self.m.get(n, R_RIGHT)
    }
    fn parent(&self, n: u64) -> Option<u64> {
        self.m.get(n, R_PARENT)
    }
    fn black(&self, n: u64) -> Option<bool> {
        Some(n == 0 || self.m.get(n, R_BLACK)? != 0)
    }
    fn set_black(&self, n: u64, b: bool) -> Option<()> {
        if n == 0 {
            return Some(());
        }
        self.m.set(n, R_BLACK, b as u64)
    }

    fn find(&self, key: &Key) -> Option<u64> {
        let mut n = self.top()?;
        for _ in 0..MAX_STEPS {
            if n == 0 {
                return Some(0);
            }
            n = match key.cmp(&self.m.key(n, R_KEY)?) {
                Ordering::Less => self.left(n)?,
                Ordering::Greater => self.right(n)?,
                Ordering::Equal => return Some(n),
            };
        }
        None
    }

    /// Replaces child `old` of `parent` (or the root) by `new`.
    fn replace_child(&self, parent: u64, old: u64, new: u64) -> Option<()> {
        if parent == 0 {
            self.m.set(self.root, ROOT_RB, new)
        } else if self.left(parent)? == old {
            self.m.set(parent, R_LEFT, new)
        } else {
            self.m.set(parent, R_RIGHT, new)
        }
    }

    /// Rotates around `x`; `left` rotates left (x's right child comes up).
    fn rotate(&self, x: u64, left: bool) -> Option<()> {
        let (near, far) = if left { (R_RIGHT, R_LEFT) } else { (R_LEFT, R_RIGHT) };
        let y = self.m.get(x, near)?;
        if y == 0 {
            return None;
        }
        let mid = self.m.get(y, far)?;
        self.m.set(x, near, mid)?;
        if mid != 0 {
            self.m.set(mid, R_PARENT, x)?;
        }
        let p = self.parent(x)?;
        self.m.set(y, R_PARENT, p)?;
        self.replace_child(p, x, y)?;
        self.m.set(y, far, x)?;
        self.m.set(x, R_PARENT, y)
    }

    fn insert(&self, key: &Key) -> Option<bool> {
        let (mut parent, mut n, mut go_left) = (0, self.top()?, false);
        for _ in 0..MAX_STEPS {
            if n == 0 {
                break;
            }
            parent = n;
            match key.cmp(&self.m.key(n, R_KEY)?) {
                Ordering::Less => (n, go_left) = (self.left(n)?, true),
                Ordering::Greater => (n, go_left) = (self.right(n)?, false),
                Ordering::Equal => return self.m.set_value(n, R_VAL, key).map(|_| false),
            }
        }
        let z = self.m.alloc(R_SIZE)?;
        self.m.set_key(z, R_KEY, key)?;
        self.m.set_value(z, R_VAL, key)?;
        self.m.set(z, R_PARENT, parent)?;
        if parent == 0 {
            self.m.set(self.root, ROOT_RB, z)?;
        } else {
            self.m.set(parent, if go_left { R_LEFT } else { R_RIGHT }, z)?;
        }
        self.insert_fixup(z)?;
        Some(true)
    }

    fn insert_fixup(&self, mut z: u64) -> Option<()> {
        for _ in 0..MAX_STEPS {
            let p = self.parent(z)?;
            if p == 0 || self.black(p)? {
                break;
            }
            let g = self.parent(p)?;
            let p_is_left = self.left(g)? == p;
            let uncle = if p_is_left { self.right(g)? } else { self.left(g)? };
            if !self.black(uncle)? {
                self.set_black(p, true)?;
                self.set_black(uncle, true)?;
                self.set_black(g, false)?;
                z = g;
                continue;
            }
            let z_is_inner = if p_is_left { self.right(p)? == z } else { self.left(p)? == z };
            let mut p = p;
            if z_is_inner {
                self.rotate(p, p_is_left)?;
                z = p;
                p = self.parent(z)?;
            }
            self.set_black(p, true)?;
            self.set_black(g, false)?;
            self.rotate(g, !p_is_left)?;
            break;
        }
        let top = self.top()?;
        self.set_black(top, true)
    }

    fn delete(&self, key: &Key) -> Option<bool> {
        let z = self.find(key)?;
        if z == 0 {
            return Some(false);
        }
        let (zl, zr) = (self.left(z)?, self.right(z)?);
        let (x, x_parent, removed_black);
        if zl == 0 || zr == 0 {
            x = if zl == 0 { zr } else { zl };
            x_parent = self.parent(z)?;
            removed_black = self.black(z)?;
            self.replace_child(x_parent, z, x)?;
            if x != 0 {
                self.m.set(x, R_PARENT, x_parent)?;
            }
        } else {
            // y: the successor, the leftmost node of z's right subtree.
            let mut y = zr;
            for _ in 0..MAX_STEPS {
                let l = self.left(y)?;
                if l == 0 {
                    break;
                }
                y = l;
            }
            removed_black = self.black(y)?;
            x = self.right(y)?;
            if self.parent(y)? == z {
                x_parent = y;
            } else {
                x_parent = self.parent(y)?;
                self.m.set(x_parent, R_LEFT, x)?;
                if x != 0 {
                    self.m.set(x, R_PARENT, x_parent)?;
                }
                self.m.set(y, R_RIGHT, zr)?;
                self.m.set(zr, R_PARENT, y)?;
            }
            let zp = self.parent(z)?;
            self.replace_child(zp, z, y)?;
            self.m.set(y, R_PARENT, zp)?;
            self.m.set(y, R_LEFT, zl)?;
            self.m.set(zl, R_PARENT, y)?;
            let zb = self.black(z)?;
            self.set_black(y, zb)?;
        }
        if removed_black {
            self.delete_fixup(x, x_parent)?;
        }
        self.m.free(z);
        Some(true)
    }

    fn delete_fixup(&self, mut x: u64, mut parent: u64) -> Option<()> {
        for _ in 0..MAX_STEPS {
            if parent == 0 || !self.black(x)? {
                break;
            }
            let x_is_left = self.left(parent)? == x;
            let sib_of = |p: u64| if x_is_left { self.right(p) } else { self.left(p) };
            let mut w = sib_of(parent)?;
            if !self.black(w)? {
                self.set_black(w, true)?;
                self.set_black(parent, false)?;
                self.rotate(parent, x_is_left)?;
                w = sib_of(parent)?;
            }
            if w == 0 {
                return None;
            }
            let (near, far) = if x_is_left {
                (self.left(w)?, self.right(w)?)
            } else {
                (self.right(w)?, self.left(w)?)
            };
            if self.black(near)? && self.black(far)? {
                self.set_black(w, false)?;
                x = parent;
                parent = self.parent(x)?;
                continue;
            }
            if self.black(far)? {
                self.set_black(near, true)?;
                self.set_black(w, false)?;
                self.rotate(w, !x_is_left)?;
                w = sib_of(parent)?;
            }
            let pb = self.black(parent)?;
            self.set_black(w, pb)?;
            self.set_black(parent, true)?;
            let far = if x_is_left { self.right(w)? } else { self.left(w)? };
            self.set_black(far, true)?;
            self.rotate(parent, x_is_left)?;
            x = self.top()?;
            break;
        }
        self.set_black(x, true)
    }
}

// ---- skiplist: key, value, level, next[level] ----

const S_KEY: u64 = 0;
const S_VAL: u64 = 32;
const S_LEVEL: u64 = 96;
const S_NEXT: u64 = 104;

/// Skiplist operations; the root object is the head node.
struct Skl<'a, 'b> {
    m: &'a Mem<'b>,
    root: u64,
}

impl Skl<'_, '_> {
    /// Heap offset of `node`'s next pointer at `level`.
    fn next_at(&self, node: u64, level: usize) -> Option<u64> {
        let field = if node == self.root { ROOT_SKL_NEXT } else { S_NEXT };
        node.checked_add(field)?.checked_add((level as u64).checked_mul(8)?)
    }

    /// Predecessors of `key` at every level; returns the node at level 0
    /// after the predecessor (a candidate match) or 0.
    fn preds(&self, key: &Key, preds: &mut [u64; MAX_LEVEL]) -> Option<u64> {
        let mut x = self.root;
        let mut steps = 0u32;
        let top = (self.m.get(self.root, ROOT_SKL_LEVEL)? as usize).min(MAX_LEVEL);
        preds.fill(self.root);
        for lvl in (0..top).rev() {
            loop {
                steps += 1;
                if steps > MAX_STEPS {
                    return None;
                }
                let n = self.m.get(self.next_at(x, lvl)?, 0)?;
                if n == 0 || self.m.key(n, S_KEY)? >= *key {
                    break;
                }
                x = n;
            }
            if let Some(p) = preds.get_mut(lvl) {
                *p = x;
            }
        }
        self.m.get(self.next_at(x, 0)?, 0)
    }

    /// Random level with p = 1/4, from the root's xorshift state.
    fn random_level(&self) -> Option<usize> {
        let mut s = self.m.get(self.root, ROOT_SKL_RNG)?;
        if s == 0 {
            s = 0x2545_f491_4f6c_dd1d;
        }
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        self.m.set(self.root, ROOT_SKL_RNG, s)?;
        let level = 1 + (s.trailing_ones() / 2) as usize;
        Some(level.min(MAX_LEVEL))
    }

    fn op(&self, op: u32, key: &Key) -> Option<bool> {
        let mut preds = [0u64; MAX_LEVEL];
        let cand = self.preds(key, &mut preds)?;
        let found = cand != 0 && self.m.key(cand, S_KEY)? == *key;
        match op {
            OP_LOOKUP => Some(found),
            OP_UPDATE if found => self.m.set_value(cand, S_VAL, key).map(|_| false),
            OP_UPDATE => {
                let level = self.random_level()?;
                let n = self.m.alloc(S_NEXT + 8 * level as u64)?;
                self.m.set_key(n, S_KEY, key)?;
                self.m.set_value(n, S_VAL, key)?;
                self.m.set(n, S_LEVEL, level as u64)?;
                for (l, &p) in preds.iter().enumerate().take(level) {
                    let next = self.m.get(self.next_at(p, l)?, 0)?;
                    self.m.set(self.next_at(n, l)?, 0, next)?;
                    self.m.set(self.next_at(p, l)?, 0, n)?;
                }
                let top = self.m.get(self.root, ROOT_SKL_LEVEL)?;
                self.m.set(self.root, ROOT_SKL_LEVEL, top.max(level as u64))?;
                Some(true)
            }
            _ if !found => Some(false),
            _ => {
                let level = (self.m.get(cand, S_LEVEL)? as usize).min(MAX_LEVEL);
                for (l, &p) in preds.iter().enumerate().take(level) {
                    if self.m.get(self.next_at(p, l)?, 0)? == cand {
                        let next = self.m.get(self.next_at(cand, l)?, 0)?;
                        self.m.set(self.next_at(p, l)?, 0, next)?;
                    }
                }
                self.m.free(cand);
                Some(true)
            }
        }
    }
}

/// `bpf_kflex_bench_native()`: one operation `op` on structure `ds` rooted
/// at user address `root` (structures on kernel memory have no root). Returns whether the key was found (lookup,
/// delete) or inserted (update), or `EFAULT`/`EINVAL`.
pub(crate) fn run(heap: &Heap, root: u64, ds: u32, op: u32, key: &[u8; KEY]) -> Result<bool> {
    let key = &key_of(key);
    if let Some(kds) = ds.checked_sub(DS_KMEM) {
        return crate::kmem::run(heap.kmem(), kds, op, key, root);
    }
    let root = heap.offset_of(root).ok_or(EINVAL)?;
    heap.object_ptr(root, ROOT_SIZE).ok_or(EINVAL)?;
    if op > OP_DELETE {
        return Err(EINVAL);
    }
    let m = Mem { heap };
    let r = match ds {
        DS_LIST => list_op(&m, root, op, key),
        DS_RBTREE => {
            let rb = Rb { m: &m, root };
            match op {
                OP_LOOKUP => rb.find(key).map(|n| n != 0),
                OP_UPDATE => rb.insert(key),
                _ => rb.delete(key),
            }
        }
        DS_SKIPLIST => Skl { m: &m, root }.op(op, key),
        _ => return Err(EINVAL),
    };
    r.ok_or(EFAULT)
}
