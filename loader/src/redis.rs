// SPDX-License-Identifier: GPL-2.0

//! `kflex-load --kmemcache` and `--kredis`: the Redis offloads
//! (`bpf/redis.bpf.c`), RESP over TCP answered at the sk_skb hooks of
//! redis-server's accepted sockets from a KFlex heap, in front of a real
//! redis-server. `--kmemcache` owns GET and SET (a hash table of values),
//! `--kredis` the sorted-set commands ZADD, ZREM, ZCARD, ZSCORE and ZRANGE
//! (skiplists and a member table, `bpf/ds/zset.h`).
//!
//! A sockops program on the root cgroup (v2) puts every connection accepted
//! on the port after attach into a sockhash; its stream parser frames
//! requests and its stream verdict answers the owned commands in the
//! kernel and passes everything else to redis-server. On SIGINT/SIGTERM no new
//! connection is offloaded, existing ones switch to passthrough, and the
//! maps stay until the offloaded connections have closed (a socket that
//! leaves the sockhash loses what redis-server has not read yet); a second
//! signal stops waiting.

use std::{
    io::Write as _,
    mem::MaybeUninit,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, MapFlags,
};
use nix::sys::signal::SigSet;

use crate::{ds, memcached, progstats, resp, skel::redis::*};

/// Bytes of a command name in `rd_cmds` (RD_CMD_NAME in the BPF program).
const CMD_NAME: usize = 32;

/// Which command family the offload owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// GET and SET (`--kmemcache`).
    GetSet,
    /// The sorted sets (`--kredis`).
    SortedSets,
}

impl Family {
    /// The commands answered in the kernel.
    pub fn owned(self) -> &'static str {
        match self {
            Family::GetSet => "GET, SET",
            Family::SortedSets => "ZADD, ZREM, ZCARD, ZSCORE, ZRANGE (by index)",
        }
    }

    /// The offload's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::GetSet => "Redis GET/SET offload",
            Family::SortedSets => "Redis sorted-set offload",
        }
    }
}

/// Counter names, in the order of `struct rd_stats` in the BPF program.
pub const COUNTERS: [&str; N] = [
    "conns",
    "requests",
    "gets",
    "hits",
    "sets",
    "passed",
    "eval_routed",
    "refused",
    "raw_conns",
    "lock_timeouts",
    "store_failures",
    "reply_failures",
    "held_refused",
    "zwrites",
    "zreads",
    "cancelled",
];

/// Number of counters.
pub const N: usize = 16;

// The BPF program's counters are exactly these.
const _: () = assert!(size_of::<types::rd_stats>() == COUNTERS.len() * 8);

/// log2 of the table's buckets.
const BUCKET_ORDER: u32 = 16;

/// The largest value the table holds (`KV_BIG_MAX` in `bpf/ds/kv.h`).
pub const VALUE_LIMIT: u32 = 1 << 20;

/// `--max-value` unless given.
pub const DEFAULT_MAX_VALUE: u32 = 64 << 10;

/// What `--kmemcache` and `--kredis` run with.
pub struct Options {
    pub family: Family,
    pub port: u16,
    pub heap_size: u64,
    pub max_value: u32,
}

/// Whether a socket in `/proc/net/tcp{,6}` listens on local port `port`.
pub fn tcp_listener(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .any(|t| listens_on(&t, port))
}

/// The listening sockets (state 0A) of a `/proc/net/tcp{,6}` table: local
/// address (hex) and port.
fn listeners(table: &str) -> impl Iterator<Item = (&str, u16)> {
    memcached::proc_net_sockets(table).filter(|s| s.2 == "0A").map(|(a, p, _)| (a, p))
}

/// The IPv4 address a `/proc/net/tcp` table's listening socket on `port`
/// is bound to (0.0.0.0 for any).
pub fn listen_v4(table: &str, port: u16) -> Option<Ipv4Addr> {
    let (addr, _) = listeners(table).find(|&(_, p)| p == port)?;
    // the kernel prints the address's bytes as one native-endian word
    Some(Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.to_ne_bytes()))
}

/// Where to reach the redis-server listening on `port`: its IPv4 address
/// (loopback when it listens on any), else IPv6 loopback.
fn server_addr(port: u16) -> SocketAddr {
    let v4 = std::fs::read_to_string("/proc/net/tcp").ok().and_then(|t| listen_v4(&t, port));
    match v4 {
        Some(a) if a.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Some(a) => SocketAddr::from((a, port)),
        None => SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    }
}

/// Fills `rd_cmds` with the key positions of redis-server's commands;
/// returns how many.
fn load_command_table(skel: &RedisSkel<'_>, specs: &[resp::KeySpec]) -> Result<usize> {
    let mut n = 0;
    for k in specs {
        let mut name = [0u8; CMD_NAME];
        if k.name.len() > CMD_NAME {
            continue;
        }
        name[..k.name.len()].copy_from_slice(k.name.as_bytes());
        let mut v = Vec::with_capacity(16);
        for w in [k.first, k.last, k.step, 0] {
            v.extend_from_slice(&w.to_ne_bytes());
        }
        skel.maps
            .rd_cmds
            .update(&name, &v, MapFlags::ANY)
            .with_context(|| format!("recording the key positions of {}", k.name))?;
        n += 1;
    }
    Ok(n)
}

