// SPDX-License-Identifier: GPL-2.0

//! `kflex-load`: attaches KFlex BPF programs to a network interface.
//!
//! Without an offload flag it attaches a per-CPU packet/byte counter at XDP,
//! prints `ready` once attached, and on SIGINT/SIGTERM prints the counters
//! and detaches. `--kmemcached` attaches the memcached offload
//! ([`kflex_load::memcached`]), `--kmemcache` the Redis GET/SET offload and
//! `--kredis` the Redis sorted-set offload ([`kflex_load::redis`]).

use std::{ffi::CStr, io::Write, mem::MaybeUninit, path::Path};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, MapFlags,
};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use kflex_load::{heapstats, memcached, progstats, redis, skel::xdp_count, status, status::Status};

/// What `--help` says after the options.
const AFTER_HELP: &str = "\
Kernel settings:
  sysctl kernel.kflex_guard_mode (root only) selects the guards of KFlex programs
  loaded after it is set; a loaded program keeps its mode:
    0  full (the default): heap loads and stores are guarded, with range-analysis
       elision
    1  performance mode, as in the KFlex paper: no guards on heap loads, so a KFlex
       program can read any kernel memory (stores stay guarded). Programs that use
       a KFlex heap need CAP_PERFMON anyway; the kernel refuses mode 1 when it is
       locked down for confidentiality (lockdown=confidentiality)
    2  no guards at all: taints the kernel, for measurement only
    3  a guard on every access, no elision: for measurement only

  A KFlex program is cancelled, not proven to finish: a run that goes past its
  budget, faults on an unpopulated heap page or deadlocks on heap locks returns its
  hook's default verdict (XDP_PASS, TC_ACT_OK, SK_PASS, 0 for tracing, -ECANCELED
  for SEC(\"syscall\"); a program may choose its own with
  `const volatile __u32 kflex_cancel_verdict` in .rodata) after its heap locks are
  released.
  sysctl kernel.kflex_budget_us (root only, 100 ... 1000000, default 10000): the
    wall-clock budget of one run
  sysctl kernel.kflex_fault_mode (root only, read at load): 0 = a heap fault cancels
    the run (default), 1 = a faulting load reads 0 and a store is dropped
  sysctl kernel.kflex_cancel_points (root only): 1 = programs loaded afterwards keep
    the upstream may_goto counter and are never cancelled; taints, measurement only
  /sys/kernel/kflex/force_cancel (root, write a CPU number or \"all\"): cancel the runs
    in progress there
  /sys/kernel/kflex/cancel and `kflex-load prog-stats`: the counters";

/// Attach KFlex BPF programs (KFlex: fast, flexible and practical kernel extensions).
///
/// Without an offload flag, attaches a per-CPU packet and byte counter at XDP to the
/// interface --ifindex, prints `ready`, and on SIGINT/SIGTERM prints the counts and
/// detaches. --kmemcached attaches the memcached offload in front of a memcached that
/// listens on UDP --port; --kmemcache the Redis GET/SET offload in front of a
/// redis-server on TCP --port; --kredis the Redis sorted-set offload in front of a
/// redis-server on TCP --port.
#[derive(Parser, Debug)]
#[command(
    name = "kflex-load",
    version,
    args_conflicts_with_subcommands = true,
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// memcached offload: the text protocol over UDP port --port answered at XDP on
    /// --ifindex (native mode) from a hash table on a KFlex heap. While attached the
    /// kernel owns the UDP keys of the port: get, gets, set, add, replace, delete are
    /// answered in the kernel (a miss is a miss); append, prepend, cas, incr, decr,
    /// touch, gat, gats and the meta commands get "SERVER_ERROR command not offloaded";
    /// keyless commands (stats, version, ...), anything unparsable and all TCP go to
    /// memcached, which must listen on UDP --port (memcached -U PORT). flush_all also
    /// empties the kernel's table.
    #[arg(long, group = "mode")]
    kmemcached: bool,
    /// Redis GET/SET offload: RESP over TCP port --port answered at the sk_skb hooks of
    /// the connections redis-server accepts after attach (a sockops program on the
    /// cgroup v2 root finds them; --ifindex is not needed). The kernel owns GET and SET:
    /// their keys live on a KFlex heap, never in redis-server; values up to --max-value
    /// bytes (default 64 KiB, at most 1 MiB), a larger SET gets "-ERR value too large for the KFlex offload", SET
    /// options get "-ERR SET option not supported by the offload". Every other command
    /// goes to redis-server, which must listen on TCP --port. Once a connection has
    /// passed a request, its owned requests are answered through EVAL (so replies stay
    /// in order): scripting must be allowed for its user, and four fixed scripts enter
    /// redis-server's script cache. A request the offload cannot frame switches its
    /// connection to passthrough. A run that KFlex cancels (kernel.kflex_budget_us)
    /// sends its request on to redis-server with the command renamed (KF?, KFL?, ...):
    /// redis-server answers an unknown-command error in its place. On SIGINT/SIGTERM new connections are no longer
    /// offloaded, offloaded ones pass everything, and kflex-load waits until they close
    /// (a second signal stops waiting).
    #[arg(long, group = "mode")]
    kmemcache: bool,
    /// Redis sorted-set offload: as --kmemcache (the same hooks, framing, ordering,
    /// EVAL and passthrough rules), but the kernel owns the sorted-set commands ZADD
    /// (with NX, XX, GT, LT, CH, INCR), ZREM, ZCARD, ZSCORE and ZRANGE by index (with
    /// WITHSCORES): skiplists ordered by (score, member) and a member table on a KFlex
    /// heap, never in redis-server. BPF has no floating point: scores must be integers
    /// within +/-2^53, others get "-ERR only integer scores within +/-2^53 are
    /// offloaded by KFlex"; members up to 248 bytes; ZRANGE BYSCORE/BYLEX/REV/LIMIT get
    /// "-ERR ZRANGE option not supported by the KFlex offload". GET, SET and every
    /// other command go to redis-server.
    #[arg(long, group = "mode")]
    kredis: bool,
    /// Interface index to attach to (see `ip link`). Accepted but not needed by
    /// --kmemcache (its hooks are the server's sockets).
    #[arg(long, value_name = "N")]
    ifindex: Option<u32>,
    /// The port the offload serves: UDP for --kmemcached, TCP for --kmemcache and
    /// --kredis. Used by the offload modes only (the packet counter counts every
    /// packet).
    #[arg(long, value_name = "PORT", default_value_t = 6969)]
    port: u16,
    /// Size of the offload's KFlex heap: a power of two from 64K to 256G (suffixes
    /// K, M, G). --kmemcached and --kmemcache.
    #[arg(long, value_name = "BYTES", default_value = "1G", value_parser = parse_heap_size)]
    heap_size: u64,
    /// Who owns the key space, --kmemcached only. kflex: the offload (above). bmc:
    /// BMC's look-aside cache policy, the baseline of `make bench-offloads`: memcached
    /// owns the keys; gets of keys in the kernel's table are answered at XDP, every
    /// other request goes to memcached (one naming a key drops it from the table
    /// first), and memcached's one-key get replies fill the table at tc egress.
    /// Values are cached without their expiry time, as in BMC.
    #[arg(long, value_enum, default_value_t = memcached::Policy::Kflex)]
    policy: memcached::Policy,
    /// The largest SET value the Redis offload stores, in bytes [default: 65536, at
    /// most 1048576]. --kmemcache only.
    #[arg(long, value_name = "BYTES")]
    max_value: Option<u32>,
}

