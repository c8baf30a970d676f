// SPDX-License-Identifier: GPL-2.0

//! `kflex-load --kmemcached`: the memcached offload (`bpf/memcached.bpf.c`),
//! memcached's text protocol over UDP answered at XDP from a hash table on a
//! KFlex heap, in front of a real memcached.
//!
//! While attached the offload owns the UDP key space of its port: get,
//! gets, set, add, replace and delete are answered by the kernel; other
//! keyed commands get `SERVER_ERROR command not offloaded`; keyless
//! commands, anything the offload cannot parse, and all TCP go to memcached.
//! The statistics map is pinned under [`PIN_DIR`] while attached, so
//! `kflex-load stats` can read it.

use std::{
    fmt::Write as _,
    io::Write as _,
    mem::MaybeUninit,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use libbpf_rs::{
    libbpf_sys,
    skel::{OpenSkel, SkelBuilder},
    MapCore, MapFlags,
};
use nix::sys::signal::SigSet;

use crate::{ds, progstats, skel::memcached::*};

/// Where the statistics maps of running offloads are pinned.
pub const PIN_DIR: &str = "/sys/fs/bpf";

/// Commands the offload answers in the kernel; the other keyed ones it
/// refuses (`SERVER_ERROR command not offloaded`); keyless ones go on.
pub const ANSWERED: &str = "get, gets, set, add, replace, delete";
pub const REFUSED: &str = "append, prepend, cas, incr, decr, touch, gat, gats, mg, ms, md, ma, me";

/// Counter names, in the order of `struct mc_stats` in the BPF program.
pub const COUNTERS: [&str; N] = [
    "requests",
    "gets",
    "hits",
    "misses",
    "sets",
    "not_stored",
    "deletes",
    "expired",
    "flushes",
    "refused",
    "passed",
    "malformed",
    "lock_timeouts",
    "store_failures",
    "reply_too_big",
    "not_ipv4_udp",
    "to_tc",
    "fills",
    "invalidations",
];

/// Number of counters.
pub const N: usize = 19;

// The BPF program's counters are exactly these.
const _: () = assert!(size_of::<types::mc_stats>() == COUNTERS.len() * 8);

/// log2 of the table's buckets.
const BUCKET_ORDER: u32 = 16;

/// Who owns the UDP key space of the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// The offload: keyed commands are answered in the kernel.
    Kflex,
    /// memcached, with the kernel's table as a look-aside cache (BMC's policy).
    Bmc,
}

/// What `--kmemcached` runs with.
pub struct Options<'a> {
    pub ifindex: u32,
    pub ifname: &'a str,
    pub port: u16,
    pub heap_size: u64,
    pub policy: Policy,
}

/// Pin path of the statistics of the offload on interface `ifindex`.
pub fn pin_path(ifindex: u32) -> PathBuf {
    Path::new(PIN_DIR).join(format!("kflex_memcached_{ifindex}"))
}

/// Whether a process listens on UDP port `port` (IPv4 or IPv6), from
/// `/proc/net/udp{,6}`.
pub fn udp_listener(port: u16) -> Result<bool> {
    let mut any = false;
    for f in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        any |= listens_on(&text, port);
    }
    Ok(any)
}

/// The sockets of a `/proc/net/{tcp,udp}{,6}` table: local address (hex, as
/// the kernel prints it), local port and state (hex: `0A` is a TCP listener).
pub fn proc_net_sockets(table: &str) -> impl Iterator<Item = (&str, u16, &str)> {
    table.lines().skip(1).filter_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (addr, port) = f.get(1)?.rsplit_once(':')?;
        Some((addr, u16::from_str_radix(port, 16).ok()?, *f.get(3)?))
    })
}

/// Whether a `/proc/net/udp` table has a socket bound to local port `port`.
pub fn listens_on(table: &str, port: u16) -> bool {
    proc_net_sockets(table).any(|(_, p, _)| p == port)
}

/// Sums the per-CPU values of the statistics map.
pub fn read_counters(map: &dyn MapCore) -> Result<[u64; N]> {
    let per_cpu = map
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .context("reading the offload's counters")?
        .unwrap_or_default();
    Ok(sum_counters(&per_cpu))
}

/// Sums per-CPU `struct mc_stats` values.
pub fn sum_counters(per_cpu: &[Vec<u8>]) -> [u64; N] {
    sum_per_cpu(per_cpu)
}

/// Sums per-CPU values of `M` 64-bit counters (an offload's statistics).
pub fn sum_per_cpu<const M: usize>(per_cpu: &[Vec<u8>]) -> [u64; M] {
    let mut out = [0u64; M];
    for v in per_cpu {
        for (o, w) in out.iter_mut().zip(v.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            *o = o.wrapping_add(u64::from_ne_bytes(b));
        }
    }
    out
}