/// Whether a `/proc/net/tcp` table has a listening socket (state 0A) on
/// local port `port`.
pub fn listens_on(table: &str, port: u16) -> bool {
    listeners(table).any(|(_, p)| p == port)
}

/// Where cgroup v2 is mounted, from a `/proc/self/mounts` text.
pub fn cgroup2_mount(mounts: &str) -> Option<String> {
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| f[1].to_string())
    })
}

/// Sums per-CPU `struct rd_stats` values.
pub fn sum_counters(per_cpu: &[Vec<u8>]) -> [u64; N] {
    memcached::sum_per_cpu(per_cpu)
}

/// The counters as `name value` lines.
pub fn format_counters(c: &[u64; N]) -> String {
    memcached::counter_lines(&COUNTERS, c)
}

/// Bytes of each CPU's long-value buffer (`rd_big`): a power of two that
/// holds `--max-value` (the sorted sets have no long values: 4 KiB).
pub fn big_buffer(o: &Options) -> u32 {
    match o.family {
        Family::GetSet => o.max_value.max(4096).next_power_of_two(),
        Family::SortedSets => 4096,
    }
}

/// Checks the options against what the offload can hold.
pub fn check_options(o: &Options) -> Result<()> {
    if o.max_value > VALUE_LIMIT {
        bail!(
            "--max-value {} is more than this offload holds ({VALUE_LIMIT} bytes per value): \
             use --max-value {VALUE_LIMIT} or less",
            o.max_value
        );
    }
    Ok(())
}

