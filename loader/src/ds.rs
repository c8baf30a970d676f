// SPDX-License-Identifier: GPL-2.0

//! Data-structure workloads, shared by `kflex-bench` and the guest tests:
//! the user-space mirror of `bpf/ds/ds.h` (keys, values, hashes, checksums,
//! `struct ds_args`), seeded key streams (uniform and Zipf) and the two
//! maps that carry them to the programs (`ds_keys`, `ds_results`).
//!
//! Keep the functions here bit-for-bit in sync with `bpf/ds/*.h`: the tests
//! recompute what the programs store and compare.

use std::{
    collections::BTreeMap,
    num::NonZeroUsize,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    ptr::NonNull,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::{libbpf_sys, MapHandle, MapType, OpenMapMut};

pub use crate::rng::Rng;

/// A 32-byte key, as four words.
pub type Key = [u64; 4];
/// A 64-byte value, as eight words.
pub type Val = [u64; 8];

/// `DS_RECORD`: write every operation's result to `ds_results`.
pub const RECORD: u64 = 1;

const M1: u64 = 0xff51_afd7_ed55_8ccd;
const M2: u64 = 0xc4ce_b9fe_1a85_ec53;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
const SKL_SEED: u64 = 0x5bd1_e995_5bd1_e995;

/// `ds_mix`.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(M1);
    x ^= x >> 33;
    x = x.wrapping_mul(M2);
    x ^= x >> 33;
    x
}

/// `ds_hash`.
pub fn hash(k: &Key) -> u64 {
    let mut h = GOLDEN;
    for (i, w) in k.iter().enumerate() {
        h = (h ^ w).wrapping_mul(M1);
        if i < 3 {
            h ^= h >> 32;
        }
    }
    mix(h)
}

/// `ds_make_val`: the value an update of `k` at workload index `idx` stores.
pub fn make_val(k: &Key, idx: u64) -> Val {
    let s = (idx + 1).wrapping_mul(GOLDEN);
    std::array::from_fn(|j| k[j & 3] ^ s.wrapping_add(j as u64))
}

/// `DS_CSUM`: what a lookup reports for a value (never 0).
pub fn csum(v: &Val) -> u64 {
    v.iter().enumerate().fold(0u64, |a, (j, w)| a.wrapping_add(w.wrapping_mul(2 * j as u64 + 1)))
        | 1
}

/// `DS_KEY_CSUM`: what a list pop reports for the key it removed.
pub fn key_csum(k: &Key) -> u64 {
    k.iter().enumerate().fold(0u64, |a, (j, w)| a.wrapping_add(w.wrapping_mul(2 * j as u64 + 1)))
        | 1
}

/// `sl_height`: height of a skiplist node for key hash `h`.
pub fn sl_height(h: u64) -> u64 {
    let x = mix(h ^ SKL_SEED) | (1 << 62);
    (1 + x.trailing_zeros() as u64 / 2).min(32)
}

/// The sketches of `bpf/ds/sketch.h`, computed in user space.
pub mod sketch {
    use super::{hash, mix, Key, GOLDEN};

    pub const ROWS: usize = 4;
    pub const COLS: usize = 512;

    /// `sk_row_hash`.
    pub fn row_hash(h: u64, row: usize) -> u64 {
        mix(h.wrapping_add((row as u64 + 1).wrapping_mul(GOLDEN)))
    }

    /// `sk_sign`.
    pub fn sign(m: u64) -> i64 {
        if m >> 63 != 0 {
            -1
        } else {
            1
        }
    }

    /// A count-min sketch (`count_sketch == false`) or a count sketch.
    #[derive(Clone)]
    pub struct Sketch {
        pub c: Vec<[i32; COLS]>,
        pub count_sketch: bool,
    }

    impl Sketch {
        pub fn new(count_sketch: bool) -> Sketch {
            Sketch { c: vec![[0; COLS]; ROWS], count_sketch }
        }

