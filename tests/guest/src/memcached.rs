// SPDX-License-Identifier: GPL-2.0

//! The memcached offload (`bpf/memcached.bpf.c`, `kflex-load --kmemcached`).
//!
//! `protocol_*` tests drive the XDP program with `BPF_PROG_TEST_RUN` and
//! datagrams built here (the only place hand-made packets are used: no real
//! client sends malformed ones), checking each reply byte for byte and the
//! counters. The `memaslap_*` and `*_client` tests run the real offload
//! (`kflex-load --kmemcached`) on a veth in front of a real memcached, driven
//! by real clients from another namespace.

use std::{
    mem::MaybeUninit,
    os::fd::AsFd,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use kflex_load::{ds, memcached, skel::memcached::*};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, ProgramInput,
};

use crate::util::*;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// The offload loaded in this process (not attached), for test runs.
struct Offload {
    skel: MemcachedSkel<'static>,
}

impl Offload {
    fn new() -> Result<Offload> {
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = MemcachedSkelBuilder::default().open(storage)?;
        open.maps.kmc_heap.set_max_entries((64 << 20) / 4096)?;
        let skel = open.load().context("loading memcached.bpf.c")?;
        ds::init_table(skel.progs.mc_init.as_fd(), 12, 64 << 20)?;
        Ok(Offload { skel })
    }

    /// Runs the XDP program on `frame`; returns the verdict and the frame.
    fn run(&self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; 4096];
        let input =
            ProgramInput { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() };
        let r = self.skel.progs.kmc_xdp.test_run(input).context("test_run")?;
        let (verdict, n) = (r.return_value, r.data.map_or(0, |d| d.len()));
        out.truncate(n);
        Ok((verdict, out))
    }

    fn counters(&self) -> Result<[u64; memcached::N]> {
        memcached::read_counters(&self.skel.maps.mc_stats)
    }

    fn counter(&self, name: &str) -> Result<u64> {
        let i = memcached::COUNTERS.iter().position(|c| *c == name).context("counter")?;
        Ok(self.counters()?[i])
    }

    /// Sends `text` as one datagram with request id `id`; returns the
    /// reply's text, `None` if the program passed the datagram on, or
    /// `Some("")` if it dropped it (noreply).
    fn ask(&self, id: u16, text: &[u8]) -> Result<Option<Vec<u8>>> {
        let (verdict, out) = self.run(&udp_frame(id, 0, 1, text, 6969))?;
        match verdict {
            XDP_PASS => {
                ensure!(out == udp_frame(id, 0, 1, text, 6969), "a passed frame was changed");
                Ok(None)
            }
            XDP_DROP => Ok(Some(Vec::new())),
            XDP_TX => Ok(Some(check_reply(id, &out)?)),
            v => bail!("verdict {v}"),
        }
    }

    fn reply(&self, id: u16, text: &str) -> Result<String> {
        match self.ask(id, text.as_bytes())? {
            Some(r) => Ok(String::from_utf8_lossy(&r).into_owned()),
            None => bail!("{text:?} was passed to memcached"),
        }
    }
}

/// Client and server of the hand-made datagrams.
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_IP: [u8; 4] = [10, 77, 0, 2];
const SERVER_IP: [u8; 4] = [10, 77, 0, 1];
const CLIENT_PORT: u16 = 40000;

fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/UDP frame to `port` with a memcached frame header.
fn udp_frame(id: u16, seq: u16, total: u16, text: &[u8], port: u16) -> Vec<u8> {
    let mut payload = Vec::new();
    for v in [id, seq, total, 0] {
        payload.extend(v.to_be_bytes());
    }
    payload.extend(text);
    raw_udp(&payload, port, &[])
}

