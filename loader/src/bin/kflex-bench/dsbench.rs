// SPDX-License-Identifier: GPL-2.0

//! Data-structure benchmarks (`ds/<structure>/<op>/<dist>/<variant>`): the
//! structures of `bpf/ds/` (list, rbtree, hashmap, skiplist, cms, cs), each
//! operation a separate program driven in batches by BPF_PROG_TEST_RUN, on
//! the KFlex heap (in every guard mode the kernel offers), on the upstream
//! arena, on the kernel's own alternative and, for the rbtree, the skiplist
//! and the hash map, as native code in the kernel
//! (`bpf_kflex_bench_native_batch()`, the paper's "KMod"): `native` on kernel
//! memory, `native-heap` (rbtree, skiplist) over the same heap with
//! validated accesses; the ratio is to `kflex` (full guards with elision).
//! `ds/hashmap-2cpu/...` runs the hash map on two CPUs.
//!
//! This file names what is measured (structures, variants, units, sizes);
//! [`load`] loads a structure's programs for a variant, [`run`] times
//! them, [`guard_table`] reports the guard pass's decisions.

pub mod guard_table;
pub mod load;
pub mod run;

use kflex_load::{ds::Dist, guardmode::GuardMode};

/// The data structures of `bpf/ds/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Structure {
    List,
    Rbtree,
    Hashmap,
    Skiplist,
    Cms,
    Cs,
}

pub const STRUCTURES: [Structure; 6] = [
    Structure::List,
    Structure::Rbtree,
    Structure::Hashmap,
    Structure::Skiplist,
    Structure::Cms,
    Structure::Cs,
];

/// The operations, in the order of a repetition's phases.
pub const OPS: [&str; 3] = ["update", "lookup", "delete"];

impl Structure {
    pub fn name(self) -> &'static str {
        match self {
            Structure::List => "list",
            Structure::Rbtree => "rbtree",
            Structure::Hashmap => "hashmap",
            Structure::Skiplist => "skiplist",
            Structure::Cms => "cms",
            Structure::Cs => "cs",
        }
    }

    /// Prefix of the names of the structure's heap programs
    /// (`<prefix>_init`, `_update`, `_lookup`, `_delete`, `_clear`).
    pub fn prefix(self) -> &'static str {
        match self {
            Structure::List => "list",
            Structure::Rbtree => "rbt",
            Structure::Hashmap => "hmap",
            Structure::Skiplist => "skl",
            Structure::Cms => "cms",
            Structure::Cs => "cs",
        }
    }

    /// The kernel alternative: variant name, and whether its operations
    /// mean the same as the heap structure's (so results must agree).
    pub fn kernel_alternative(self) -> Option<(&'static str, bool)> {
        match self {
            Structure::List => Some(("bpf-graph", true)),
            Structure::Rbtree => Some(("bpf-graph", false)),
            Structure::Hashmap => Some(("bpf-hash", true)),
            Structure::Skiplist => None,
            Structure::Cms | Structure::Cs => Some(("bpf-array", true)),
        }
    }

    /// Whether the kernel alternative has a lookup (6.12's graph kfuncs
    /// cannot search).
    pub fn has_kernel_lookup(self) -> bool {
        !matches!(self, Structure::List | Structure::Rbtree)
    }

    /// Guards / elided of Table 3 of the KFlex paper (update, lookup,
    /// delete).
    pub fn paper(self) -> Option<[(u32, u32); 3]> {
        match self {
            Structure::List => Some([(4, 4), (1, 1), (2, 2)]),
            Structure::Hashmap => Some([(10, 8), (2, 0), (4, 3)]),
            Structure::Rbtree => Some([(16, 16), (2, 2), (31, 27)]),
            Structure::Skiplist => Some([(15, 10), (3, 2), (9, 4)]),
            Structure::Cms | Structure::Cs => None,
        }
    }
}

/// How the programs of a variant are built and loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// KFlex heap, programs loaded in this guard mode.
    KFlex(GuardMode),
    /// KFlex heap, guard mode 0, loaded with `kernel.kflex_cancel_points=1`:
    /// the upstream may_goto counter instead of cancellation points.
    KFlexCounter,
    /// Upstream arena (`*_arena` skeletons).
    Arena,
    /// The kernel's own alternative.
    Kernel,
    /// Native code in the kernel on kernel memory (list, rbtree,
    /// skiplist): the paper's KMod.
    Native,
    /// The same native code over the heap, every access validated.
    NativeHeap,
}