/// Counters as indented `name value` lines.
pub fn counter_lines(names: &[&str], values: &[u64]) -> String {
    let mut s = String::new();
    for (name, v) in names.iter().zip(values) {
        let _ = writeln!(s, "  {name:<15} {v}");
    }
    s
}

/// The counters as `name value` lines, or as one JSON object.
pub fn format_counters(c: &[u64; N], json: bool) -> String {
    let mut s = String::new();
    if json {
        s.push('{');
        for (i, (name, v)) in COUNTERS.iter().zip(c).enumerate() {
            let _ = write!(s, "{}\"{name}\":{v}", if i > 0 { "," } else { "" });
        }
        s.push('}');
    } else {
        s = counter_lines(&COUNTERS, c);
    }
    s
}

/// Attaches `prog` to `ifindex` in native (driver) mode through a BPF link,
/// which goes away with this process. Generic mode is refused: it would
/// silently run the offload after the kernel's stack had seen the packets.
fn attach_native_xdp(prog: &libbpf_rs::ProgramMut, ifindex: u32, ifname: &str) -> Result<OwnedFd> {
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        flags: XDP_FLAGS_DRV_MODE,
        ..Default::default()
    };
    // SAFETY: a valid program descriptor and options.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(
            prog.as_fd().as_raw_fd(),
            ifindex as i32,
            libbpf_sys::BPF_XDP,
            &opts,
        )
    };
    if fd < 0 {
        let e = -fd;
        if e == nix::libc::EBUSY || e == nix::libc::EEXIST {
            bail!(
                "{ifname} already has an XDP program (another kflex-load?); stop it, or \
                 detach it with `ip link set dev {ifname} xdp off`"
            );
        }
        if e == nix::libc::EOPNOTSUPP || e == nix::libc::EINVAL {
            bail!(
                "{ifname} does not support native XDP (error {e}); the offload needs a \
                 driver with XDP support, e.g. veth or a physical NIC, not generic mode"
            );
        }
        return Err(std::io::Error::from_raw_os_error(e))
            .with_context(|| format!("attaching the offload to {ifname} (ifindex {ifindex})"));
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Where a tc program runs.
#[derive(Clone, Copy, Debug)]
enum TcSide {
    Ingress,
    Egress,
}

/// Attaches a tc program through a tcx link, which goes away with this
/// process: at ingress the half that answers gets whose reply does not fit
/// in the XDP frame, at egress (BMC's policy) the one that fills the table.
fn attach_tc(
    prog: &libbpf_rs::ProgramMut,
    ifindex: u32,
    ifname: &str,
    side: TcSide,
) -> Result<OwnedFd> {
    let attach = match side {
        TcSide::Ingress => libbpf_sys::BPF_TCX_INGRESS,
        TcSide::Egress => libbpf_sys::BPF_TCX_EGRESS,
    };
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        ..Default::default()
    };
    // SAFETY: a valid program descriptor and options.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(prog.as_fd().as_raw_fd(), ifindex as i32, attach, &opts)
    };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd)).with_context(|| {
            format!(
                "attaching the offload's tc {side:?} program to {ifname} (needs CONFIG_NET_XGRESS)"
            )
        });
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A veth passes XDP_TX frames to its peer's XDP ring: with neither an XDP
/// program nor GRO on the peer they are dropped, and with GRO alone Linux
/// 6.12 does not kick the peer's NAPI, so a reply waits for the next packet
/// that does.
fn veth_hint(ifname: &str) -> Option<String> {
    let base = Path::new("/sys/class/net").join(ifname);
    let target = std::fs::read_link(&base).ok()?;
    let iflink = std::fs::read_to_string(base.join("iflink")).ok()?;
    let ifindex = std::fs::read_to_string(base.join("ifindex")).ok()?;
    let is_veth = target.to_string_lossy().contains("/virtual/")
        && iflink.trim() != ifindex.trim()
        && std::fs::read_to_string(base.join("type")).ok()?.trim() == "1";
    is_veth.then(|| {
        format!(
            "hint: {ifname} is a veth: replies sent with XDP_TX reach its peer promptly \
             only if the peer has an XDP program (any, e.g. `kflex-load --ifindex <peer>`) \
             and GRO on (`ethtool -K <peer> gro on`)"
        )
    })
}

