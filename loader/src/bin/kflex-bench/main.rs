// SPDX-License-Identifier: GPL-2.0

//! `kflex-bench`: KFlex benchmarks, run inside a guest
//! (`make vm CMD='kflex-bench'`, `make bench`). Prints a table (or
//! `--json`); timings are only meaningful as ratios between variants of the
//! same run.
//!
//! One module per benchmark family:
//! - [`alloc`]: `alloc/...`, the heap allocator against the BPF allocators
//!   of the upstream arena;
//! - [`guards`]: `guards/...`, the cost of guards in each guard mode;
//! - [`cancel`]: `cancel/loop/...`, the cost of loop termination:
//!   cancellation points against the upstream bounds;
//! - [`dsbench`]: `ds/<structure>/<op>/<dist>/<variant>`, the data
//!   structures of `bpf/ds/` on the KFlex heap in every guard mode, on the
//!   upstream arena, on the kernel's alternatives and as native code, and
//!   the guard table (the guard pass's decisions per structure and
//!   operation next to Table 3 of the KFlex paper);
//!
//! and [`results`] for the table and the JSON. This file holds the command
//! line and the order of a run.
//!
//! Guard modes (`kernel.kflex_guard_mode`) follow one policy: the run holds
//! mode 0 from start to end, a load that needs another mode sets it for
//! that load only, and every change is undone by a guard when it is dropped
//! (`kflex_load::guardmode`), so the mode before the run is back after it.

mod alloc;
mod cancel;
mod dsbench;
mod guards;
mod results;

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context, Result};
use clap::{builder::RangedU64ValueParser, Parser};
use kflex_load::{
    ds::{KeySet, WorkMaps},
    guardmode::GuardMode,
    status::{Status, STATUS_PATH},
};

use dsbench::{guard_table, load::load_impl, run::DsRun, Sizes, Structure, Variant, STRUCTURES};

/// KFlex benchmarks (run as root on a KFlex kernel).
#[derive(Parser, Debug)]
#[command(name = "kflex-bench", version)]
struct Cli {
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON to this file (the table still goes to stdout).
    #[arg(long, value_name = "PATH")]
    json_file: Option<String>,
    /// Only run benchmarks whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Data-structure operations per phase and repetition (256 to 2^24).
    #[arg(long, default_value_t = 100_000)]
    #[arg(value_parser = clap::value_parser!(u64).range(256..=1 << 24))]
    ops: u64,
    /// Operations per repetition of the allocator benchmarks, at least 256
    /// (the arena bump allocator never frees: keep it well below the
    /// guest's memory / 4 KiB).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(256..))]
    alloc_ops: u64,
    /// Heap accesses per repetition of the guard benchmarks (node visits or
    /// array increments; a few ns each), at least 1024.
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1024..))]
    guard_ops: u64,
    /// Run only the allocator fragmentation workload (KFlex heap, BPF free
    /// list, bpf_obj_new): peak memory held against peak live bytes.
    #[arg(long)]
    fragmentation: bool,
    /// Operations of the fragmentation workload.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    frag_ops: u64,
    /// Loop steps per repetition of the cancellation benchmarks, at least
    /// 1024.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1024..))]
    loop_iters: u64,
    /// Keys in the data-structure key set (1 to 2^24).
    #[arg(long, default_value_t = 100_000)]
    #[arg(value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    keys: u64,
    /// Repetitions per benchmark (the median is reported), after one
    /// warm-up repetition; at least 1.
    #[arg(long, default_value_t = 5)]
    #[arg(value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    reps: usize,
    /// Data-structure operations per BPF_PROG_TEST_RUN call, at least 1.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Nodes a list lookup looks at, at most, from the front.
    #[arg(long, default_value_t = 128)]
    list_walk: u64,
    /// Zipf exponent of the skewed workload (positive).
    #[arg(long, default_value_t = 0.99, value_parser = positive)]
    zipf: f64,
    /// Seed of the key set and the key streams.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Only print the guard table of the data structures (loads their
    /// KFlex programs, runs nothing).
    #[arg(long)]
    guard_table: bool,
    /// List the benchmarks and exit.
    #[arg(long)]
    list: bool,
}