impl Variant {
    /// The variant's name in result names.
    pub fn name(self, s: Structure) -> &'static str {
        match self {
            Variant::KFlex(m) => match m {
                GuardMode::Full => "kflex",
                GuardMode::Performance => "kflex-perf",
                GuardMode::Unguarded => "kflex-noguard",
                GuardMode::AllGuards => "kflex-noelide",
            },
            Variant::KFlexCounter => "kflex-counter",
            Variant::Arena => "arena",
            Variant::Kernel => s.kernel_alternative().map_or("kernel", |k| k.0),
            Variant::Native => "native",
            Variant::NativeHeap => "native-heap",
        }
    }

    /// The guard mode its programs are loaded in: the KFlex variants'
    /// own, mode 0 for the others (the native structures use a KFlex heap
    /// too; the arena and the kernel baselines ignore the mode).
    pub fn guard_mode(self) -> GuardMode {
        match self {
            Variant::KFlex(m) => m,
            _ => GuardMode::Full,
        }
    }
}

/// Sizes of a run.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub ops: u64,
    pub keys: u64,
    pub batch: u64,
    pub list_walk: u64,
}

impl Sizes {
    /// Heap bytes: room for every key (nodes up to 512 bytes) and at least
    /// 256 MiB, a power of two.
    pub fn heap_bytes(self) -> u64 {
        (self.ops.max(self.keys) * 512).max(256 << 20).next_power_of_two()
    }

    /// Bytes to populate ahead on a KFlex heap.
    pub fn reserve(self) -> u64 {
        (self.ops.min(self.keys) * 256 + (4 << 20)).min(self.heap_bytes() / 2)
    }

    /// log2 of the hash map's buckets: at least one bucket per key.
    pub fn bucket_order(self) -> u64 {
        self.keys.max(2).next_power_of_two().trailing_zeros() as u64
    }
}

/// A data-structure benchmark unit: one structure, distribution and CPU
/// count, run for every variant.
#[derive(Clone, Copy, Debug)]
pub struct Unit {
    pub s: Structure,
    pub dist: Dist,
    pub cpus: usize,
}

impl Unit {
    fn group(self) -> String {
        if self.cpus > 1 {
            format!("{}-{}cpu", self.s.name(), self.cpus)
        } else {
            self.s.name().to_string()
        }
    }

    pub fn result_name(self, op: &str, variant: &str) -> String {
        format!("ds/{}/{op}/{}/{variant}", self.group(), self.dist.name())
    }

    /// Variants measured: on two CPUs only the hash map's KFlex, arena and
    /// BPF-map variants (the others are single-CPU structures).
    pub fn variants(self, modes: &[GuardMode]) -> Vec<Variant> {
        let mut v: Vec<Variant> = if self.cpus > 1 {
            vec![Variant::KFlex(GuardMode::Full)]
        } else {
            modes.iter().map(|&m| Variant::KFlex(m)).collect()
        };
        // Not the hash map: its bucket locks are heap locks, which a run
        // that cannot be cancelled may not take (-EOPNOTSUPP).
        if self.cpus == 1 && self.s != Structure::Hashmap {
            v.push(Variant::KFlexCounter);
        }
        v.push(Variant::Arena);
        if self.s.kernel_alternative().is_some() {
            v.push(Variant::Kernel);
        }
        // Not the list: its BPF operations (push to the front, a bounded
        // lookup, pop the back) are not the native list's set operations.
        if self.cpus == 1 && matches!(self.s, Structure::Rbtree | Structure::Skiplist) {
            v.push(Variant::Native);
            v.push(Variant::NativeHeap);
        }
        if self.cpus == 1 && self.s == Structure::Hashmap {
            v.push(Variant::Native);
        }
        v
    }

    /// Result names this unit can produce.
    pub fn names(self, modes: &[GuardMode]) -> Vec<String> {
        let mut names = Vec::new();
        for v in self.variants(modes) {
            for op in OPS {
                if v == Variant::Kernel && op == "lookup" && !self.s.has_kernel_lookup() {
                    continue;
                }
                names.push(self.result_name(op, v.name(self.s)));
            }
        }
        names
    }
}