/// Runs the offload until SIGINT or SIGTERM.
pub fn run(o: &Options<'_>, signals: &SigSet) -> Result<()> {
    if !udp_listener(o.port)? {
        bail!(
            "nothing listens on UDP port {}: start memcached with UDP on that port first \
             (`memcached -U {} -p {} ...`); keyless commands (stats, version, ...) go to it",
            o.port,
            o.port,
            o.port
        );
    }
    let pin = pin_path(o.ifindex);
    if pin.exists() {
        bail!(
            "{} exists: an offload already runs on {} (or one was killed: remove the \
             file to start again)",
            pin.display(),
            o.ifname
        );
    }
    let mut storage = MaybeUninit::uninit();
    let mut open = MemcachedSkelBuilder::default()
        .open(&mut storage)
        .context("opening the memcached offload's BPF object")?;
    let rodata = open.maps.rodata_data.as_deref_mut().context("rodata")?;
    rodata.mc_port = o.port;
    rodata.mc_bmc = u8::from(o.policy == Policy::Bmc);
    open.maps
        .kmc_heap
        .set_max_entries((o.heap_size / 4096) as u32)
        .context("sizing the KFlex heap")?;
    let skel = open.load().context("loading the memcached offload into the kernel")?;
    ds::init_table(skel.progs.mc_init.as_fd(), BUCKET_ORDER, o.heap_size)?;
    let link = attach_native_xdp(&skel.progs.kmc_xdp, o.ifindex, o.ifname)?;
    let tc_link = attach_tc(&skel.progs.kmc_tc, o.ifindex, o.ifname, TcSide::Ingress)?;
    let fill_link = match o.policy {
        Policy::Bmc => Some(attach_tc(&skel.progs.kmc_fill, o.ifindex, o.ifname, TcSide::Egress)?),
        Policy::Kflex => None,
    };
    let mut stats_map = skel.maps.mc_stats;
    stats_map.pin(&pin).with_context(|| format!("pinning the statistics at {}", pin.display()))?;
    match o.policy {
        Policy::Kflex => {
            println!(
                "ready: memcached offload on {} (ifindex {}), UDP port {}: {ANSWERED} answered \
                 in the kernel; keyless UDP commands and all TCP go to memcached",
                o.ifname, o.ifindex, o.port
            );
            println!(
                "note: while attached the kernel owns the UDP keys of port {}: TCP clients of \
                 memcached see a separate key space",
                o.port
            );
        }
        Policy::Bmc => println!(
            "ready: memcached look-aside cache (BMC's policy) on {} (ifindex {}), UDP port {}: \
             gets of cached keys answered in the kernel, everything else goes to memcached, \
             whose get replies fill the cache",
            o.ifname, o.ifindex, o.port
        ),
    }
    if let Some(h) = veth_hint(o.ifname) {
        println!("{h}");
    }
    std::io::stdout().flush().ok();

    let sig = signals.wait().context("waiting for SIGINT/SIGTERM")?;
    drop(link);
    drop(tc_link);
    drop(fill_link);
    let counters = read_counters(&stats_map);
    let _ = stats_map.unpin(&pin);
    println!("{sig:?}: memcached offload on {} (ifindex {}):", o.ifname, o.ifindex);
    print!("{}", format_counters(&counters?, false));
    let progs = [&skel.progs.kmc_xdp, &skel.progs.kmc_tc, &skel.progs.kmc_fill];
    let ids: Vec<u32> =
        progs.iter().filter_map(|p| libbpf_rs::Program::id_from_fd(p.as_fd()).ok()).collect();
    for line in progstats::report(&ids) {
        println!("  {line}");
    }
    println!("detached");
    Ok(())
}

/// `kflex-load stats`: the counters of every running offload.
pub fn stats(json: bool) -> Result<()> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(PIN_DIR).with_context(|| format!("reading {PIN_DIR}"))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(ifindex) = name.strip_prefix("kflex_memcached_") else { continue };
        let map = libbpf_rs::MapHandle::from_pinned_path(e.path())
            .with_context(|| format!("opening {}", e.path().display()))?;
        found.push((ifindex.to_string(), read_counters(&map)?));
    }
    if json {
        let items: Vec<String> = found
            .iter()
            .map(|(i, c)| {
                format!(
                    "{{\"offload\":\"memcached\",\"ifindex\":{i},\"counters\":{}}}",
                    format_counters(c, true)
                )
            })
            .collect();
        println!("[{}]", items.join(","));
    } else if found.is_empty() {
        println!("no offload is running");
    } else {
        for (i, c) in &found {
            println!("memcached offload, ifindex {i}:");
            print!("{}", format_counters(c, false));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_udp_listeners() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                     \x20 12: 0100007F:1B39 00000000:0000 07 00000000:00000000 00:00000000 00000000   105        0 1234 2 0000000000000000 0\n";
        assert!(listens_on(table, 6969));
        assert!(!listens_on(table, 11211));
        assert!(!listens_on("header only\n", 6969));
    }

    #[test]
    fn counters_sum_over_cpus() {
        let mut a = vec![0u8; N * 8];
        a[0] = 2;
        a[8 * 15] = 1;
        let mut b = vec![0u8; N * 8];
        b[0] = 3;
        let c = sum_counters(&[a, b]);
        assert_eq!(c[0], 5);
        assert_eq!(c[15], 1);
        let j = format_counters(&c, true);
        assert!(
            j.starts_with("{\"requests\":5,")
                && j.ends_with("\"not_ipv4_udp\":1,\"to_tc\":0,\"fills\":0,\"invalidations\":0}"),
            "{j}"
        );
    }
}