/// An Ethernet/IPv4/UDP frame with `payload` and IPv4 `options`.
fn raw_udp(payload: &[u8], port: u16, options: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(SERVER_MAC);
    f.extend(CLIENT_MAC);
    f.extend(0x0800u16.to_be_bytes());
    let ihl = 5 + options.len() / 4;
    let mut ip = vec![(0x40 | ihl) as u8, 0];
    ip.extend(((ihl * 4 + 8 + payload.len()) as u16).to_be_bytes());
    ip.extend([0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend(CLIENT_IP);
    ip.extend(SERVER_IP);
    ip.extend(options);
    let c = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend(ip);
    f.extend(CLIENT_PORT.to_be_bytes());
    f.extend(port.to_be_bytes());
    f.extend(((8 + payload.len()) as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend(payload);
    f
}

/// Checks a reply frame's headers (addresses and ports swapped, lengths,
/// checksum, one datagram with the request's id) and returns its text.
fn check_reply(id: u16, f: &[u8]) -> Result<Vec<u8>> {
    ensure!(f.len() >= 42 + 8, "reply of {} bytes", f.len());
    ensure!(f[0..6] == CLIENT_MAC && f[6..12] == SERVER_MAC, "MACs not swapped");
    let ip = &f[14..34];
    ensure!(ip[12..16] == SERVER_IP && ip[16..20] == CLIENT_IP, "IPs not swapped");
    ensure!(ip_checksum(ip) == 0, "bad IPv4 checksum");
    ensure!(usize::from(u16::from_be_bytes([ip[2], ip[3]])) == f.len() - 14, "IPv4 length");
    let udp = &f[34..42];
    ensure!(u16::from_be_bytes([udp[0], udp[1]]) == 6969, "source port");
    ensure!(u16::from_be_bytes([udp[2], udp[3]]) == CLIENT_PORT, "destination port");
    ensure!(usize::from(u16::from_be_bytes([udp[4], udp[5]])) == f.len() - 34, "UDP length");
    ensure!(udp[6..8] == [0, 0], "UDP checksum not 0");
    let hdr = &f[42..50];
    ensure!(hdr == [(id >> 8) as u8, id as u8, 0, 0, 0, 1, 0, 0], "frame header {hdr:?}");
    ensure!(f.len() - 42 <= 1400, "reply of {} bytes of UDP payload", f.len() - 42);
    Ok(f[50..].to_vec())
}

/// Every command of the contract, one datagram each, with the exact reply.
pub fn protocol_replies() -> Result<()> {
    ensure_kflex()?;
    let o = Offload::new()?;
    let cases: &[(&str, &str)] = &[
        ("get k\r\n", "END\r\n"),
        ("set k 5 0 3\r\nabc\r\n", "STORED\r\n"),
        ("get k\r\n", "VALUE k 5 3\r\nabc\r\nEND\r\n"),
        ("get   k\r\n", "VALUE k 5 3\r\nabc\r\nEND\r\n"),
        ("get k\n", "VALUE k 5 3\r\nabc\r\nEND\r\n"),
        ("add k 0 0 1\r\nx\r\n", "NOT_STORED\r\n"),
        ("replace nokey 0 0 1\r\nx\r\n", "NOT_STORED\r\n"),
        ("add k2 4294967295 0 0\r\n\r\n", "STORED\r\n"),
        ("get k2 nokey k\r\n", "VALUE k2 4294967295 0\r\n\r\nVALUE k 5 3\r\nabc\r\nEND\r\n"),
        ("replace k 7 0 2\r\nzz\r\n", "STORED\r\n"),
        ("get k\r\n", "VALUE k 7 2\r\nzz\r\nEND\r\n"),
        ("set k 1 0 2 noreply\r\nyy\r\n", ""),
        ("get k\r\n", "VALUE k 1 2\r\nyy\r\nEND\r\n"),
        ("delete k\r\n", "DELETED\r\n"),
        ("delete k\r\n", "NOT_FOUND\r\n"),
        ("delete k2 noreply\r\n", ""),
        ("get k2\r\n", "END\r\n"),
        ("set neg 0 -1 1\r\nx\r\n", "STORED\r\n"),
        ("get neg\r\n", "END\r\n"),
        ("incr k 1\r\n", "SERVER_ERROR command not offloaded\r\n"),
        ("append k 0 0 1\r\nx\r\n", "SERVER_ERROR command not offloaded\r\n"),
        ("touch k 10\r\n", "SERVER_ERROR command not offloaded\r\n"),
        ("mg k v\r\n", "SERVER_ERROR command not offloaded\r\n"),
    ];
    for (i, (req, want)) in cases.iter().enumerate() {
        let got = o.reply(i as u16 + 1, req)?;
        ensure!(got == *want, "{req:?}: got {got:?}, want {want:?}");
    }
    // Long keys, binary keys (memaslap's start with 8 binary bytes), values
    // of every length around a word boundary.
    let mut keys: Vec<Vec<u8>> = vec![vec![b'L'; 64], vec![b'M'; 250], b"x".to_vec()];
    let mut bin = vec![0x80, 0xff, 0x01, 0x09, 0x0b, 0x7f, 0xc3, 0x41];
    bin.extend(vec![b'k'; 56]);
    keys.push(bin);
    for (n, key) in keys.iter().enumerate() {
        for vlen in [0usize, 1, 7, 8, 9, 63, 64, 65, 1000] {
            let value: Vec<u8> = (0..vlen).map(|i| (i * 7 + n) as u8).collect();
            let mut set = b"set ".to_vec();
            set.extend(key);
            set.extend(format!(" 3 0 {vlen}\r\n").as_bytes());
            set.extend(&value);
            set.extend(b"\r\n");
            let r = o.ask(200, &set)?.context("set passed on")?;
            ensure!(
                r == b"STORED\r\n",
                "set of key {n}, {vlen} bytes: {:?}",
                String::from_utf8_lossy(&r)
            );
            let mut get = b"get ".to_vec();
            get.extend(key);
            get.extend(b"\r\n");
            let r = o.ask(201, &get)?.context("get passed on")?;
            let mut want = b"VALUE ".to_vec();
            want.extend(key);
            want.extend(format!(" 3 {vlen}\r\n").as_bytes());
            want.extend(&value);
            want.extend(b"\r\nEND\r\n");
            ensure!(
                r == want,
                "get of key {n} ({} bytes), {vlen} bytes: got {:?}",
                key.len(),
                String::from_utf8_lossy(&r)
            );
        }
    }
    // gets: the CAS number grows with every store.
    o.reply(100, "set c 0 0 1\r\na\r\n")?;
    let first = o.reply(101, "gets c\r\n")?;
    o.reply(102, "set c 0 0 1\r\nb\r\n")?;
    let second = o.reply(103, "gets c\r\n")?;
    let cas = |s: &str| -> Result<u64> {
        Ok(s.lines().next().and_then(|l| l.split(' ').nth(4)).context("cas")?.parse()?)
    };
    ensure!(first.starts_with("VALUE c 0 1 ") && first.ends_with("\r\na\r\nEND\r\n"), "{first:?}");
    ensure!(cas(&second)? > cas(&first)?, "CAS did not grow: {first:?} {second:?}");
    Ok(())
}

/// Everything the contract passes on to memcached, and the refusals: each
/// gets the verdict the contract gives it, a passed frame leaves unchanged,
/// and the counters account for every class.
pub fn protocol_malformed_and_passed() -> Result<()> {
    ensure_kflex()?;
    let o = Offload::new()?;
    let before = o.counters()?;
    let long_key = "k".repeat(251);
    let passed: Vec<(&str, Vec<u8>)> = vec![
        ("get without a key", b"get\r\n".to_vec()),
        ("key of 251 bytes", format!("get {long_key}\r\n").into_bytes()),
        ("byte count too small", b"set k 0 0 2\r\nabc\r\n".to_vec()),
        ("byte count too large", b"set k 0 0 9\r\nabc\r\n".to_vec()),
        ("no CRLF after the data", b"set k 0 0 3\r\nabcXY".to_vec()),
        ("no line end", b"get k".to_vec()),
        ("flags not a number", b"set k x 0 1\r\na\r\n".to_vec()),
        ("trailing bytes after a get", b"get k\r\nget k\r\n".to_vec()),
        ("unknown command", b"frobnicate k\r\n".to_vec()),
        ("random bytes", (0..200u32).map(|i| (i * 73 % 251) as u8).collect()),
        ("a NUL in the key", b"get a\0b\r\n".to_vec()),
        ("version (keyless)", b"version\r\n".to_vec()),
        ("stats (keyless)", b"stats\r\n".to_vec()),
        ("flush_all (empties, then memcached answers)", b"flush_all\r\n".to_vec()),
    ];
    for (what, req) in &passed {
        ensure!(o.ask(7, req)?.is_none(), "{what}: not passed on");
    }
    // Frames the program must not even parse.
    let raw: Vec<(&str, Vec<u8>)> = vec![
        ("payload shorter than the frame header", raw_udp(b"abc", 6969, &[])),
        ("two datagrams", udp_frame(8, 0, 2, b"get k\r\n", 6969)),
        ("second datagram", udp_frame(8, 1, 2, b"get k\r\n", 6969)),
        ("another port", udp_frame(8, 0, 1, b"get k\r\n", 11211)),
        (
            "IPv4 options",
            raw_udp(&udp_frame(8, 0, 1, b"get k\r\n", 6969)[42..], 6969, &[1, 1, 1, 0]),
        ),
        ("IPv4 fragment", {
            let mut f = udp_frame(8, 0, 1, b"get k\r\n", 6969);
            f[20] |= 0x20; // more fragments
            f
        }),
        ("not IPv4", {
            let mut f = udp_frame(8, 0, 1, b"get k\r\n", 6969);
            f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            f
        }),
        ("runt", vec![0u8; 20]),
    ];
    for (what, frame) in &raw {
        let (verdict, out) = o.run(frame)?;
        ensure!(verdict == XDP_PASS && out == *frame, "{what}: verdict {verdict}");
    }
    // Refusals and store failures are answered, never passed.
    let keys: String = (0..25).map(|i| format!(" k{i}")).collect();
    ensure!(
        o.reply(9, &format!("get{keys}\r\n"))? == "SERVER_ERROR too many keys for the offload\r\n",
        "25 keys"
    );
    o.reply(10, "set big 0 0 1\r\nx\r\n")?;
    let huge = format!("set big 0 0 1350\r\n{}\r\n", "v".repeat(1350));
    ensure!(
        o.reply(11, &huge)? == "SERVER_ERROR out of memory storing object\r\n",
        "value over the reply limit"
    );
    ensure!(o.reply(12, "get big\r\n")? == "END\r\n", "the failed store did not drop the key");
    // flush_all emptied the table.
    o.reply(13, "set f 0 0 1\r\nx\r\n")?;
    ensure!(o.ask(14, b"flush_all\r\n")?.is_none(), "flush_all not passed on");
    ensure!(o.reply(15, "get f\r\n")? == "END\r\n", "flush_all did not empty the table");
    let after = o.counters()?;
    let d = |name: &str| -> Result<u64> {
        let i = memcached::COUNTERS.iter().position(|c| *c == name).context("counter")?;
        Ok(after[i] - before[i])
    };
    println!(
        "malformed {}, passed {}, not_ipv4_udp {}, refused {}, store_failures {}, flushes {}",
        d("malformed")?,
        d("passed")?,
        d("not_ipv4_udp")?,
        d("refused")?,
        d("store_failures")?,
        d("flushes")?
    );
    ensure!(d("passed")? >= passed.len() as u64 + 3, "passed: {}", d("passed")?);
    ensure!(d("malformed")? >= 1 && d("not_ipv4_udp")? >= 5, "counters {after:?}");
    ensure!(d("refused")? == 1 && d("store_failures")? == 1 && d("flushes")? == 2, "{after:?}");
    ensure!(o.counter("lock_timeouts")? == 0, "lock timeouts");
    Ok(())
}

/// A real memcached behind the offload on a veth, with the client side in
/// its own namespace: `outer` (root namespace, 10.77.9.1) carries the
/// offload, `inner` (namespace kfns9, 10.77.9.2) the clients. The inner
/// end gets GRO and a pass-through XDP program (the packet counter): on
/// 6.12 veth delivers XDP_TX frames promptly only to a peer with an XDP
/// program.
struct Live {
    net: VethNs,
    memcached: Background,
    offload: Option<Background>,
    _peer_xdp: Background,
    policy: &'static str,
}

const PORT: &str = "6969";

impl Live {
    fn new() -> Result<Live> {
        Live::with_policy("kflex")
    }

    /// memcached and the offload with `--policy policy`.
    fn with_policy(policy: &'static str) -> Result<Live> {
        ensure_kflex()?;
        let net = VethNs::new(9)?;
        sh("ip", &["netns", "exec", &net.ns, "ethtool", "-K", &net.inner, "gro", "on"])?;
        let inner_idx = sh(
            "ip",
            &["netns", "exec", &net.ns, "cat", &format!("/sys/class/net/{}/ifindex", net.inner)],
        )?;
        let mut peer = Background::spawn(
            "ip",
            &["netns", "exec", &net.ns, "kflex-load", "--ifindex", inner_idx.trim()],
        )?;
        peer.wait_for("ready:", Duration::from_secs(60))?;
        let mut memcached = Background::spawn(
            "memcached",
            &["-u", "nobody", "-l", &net.outer_ip, "-p", PORT, "-U", PORT, "-t", "1", "-m", "64"],
        )?;
        // memcached prints nothing: wait for its UDP socket.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !memcached::udp_listener(6969)? {
            ensure!(Instant::now() < deadline, "memcached did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = &mut memcached;
        let mut l = Live { net, memcached, offload: None, _peer_xdp: peer, policy };
        l.attach()?;
        Ok(l)
    }

    fn attach(&mut self) -> Result<()> {
        let idx = self.net.outer_ifindex()?.to_string();
        let mut off = Background::spawn(
            "kflex-load",
            &[
                "--kmemcached",
                "--ifindex",
                &idx,
                "--port",
                PORT,
                "--heap-size",
                "64M",
                "--policy",
                self.policy,
            ],
        )?;
        off.wait_for("ready:", Duration::from_secs(120))?;
        self.offload = Some(off);
        Ok(())
    }

    /// Detaches the offload (SIGTERM); returns its output.
    fn detach(&mut self) -> Result<Vec<String>> {
        let off = self.offload.take().context("not attached")?;
        let (ok, lines) = off.terminate()?;
        ensure!(ok, "kflex-load failed: {lines:?}");
        ensure!(lines.iter().any(|l| l == "detached"), "no 'detached': {lines:?}");
        Ok(lines)
    }

    /// Runs `cmd args` in the client namespace; returns stdout.
    fn client(&self, cmd: &str, args: &[&str]) -> Result<String> {
        let mut a = vec!["netns", "exec", &self.net.ns, "timeout", "-s", "KILL", "300", cmd];
        a.extend(args);
        sh("ip", &a)
    }

    /// memcaslap from the client namespace. Its UDP code now and then aborts
    /// on an assertion about a reply's request id (`ms_sort_udp_packet`,
    /// seen with plain memcached too: ../shared/research/offloads.md); such
    /// a run is repeated, at most twice, and said so.
    fn memcaslap(&self, args: &[&str]) -> Result<String> {
        let mut attempt = 0;
        loop {
            match self.client("memcaslap", args) {
                Err(e)
                    if attempt < 2
                        && format!("{e:#}").contains("ms_sort_udp_packet: Assertion") =>
                {
                    attempt += 1;
                    println!(
                        "memcaslap aborted on its UDP request-id assertion; run {attempt} repeated"
                    );
                }
                r => return r,
            }
        }
    }

    /// memcached's own counters, over TCP (the offload never sees TCP).
    fn memcached_stat(&self, name: &str) -> Result<u64> {
        let out = sh("memcstat", &[&format!("--servers={}:{PORT}", self.net.outer_ip)])?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")).map(str::to_string))
            .with_context(|| format!("{name} not in memcstat output"))?
            .trim()
            .parse()
            .context("memcstat number")
    }

    fn offload_counter(&self, name: &str) -> Result<u64> {
        let idx = self.net.outer_ifindex()?;
        let map = libbpf_rs::MapHandle::from_pinned_path(memcached::pin_path(idx))?;
        let c = memcached::read_counters(&map)?;
        let i = memcached::COUNTERS.iter().position(|c| *c == name).context("counter")?;
        Ok(c[i])
    }

    /// One UDP request from the client namespace: the reply's text.
    fn udp(&self, id: u16, text: &[u8]) -> Result<Vec<u8>> {
        let server = format!("{}:{PORT}", self.net.outer_ip);
        let mut req = Vec::new();
        for v in [id, 0, 1, 0] {
            req.extend(v.to_be_bytes());
        }
        req.extend(text);
        self.net.in_ns(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.send_to(&req, &server)?;
            let mut buf = vec![0u8; 2048];
            let n = s.recv(&mut buf).context("no UDP reply")?;
            ensure!(n >= 8 && buf[0..2] == id.to_be_bytes(), "bad frame header");
            Ok(buf[8..n].to_vec())
        })
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(off) = self.offload.take() {
            let _ = off.terminate();
        }
        let _ = self.memcached.child.kill();
    }
}

/// memaslap's summary counters (`name: value` lines).
fn memaslap_counter(out: &str, name: &str) -> Result<u64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
        .with_context(|| format!("{name} not in memaslap's output:\n{out}"))?
        .split_whitespace()
        .next()
        .context("value")?
        .parse()
        .context("memaslap number")
}

/// A memaslap configuration file: keys of `key` bytes, values of `value`
/// bytes, get:set 9:1.
fn memaslap_cfg(key: usize, value: usize) -> Result<String> {
    let path = format!("/tmp/ms-{key}-{value}.cfg");
    std::fs::write(
        &path,
        format!("key\n{key} {key} 1\nvalue\n{value} {value} 1\ncmd\n0 0.1\n1 0.9\n"),
    )?;
    Ok(path)
}

/// The real client, verifying every value it gets back: nothing fails,
/// misses, drops or times out, and memcached itself never sees a get or a
/// set -- the kernel answered them all.
pub fn memaslap_verifies_through_the_offload() -> Result<()> {
    let l = Live::new()?;
    let (gets0, sets0) = (l.memcached_stat("cmd_get")?, l.memcached_stat("cmd_set")?);
    let server = format!("{}:{PORT}", l.net.outer_ip);
    // 64-byte values fit in the XDP frame; 1 KiB replies do not on a veth
    // and go through the tc ingress half.
    for value in [64, 1024] {
        let cfg = memaslap_cfg(64, value)?;
        let out = l.memcaslap(&[
            "-s", &server, "-U", "-F", &cfg, "-T", "2", "-c", "8", "-x", "20000", "-v", "1.0",
        ])?;
        println!(
            "{value} B: {}",
            out.lines().filter(|l| l.contains(": ")).collect::<Vec<_>>().join("; ")
        );
        for name in ["verify_failed", "get_misses", "packet_drop", "udp_timeout"] {
            ensure!(memaslap_counter(&out, name)? == 0, "{value} B: {name} != 0:\n{out}");
        }
    }
    println!("gets answered at tc ingress: {}", l.offload_counter("to_tc")?);
    ensure!(l.offload_counter("to_tc")? > 0, "no 1 KiB reply went through the tc half");
    let (gets1, sets1) = (l.memcached_stat("cmd_get")?, l.memcached_stat("cmd_set")?);
    ensure!(
        gets1 == gets0 && sets1 == sets0,
        "memcached saw gets {gets0}->{gets1}, sets {sets0}->{sets1}"
    );
    let hits = l.offload_counter("hits")?;
    ensure!(hits >= 2 * 15000, "the offload answered {hits} gets");
    Ok(())
}

/// memaslap's expiry verification: objects set with an expiry time are
/// gone once it passes, and present before.
pub fn memaslap_expiry() -> Result<()> {
    let l = Live::new()?;
    let cfg = memaslap_cfg(64, 64)?;
    let server = format!("{}:{PORT}", l.net.outer_ip);
    let out = l.memcaslap(&[
        "-s", &server, "-U", "-F", &cfg, "-T", "1", "-c", "4", "-t", "8s", "-e", "0.2", "-v", "1.0",
    ])?;
    println!("{}", out.lines().filter(|l| l.contains(": ")).collect::<Vec<_>>().join("; "));
    for name in ["verify_failed", "expired_get", "unexpired_unget", "packet_drop", "udp_timeout"] {
        ensure!(memaslap_counter(&out, name)? == 0, "{name} != 0:\n{out}");
    }
    Ok(())
}

/// The offload's table read from user space: the heap mapped from its map
/// id (at its user address, as every mapping of a heap is), the table's
/// root from the program's .bss. Returns every live entry's key and item
/// (the value and its CRLF).
fn table_entries() -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use kflex_load::heapstats;
    use libbpf_rs::libbpf_sys;
    use std::os::fd::AsRawFd;
    let bss_size = size_of::<types::bss>();
    // The .bss of the offload's program: the newest map of that name.
    let mut id = 0u32;
    let mut bss = None;
    // SAFETY: plain id iteration.
    while unsafe { libbpf_sys::bpf_map_get_next_id(id, &mut id) } == 0 {
        let Ok(m) = libbpf_rs::MapHandle::from_map_id(id) else { continue };
        if m.name().to_string_lossy().ends_with(".bss") && m.value_size() as usize == bss_size {
            if let Ok(Some(v)) = m.lookup(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY) {
                bss = Some(v);
            }
        }
    }
    let bss = bss.context("the offload's .bss map")?;
    let word =
        |b: &[u8], off: usize| u64::from_ne_bytes(b[off..off + 8].try_into().unwrap_or_default());
    // struct kv_table: hm_map { buckets, mask, count, alloc_lock }, gen, cas_seq.
    let (buckets, mask, gen) = (word(&bss, 0), word(&bss, 8), word(&bss, 32));
    ensure!(buckets != 0, "the table has no buckets");
    let heap = heapstats::read()?
        .into_iter()
        .filter(|h| h.get("size") == 64 << 20)
        .max_by_key(|h| h.get("id"))
        .context("the offload's 64 MiB heap")?;
    let size = heap.get("size");
    let start = buckets & !(size - 1);
    let map = libbpf_rs::MapHandle::from_map_id(heap.get("id") as u32)?;
    // SAFETY: maps the heap read-only at its user address, which nothing in
    // this process uses; unmapped before returning.
    let p = unsafe {
        nix::libc::mmap(
            start as *mut _,
            size as usize,
            nix::libc::PROT_READ,
            nix::libc::MAP_SHARED | nix::libc::MAP_FIXED_NOREPLACE,
            map.as_fd().as_raw_fd(),
            0,
        )
    };
    ensure!(
        p as u64 == start,
        "mapping the heap at {start:#x}: {:?}",
        std::io::Error::last_os_error()
    );
    let read = |addr: u64, len: usize| -> Vec<u8> {
        // SAFETY: inside the mapping (checked by the caller's range test).
        unsafe { std::slice::from_raw_parts(addr as *const u8, len).to_vec() }
    };
    let in_heap = |a: u64, len: u64| a >= start && a + len <= start + size;
    const HDR: u64 = 56;
    let mut out = Vec::new();
    for b in 0..=mask {
        let mut e = word(&read(buckets + b * 16 + 8, 8), 0);
        let mut steps = 0;
        // struct kv_entry (bpf/ds/kv.h): a 56-byte header, then the key
        while e != 0 && in_heap(e, HDR) && steps < 100_000 {
            let h = read(e, HDR as usize);
            let ilen = u32::from_ne_bytes([h[44], h[45], h[46], h[47]]) as u64;
            let klen = u16::from_ne_bytes([h[48], h[49]]) as u64;
            let (egen, expires) = (word(&h, 16), word(&h, 24));
            if in_heap(e + HDR, klen.div_ceil(8) * 8 + ilen) && egen == gen && expires == 0 {
                let key = read(e + HDR, klen as usize);
                let item = read(e + HDR + klen.div_ceil(8) * 8, ilen as usize);
                out.push((key, item));
            }
            e = word(&h, 0);
            steps += 1;
        }
    }
    // SAFETY: the mapping made above.
    unsafe { nix::libc::munmap(p, size as usize) };
    Ok(out)
}

/// Files stored with `memccp -U` (UDP sets with noreply) are in the
/// kernel's table, byte for byte: read back through the heap mapping.
pub fn memccp_entries_readable_from_the_heap() -> Result<()> {
    let l = Live::new()?;
    let mut files = Vec::new();
    for (i, len) in [1usize, 100, 1000].into_iter().enumerate() {
        let path = format!("/tmp/kflex-memccp-{i}");
        let data: Vec<u8> = (0..len).map(|j| (j * 31 + i * 7) as u8).collect();
        std::fs::write(&path, &data)?;
        files.push((format!("kflex-memccp-{i}"), data, path));
    }
    let server = format!("--servers={}:{PORT}", l.net.outer_ip);
    let mut args = vec!["-U", &server];
    args.extend(files.iter().map(|f| f.2.as_str()));
    l.client("memccp", &args)?;
    // noreply: give the datagrams a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while l.offload_counter("sets")? < files.len() as u64 {
        ensure!(
            Instant::now() < deadline,
            "the offload stored {} files",
            l.offload_counter("sets")?
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let entries = table_entries()?;
    for (name, data, _) in &files {
        let (_, item) = entries
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .with_context(|| format!("{name} not in the table ({} entries)", entries.len()))?;
        let mut want = data.clone();
        want.extend(b"\r\n");
        ensure!(
            *item == want,
            "{name}: {} bytes in the table, {} in the file",
            item.len(),
            data.len()
        );
    }
    println!("memccp: {} files read back from the heap", files.len());
    Ok(())
}

/// BMC's policy (`--policy bmc`, the benchmark baseline): memcached owns
/// the keys; a get of a cached key is answered by the kernel, a miss goes
/// to memcached and its reply fills the cache, a set drops the key from the
/// cache and goes to memcached. memaslap verifies every value it gets.
pub fn bmc_policy_caches_and_invalidates() -> Result<()> {
    let l = Live::with_policy("bmc")?;
    let text = |r: Vec<u8>| String::from_utf8_lossy(&r).into_owned();
    ensure!(text(l.udp(1, b"set bk 7 0 2\r\nv1\r\n")?) == "STORED\r\n", "set");
    let gets0 = l.memcached_stat("cmd_get")?;
    ensure!(text(l.udp(2, b"get bk\r\n")?) == "VALUE bk 7 2\r\nv1\r\nEND\r\n", "first get");
    ensure!(l.memcached_stat("cmd_get")? == gets0 + 1, "the miss did not reach memcached");
    ensure!(l.offload_counter("fills")? == 1, "memcached's reply did not fill the cache");
    ensure!(text(l.udp(3, b"get bk\r\n")?) == "VALUE bk 7 2\r\nv1\r\nEND\r\n", "cached get");
    ensure!(l.memcached_stat("cmd_get")? == gets0 + 1, "a cached get reached memcached");
    ensure!(l.offload_counter("hits")? == 1, "hits");
    let inv = l.offload_counter("invalidations")?;
    ensure!(text(l.udp(4, b"set bk 8 0 3\r\nv22\r\n")?) == "STORED\r\n", "second set");
    ensure!(l.offload_counter("invalidations")? == inv + 1, "the set did not drop the key");
    ensure!(text(l.udp(5, b"get bk\r\n")?) == "VALUE bk 8 3\r\nv22\r\nEND\r\n", "stale value");
    ensure!(l.memcached_stat("cmd_get")? == gets0 + 2, "the get after a set was not a miss");
    // Commands the KFlex policy refuses are memcached's here.
    ensure!(text(l.udp(6, b"append bk 0 0 1\r\nx\r\n")?) == "STORED\r\n", "append");
    ensure!(text(l.udp(7, b"get bk\r\n")?) == "VALUE bk 8 4\r\nv22x\r\nEND\r\n", "append");
    let server = format!("{}:{PORT}", l.net.outer_ip);
    let cfg = memaslap_cfg(64, 64)?;
    let out = l.memcaslap(&[
        "-s", &server, "-U", "-F", &cfg, "-T", "2", "-c", "8", "-x", "20000", "-v", "1.0",
    ])?;
    for name in ["verify_failed", "get_misses", "packet_drop", "udp_timeout"] {
        ensure!(memaslap_counter(&out, name)? == 0, "{name} != 0:\n{out}");
    }
    let (hits, fills) = (l.offload_counter("hits")?, l.offload_counter("fills")?);
    println!("BMC policy under memaslap: {hits} hits in the kernel, {fills} fills");
    ensure!(hits > 1000 && fills > 100, "hits {hits}, fills {fills}");
    Ok(())
}

/// Keyless commands go to memcached and come back with its answer.
pub fn keyless_commands_reach_memcached() -> Result<()> {
    let l = Live::new()?;
    let v = String::from_utf8_lossy(&l.udp(1, b"version\r\n")?).into_owned();
    ensure!(v.starts_with("VERSION "), "version: {v:?}");
    let s = String::from_utf8_lossy(&l.udp(2, b"stats\r\n")?).into_owned();
    ensure!(s.starts_with("STAT pid "), "stats: {s:?}");
    ensure!(l.offload_counter("passed")? >= 2, "not counted as passed");
    Ok(())
}

/// The value writer `w` writes at version `seq` for `key`: it names both,
/// then repeats a pattern derived from them, 100 bytes in all.
fn hammer_value(key: usize, w: usize, seq: u64) -> Vec<u8> {
    let mut v = format!("k{key}:w{w}:{seq}:").into_bytes();
    let mut x = ((key as u64 + 1) * 0x9e37_79b9_7f4a_7c15) ^ seq ^ ((w as u64) << 60);
    while v.len() < 100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

/// Checks a get reply's VALUE blocks: each a whole value some writer wrote
/// for that key. Returns how many.
fn check_values(reply: &[u8]) -> Result<usize> {
    let mut rest = reply;
    let mut n = 0;
    while rest.starts_with(b"VALUE ") {
        let eol = rest.windows(2).position(|w| w == b"\r\n").context("VALUE line")?;
        let line = String::from_utf8_lossy(&rest[..eol]).into_owned();
        let f: Vec<&str> = line.split(' ').collect();
        ensure!(f.len() == 4, "line {line:?}");
        let len: usize = f[3].parse()?;
        let data = rest.get(eol + 2..eol + 2 + len).context("short value")?;
        let key: usize = f[1].strip_prefix("h").context("key")?.parse()?;
        let text = String::from_utf8_lossy(data).into_owned();
        let parts: Vec<&str> = text.splitn(4, ':').collect();
        ensure!(
            parts.len() == 4 && parts[0] == format!("k{key}"),
            "foreign value {text:?} for h{key}"
        );
        let w: usize = parts[1].strip_prefix('w').context("writer")?.parse()?;
        let seq: u64 = parts[2].parse()?;
        ensure!(data == hammer_value(key, w, seq), "torn value {text:?} for h{key}");
        rest = &rest[eol + 2 + len + 2..];
        n += 1;
    }
    ensure!(rest == b"END\r\n", "reply ends with {:?}", String::from_utf8_lossy(rest));
    Ok(n)
}

/// Two clients pinned to CPUs 0 and 1 overwrite and read the same 16 keys
/// (single and 16-key gets): every value read is whole and belongs to its
/// key, every request is answered.
pub fn two_cpus_same_keys() -> Result<()> {
    let l = Live::new()?;
    let server = format!("{}:{PORT}", l.net.outer_ip);
    let path = format!("/run/netns/{}", l.net.ns);
    let workers: Vec<_> = (0..2usize)
        .map(|w| {
            let (server, path) = (server.clone(), path.clone());
            std::thread::spawn(move || -> Result<(u64, u64, u64)> {
                let fd = std::fs::File::open(&path)?;
                nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
                pin_to(w)?;
                let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let (mut values, mut busy, mut id) = (0u64, 0u64, 0u16);
                let mut buf = vec![0u8; 2048];
                for i in 0..1500u64 {
                    let key = (i * 7 + w as u64 * 3) as usize % 16;
                    id = id.wrapping_add(1);
                    let text = if i % 10 == 9 {
                        let keys: String = (0..16).map(|k| format!(" h{k}")).collect();
                        format!("get{keys}\r\n").into_bytes()
                    } else if i % 2 == 0 {
                        let v = hammer_value(key, w, i);
                        let mut t = format!("set h{key} 0 0 {}\r\n", v.len()).into_bytes();
                        t.extend(v);
                        t.extend(b"\r\n");
                        t
                    } else {
                        format!("get h{key}\r\n").into_bytes()
                    };
                    let mut req = Vec::new();
                    for v in [id, 0, 1, 0] {
                        req.extend(v.to_be_bytes());
                    }
                    req.extend(&text);
                    s.send_to(&req, &server)?;
                    let n = s.recv(&mut buf).with_context(|| format!("no reply to request {i}"))?;
                    ensure!(n >= 8 && buf[0..2] == id.to_be_bytes(), "reply to another request");
                    let reply = &buf[8..n];
                    if reply.starts_with(b"SERVER_ERROR busy") {
                        busy += 1;
                    } else if text.starts_with(b"set") {
                        ensure!(
                            reply == b"STORED\r\n",
                            "set: {:?}",
                            String::from_utf8_lossy(reply)
                        );
                    } else {
                        values += check_values(reply)? as u64;
                    }
                }
                Ok((values, busy, id as u64))
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        let (values, busy, _) = w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        println!("two CPUs: {values} values checked whole, {busy} busy replies");
        total += values;
    }
    ensure!(total > 1000, "only {total} values read");
    Ok(())
}

/// SIGTERM during a memaslap run: the offload detaches cleanly, memaslap
/// ends, memcached still answers.
pub fn detach_under_load() -> Result<()> {
    let mut l = Live::new()?;
    let cfg = memaslap_cfg(64, 64)?;
    let server = format!("{}:{PORT}", l.net.outer_ip);
    let mut load = std::process::Command::new("ip")
        .args(["netns", "exec", &l.net.ns, "timeout", "-s", "KILL", "120", "memcaslap"])
        .args(["-s", &server, "-U", "-F", &cfg, "-T", "2", "-c", "8", "-t", "10s"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(3));
    let lines = l.detach()?;
    println!("detach: {}", lines.join(" | "));
    let status = load.wait()?;
    ensure!(status.code().is_some(), "memaslap was killed by the timeout");
    let v = String::from_utf8_lossy(&l.udp(3, b"version\r\n")?).into_owned();
    ensure!(v.starts_with("VERSION "), "memcached after detach: {v:?}");
    Ok(())
}