/// Every unit: each structure with both distributions on one CPU, then the
/// hash map on two.
pub fn units(zipf: f64) -> Vec<Unit> {
    let mut u = Vec::new();
    for s in STRUCTURES {
        for dist in [Dist::Uniform, Dist::Zipf(zipf)] {
            u.push(Unit { s, dist, cpus: 1 });
        }
    }
    for dist in [Dist::Uniform, Dist::Zipf(zipf)] {
        u.push(Unit { s: Structure::Hashmap, dist, cpus: 2 });
    }
    u
}

/// What the output says about the data-structure benchmarks of a run.
pub fn notes(sz: Sizes, zipf: f64, seed: u64, reps: usize) -> Vec<String> {
    vec![
        format!(
            "ds: {} keys of 32 B, values of 64 B; per repetition {} updates, then {} lookups, \
             then {} deletes, each phase on its own key stream (uniform, or Zipf({})), seed {}; \
             {} operations per BPF_PROG_TEST_RUN; median of {} repetitions after a warm-up",
            sz.keys, sz.ops, sz.ops, sz.ops, zipf, seed, sz.batch, reps
        ),
        format!(
            "list: update pushes to the front, lookup looks at most {} nodes from the front, \
             delete pops the back",
            sz.list_walk
        ),
        "rbtree/bpf-graph: 6.12's bpf_rbtree cannot search: update inserts without looking \
         for the key (duplicates stay), delete removes the smallest key, no lookup"
            .into(),
        "hashmap/bpf-hash: preallocated BPF_MAP_TYPE_HASH; cms, cs/bpf-array: the same \
         sketch code on a BPF array"
            .into(),
        "kflex-perf: no guards on loads; kflex-noguard: no guards (measurement only); \
         kflex-noelide: a guard on every access"
            .into(),
        "hashmap-2cpu: each phase split over two threads pinned to CPUs 0 and 1 (bucket \
         locks; lookups lock-free)"
            .into(),
        "native: the rbtree, skiplist and hash map of the KFlex component in Rust on kernel \
         memory (KBox nodes, the kernel crate's RBTree; the paper's KMod), the batch's loop in \
         the kernel (one bpf_kflex_bench_native_batch() call per batch); native-heap: the \
         rbtree and skiplist over the KFlex heap, every access validated"
            .into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_variants() {
        let u = Unit { s: Structure::Rbtree, dist: Dist::Zipf(0.99), cpus: 1 };
        let names = u.names(&[GuardMode::Full, GuardMode::Performance]);
        assert!(names.contains(&"ds/rbtree/update/zipf/kflex".to_string()));
        assert!(names.contains(&"ds/rbtree/lookup/zipf/kflex-perf".to_string()));
        assert!(names.contains(&"ds/rbtree/lookup/zipf/kflex-counter".to_string()));
        assert!(names.contains(&"ds/rbtree/delete/zipf/bpf-graph".to_string()));
        assert!(!names.contains(&"ds/rbtree/lookup/zipf/bpf-graph".to_string()));
        let u2 = Unit { s: Structure::Hashmap, dist: Dist::Uniform, cpus: 2 };
        let n2 = u2.names(&[GuardMode::Full, GuardMode::Performance, GuardMode::Unguarded]);
        assert!(n2.contains(&"ds/hashmap-2cpu/lookup/uniform/bpf-hash".to_string()));
        assert!(!n2.iter().any(|n| n.contains("kflex-perf")));
        let sz = Sizes { ops: 100_000, keys: 100_000, batch: 1, list_walk: 1 };
        assert_eq!(sz.bucket_order(), 17);
        assert_eq!(sz.heap_bytes(), 64 << 20 << 2);
        assert!(sz.reserve() < sz.heap_bytes());
    }

    #[test]
    fn variant_names_per_mode() {
        let names: Vec<&str> =
            GuardMode::ALL.iter().map(|&m| Variant::KFlex(m).name(Structure::List)).collect();
        assert_eq!(names, ["kflex", "kflex-perf", "kflex-noguard", "kflex-noelide"]);
        assert_eq!(Variant::Kernel.name(Structure::Cms), "bpf-array");
        assert_eq!(Variant::Native.guard_mode(), GuardMode::Full);
        assert_eq!(Variant::KFlexCounter.name(Structure::List), "kflex-counter");
    }
}