/// A positive number.
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        Ok(_) => Err("must be a positive number".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Bytes of heap `id` the allocator holds: populated pages that are neither
/// in the reserve nor populated by user-space faults.
pub(crate) fn heapstats_held(id: u32) -> Result<u64> {
    let st = kflex_load::heapstats::find(id)?.context("no statistics for the KFlex heap")?;
    let pages = st
        .get("pages_populated")
        .saturating_sub(st.get("pages_reserve"))
        .saturating_sub(st.get("pages_user"));
    Ok(pages * 4096)
}

/// Prints the fragmentation table (and writes `--json-file`).
fn fragmentation(cli: &Cli) -> Result<()> {
    let rows = alloc::fragmentation(cli.frag_ops, cli.seed)?;
    let mut out = format!(
        "fragmentation: {} random allocations/frees over 65536 slots, sizes 16 B-4 KiB \
         (50% <= 64 B, 30% <= 256 B, 15% <= 1 KiB, 5% <= 4 KiB), seed {}\n",
        cli.frag_ops, cli.seed
    );
    out.push_str(&format!(
        "{:<16} {:>14} {:>16} {:>10} {:>8}\n",
        "variant", "peak live B", "peak held B", "held/live", "failed"
    ));
    let mut json = Vec::new();
    for r in &rows {
        let ratio = r.peak_held as f64 / r.peak_live.max(1) as f64;
        out.push_str(&format!(
            "{:<16} {:>14} {:>16} {:>9.2}x {:>8}\n",
            r.variant, r.peak_live, r.peak_held, ratio, r.fails
        ));
        json.push(serde_json::json!({
            "variant": r.variant, "ops": r.ops, "peak_live": r.peak_live,
            "peak_held": r.peak_held, "ratio": ratio, "fails": r.fails,
        }));
    }
    out.push_str(
        "note: held = the peak, sampled every 200,000 operations, of the memory the allocator \
         took: KFlex: populated pages minus reserve and user pages; free list: pages from \
         bpf_arena_alloc_pages; bpf-obj-new: growth of the kernel's slab memory (/proc/meminfo \
         Slab; sizes rounded up to bpf_mem_alloc's caches, at most 4088 B; other slab users \
         add noise)\n",
    );
    if let Some(path) = &cli.json_file {
        let j = serde_json::json!({ "seed": cli.seed, "fragmentation": json });
        std::fs::write(path, format!("{j}\n")).with_context(|| format!("writing {path}"))?;
    }
    if cli.json {
        println!("{}", serde_json::Value::Array(json));
    } else {
        print!("{out}");
    }
    Ok(())
}

pub(crate) use kflex_load::ds::pin_to;

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("kflex-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let sz = Sizes { ops: cli.ops, keys: cli.keys, batch: cli.batch, list_walk: cli.list_walk };
    let listing = cli.list && !nix::unistd::geteuid().is_root();
    // Guard modes are probed (as root) so that --list names the variants
    // this kernel offers.
    let modes = if listing { vec![GuardMode::Full] } else { GuardMode::offered() };
    let mut alloc = alloc::cases(cli.alloc_ops);
    let mut guard_names: Vec<String> = ["chase", "scatter"]
        .iter()
        .flat_map(|c| guards::VARIANTS.iter().map(move |(v, _)| format!("guards/{c}/{v}")))
        .collect();
    let mut cancel_names = cancel::names();
    let units = dsbench::units(cli.zipf);
    let mut ds_names: Vec<String> = units.iter().flat_map(|u| u.names(&modes)).collect();
    if let Some(f) = &cli.filter {
        alloc.retain(|c| c.name.contains(f.as_str()));
        guard_names.retain(|n| n.contains(f.as_str()));
        cancel_names.retain(|n| n.contains(f.as_str()));
        ds_names.retain(|n| n.contains(f.as_str()));
    }
    if cli.guard_table {
        alloc.clear();
        guard_names.clear();
        cancel_names.clear();
        ds_names.clear();
    }
    if cli.list {
        for n in
            alloc.iter().map(|c| &c.name).chain(&guard_names).chain(&cancel_names).chain(&ds_names)
        {
            println!("{n}");
        }
        return Ok(());
    }
    if alloc.is_empty()
        && guard_names.is_empty()
        && cancel_names.is_empty()
        && ds_names.is_empty()
        && !cli.guard_table
    {
        bail!("no benchmark matches the filter (see --list)");
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "kflex-bench must run as root (it loads BPF programs); try `make vm CMD=kflex-bench`"
        );
    }
    Status::read_from(Path::new(STATUS_PATH))?.require_active()?;
    pin_to(0)?;
    if cli.fragmentation {
        let _budget = kflex_load::cancel::SysctlGuard::budget_us(1_000_000)?;
        return fragmentation(&cli);
    }
    // Mode 0 for the whole run; the mode before it comes back at the end.
    let _mode = GuardMode::Full.set()?;
    // Every loop of a KFlex program carries a cancellation point: the
    // benchmarks' runs (thousands of operations each, slow under TCG) get
    // the largest budget, so that none is cut short.
    let _budget = kflex_load::cancel::SysctlGuard::budget_us(1_000_000)?;

    let mut results = Vec::new();
    if !guard_names.is_empty() {
        let n = guard_names.len();
        let mut i = 0;
        results = guards::run(cli.guard_ops, cli.reps, cli.filter.as_deref(), |r| {
            i += 1;
            eprintln!("[guards {i}/{n}] {} {:.1} ns/op", r.name, r.ns_per_op);
        })?;
    }
    let n = cancel_names.len();
    let mut i = 0;
    results.extend(cancel::run(cli.loop_iters, cli.reps, &cancel_names, |r| {
        i += 1;
        eprintln!("[cancel {i}/{n}] {} {:.2} ns/op", r.name, r.ns_per_op);
    })?);
    alloc::run(&alloc, cli.reps, &mut results)?;

    if cli.guard_table {
        print!("{}", guard_table::table(&guard_rows_only(sz)?));
        return Ok(());
    }
    let mut guards = Vec::new();
    let mut notes = Vec::new();
    if !ds_names.is_empty() {
        let mut r = DsRun {
            sz,
            reps: cli.reps,
            modes,
            work: WorkMaps::new((3 * cli.ops) as usize)?,
            keys: KeySet::new(cli.seed, cli.keys),
            wanted: ds_names,
            results: Vec::new(),
            guards: Vec::new(),
        };
        for s in STRUCTURES {
            r.run_structure(s, &units)?;
        }
        results.extend(r.results);
        guards = r.guards;
        notes = dsbench::notes(sz, cli.zipf, cli.seed, cli.reps);
    }
    // One guard row per structure and operation (a structure loaded for
    // several units reports once).
    let mut seen = BTreeMap::new();
    guards.retain(|g| seen.insert((g.structure, g.op), ()).is_none());
    output(&cli, &results, &notes, &guards)
}