/// Runs the offload until SIGINT or SIGTERM.
pub fn run(o: &Options, signals: &SigSet) -> Result<()> {
    check_options(o)?;
    if !tcp_listener(o.port) {
        bail!(
            "nothing listens on TCP port {}: start redis-server on that port first \
             (`redis-server --port {} ...`); the commands the offload does not own go to it",
            o.port,
            o.port
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading mounts")?;
    let Some(cgroot) = cgroup2_mount(&mounts) else {
        bail!(
            "cgroup v2 is not mounted: the offload's sockops program attaches to its root \
             (`mount -t cgroup2 none /sys/fs/cgroup`)"
        );
    };
    let mut storage = MaybeUninit::uninit();
    let mut open = RedisSkelBuilder::default()
        .open(&mut storage)
        .context("opening the Redis offload's BPF object")?;
    let rodata = open.maps.rodata_data.as_deref_mut().context("rodata")?;
    rodata.rd_port = o.port;
    rodata.rd_max_value = o.max_value;
    rodata.rd_zset = u32::from(o.family == Family::SortedSets);
    // rd_big: a buffer per possible CPU for long values on their way to a
    // GET reply, a power of two of at least --max-value bytes and a spare word
    let big = big_buffer(o);
    rodata.rd_big_mask = big - 1;
    open.maps.rd_big.set_value_size(big + 8).context("sizing the long-value buffers")?;
    let cpus = libbpf_rs::num_possible_cpus().context("counting the possible CPUs")?;
    open.maps.rd_big.set_max_entries(cpus as u32).context("sizing the long-value buffers")?;
    open.maps
        .rd_heap
        .set_max_entries((o.heap_size / 4096) as u32)
        .context("sizing the KFlex heap")?;
    let mut skel = open.load().context("loading the Redis offload into the kernel")?;
    ds::init_table(skel.progs.rd_init.as_fd(), BUCKET_ORDER, o.heap_size)?;
    if o.family == Family::SortedSets {
        ds::init_table(skel.progs.rd_minit.as_fd(), BUCKET_ORDER, o.heap_size)
            .context("the sorted sets' member table")?;
    }
    let addr = server_addr(o.port);
    let held_rule = match resp::command_table(addr) {
        Ok(specs) => {
            let n = load_command_table(&skel, &specs)?;
            format!(
                "note: other commands on a key the offload holds are refused with -ERR key is \
                 held by the KFlex offload (key positions of {n} commands from redis-server's \
                 COMMAND; every argument of commands whose keys move, and after the \
                 subcommand of container commands)"
            )
        }
        Err(e) => format!(
            "warning: could not read redis-server's COMMAND table ({e:#}): other commands on \
             keys the offload holds go to redis-server unchecked"
        ),
    };
    let map_fd = skel.maps.rd_socks.as_fd().as_raw_fd();
    skel.progs.rd_parse.attach_sockmap(map_fd).context("attaching the stream parser")?;
    skel.progs.rd_verdict.attach_sockmap(map_fd).context("attaching the stream verdict")?;
    let cg = std::fs::File::open(&cgroot).with_context(|| format!("opening {cgroot}"))?;
    let sockops = skel
        .progs
        .rd_sockops
        .attach_cgroup(cg.as_raw_fd())
        .with_context(|| format!("attaching the sockops program to {cgroot}"))?;
    println!(
        "ready: {} on TCP port {} (new connections): {} answered in the kernel; other \
         commands go to redis-server",
        o.family.name(),
        o.port,
        o.family.owned()
    );
    match o.family {
        Family::GetSet => println!(
            "note: the offload owns GET and SET: their keys live in the kernel, not in \
             redis-server; values up to {} bytes",
            o.max_value
        ),
        Family::SortedSets => println!(
            "note: the offload owns the sorted-set commands {}: their keys live in the \
             kernel, not in redis-server; integer scores within +/-2^53, members up to 248 \
             bytes, ZRANGE replies up to 3968 bytes",
            o.family.owned()
        ),
    }
    println!("{held_rule}");
    std::io::stdout().flush().ok();

    let sig = signals.wait().context("waiting for SIGINT/SIGTERM")?;
    // No new connections; the offloaded ones pass everything from now on.
    let bss = skel.maps.bss_data.as_deref_mut().context("no .bss")?;
    bss.rd_detaching = 1;
    let open_conns = |skel: &RedisSkel<'_>| skel.maps.rd_conns.keys().count();
    let left = open_conns(&skel);
    if left > 0 {
        println!(
            "{sig:?}: {left} offloaded connection(s) switched to passthrough; waiting for them \
             to close (a socket that leaves the offload loses what redis-server has not read); \
             signal again to stop waiting"
        );
        std::io::stdout().flush().ok();
    }
    let start = Instant::now();
    while open_conns(&skel) > 0 {
        // a second signal stops waiting
        if pending(signals) {
            println!("stopped waiting: {} connection(s) still open", open_conns(&skel));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() > Duration::from_secs(3600) {
            break;
        }
    }
    drop(sockops);
    let counters = skel
        .maps
        .rd_stats
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .context("reading the offload's counters")?
        .unwrap_or_default();
    println!("{sig:?}: {} on TCP port {}:", o.family.name(), o.port);
    print!("{}", format_counters(&sum_counters(&counters)));
    let progs = [&skel.progs.rd_parse, &skel.progs.rd_verdict];
    let ids: Vec<u32> =
        progs.iter().filter_map(|p| libbpf_rs::Program::id_from_fd(p.as_fd()).ok()).collect();
    for line in progstats::report(&ids) {
        println!("  {line}");
    }
    println!("detached");
    Ok(())
}

/// Takes a pending SIGINT or SIGTERM (they are blocked, so they queue),
/// without waiting: whether there was one.
fn pending(signals: &SigSet) -> bool {
    let now = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid signal set and timeout; no siginfo is asked for.
    unsafe { nix::libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &now) > 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tcp_listeners_only() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                     \x20  0: 0100007F:1B39 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 1234\n\
                     \x20  1: 0100007F:2B67 0100007F:C350 01 00000000:00000000 00:00000000 00000000   105        0 1235\n";
        assert!(listens_on(table, 6969));
        // 0x2B67 = 11111 is an established connection, not a listener
        assert!(!listens_on(table, 11111));
        assert!(!listens_on("header only\n", 6969));
        assert_eq!(listen_v4(table, 6969), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(listen_v4(table, 11111), None);
        let any = table.replace("0100007F:1B39", "00000000:1B39");
        assert_eq!(listen_v4(&any, 6969), Some(Ipv4Addr::UNSPECIFIED));
        let other = table.replace("0100007F:1B39", "01004D0A:1B39");
        assert_eq!(listen_v4(&other, 6969), Some(Ipv4Addr::new(10, 77, 0, 1)));
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let m = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert_eq!(cgroup2_mount(m).as_deref(), Some("/sys/fs/cgroup"));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn counters_sum_over_cpus() {
        let mut a = vec![0u8; N * 8];
        a[8] = 2;
        let mut b = vec![0u8; N * 8];
        b[8] = 3;
        let c = sum_counters(&[a, b]);
        assert_eq!(c[1], 5);
        assert!(format_counters(&c).contains("  requests        5\n"));
    }

    #[test]
    fn long_value_buffer_holds_max_value() {
        let o = |family, max_value| Options { family, port: 1, heap_size: 1 << 20, max_value };
        assert_eq!(big_buffer(&o(Family::GetSet, 65536)), 65536);
        assert_eq!(big_buffer(&o(Family::GetSet, 65537)), 131072);
        assert_eq!(big_buffer(&o(Family::GetSet, 10)), 4096);
        assert_eq!(big_buffer(&o(Family::GetSet, VALUE_LIMIT)), VALUE_LIMIT);
        assert_eq!(big_buffer(&o(Family::SortedSets, 65536)), 4096);
    }

    #[test]
    fn max_value_is_bounded() {
        let o =
            |max_value| Options { family: Family::GetSet, port: 1, heap_size: 1 << 20, max_value };
        assert!(check_options(&o(VALUE_LIMIT)).is_ok());
        let e = check_options(&o(VALUE_LIMIT + 1)).unwrap_err().to_string();
        assert!(e.contains("--max-value"), "{e}");
    }
}