        /// Counts `k` `d` times (d = -1 uncounts it).
        pub fn add(&mut self, k: &Key, d: i32) {
            let h = hash(k);
            for r in 0..ROWS {
                let m = row_hash(h, r);
                let s = if self.count_sketch { sign(m) as i32 } else { 1 };
                let c = &mut self.c[r][(m as usize) & (COLS - 1)];
                *c = c.wrapping_add(s.wrapping_mul(d));
            }
        }

        /// The estimate a lookup reports.
        pub fn query(&self, k: &Key) -> i64 {
            let h = hash(k);
            let mut v = [0i64; ROWS];
            for (r, x) in v.iter_mut().enumerate() {
                let m = row_hash(h, r);
                let c = self.c[r][(m as usize) & (COLS - 1)] as i64;
                *x = if self.count_sketch { c * sign(m) } else { c };
            }
            if !self.count_sketch {
                return v.into_iter().min().unwrap_or(0);
            }
            v.sort_unstable();
            (v[1] + v[2]) >> 1
        }
    }
}

/// `struct ds_args`, the context of every data-structure program.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Args {
    pub start: u64,
    pub count: u64,
    pub flags: u64,
    pub arg: u64,
    pub hits: u64,
    pub sum: u64,
    pub fails: u64,
    pub done: u64,
}

/// `struct nat_args` of `bpf/bench/native.bpf.c`, the context of the
/// programs that drive the component's native structures.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct NativeArgs {
    /// 0 list, 1 rbtree, 2 skiplist over the heap; 3, 4, 5 the same on
    /// kernel memory, 6 a hash map there.
    pub ds: u64,
    /// 0 update, 1 lookup, 2 delete.
    pub op: u64,
    /// Index of the first key in nat_keys.
    pub first: u64,
    /// Operations (nat_init: bytes to populate ahead, 0 for 4 MiB).
    pub count: u64,
    /// Out: keys found or inserted.
    pub found: u64,
    /// Out: failed operations.
    pub errors: u64,
    /// The hash map's bucket order (structure 6).
    pub arg: u64,
}

/// Runs a syscall program once with context `ctx` (BPF_PROG_TEST_RUN),
/// which the program may update; returns the program's return value and
/// the wall time of the call. `T` must be plain old data.
pub fn test_run_ctx<T: Copy>(prog: BorrowedFd<'_>, ctx: &mut T) -> Result<(i32, Duration)> {
    // SAFETY: zeroed options are valid; `ctx` outlives the call and is
    // plain old data of the size given.
    let mut opts = unsafe { std::mem::zeroed::<libbpf_sys::bpf_test_run_opts>() };
    opts.sz = size_of::<libbpf_sys::bpf_test_run_opts>() as _;
    opts.ctx_in = ctx as *mut T as *const _;
    opts.ctx_size_in = size_of::<T>() as u32;
    let t = Instant::now();
    // SAFETY: see above; the descriptor is a live program.
    let r = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    let elapsed = t.elapsed();
    if r < 0 {
        return Err(std::io::Error::from_raw_os_error(-r)).context("BPF_PROG_TEST_RUN");
    }
    Ok((opts.retval as i32, elapsed))
}

/// Pins the calling thread to CPU `cpu` (test runs execute on the caller's
/// CPU).
pub fn pin_to(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning to CPU {cpu}"))
}

/// Keys per block of `nat_blocks` (`NAT_BLOCK` in `bpf/bench/native.bpf.c`).
pub const NAT_BLOCK: usize = 4096;

/// Entries `nat_blocks` needs for `n` keys.
pub fn nat_blocks_for(n: usize) -> u32 {
    n.div_ceil(NAT_BLOCK).max(1) as u32
}