/// `--guard-table`: loads every structure's KFlex programs in mode 0 (small)
/// and collects the guard pass's counts.
fn guard_rows_only(sz: Sizes) -> Result<Vec<guard_table::GuardRow>> {
    let mut rows = Vec::new();
    let work = WorkMaps::new(256)?;
    let small = Sizes { ops: 256, keys: 256, ..sz };
    for s in STRUCTURES {
        if s == Structure::Cs {
            // Loaded with the count-min sketch (same object).
            rows.extend(guard_table::rows(s, &guard_table::from_kernel_log()?));
            continue;
        }
        let v = Variant::KFlex(GuardMode::Full);
        let _mode = v.guard_mode().set()?;
        let imp = load_impl(s, v, &work, small)?;
        rows.extend(guard_table::rows(s, &guard_table::from_kernel_log()?));
        drop(imp);
    }
    Ok(rows)
}

/// Prints the results (table or JSON) and writes `--json-file`.
fn output(
    cli: &Cli,
    results: &[results::Result],
    notes: &[String],
    guards: &[guard_table::GuardRow],
) -> Result<()> {
    let uname = nix::sys::utsname::uname()?;
    let ctx = serde_json::json!({
        "kernel": uname.release().to_string_lossy(),
        "kflex": std::fs::read_to_string(STATUS_PATH).unwrap_or_default().trim(),
        "ops": cli.ops,
        "alloc_ops": cli.alloc_ops,
        "guard_ops": cli.guard_ops,
        "loop_iters": cli.loop_iters,
        "keys": cli.keys,
        "reps": cli.reps,
        "batch": cli.batch,
        "seed": cli.seed,
        "zipf": cli.zipf,
        "notes": notes,
        "guards": guard_table::json(guards),
        "note": "TCG guest: compare ratios within one run only",
    });
    let json = results::json(results, ctx);
    if let Some(path) = &cli.json_file {
        std::fs::write(path, format!("{json}\n")).with_context(|| format!("writing {path}"))?;
    }
    if cli.json {
        println!("{json}");
    } else {
        print!("{}", results::table(results));
        if !notes.is_empty() {
            println!();
            for n in notes {
                println!("note: {n}");
            }
        }
        if !guards.is_empty() {
            println!();
            print!("{}", guard_table::table(guards));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn ranges_are_checked_by_clap_and_shown() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["kflex-bench"], args].concat());
        let c = parse(&[]).unwrap();
        assert_eq!((c.ops, c.keys, c.reps, c.zipf), (100_000, 100_000, 5, 0.99));
        for bad in [
            &["--ops", "255"][..],
            &["--ops", "16777217"],
            &["--alloc-ops", "100"],
            &["--guard-ops", "1023"],
            &["--keys", "0"],
            &["--reps", "0"],
            &["--batch", "0"],
            &["--zipf", "0"],
            &["--zipf", "-1"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse(&["--ops", "256", "--keys", "16777216"]).unwrap().keys, 1 << 24);
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("(256 to 2^24)") && help.contains("at least 1024"), "{help}");
    }
}