/// A heap size: a power of two between 64 KiB and 256 GiB, with an optional
/// K, M or G suffix.
fn parse_heap_size(s: &str) -> std::result::Result<u64, String> {
    let (num, shift) = match s.trim().to_ascii_uppercase().strip_suffix(['K', 'M', 'G']) {
        Some(n) => (
            n.to_string(),
            match s.trim().chars().last() {
                Some('k' | 'K') => 10,
                Some('m' | 'M') => 20,
                _ => 30,
            },
        ),
        None => (s.trim().to_string(), 0),
    };
    let v: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 1G, 256M)"))?;
    let bytes = v.checked_shl(shift).filter(|b| b >> shift == v).ok_or("size too large")?;
    if !bytes.is_power_of_two() || !(1 << 16..=1 << 38).contains(&bytes) {
        return Err(format!("{s}: a KFlex heap is a power of two from 64K to 256G"));
    }
    Ok(bytes)
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List every KFlex heap on the system with its statistics.
    HeapStats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List every loaded KFlex program with its cancellation counters (by cause, heap
    /// locks released and leaked, faults that could not cancel, run times) and the
    /// verdict its cancelled runs return.
    ProgStats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The counters of every running offload (requests, hits, misses, refused, passed,
    /// malformed, lock timeouts, store failures, ...).
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Count,
    Memcached,
    RedisGetSet,
    RedisZadd,
}

impl Cli {
    fn mode(&self) -> Mode {
        if self.kmemcached {
            Mode::Memcached
        } else if self.kmemcache {
            Mode::RedisGetSet
        } else if self.kredis {
            Mode::RedisZadd
        } else {
            Mode::Count
        }
    }
}

fn check_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "kflex-load must run as root: loading BPF programs and attaching XDP need \
             CAP_BPF and CAP_NET_ADMIN (try `sudo kflex-load ...`)"
        );
    }
    Ok(())
}