/// Copies 32-byte keys, back to back in `keys`, into the blocks of
/// `nat_blocks` (native.bpf.c's `nat_batch` reads them from there).
pub fn fill_nat_blocks(map: &impl libbpf_rs::MapCore, keys: &[u8]) -> Result<()> {
    let mut block = vec![0u8; NAT_BLOCK * 32];
    for (i, chunk) in keys.chunks(NAT_BLOCK * 32).enumerate() {
        block.fill(0);
        block[..chunk.len()].copy_from_slice(chunk);
        map.update(&(i as u32).to_ne_bytes(), &block, libbpf_rs::MapFlags::ANY)
            .with_context(|| format!("copying keys to nat_blocks[{i}]"))?;
    }
    Ok(())
}

/// [`test_run_ctx`] of a program that must return 0; returns the wall time.
pub fn run_ctx<T: Copy>(prog: BorrowedFd<'_>, ctx: &mut T) -> Result<Duration> {
    let (ret, elapsed) = test_run_ctx(prog, ctx)?;
    ensure!(ret == 0, "program returned {ret}");
    Ok(elapsed)
}

/// Arguments of an offload's table initialiser (`mc_init`, `rd_init`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TableInit {
    order: u32,
    ret: u32,
    from: u64,
    count: u64,
    prefill: u64,
}

/// Buckets an offload's initialiser clears per run (well within a run's
/// budget, even under emulation).
const INIT_PART: u64 = 4096;

/// Bytes of one bucket (`struct hm_bucket`: lock word and head pointer).
const BUCKET_BYTES: u64 = 16;

/// Bytes of entries an offload's heap is populated with at attach: a
/// quarter of the heap, at most 64 MiB, at least 1 MiB (more than the heap
/// minus the buckets is not asked for).
pub fn prefill(heap_size: u64, buckets_bytes: u64) -> u64 {
    (heap_size / 4).clamp(1 << 20, 64 << 20).min(heap_size.saturating_sub(buckets_bytes))
}

/// Creates an offload's table of 2^`order` buckets with its initialiser
/// `prog`, a part per run. Errors say what to change.
pub fn init_table(prog: BorrowedFd<'_>, order: u32, heap_size: u64) -> Result<()> {
    let n = 1u64 << order;
    let mut from = 0;
    while from < n {
        let prefill = prefill(heap_size, n * BUCKET_BYTES);
        let mut a = TableInit { order, ret: 0, from, count: INIT_PART, prefill };
        run_ctx(prog, &mut a).context("creating the table")?;
        match a.ret {
            0 => {}
            2 => anyhow::bail!(
                "populating the heap for the table failed: out of memory (or the memory \
                 cgroup's limit)"
            ),
            _ => anyhow::bail!(
                "the table's {n} buckets do not fit in a heap of {heap_size} bytes: use a \
                 larger --heap-size"
            ),
        }
        from += INIT_PART;
    }
    Ok(())
}

/// Runs a data-structure program once with `args`; returns the arguments
/// as the program left them and the wall time of the call. Takes the
/// program's descriptor so that threads can share it.
pub fn run(prog: BorrowedFd<'_>, mut args: Args) -> Result<(Args, Duration)> {
    let t = run_ctx(prog, &mut args)?;
    Ok((args, t))
}

/// Runs `count` operations from `start` in batches of `batch`: returns the
/// summed results (hits, sum, fails, done) and the total time. Fails if a
/// batch stops early (loop budget spent or lock not taken).
pub fn run_batched(
    prog: BorrowedFd<'_>,
    start: u64,
    count: u64,
    batch: u64,
    flags: u64,
    arg: u64,
) -> Result<(Args, Duration)> {
    let mut total = Args { start, count, flags, arg, ..Default::default() };
    let mut time = Duration::ZERO;
    let mut off = 0;
    while off < count {
        let n = batch.min(count - off);
        let a = Args { start: start + off, count: n, flags, arg, ..Default::default() };
        let (r, t) = run(prog, a)?;
        ensure!(
            r.done == n,
            "batch at {} stopped after {} of {n} operations (loop budget or lock)",
            start + off,
            r.done
        );
        total.hits += r.hits;
        total.sum = total.sum.wrapping_add(r.sum);
        total.fails += r.fails;
        total.done += r.done;
        time += t;
        off += n;
    }
    Ok((total, time))
}

