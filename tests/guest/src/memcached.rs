// SPDX-License-Identifier: GPL-2.0

//! The memcached offload (`bpf/memcached.bpf.c`, `kflex-load --kmemcached`).
//!
//! `protocol_*` tests drive the XDP program with `BPF_PROG_TEST_RUN` and
//! datagrams built here (the only place hand-made packets are used: no real
//! client sends malformed ones), checking each reply byte for byte and the
//! counters. The `memaslap_*` and `*_client` tests run the real offload
//! (`kflex-load --kmemcached`) on a veth in front of a real memcached, driven
//! by real clients from another namespace.

use std::{mem::MaybeUninit, os::fd::AsFd};

use anyhow::{bail, ensure, Context, Result};
use kflex_load::{ds, memcached, skel::memcached::*};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    ProgramInput,
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
        let mut init = [12u32, 0];
        ds::run_ctx(skel.progs.mc_init.as_fd(), &mut init)?;
        ensure!(init[1] == 0, "mc_init: {}", init[1]);
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

    fn counters(&self) -> Result<[u64; 16]> {
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