fn interface_name(ifindex: u32) -> Result<String> {
    let mut buf = [0u8; libc_ifnamsiz()];
    // SAFETY: `buf` has room for IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { nix::libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        bail!(
            "no network interface has ifindex {ifindex}; list interfaces and their indexes \
             with `ip link`"
        );
    }
    Ok(CStr::from_bytes_until_nul(&buf)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default())
}

const fn libc_ifnamsiz() -> usize {
    nix::libc::IF_NAMESIZE
}

/// Blocks SIGINT and SIGTERM (so they queue) and returns the set to wait on.
fn block_exit_signals() -> Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .context("blocking SIGINT/SIGTERM")?;
    Ok(set)
}

fn run_counter(ifindex: u32, ifname: &str, signals: &SigSet) -> Result<()> {
    let mut storage = MaybeUninit::uninit();
    let open = xdp_count::XdpCountSkelBuilder::default()
        .open(&mut storage)
        .context("opening xdp_count BPF object")?;
    let skel = open.load().context("loading xdp_count into the kernel")?;
    let link = skel
        .progs
        .xdp_count
        .attach_xdp(ifindex as i32)
        .with_context(|| format!("attaching XDP program to {ifname} (ifindex {ifindex})"))?;
    println!("ready: xdp_count attached to {ifname} (ifindex {ifindex})");
    std::io::stdout().flush().ok();

    let sig = signals.wait().context("waiting for SIGINT/SIGTERM")?;

    let key = 0u32.to_ne_bytes();
    let per_cpu = skel
        .maps
        .counters
        .lookup_percpu(&key, MapFlags::ANY)
        .context("reading counters")?
        .unwrap_or_default();
    let (mut packets, mut bytes) = (0u64, 0u64);
    for v in &per_cpu {
        if v.len() >= 16 {
            packets += u64::from_ne_bytes(v[0..8].try_into().unwrap_or_default());
            bytes += u64::from_ne_bytes(v[8..16].try_into().unwrap_or_default());
        }
    }
    drop(link);
    println!("{sig:?}: {ifname} (ifindex {ifindex}): {packets} packets, {bytes} bytes");
    println!("detached");
    Ok(())
}

/// Lists every loaded KFlex program with its cancellation counters.
fn prog_stats(json: bool) -> Result<()> {
    Status::read_from(Path::new(status::STATUS_PATH))?.require_active()?;
    let progs = progstats::read()?;
    if json {
        println!("{}", progstats::json(&progs));
    } else {
        print!("{}", progstats::table(&progs));
    }
    Ok(())
}