/// Zipf distribution over ranks 0..n: P(rank r) proportional to
/// 1 / (r + 1)^s. Sampled by inverting the cumulative distribution
/// (binary search in a table of n partial sums).
#[derive(Clone, Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for r in 0..n {
            sum += 1.0 / ((r + 1) as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c <= u).min(self.cdf.len().saturating_sub(1))
    }
}

/// How operation keys are drawn from the key set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dist {
    Uniform,
    Zipf(f64),
}

impl Dist {
    pub fn name(self) -> &'static str {
        match self {
            Dist::Uniform => "uniform",
            Dist::Zipf(_) => "zipf",
        }
    }
}

/// Key number `id` of the key set of `seed`.
pub fn key_of(seed: u64, id: u64) -> Key {
    let mut r = Rng::new(seed ^ id.wrapping_mul(0xa076_1d64_78bd_642f));
    std::array::from_fn(|_| r.next_u64())
}

/// A stream of keys drawn with `dist` from the `nkeys` keys of `seed`.
#[derive(Clone, Debug)]
pub struct KeySet {
    pub seed: u64,
    pub nkeys: u64,
    /// Zipf rank -> key id: a seeded permutation, so that popular keys are
    /// spread over the key space rather than being the first ids.
    perm: Vec<u64>,
    zipf: Option<(f64, Zipf)>,
}

impl KeySet {
    pub fn new(seed: u64, nkeys: u64) -> KeySet {
        let mut perm: Vec<u64> = (0..nkeys).collect();
        let mut r = Rng::new(seed ^ 0x7065_726d);
        for i in (1..perm.len()).rev() {
            let j = r.below(i as u64 + 1) as usize;
            perm.swap(i, j);
        }
        KeySet { seed, nkeys, perm, zipf: None }
    }

    /// `n` keys drawn with `dist`, from the random stream `stream`.
    pub fn draw(&mut self, dist: Dist, n: usize, stream: u64) -> Vec<Key> {
        let mut r = Rng::new(self.seed ^ stream.wrapping_mul(0xe703_7ed1_a0b4_28db) ^ 0x1);
        match dist {
            Dist::Uniform => {
                (0..n).map(|_| key_of(self.seed, r.below(self.nkeys.max(1)))).collect()
            }
            Dist::Zipf(s) => {
                if self.zipf.as_ref().is_none_or(|(z, _)| *z != s) {
                    self.zipf = Some((s, Zipf::new(self.nkeys as usize, s)));
                }
                let z = &self.zipf.as_ref().expect("just set").1;
                (0..n).map(|_| key_of(self.seed, self.perm[z.sample(&mut r)])).collect()
            }
        }
    }
}

/// A shared memory mapping of an mmapable array map.
struct Mapping {
    ptr: NonNull<std::ffi::c_void>,
    len: usize,
}

impl Mapping {
    fn new(map: &MapHandle, bytes: usize) -> Result<Mapping> {
        let len = bytes.div_ceil(4096) * 4096;
        // SAFETY: mapping a BPF array map created with BPF_F_MMAPABLE; the
        // mapping is unmapped in Drop.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                NonZeroUsize::new(len).context("empty map")?,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                map.as_fd(),
                0,
            )
        }
        .context("mmap of a workload map")?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, self.len) };
    }
}

/// The workload maps (`ds_keys`, `ds_results`), created once and shared by
/// every skeleton (`reuse`), written and read through their mappings.
pub struct WorkMaps {
    keys: MapHandle,
    results: MapHandle,
    kmap: Mapping,
    rmap: Mapping,
    cap: usize,
}

