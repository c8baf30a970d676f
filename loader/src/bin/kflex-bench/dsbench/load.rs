// SPDX-License-Identifier: GPL-2.0

//! Loading a structure's programs for a variant. Which BPF object holds
//! them is one table ([`Structure::objects`]); the programs are then found
//! by name, `<prefix>_<op>`.

use std::{any::Any, mem::MaybeUninit, os::fd::AsFd};

use anyhow::{ensure, Context, Result};
use kflex_load::{
    ds::{self, Ops, Progs, WorkMaps},
    skel::{
        ds_graph, ds_hmap, ds_hmap_arena, ds_list, ds_list_arena, ds_maps, ds_rbtree,
        ds_rbtree_arena, ds_sketch, ds_sketch_arena, ds_skiplist, ds_skiplist_arena, native,
    },
};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

use super::{Sizes, Structure, Variant};

/// A map of an object to resize before loading: name, entries, and whether
/// the object must have it.
type Resize<'a> = (&'a str, u32, bool);

/// Opens and loads one BPF object (a skeleton), with the workload maps of
/// `work`; returns its programs by name and the skeleton (its maps and
/// programs live as long as it does).
type LoadFn = fn(&WorkMaps, &[Resize<'_>]) -> Result<(Progs, Box<dyn Any>)>;

/// [`LoadFn`] for the skeleton of builder `B`. The open-object storage is
/// leaked (a few bytes per load).
fn load_object<B>(work: &WorkMaps, resize: &[Resize<'_>]) -> Result<(Progs, Box<dyn Any>)>
where
    B: SkelBuilder<'static> + Default,
    <B::Output as OpenSkel<'static>>::Output: 'static,
{
    let storage = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = B::default().open(storage).context("opening the skeleton")?;
    let obj = open.open_object_mut();
    work.reuse_in(obj)?;
    for &(name, entries, required) in resize {
        let mut found = false;
        for mut map in obj.maps_mut().filter(|m| m.name().to_str() == Some(name)) {
            map.set_max_entries(entries).with_context(|| format!("sizing {name}"))?;
            found = true;
        }
        ensure!(found || !required, "the object has no map {name}");
    }
    let skel = open.load().with_context(|| format!("loading {}", std::any::type_name::<B>()))?;
    let progs = Progs::of(skel.object())?;
    Ok((progs, Box::new(skel)))
}

/// Where a structure's programs are.
struct Objects {
    /// The build for a KFlex heap.
    kflex: LoadFn,
    /// The same source built for the upstream arena.
    arena: LoadFn,
    /// The kernel alternative's object and the prefix of its programs.
    kernel: Option<(LoadFn, &'static str)>,
}

impl Structure {
    /// The table of objects.
    fn objects(self) -> Objects {
        match self {
            Structure::List => Objects {
                kflex: load_object::<ds_list::DsListSkelBuilder>,
                arena: load_object::<ds_list_arena::DsListArenaSkelBuilder>,
                kernel: Some((load_object::<ds_graph::DsGraphSkelBuilder>, "glist")),
            },
            Structure::Rbtree => Objects {
                kflex: load_object::<ds_rbtree::DsRbtreeSkelBuilder>,
                arena: load_object::<ds_rbtree_arena::DsRbtreeArenaSkelBuilder>,
                kernel: Some((load_object::<ds_graph::DsGraphSkelBuilder>, "grbt")),
            },
            Structure::Hashmap => Objects {
                kflex: load_object::<ds_hmap::DsHmapSkelBuilder>,
                arena: load_object::<ds_hmap_arena::DsHmapArenaSkelBuilder>,
                kernel: Some((load_object::<ds_maps::DsMapsSkelBuilder>, "bhash")),
            },
            Structure::Skiplist => Objects {
                kflex: load_object::<ds_skiplist::DsSkiplistSkelBuilder>,
                arena: load_object::<ds_skiplist_arena::DsSkiplistArenaSkelBuilder>,
                kernel: None,
            },
            // Both sketches are in one object.
            Structure::Cms => Objects {
                kflex: load_object::<ds_sketch::DsSketchSkelBuilder>,
                arena: load_object::<ds_sketch_arena::DsSketchArenaSkelBuilder>,
                kernel: Some((load_object::<ds_maps::DsMapsSkelBuilder>, "acms")),
            },
            Structure::Cs => Objects {
                kflex: load_object::<ds_sketch::DsSketchSkelBuilder>,
                arena: load_object::<ds_sketch_arena::DsSketchArenaSkelBuilder>,
                kernel: Some((load_object::<ds_maps::DsMapsSkelBuilder>, "acs")),
            },
        }
    }
}

/// What the results of a variant are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// Hits and lookup checksums must equal the KFlex heap's.
    HitsAndSums,
    /// Hits must (values differ: native code stores other values).
    Hits,
    /// Different operations: nothing to compare.
    Nothing,
}

/// How a variant runs.
pub enum Kind {
    /// Data-structure programs (struct ds_args), loaded once.
    Programs(Ops),
    /// `native.bpf.c`, loaded afresh for every repetition (its structures
    /// have no clear operation); data structure number for nat_run.
    Native(u64),
}

/// One loaded implementation of a structure.
pub struct Impl {
    pub variant: Variant,
    pub name: &'static str,
    pub kind: Kind,
    pub compare: Compare,
    /// The skeleton (maps and programs stay alive with it).
    _skel: Box<dyn Any>,
}

/// Loads structure `s` built for variant `v`, in the guard mode in effect
/// (the caller sets it). `None`: the structure has no such variant, or
/// the kernel cannot run it.
pub fn load_impl(s: Structure, v: Variant, work: &WorkMaps, sz: Sizes) -> Result<Option<Impl>> {
    let objects = s.objects();
    let (ops, skel) = match v {
        Variant::Native | Variant::NativeHeap => return load_native_impl(s, v, work, sz),
        Variant::KFlex(_) | Variant::KFlexCounter | Variant::Arena => {
            let load = if v == Variant::Arena { objects.arena } else { objects.kflex };
            let heap_pages = (sz.heap_bytes() >> 12) as u32;
            let (mut progs, skel) = load(work, &[("ds_heap", heap_pages, true)])?;
            let p = s.prefix();
            let mut op = |o: &str| progs.take_required(&format!("{p}_{o}")).map(Some);
            let ops = Ops {
                init: op("init")?,
                update: op("update")?,
                lookup: op("lookup")?,
                delete: op("delete")?,
                clear: op("clear")?,
            };
            (ops, skel)
        }
        Variant::Kernel => {
            let Some((load, p)) = objects.kernel else { return Ok(None) };
            // Only the BPF hash map is sized to the key set.
            let (mut progs, skel) = load(work, &[("bhash", sz.keys.max(1) as u32, false)])?;
            let ops = Ops {
                init: None,
                update: Some(progs.take_required(&format!("{p}_update"))?),
                lookup: progs.take(&format!("{p}_lookup")),
                delete: Some(progs.take_required(&format!("{p}_delete"))?),
                clear: Some(progs.take_required(&format!("{p}_clear"))?),
            };
            ensure!(
                ops.lookup.is_some() == s.has_kernel_lookup(),
                "{}: {p}_lookup is not what has_kernel_lookup says",
                s.name()
            );
            (ops, skel)
        }
    };
    let compare = match v {
        // A BPF hash map's update does not say whether the key was new.
        Variant::Kernel if s == Structure::Hashmap => Compare::Hits,
        Variant::Kernel if !s.kernel_alternative().is_some_and(|k| k.1) => Compare::Nothing,
        _ => Compare::HitsAndSums,
    };
    Ok(Some(Impl { variant: v, name: v.name(s), kind: Kind::Programs(ops), compare, _skel: skel }))
}

/// Native variant `v` of `s`, if it has one and the kernel has the
/// benchmark kfunc; loads it once to check.
fn load_native_impl(s: Structure, v: Variant, work: &WorkMaps, sz: Sizes) -> Result<Option<Impl>> {
    // Structures 0-2 over the heap, 3-5 the same on kernel memory, 6 the
    // hash map on kernel memory (no heap version).
    let ds = match (s, v) {
        (Structure::Rbtree, Variant::NativeHeap) => 1,
        (Structure::Skiplist, Variant::NativeHeap) => 2,
        (Structure::Rbtree, _) => 4,
        (Structure::Skiplist, _) => 5,
        (Structure::Hashmap, Variant::Native) => 6,
        _ => return Ok(None),
    };
    if !native_available() {
        eprintln!(
            "skipping {}/native: the kernel has no bpf_kflex_bench_native() \
             (build it with CONFIG_KFLEX_BENCH=y)",
            s.name()
        );
        return Ok(None);
    }
    // Check once that the native structures load.
    drop(load_native(work, sz)?);
    Ok(Some(Impl {
        variant: v,
        name: v.name(s),
        kind: Kind::Native(ds),
        compare: Compare::Hits,
        _skel: Box::new(()),
    }))
}

/// Whether the running kernel has the native structures (CONFIG_KFLEX_BENCH).
fn native_available() -> bool {
    std::fs::read_to_string("/proc/kallsyms")
        .is_ok_and(|s| s.lines().any(|l| l.ends_with(" bpf_kflex_bench_native")))
}

/// Loads `native.bpf.c`, copies the workload's keys into its key array and
/// its key blocks and runs its nat_init.
pub fn load_native(work: &WorkMaps, sz: Sizes) -> Result<native::NativeSkel<'static>> {
    use libbpf_rs::{MapCore as _, MapFlags};

    let n = (3 * sz.ops) as usize;
    let storage = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = native::NativeSkelBuilder::default().open(storage)?;
    open.maps.nat_keys.set_max_entries(n as u32)?;
    open.maps.nat_blocks.set_max_entries(ds::nat_blocks_for(n))?;
    open.maps.heap.set_max_entries((sz.heap_bytes() >> 12) as u32)?;
    let sk = open
        .load()
        .context("loading native.bpf.c (needs a kernel built with CONFIG_KFLEX_BENCH)")?;
    let idx: Vec<u8> = (0..n as u32).flat_map(u32::to_ne_bytes).collect();
    let keys: Vec<u8> =
        work.keys(0, n)?.iter().flat_map(|k| k.iter().flat_map(|w| w.to_ne_bytes())).collect();
    sk.maps
        .nat_keys
        .update_batch(&idx, &keys, n as u32, MapFlags::ANY, MapFlags::ANY)
        .context("copying the keys to nat_keys")?;
    ds::fill_nat_blocks(&sk.maps.nat_blocks, &keys)?;
    // nat_init populates `count` bytes of the heap ahead, as the heap
    // structures' init programs do.
    let mut a = ds::NativeArgs { count: sz.reserve(), ..Default::default() };
    ds::run_ctx(sk.progs.nat_init.as_fd(), &mut a).context("nat_init")?;
    Ok(sk)
}