/// Reads every heap's statistics and its map name.
fn heap_stats(json: bool) -> Result<()> {
    Status::read_from(Path::new(status::STATUS_PATH))?.require_active()?;
    let mut heaps = heapstats::read()?;
    for h in &mut heaps {
        // The name is best effort: the heap may be gone, or we lack CAP_BPF.
        if let Ok(map) = libbpf_rs::MapHandle::from_map_id(h.get("id") as u32) {
            h.name = map.name().to_string_lossy().into_owned();
        }
    }
    if json {
        println!("{}", heapstats::json(&heaps));
    } else {
        print!("{}", heapstats::table(&heaps));
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::HeapStats { json }) => return heap_stats(json),
        Some(Command::ProgStats { json }) => return prog_stats(json),
        Some(Command::Stats { json }) => {
            check_root()?;
            return memcached::stats(json);
        }
        None => {}
    }
    let mode = cli.mode();
    if cli.policy != memcached::Policy::Kflex && mode != Mode::Memcached {
        bail!("--policy applies to the memcached offload only: add --kmemcached");
    }
    if cli.max_value.is_some() && mode != Mode::RedisGetSet {
        bail!("--max-value applies to the Redis GET/SET offload only: add --kmemcache");
    }
    check_root()?;
    Status::read_from(Path::new(status::STATUS_PATH))?.require_active()?;
    if let Some(family) = match mode {
        Mode::RedisGetSet => Some(redis::Family::GetSet),
        Mode::RedisZadd => Some(redis::Family::SortedSets),
        _ => None,
    } {
        let signals = block_exit_signals()?;
        let o = redis::Options {
            family,
            port: cli.port,
            heap_size: cli.heap_size,
            max_value: cli.max_value.unwrap_or(redis::DEFAULT_MAX_VALUE),
        };
        return redis::run(&o, &signals);
    }
    let Some(ifindex) = cli.ifindex else {
        bail!("--ifindex N is required: the index of the interface to attach to (see `ip link`)");
    };
    let ifname = interface_name(ifindex)?;
    let signals = block_exit_signals()?;
    if mode == Mode::Memcached {
        let o = memcached::Options {
            ifindex,
            ifname: &ifname,
            port: cli.port,
            heap_size: cli.heap_size,
            policy: cli.policy,
        };
        return memcached::run(&o, &signals);
    }
    run_counter(ifindex, &ifname, &signals)
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("kflex-load: error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_counter_on_port_6969() {
        let cli = Cli::try_parse_from(["kflex-load", "--ifindex", "3"]).unwrap();
        assert_eq!(cli.mode(), Mode::Count);
        assert_eq!(cli.port, 6969);
        assert_eq!(cli.ifindex, Some(3));
    }

    #[test]
    fn modes_are_exclusive() {
        assert!(Cli::try_parse_from(["kflex-load", "--kmemcached", "--kredis"]).is_err());
        let cli = Cli::try_parse_from(["kflex-load", "--kredis", "--port", "7000"]).unwrap();
        assert_eq!(cli.mode(), Mode::RedisZadd);
        assert_eq!(cli.port, 7000);
    }

    #[test]
    fn heap_stats_subcommand() {
        let cli = Cli::try_parse_from(["kflex-load", "heap-stats", "--json"]).unwrap();
        assert!(matches!(cli.command, Some(Command::HeapStats { json: true })));
        assert!(Cli::try_parse_from(["kflex-load", "--kredis", "heap-stats"]).is_err());
    }

    #[test]
    fn prog_stats_subcommand() {
        let cli = Cli::try_parse_from(["kflex-load", "prog-stats"]).unwrap();
        assert!(matches!(cli.command, Some(Command::ProgStats { json: false })));
        assert!(Cli::try_parse_from(["kflex-load", "prog-stats", "--ifindex", "3"]).is_err());
    }

    #[test]
    fn heap_sizes() {
        assert_eq!(parse_heap_size("1G"), Ok(1 << 30));
        assert_eq!(parse_heap_size("64k"), Ok(1 << 16));
        assert_eq!(parse_heap_size("256G"), Ok(1 << 38));
        assert_eq!(parse_heap_size("1048576"), Ok(1 << 20));
        for bad in ["3G", "32K", "512G", "x", "", "99999999999999999999G"] {
            assert!(parse_heap_size(bad).is_err(), "{bad}");
        }
        let cli = Cli::try_parse_from(["kflex-load", "--kmemcached", "--heap-size", "64M"]);
        assert_eq!(cli.unwrap().heap_size, 64 << 20);
    }

    #[test]
    fn policies() {
        let cli = Cli::try_parse_from(["kflex-load", "--kmemcached"]).unwrap();
        assert_eq!(cli.policy, memcached::Policy::Kflex);
        let cli = Cli::try_parse_from(["kflex-load", "--kmemcached", "--policy", "bmc"]).unwrap();
        assert_eq!(cli.policy, memcached::Policy::Bmc);
        assert!(Cli::try_parse_from(["kflex-load", "--kmemcached", "--policy", "x"]).is_err());
    }

    #[test]
    fn bad_numbers_are_refused() {
        assert!(Cli::try_parse_from(["kflex-load", "--ifindex", "eth0"]).is_err());
        assert!(Cli::try_parse_from(["kflex-load", "--port", "70000"]).is_err());
    }

    #[test]
    fn help_says_what_each_offload_owns() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for word in ["ZADD", "ZRANGE by index", "integers", "+/-2^53", "248 bytes"] {
            assert!(help.contains(word), "--kredis help lacks {word:?}\n{help}");
        }
        // The Redis GET/SET offload says what it owns, its errors, and what EVAL needs.
        for word in [
            "The kernel owns GET and SET",
            "-ERR value too large for the KFlex offload",
            "-ERR SET option not supported by the offload",
            "scripting must be allowed",
            "--ifindex is not needed",
        ] {
            assert!(help.contains(word), "--kmemcache help lacks {word:?}\n{help}");
        }
        // The memcached offload says which commands the kernel answers and which
        // it refuses.
        for word in ["get, gets, set, add, replace, delete", "not offloaded", "memcached -U"] {
            assert!(help.contains(word), "--kmemcached help lacks {word:?}\n{help}");
        }
        assert!(help.contains("The port the offload serves") && help.contains("6969"), "{help}");
        assert!(
            help.contains("kernel.kflex_guard_mode")
                && help.contains("read any kernel memory")
                && help.contains("CAP_PERFMON")
                && help.contains("locked down for confidentiality"),
            "{help}"
        );
    }

    #[test]
    fn max_value_belongs_to_kmemcache() {
        let cli = Cli::try_parse_from(["kflex-load", "--kmemcache", "--max-value", "100"]).unwrap();
        assert_eq!((cli.mode(), cli.max_value), (Mode::RedisGetSet, Some(100)));
    }
}