impl WorkMaps {
    /// Maps for `cap` operations.
    pub fn new(cap: usize) -> Result<WorkMaps> {
        ensure!(cap > 0 && cap <= u32::MAX as usize, "bad capacity {cap}");
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: libbpf_sys::BPF_F_MMAPABLE,
            ..Default::default()
        };
        let keys = MapHandle::create(MapType::Array, Some("ds_keys"), 4, 32, cap as u32, &opts)
            .context("creating ds_keys")?;
        let results =
            MapHandle::create(MapType::Array, Some("ds_results"), 4, 8, cap as u32, &opts)
                .context("creating ds_results")?;
        let kmap = Mapping::new(&keys, cap * 32)?;
        let rmap = Mapping::new(&results, cap * 8)?;
        Ok(WorkMaps { keys, results, kmap, rmap, cap })
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Makes an opened skeleton use these maps (before it is loaded).
    pub fn reuse(&self, keys: &mut OpenMapMut<'_>, results: &mut OpenMapMut<'_>) -> Result<()> {
        keys.reuse_fd(self.keys.as_fd()).context("reusing ds_keys")?;
        results.reuse_fd(self.results.as_fd()).context("reusing ds_results")?;
        Ok(())
    }

    /// [`WorkMaps::reuse`] for the maps named `ds_keys` and `ds_results`
    /// of an opened object (`open_object_mut()` of an opened skeleton).
    pub fn reuse_in(&self, obj: &mut libbpf_rs::OpenObject) -> Result<()> {
        let mut found = 0;
        for mut map in obj.maps_mut() {
            let fd = match map.name().to_str() {
                Some("ds_keys") => self.keys.as_fd(),
                Some("ds_results") => self.results.as_fd(),
                _ => continue,
            };
            let name = map.name().to_string_lossy();
            map.reuse_fd(fd).with_context(|| format!("reusing {name}"))?;
            found += 1;
        }
        ensure!(found == 2, "the object lacks ds_keys or ds_results");
        Ok(())
    }

    /// Keys `at .. at + n`.
    pub fn keys(&self, at: usize, n: usize) -> Result<Vec<Key>> {
        ensure!(at + n <= self.cap, "keys {at}+{n} beyond the capacity {}", self.cap);
        // SAFETY: in bounds; the mapping holds `cap` keys.
        Ok((at..at + n)
            .map(|i| unsafe {
                std::ptr::read_volatile(self.kmap.ptr.as_ptr().cast::<Key>().add(i))
            })
            .collect())
    }

    /// Writes `keys` from index `at`.
    pub fn set_keys(&mut self, at: usize, keys: &[Key]) -> Result<()> {
        if at + keys.len() > self.cap {
            bail!("{} keys at {at} exceed the capacity {}", keys.len(), self.cap);
        }
        // SAFETY: in bounds (checked); the mapping holds `cap` keys of 32
        // bytes and is only written here.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(self.kmap.ptr.as_ptr().cast::<Key>().add(at), keys.len())
        };
        dst.copy_from_slice(keys);
        Ok(())
    }

    /// Results of operations `at .. at + n`.
    pub fn results(&self, at: usize, n: usize) -> Result<Vec<u64>> {
        ensure!(at + n <= self.cap, "results {at}+{n} beyond the capacity {}", self.cap);
        // SAFETY: in bounds; volatile reads of memory the kernel writes.
        Ok((at..at + n)
            .map(|i| unsafe {
                std::ptr::read_volatile(self.rmap.ptr.as_ptr().cast::<u64>().add(i))
            })
            .collect())
    }
}

/// The programs of one data structure in one build, by operation (absent
/// where the build has no such program).
#[derive(Debug, Default)]
pub struct Ops {
    pub init: Option<OwnedFd>,
    pub update: Option<OwnedFd>,
    pub lookup: Option<OwnedFd>,
    pub delete: Option<OwnedFd>,
    pub clear: Option<OwnedFd>,
}

/// A descriptor of a loaded program that outlives the borrow of its skeleton.
pub fn prog_fd(p: &libbpf_rs::ProgramMut<'_>) -> Result<OwnedFd> {
    Ok(p.as_fd().try_clone_to_owned()?)
}

/// The programs of a loaded BPF object by name (their C function names),
/// as descriptors that outlive the borrow of its skeleton: benchmarks pick
/// programs by name instead of by skeleton field.
#[derive(Debug, Default)]
pub struct Progs(BTreeMap<String, OwnedFd>);

impl Progs {
    /// Every program of `obj` (`skel.object()` of a loaded skeleton).
    pub fn of(obj: &libbpf_rs::Object) -> Result<Progs> {
        let mut m = BTreeMap::new();
        for p in obj.progs() {
            let name = p.name().to_string_lossy().into_owned();
            let fd = p.as_fd().try_clone_to_owned().with_context(|| format!("program {name}"))?;
            m.insert(name, fd);
        }
        Ok(Progs(m))
    }

    /// Program `name`.
    pub fn get(&self, name: &str) -> Result<BorrowedFd<'_>> {
        self.0.get(name).map(|fd| fd.as_fd()).with_context(|| self.missing(name))
    }

    /// Takes program `name` out (`None` if the object has none).
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        self.0.remove(name)
    }

    /// Takes program `name` out; an error if the object has none.
    pub fn take_required(&mut self, name: &str) -> Result<OwnedFd> {
        let msg = self.missing(name);
        self.take(name).context(msg)
    }

    fn missing(&self, name: &str) -> String {
        let names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        format!("no BPF program {name} (the object has {})", names.join(", "))
    }
}

/// Opens and loads a data-structure skeleton whose workload maps are those
/// of `$work` (a [`WorkMaps`]); `$open` may adjust the opened skeleton
/// first (heap size, map sizes). Evaluates to `anyhow::Result<Skel<'static>>`.
/// The skeleton's open-object storage is leaked (a few bytes per load).
#[macro_export]
macro_rules! load_ds_skel {
    ($builder:path, $work:expr, |$open:ident| $body:block) => {
        (|| -> anyhow::Result<_> {
            use anyhow::Context as _;
            use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
            let storage = Box::leak(Box::new(std::mem::MaybeUninit::uninit()));
            let builder: $builder = Default::default();
            let mut $open = builder.open(storage).context("opening the skeleton")?;
            $work.reuse(&mut $open.maps.ds_keys, &mut $open.maps.ds_results)?;
            $body
            $open.load().context(concat!("loading ", stringify!($builder)))
        })()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_is_a_bounded_share_of_the_heap() {
        assert_eq!(prefill(1 << 30, 1 << 20), 64 << 20);
        assert_eq!(prefill(64 << 20, 1 << 20), 16 << 20);
        assert_eq!(prefill(2 << 20, 0), 1 << 20);
        // never more than the heap minus the buckets
        assert_eq!(prefill(2 << 20, (3 << 20) / 2), 1 << 19);
        assert_eq!(prefill(1 << 20, 2 << 20), 0);
    }

    #[test]
    fn hashes_match_the_bpf_side() {
        // Golden values from the C definitions of bpf/ds/ds.h, skiplist.h
        // and sketch.h compiled for the host: the BPF programs compute
        // these, the guest tests recompute them here.
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0xb456_bcfc_34c2_cb2c);
        assert_eq!(mix(GOLDEN), 0x9ca0_66f1_a4ab_2eea);
        let k = [1, 2, 3, 4];
        assert_eq!(hash(&[0; 4]), 0x3183_775a_1128_acff);
        assert_eq!(hash(&k), 0xea0a_87e6_777c_d2b4);
        let v = make_val(&k, 7);
        assert_eq!(
            v,
            [
                0xf1bb_cdcb_fa53_e0a9,
                0xf1bb_cdcb_fa53_e0ab,
                0xf1bb_cdcb_fa53_e0a9,
                0xf1bb_cdcb_fa53_e0af,
                0xf1bb_cdcb_fa53_e0ad,
                0xf1bb_cdcb_fa53_e0af,
                0xf1bb_cdcb_fa53_e0ad,
                0xf1bb_cdcb_fa53_e0ab,
            ]
        );
        assert_eq!(csum(&v), 0x6ef3_72fe_94f8_2b29);
        assert_eq!(key_csum(&k), 0x33);
        let heights: Vec<u64> = (0..8).map(|i| sl_height(hash(&[i, 0, 0, 0]))).collect();
        assert_eq!(heights, [1, 2, 1, 1, 1, 1, 1, 1]);
        let rows: Vec<(u64, i64)> = (0..sketch::ROWS)
            .map(|r| {
                let m = sketch::row_hash(hash(&k), r);
                (m, sketch::sign(m))
            })
            .collect();
        assert_eq!(
            rows,
            [
                (0x9cb6_d66b_8926_1e29, -1),
                (0x57af_0a02_1796_c472, 1),
                (0x0752_fbcb_9f9d_8a2d, 1),
                (0xe5f8_26eb_b813_2e04, -1),
            ]
        );
    }

    #[test]
    fn key_streams_are_fixed() {
        // Golden values from a C splitmix64 (Vigna's) seeded as key_of and
        // KeySet::draw seed it: the benchmark's key streams stay the same
        // from one build to the next.
        assert_eq!(
            key_of(1, 2),
            [
                0x8012_9c37_c570_5f1c,
                0xed4f_e97b_afce_e59e,
                0x9fa9_95f7_b808_7393,
                0xab0d_0a93_ee11_b9a8
            ]
        );
        assert_ne!(key_of(1, 2), key_of(1, 3));
        let drawn = KeySet::new(42, 100_000).draw(Dist::Uniform, 2, 1);
        assert_eq!(drawn, [key_of(42, 1425), key_of(42, 87418)]);
        assert_eq!(drawn[0][0], 0x5e95_a2ea_6037_f270);
    }

    #[test]
    fn heights_follow_quarter_probability() {
        let mut r = Rng::new(3);
        let n = 100_000;
        let mut counts = [0u64; 33];
        for _ in 0..n {
            counts[sl_height(r.next_u64()) as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        // P(1) = 3/4, P(2) = 3/16.
        assert!((counts[1] as f64 / n as f64 - 0.75).abs() < 0.01, "{counts:?}");
        assert!((counts[2] as f64 / n as f64 - 0.1875).abs() < 0.01, "{counts:?}");
        assert_eq!(sl_height(0), sl_height(0));
    }

    #[test]
    fn zipf_is_skewed_and_reproducible() {
        let z = Zipf::new(1000, 0.99);
        let mut r = Rng::new(5);
        let mut hist = vec![0u64; 1000];
        for _ in 0..100_000 {
            hist[z.sample(&mut r)] += 1;
        }
        // Rank 0 is about twice as likely as rank 1 and far above rank 999.
        let ratio = hist[0] as f64 / hist[1] as f64;
        assert!((1.8..2.2).contains(&ratio), "{ratio}");
        assert!(hist[0] > 50 * hist[999].max(1), "{} {}", hist[0], hist[999]);
        let mut a = KeySet::new(9, 1000);
        let mut b = KeySet::new(9, 1000);
        assert_eq!(a.draw(Dist::Zipf(0.99), 100, 1), b.draw(Dist::Zipf(0.99), 100, 1));
        assert_ne!(a.draw(Dist::Uniform, 100, 1), a.draw(Dist::Uniform, 100, 2));
    }

    #[test]
    fn sketches() {
        let mut cms = sketch::Sketch::new(false);
        let mut cs = sketch::Sketch::new(true);
        let keys: Vec<Key> = (0..2000).map(|i| key_of(4, i)).collect();
        for (i, k) in keys.iter().enumerate() {
            for _ in 0..(i % 3) {
                cms.add(k, 1);
                cs.add(k, 1);
            }
        }
        for (i, k) in keys.iter().enumerate() {
            // Count-min never underestimates.
            assert!(cms.query(k) >= (i % 3) as i64);
        }
        for k in &keys {
            cms.add(k, -((keys.iter().position(|x| x == k).unwrap() % 3) as i32));
        }
        assert!(cms.c.iter().all(|r| r.iter().all(|&c| c == 0)));
        assert!(cs.query(&keys[0]).abs() < 100);
    }
}
