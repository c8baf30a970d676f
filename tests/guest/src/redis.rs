// SPDX-License-Identifier: GPL-2.0

//! The Redis GET/SET offload (`kflex-load --kmemcache`, `bpf/redis.bpf.c`)
//! in front of a real redis-server, with a second redis-server alone as the
//! oracle: the same requests, written the same way, must get the same reply
//! bytes from both (except where the offload documents its own errors), and
//! the offloaded server never sees GET or SET.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use kflex_load::{redis, resp, rng::Rng};

use crate::util::*;

/// The offloaded server's port and the oracle's.
pub(crate) const PORT: u16 = 6979;
pub(crate) const ORACLE: u16 = 6980;

/// A redis-server on `port` of every address (no persistence), killed on drop.
pub(crate) struct Server(std::process::Child);

impl Server {
    pub(crate) fn start(port: u16) -> Result<Server> {
        let p = port.to_string();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &p, "--bind", "0.0.0.0", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--io-threads", "1"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !redis::tcp_listener(port) {
            ensure!(Instant::now() < deadline, "redis-server did not start on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Both servers and the offload in front of the first.
pub(crate) struct Live {
    server: Server,
    _oracle: Server,
    offload: Option<Background>,
}

impl Live {
    fn new() -> Result<Live> {
        Live::with("--kmemcache")
    }

    /// With the offload `flag` (--kmemcache or --kredis).
    pub(crate) fn with(flag: &str) -> Result<Live> {
        Live::with_args(&[flag])
    }

    /// With the offload and its options `args` (the first --kmemcache or --kredis).
    pub(crate) fn with_args(args: &[&str]) -> Result<Live> {
        ensure_kflex()?;
        let server = Server::start(PORT)?;
        let oracle = Server::start(ORACLE)?;
        let port = PORT.to_string();
        let mut all = args.to_vec();
        all.extend(["--port", &port, "--heap-size", "64M"]);
        let mut off = Background::spawn("kflex-load", &all)?;
        off.wait_for("ready:", Duration::from_secs(180))?;
        Ok(Live { server, _oracle: oracle, offload: Some(off) })
    }

    /// Detaches (SIGTERM); returns kflex-load's output.
    pub(crate) fn detach(&mut self) -> Result<Vec<String>> {
        let off = self.offload.take().context("not attached")?;
        let (ok, lines) = off.terminate()?;
        ensure!(ok, "kflex-load failed: {lines:?}");
        ensure!(lines.iter().any(|l| l == "detached"), "no 'detached': {lines:?}");
        Ok(lines)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(off) = self.offload.take() {
            let _ = off.terminate();
        }
    }
}

pub(crate) fn connect(port: u16) -> Result<TcpStream> {
    let s =
        TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to {port}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// A request in RESP: an array of bulk strings.
pub(crate) fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend(format!("${}\r\n", a.len()).bytes());
        v.extend(*a);
        v.extend(b"\r\n");
    }
    v
}

/// Reads one complete RESP reply (simple, error, integer, bulk, array); a
/// reply that is not RESP is an error.
pub(crate) fn read_reply(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>> {
    loop {
        if let Some((_, n)) = resp::parse(buf).with_context(|| {
            format!("a reply that is not RESP: {:?}", String::from_utf8_lossy(buf))
        })? {
            return Ok(buf.drain(..n).collect());
        }
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).context("reading a reply")?;
        if n == 0 {
            bail!(
                "connection closed with {} bytes pending: {:?}",
                buf.len(),
                String::from_utf8_lossy(buf)
            );
        }
        buf.extend(&chunk[..n]);
    }
}

/// Sends `reqs` (in one write, or fragmented: a request of up to 4 KiB one
/// byte per write, a longer one in writes of 1 to 2000 bytes) and reads one
/// reply each. (Fragmented, a message skb is made of many segments: the
/// offload must make it linear before resizing it into the reply.)
pub(crate) fn exchange(port: u16, reqs: &[Vec<u8>], bytewise: bool) -> Result<Vec<Vec<u8>>> {
    let mut s = connect(port)?;
    if bytewise {
        let mut rng = Rng::new(reqs.len() as u64);
        for r in reqs {
            let mut at = 0;
            while at < r.len() {
                let n = if r.len() <= 4096 { 1 } else { 1 + rng.below(2000) as usize };
                let n = n.min(r.len() - at);
                s.write_all(&r[at..at + n])?;
                at += n;
            }
        }
    } else {
        s.write_all(&reqs.concat())?;
    }
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    for (i, r) in reqs.iter().enumerate() {
        let got = read_reply(&mut s, &mut buf).with_context(|| {
            let so_far: Vec<String> = out.iter().map(|g: &Vec<u8>| show(g)).collect();
            format!(
                "reply to request {i} {} (bytewise {bytewise}; replies so far {so_far:?})",
                show(r)
            )
        })?;
        out.push(got);
    }
    Ok(out)
}

pub(crate) fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > 120 {
        format!("{}... ({} bytes)", &s[..120], b.len())
    } else {
        format!("{s:?}")
    }
}

/// Counter `name` from kflex-load's last lines (`name value`); `u64::MAX`
/// when it is not there.
fn counter(out: &[String], name: &str) -> u64 {
    out.iter()
        .find_map(|l| l.trim().strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(u64::MAX)
}

/// `redis-benchmark -t get,set` with `args` through the offload: its CSV,
/// which must hold both tests and no error.
fn get_set_benchmark(args: &[&str]) -> Result<String> {
    let port = PORT.to_string();
    let mut all = vec!["-p", &port, "-t", "get,set"];
    all.extend(args);
    all.push("--csv");
    let csv = sh("redis-benchmark", &all)?;
    ensure!(
        csv.contains("\"SET\"") && csv.contains("\"GET\"") && !csv.to_lowercase().contains("error"),
        "redis-benchmark {args:?}: {csv}"
    );
    Ok(csv)
}

/// Owned requests and the replies the offload must give, in order.
fn owned_cases() -> Vec<(Vec<u8>, Vec<u8>)> {
    let binary: Vec<u8> = (0..=255u8).cycle().take(300).collect();
    let v2048 = vec![b'x'; 2048];
    let v3m = vec![b'w'; 3 << 20];
    let too_big = b"-ERR value too large for the KFlex offload\r\n".to_vec();
    let bulk = |v: &[u8]| {
        [format!("${}\r\n", v.len()).into_bytes(), v.to_vec(), b"\r\n".to_vec()].concat()
    };
    // values of every length class: in the entry (up to 2048 bytes), in
    // one message but a separate fill (up to ~8 KiB), framed in chunks (the
    // rest), up to the default --max-value of 64 KiB; binary, with CRLF
    let mut sized = Vec::new();
    for (i, len) in
        [1usize, 2049, 4095, 4096, 8100, 8192, 20000, 60 * 1024, 65536].into_iter().enumerate()
    {
        let v: Vec<u8> =
            (0..len).map(|j| b"\r\n\0ab$*"[(i + j) % 7].wrapping_add((j / 7) as u8)).collect();
        let k = format!("sized{len}").into_bytes();
        sized.push((resp(&[b"SET", &k, &v]), b"+OK\r\n".to_vec()));
        sized.push((resp(&[b"GET", &k]), bulk(&v)));
    }
    let v65537 = vec![b'y'; 65537];
    let mut cases = vec![
        (resp(&[b"SET", b"k1", b"v1"]), b"+OK\r\n".to_vec()),
        (resp(&[b"GET", b"k1"]), b"$2\r\nv1\r\n".to_vec()),
        (resp(&[b"GET", b"missing"]), b"$-1\r\n".to_vec()),
        (resp(&[b"set", b"bin", &binary]), b"+OK\r\n".to_vec()),
        (
            resp(&[b"get", b"bin"]),
            [b"$300\r\n".to_vec(), binary.clone(), b"\r\n".to_vec()].concat(),
        ),
        (resp(&[b"SET", b"empty", b""]), b"+OK\r\n".to_vec()),
        (resp(&[b"GET", b"empty"]), b"$0\r\n\r\n".to_vec()),
        (resp(&[b"SET", b"big", &v2048]), b"+OK\r\n".to_vec()),
        (
            resp(&[b"GET", b"big"]),
            [b"$2048\r\n".to_vec(), v2048.clone(), b"\r\n".to_vec()].concat(),
        ),
        (resp(&[b"SET", b"big", &v65537]), too_big.clone()),
        (resp(&[b"SET", b"k3m", &v3m]), too_big.clone()),
        (resp(&[b"GET", b"k3m"]), b"$-1\r\n".to_vec()),
        (
            resp(&[b"GET", b"big"]),
            [b"$2048\r\n".to_vec(), v2048.clone(), b"\r\n".to_vec()].concat(),
        ),
        (b"SET inl ine\r\n".to_vec(), b"+OK\r\n".to_vec()),
        (b"GET inl\r\n".to_vec(), b"$3\r\nine\r\n".to_vec()),
        (
            resp(&[b"SET", b"k", b"v", b"EX", b"10"]),
            b"-ERR SET option not supported by the offload\r\n".to_vec(),
        ),
        (resp(&[b"GET"]), b"-ERR wrong number of arguments for 'get' command\r\n".to_vec()),
    ];
    cases.extend(sized);
    // a long value replaced by a short one and back
    cases.push((resp(&[b"SET", b"sized65536", b"short"]), b"+OK\r\n".to_vec()));
    cases.push((resp(&[b"GET", b"sized65536"]), b"$5\r\nshort\r\n".to_vec()));
    cases.push((resp(&[b"SET", b"big", &v65537[1..]]), b"+OK\r\n".to_vec()));
    cases.push((resp(&[b"GET", b"big"]), bulk(&v65537[1..])));
    cases
}

/// Sends the cases' requests on one connection (pipelined in one write, or
/// fragmented, see [`exchange`]) and checks every reply.
pub(crate) fn check_cases(cases: &[(Vec<u8>, Vec<u8>)], bytewise: bool) -> Result<()> {
    let reqs: Vec<Vec<u8>> = cases.iter().map(|c| c.0.clone()).collect();
    let got = exchange(PORT, &reqs, bytewise)?;
    for ((req, want), got) in cases.iter().zip(&got) {
        ensure!(
            got == want,
            "bytewise {bytewise}: {} got {} want {}",
            show(req),
            show(got),
            show(want)
        );
    }
    Ok(())
}

/// The requests of [`round_trips`] written in fragments (see [`exchange`]):
/// a request of up to 4 KiB one byte per write, longer ones (20000 bytes,
/// 60 KiB, 3 MiB) in random pieces, so strparser waits for the rest of framed
/// chunks after SK_DROP verdicts (the case patch 0021 fixed: a reply used to
/// go missing).
pub fn fragmented_requests() -> Result<()> {
    let _live = Live::new()?;
    check_cases(&owned_cases(), true)?;
    // and a pipeline of 1,000 requests in one write, values of every size
    // class among them
    let mut cases = Vec::new();
    for i in 0..500usize {
        let v = vec![b'a' + (i % 26) as u8; [3, 700, 2500, 9000][i % 4]];
        let k = format!("pipe:{}", i % 97).into_bytes();
        cases.push((resp(&[b"SET", &k, &v]), b"+OK\r\n".to_vec()));
        let want = [format!("${}\r\n", v.len()).into_bytes(), v, b"\r\n".to_vec()].concat();
        cases.push((resp(&[b"GET", &k]), want));
    }
    check_cases(&cases, false)
}

/// Round trips through the offload: owned requests are answered in the
/// kernel (the server behind never gets their keys), the rest by
/// redis-server, in order, inline and RESP forms, values with CR, LF and
/// NUL, values of 0 to 65536 bytes stored (up to 2048 in the entry, longer
/// ones filled from one message or chunk by chunk, and answered at full
/// length), 65537 and 3 MiB refused, and the connection goes on after each,
/// all pipelined in one write (written in fragments: [`fragmented_requests`]).
/// Then long values through EVAL, on a connection that passed a request.
pub fn round_trips() -> Result<()> {
    let mut live = Live::new()?;
    let cases = owned_cases();
    check_cases(&cases, false)?;
    let sized20000 = cases
        .iter()
        .find(|c| c.0 == resp(&[b"GET", b"sized20000"]))
        .map(|c| c.1.clone())
        .context("the 20000-byte case")?;
    let long: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    let long_reply = [b"$65536\r\n".to_vec(), long.clone(), b"\r\n".to_vec()].concat();
    // Passed requests, then owned ones on the same connection: in order,
    // the owned replies now made by redis-server through EVAL.
    let mixed = vec![
        resp(&[b"PING"]),
        resp(&[b"GET", b"k1"]),
        resp(&[b"INCR", b"counter"]),
        resp(&[b"SET", b"k2", b"after a pass"]),
        resp(&[b"GET", b"k2"]),
        resp(&[b"GET", b"nothing"]),
        resp(&[b"SET", b"k3"]),
        resp(&[b"GET", b"sized20000"]),
        resp(&[b"SET", b"k4", &long]),
        resp(&[b"GET", b"k4"]),
        resp(&[b"ECHO", b"end"]),
    ];
    let got = exchange(PORT, &mixed, false)?;
    let want: Vec<&[u8]> = vec![
        b"+PONG\r\n",
        b"$2\r\nv1\r\n",
        b":1\r\n",
        b"+OK\r\n",
        b"$12\r\nafter a pass\r\n",
        b"$-1\r\n",
        b"-ERR wrong number of arguments for 'set' command\r\n",
        &sized20000,
        b"+OK\r\n",
        &long_reply,
        b"$3\r\nend\r\n",
    ];
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        ensure!(g == w, "mixed #{i} {}: got {} want {}", show(&mixed[i]), show(g), show(w));
    }
    // redis-server itself holds none of the owned keys: only the counter
    let dbsize = exchange(PORT, &[resp(&[b"DBSIZE"])], false)?;
    ensure!(dbsize[0] == b":1\r\n", "DBSIZE behind the offload: {}", show(&dbsize[0]));
    let out = live.detach()?;
    let count = |name: &str| counter(&out, name);
    ensure!(count("eval_routed") >= 8 && count("reply_failures") == 0, "{out:?}");
    ensure!(count("lock_timeouts") == 0 && count("raw_conns") == 0, "{out:?}");
    println!("{}", out.join("\n"));
    Ok(())
}

/// With `--max-value 1048576`: 1 MiB values stored and answered at full
/// length (from the kernel, and through EVAL once the connection passed a
/// request), pipelined; one byte more refused; the connection goes on.
pub fn values_up_to_one_mib() -> Result<()> {
    let mut live = Live::with_args(&["--kmemcache", "--max-value", "1048576"])?;
    let mib: Vec<u8> =
        (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let other: Vec<u8> = mib.iter().rev().copied().collect();
    let bulk = |v: &[u8]| {
        [format!("${}\r\n", v.len()).into_bytes(), v.to_vec(), b"\r\n".to_vec()].concat()
    };
    let mut over = mib.clone();
    over.push(b'!');
    check_cases(
        &[
            (resp(&[b"SET", b"m1", &mib]), b"+OK\r\n".to_vec()),
            (resp(&[b"SET", b"m2", &other]), b"+OK\r\n".to_vec()),
            (resp(&[b"GET", b"m1"]), bulk(&mib)),
            (resp(&[b"GET", b"m2"]), bulk(&other)),
            (
                resp(&[b"SET", b"m3", &over]),
                b"-ERR value too large for the KFlex offload\r\n".to_vec(),
            ),
            (resp(&[b"GET", b"m3"]), b"$-1\r\n".to_vec()),
            (resp(&[b"GET", b"m1"]), bulk(&mib)),
        ],
        false,
    )?;
    let got =
        exchange(PORT, &[resp(&[b"PING"]), resp(&[b"GET", b"m2"]), resp(&[b"GET", b"m1"])], false)?;
    ensure!(got[0] == b"+PONG\r\n", "PING: {}", show(&got[0]));
    ensure!(got[1] == bulk(&other) && got[2] == bulk(&mib), "1 MiB values through EVAL differ");
    let out = live.detach()?;
    let count = |name: &str| counter(&out, name);
    ensure!(count("eval_routed") == 2 && count("lock_timeouts") == 0, "{out:?}");
    ensure!(count("reply_failures") == 0 && count("raw_conns") == 0, "{out:?}");
    Ok(())
}

/// Runs cancelled by KFlex's budget (`kernel.kflex_budget_us` at its
/// lowest, 100 µs, against GETs that copy 1 MiB out of the heap): the
/// request goes on to redis-server renamed, which answers an unknown-command
/// error in its place and stores nothing, and the replies after it on the
/// connection keep their order (through EVAL from then on); with the budget
/// back, the value reads back whole.
pub fn cancelled_runs_keep_order() -> Result<()> {
    let mut live = Live::with_args(&["--kmemcache", "--max-value", "1048576"])?;
    let mib: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let bulk = [b"$1048576\r\n".to_vec(), mib.clone(), b"\r\n".to_vec()].concat();
    let mut s = connect(PORT)?;
    let mut buf = Vec::new();
    let mut ask = |s: &mut TcpStream, reqs: &[Vec<u8>]| -> Result<Vec<Vec<u8>>> {
        s.write_all(&reqs.concat())?;
        reqs.iter().map(|_| read_reply(s, &mut buf)).collect()
    };
    let got = ask(&mut s, &[resp(&[b"SET", b"m", &mib]), resp(&[b"SET", b"k", b"before"])])?;
    ensure!(got.iter().all(|g| g == b"+OK\r\n"), "SETs: {got:?}");
    let got = {
        let _budget = kflex_load::cancel::SysctlGuard::budget_us(100)?;
        ask(&mut s, &[resp(&[b"GET", b"m"]), resp(&[b"PING"])])?
    };
    ensure!(
        got[0].starts_with(b"-ERR unknown command 'KF?'"),
        "the cancelled GET: {}",
        show(&got[0])
    );
    ensure!(got[1] == b"+PONG\r\n", "after it: {}", show(&got[1]));
    let cancelled = show(&got[0]);
    let got = ask(
        &mut s,
        &[
            resp(&[b"GET", b"k"]),
            resp(&[b"SET", b"k", b"after"]),
            resp(&[b"GET", b"k"]),
            resp(&[b"GET", b"m"]),
            resp(&[b"DBSIZE"]),
        ],
    )?;
    let want: [&[u8]; 5] = [b"$6\r\nbefore\r\n", b"+OK\r\n", b"$5\r\nafter\r\n", &bulk, b":0\r\n"];
    for (i, w) in want.iter().enumerate() {
        ensure!(
            got[i] == *w,
            "request {i} after the cancelled one: got {} want {}",
            show(&got[i]),
            show(w)
        );
    }
    drop(s);
    let out = live.detach()?;
    let count = |name: &str| counter(&out, name);
    ensure!(count("cancelled") == 1 && count("eval_routed") == 4, "{out:?}");
    println!("the cancelled GET's reply: {cancelled}");
    Ok(())
}

/// SETs cut off by their client half-way through a 60 KiB value: the
/// offload has allocated the value's entry (the heap's large bytes grow)
/// and frees it when the connection closes (they come back); a whole SET
/// keeps its entry.
pub fn cut_off_sets_free_their_value() -> Result<()> {
    let mut live = Live::new()?;
    let large = || -> Result<u64> {
        let heap = kflex_load::heapstats::read()?
            .into_iter()
            .filter(|h| h.get("size") == 64 << 20)
            .max_by_key(|h| h.get("id"))
            .context("the offload's 64 MiB heap")?;
        Ok(heap.get("large_bytes"))
    };
    let value = vec![b'c'; 60 << 10];
    let req = resp(&[b"SET", b"cut", &value]);
    let before = large()?;
    let mut peak = 0;
    for _ in 0..20 {
        let mut s = connect(PORT)?;
        s.write_all(&req[..req.len() / 2])?;
        // the verdict has seen the first chunks once the heap shows them
        let t = Instant::now();
        let mut now = large()?;
        while now < before + (60 << 10) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
            now = large()?;
        }
        peak = peak.max(now);
        ensure!(
            now >= before + (60 << 10),
            "no entry for the cut-off SET: {before} -> {now} large bytes"
        );
        drop(s);
    }
    let t = Instant::now();
    while large()? != before && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = large()?;
    ensure!(after == before, "20 cut-off SETs left {} large bytes", after.saturating_sub(before));
    check_cases(
        &[
            (req.clone(), b"+OK\r\n".to_vec()),
            (
                resp(&[b"GET", b"cut"]),
                [b"$61440\r\n".to_vec(), value.clone(), b"\r\n".to_vec()].concat(),
            ),
        ],
        false,
    )?;
    ensure!(large()? >= before + (60 << 10), "the stored value's entry is gone");
    live.detach()?;
    println!("cut-off SETs: large bytes {before} -> {peak} (one at a time) -> {after}");
    Ok(())
}

/// A seeded random mix of owned and other commands, pipelined in random
/// batches on several connections, against the offload and against
/// redis-server alone: identical reply bytes. The keys of other commands
/// are kept apart from the owned ones (a command on an owned key is not
/// refused yet, so it would see redis-server's key space), and values stay
/// within the offload's limit (its error for larger ones is checked in
/// [`round_trips`]).
pub fn differential() -> Result<()> {
    let _live = Live::new()?;
    let mut rng = Rng::new(0x005e_ed12);
    let mut total = 0usize;
    for conn in 0..12 {
        // pure connections (owned only) and mixed ones; RESP3 on three
        let pure = conn % 3 == 0;
        let mut reqs = Vec::new();
        if conn % 4 == 1 {
            reqs.push(resp(&[b"HELLO", b"3"]));
        }
        for _ in 0..(50 + rng.below(150)) {
            let k = format!("key:{}", rng.below(40));
            let pick = if pure { rng.below(2) } else { rng.below(6) };
            let req = match pick {
                0 => resp(&[b"GET", k.as_bytes()]),
                1 => {
                    // mostly short, some framed in chunks
                    let len = if rng.below(10) == 0 { rng.below(30000) } else { rng.below(2049) };
                    let len = len as usize;
                    let v: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
                    resp(&[b"SET", k.as_bytes(), &v])
                }
                2 => resp(&[b"INCR", format!("ctr:{}", rng.below(5)).as_bytes()]),
                3 => resp(&[b"PING"]),
                4 => format!("GET {k}\r\n").into_bytes(),
                _ => resp(&[b"ECHO", format!("e{}", rng.below(1000)).as_bytes()]),
            };
            reqs.push(req);
        }
        same_replies(conn, &reqs, &mut rng)?;
        total += reqs.len();
    }
    println!("differential: {total} requests on 12 connections, 0 mismatches");
    Ok(())
}

/// Sends `reqs` on a new connection to the offload and one to the oracle,
/// in the same random pipelined batches of 1 to 20, and checks that every
/// reply is the same bytes (`conn` names the connection in the error), but
/// for `HELLO`'s, which name the connection's id: the same kind of reply.
pub(crate) fn same_replies(conn: usize, reqs: &[Vec<u8>], rng: &mut Rng) -> Result<()> {
    let mut at = 0;
    let (mut a, mut b) = (connect(PORT)?, connect(ORACLE)?);
    let (mut ba, mut bb) = (Vec::new(), Vec::new());
    while at < reqs.len() {
        let n = (1 + rng.below(20) as usize).min(reqs.len() - at);
        let batch = reqs[at..at + n].concat();
        a.write_all(&batch)?;
        b.write_all(&batch)?;
        for (i, req) in reqs.iter().enumerate().skip(at).take(n) {
            let (ra, rb) = (read_reply(&mut a, &mut ba)?, read_reply(&mut b, &mut bb)?);
            let hello = req.get(8..13).is_some_and(|w| w.eq_ignore_ascii_case(b"HELLO"));
            ensure!(
                ra == rb || (hello && ra.first() == rb.first()),
                "connection {conn} request {i} {}: offload {} oracle {}",
                show(req),
                show(&ra),
                show(&rb)
            );
        }
        at += n;
    }
    Ok(())
}

/// Requests redis-server cannot parse: with the offload, the connection
/// switches to passthrough and redis-server answers (and closes) exactly as
/// it does alone; other connections keep working.
pub fn malformed_requests_pass_through() -> Result<()> {
    let _live = Live::new()?;
    let cases: [&[u8]; 6] = [
        b"*abc\r\n",
        b"*2\r\n$x\r\nGET\r\n",
        b"*2\r\n$3\r\nGET\r\n$-5\r\n",
        b"*1\r\n$99999999999\r\n",
        b"*1\r\n$3\r\nGETX\r\n",
        b"*2\r\n$3\r\nGET\r\n:12\r\n",
    ];
    for case in cases {
        let mut out = Vec::new();
        for port in [PORT, ORACLE] {
            let mut s = connect(port)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(case)?;
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            // until redis-server closes, or 3 s of silence
            let closed = loop {
                match s.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(n) => got.extend(&chunk[..n]),
                    Err(_) => break false,
                }
            };
            out.push((got, closed));
        }
        ensure!(
            out[0] == out[1],
            "{}: offload {} (closed {}) oracle {} (closed {})",
            show(case),
            show(&out[0].0),
            out[0].1,
            show(&out[1].0),
            out[1].1
        );
    }
    // the offload still answers on a new connection
    let got = exchange(PORT, &[resp(&[b"SET", b"after", b"1"]), resp(&[b"GET", b"after"])], false)?;
    ensure!(got[1] == b"$1\r\n1\r\n", "after the malformed ones: {}", show(&got[1]));
    Ok(())
}

/// redis-cli and redis-benchmark through the offload: `--pipe` of 100,000
/// SETs reports no error, redis-cli reads back what the pipe stored and a
/// 64 KiB binary value it stored from a file (`-x`), redis-benchmark's GET
/// and SET run without errors, with 64-byte and 20000-byte values.
pub fn real_clients() -> Result<()> {
    let mut live = Live::new()?;
    let mut input = Vec::new();
    for i in 0..100_000 {
        input.extend(resp(&[
            b"SET",
            format!("key:{i:012}").as_bytes(),
            format!("v{i}").as_bytes(),
        ]));
    }
    let mut child = std::process::Command::new("redis-cli")
        .args(["-p", &PORT.to_string(), "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(&input)?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.contains("errors: 0, replies: 100000"), "redis-cli --pipe: {text}");
    let got = sh("redis-cli", &["-p", &PORT.to_string(), "GET", "key:000000004242"])?;
    ensure!(got.trim() == "v4242", "redis-cli GET: {got:?}");
    // a 64 KiB binary value from a file (CR, LF, NUL in it), and back
    let value: Vec<u8> =
        (0..65536u32).map(|i| b"\r\n\0xyz"[(i % 6) as usize] ^ (i / 6) as u8).collect();
    let mut child = std::process::Command::new("redis-cli")
        .args(["-p", &PORT.to_string(), "-x", "SET", "file"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(&value)?;
    let out = child.wait_with_output()?;
    ensure!(out.stdout == b"OK\n", "redis-cli -x SET: {}", show(&out.stdout));
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &PORT.to_string(), "--raw", "GET", "file"])
        .output()?;
    ensure!(
        out.stdout.len() == value.len() + 1 && out.stdout[..value.len()] == value[..],
        "redis-cli --raw GET of the 64 KiB value: {} bytes back",
        out.stdout.len()
    );
    let bench = get_set_benchmark(&["-n", "4000", "-r", "1000", "-d", "64", "-c", "4", "-P", "8"])?;
    // values framed in chunks and answered at full length
    let long = get_set_benchmark(&["-n", "400", "-r", "50", "-d", "20000", "-c", "4"])?;
    let out = live.detach()?;
    println!("{}\n{}\n{}", bench.trim(), long.trim(), out.join("\n"));
    Ok(())
}

/// Starts `redis-benchmark -t set,get --csv` with `args` on the offload's
/// port, on CPUs `cpus` (taskset), killed after 300 s.
fn spawn_benchmark(cpus: &str, args: &[&str]) -> Result<std::process::Child> {
    spawn_benchmark_from(None, "127.0.0.1", cpus, args)
}

/// [`spawn_benchmark`] against `host`, from network namespace `netns` when
/// given (`ip netns exec`).
fn spawn_benchmark_from(
    netns: Option<&str>,
    host: &str,
    cpus: &str,
    args: &[&str],
) -> Result<std::process::Child> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "taskset"]);
            c
        }
        None => std::process::Command::new("taskset"),
    };
    cmd.args(["-c", cpus, "timeout", "-s", "KILL", "300", "redis-benchmark"])
        .args(["-h", host, "-p", &PORT.to_string(), "-t", "set,get", "--csv"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting redis-benchmark")
}

/// Whether reply `g` is a bulk string of exactly `n` bytes.
fn whole_bulk(g: &[u8], n: usize) -> bool {
    let head = format!("${n}\r\n");
    g.len() == head.len() + n + 2 && g.starts_with(head.as_bytes()) && g.ends_with(b"\r\n")
}

/// Waits for a [`spawn_benchmark`] run: it must exit 0 (a lost reply leaves
/// it waiting until the timeout kills it), report SET and GET and print no
/// error. Returns its output.
fn benchmark_done(c: std::process::Child) -> Result<String> {
    let out = c.wait_with_output()?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "redis-benchmark: {:?}: {text}", out.status);
    ensure!(
        text.contains("\"SET\"")
            && text.contains("\"GET\"")
            && !text.to_lowercase().contains("error"),
        "redis-benchmark: {text}"
    );
    Ok(text)
}

/// SIGTERM during a redis-benchmark run: the loader switches the offloaded
/// connections to passthrough and waits for them to close; redis-benchmark
/// gets every reply (a lost one would leave it waiting until the timeout
/// kills it) and reports no error; redis-server still answers afterwards.
pub fn detach_under_load() -> Result<()> {
    let mut live = Live::new()?;
    let port = PORT.to_string();
    let load =
        spawn_benchmark("0-1", &["-n", "40000", "-r", "1000", "-d", "64", "-c", "8", "-P", "4"])?;
    std::thread::sleep(Duration::from_secs(3));
    let lines = live.detach()?;
    println!("detach: {}", lines.join(" | "));
    ensure!(
        lines.iter().any(|l| l.contains("switched to passthrough")),
        "the detach found no offloaded connection (redis-benchmark over too soon?): {lines:?}"
    );
    let text = benchmark_done(load)?;
    let pong = sh("redis-cli", &["-p", &port, "PING"])?;
    ensure!(pong.trim() == "PONG", "redis-server after the detach: {pong:?}");
    println!("{}", text.trim());
    Ok(())
}

/// Other commands on a key the offload holds are refused with `-ERR key is
/// held by the KFlex offload` (key positions from redis-server's COMMAND
/// table: single key, every key, every other key, the ninth argument, a key
/// 3 KiB into the request, EVAL's keys, a subcommand's key), from the kernel while
/// the connection is pure and through EVAL after a passed request; values
/// in key-value lists are not keys; other keys reach redis-server. A request
/// over 8 KiB (framed in chunks) with a held key in its first chunk is
/// consumed and refused at its end.
pub fn other_commands_on_held_keys() -> Result<()> {
    let mut live = Live::new()?;
    let held = b"-ERR key is held by the KFlex offload\r\n".to_vec();
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (resp(&[b"SET", b"held1", b"v"]), b"+OK\r\n".to_vec()),
        (resp(&[b"APPEND", b"held1", b"x"]), held.clone()),
        (resp(&[b"incr", b"held1"]), held.clone()),
        (resp(&[b"DEL", b"other", b"held1"]), held.clone()),
        (resp(&[b"MSET", b"a", b"1", b"held1", b"2"]), held.clone()),
        (b"STRLEN held1\r\n".to_vec(), held.clone()),
        // held1 is a value here, not a key: passed
        (resp(&[b"MSET", b"b", b"held1", b"c", b"3"]), b"+OK\r\n".to_vec()),
        // now through EVAL, behind the passed request
        (resp(&[b"EXISTS", b"held1"]), held.clone()),
        (resp(&[b"EXISTS", b"b", b"c", b"nothing"]), b":2\r\n".to_vec()),
        (resp(&[b"GET", b"held1"]), b"$1\r\nv\r\n".to_vec()),
        (resp(&[b"TYPE", b"held1"]), held.clone()),
        // the ninth argument, and a key 3 KiB into the request
        (resp(&[b"MGET", b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"held1"]), held.clone()),
        (resp(&[b"MSET", b"big", &[b'x'; 3000], b"held1", b"2"]), held.clone()),
        // keys that move (EVAL's KEYS) and a subcommand's key
        (resp(&[b"EVAL", b"return redis.call('exists', KEYS[1])", b"1", b"held1"]), held.clone()),
        (resp(&[b"OBJECT", b"ENCODING", b"held1"]), held.clone()),
        (resp(&[b"OBJECT", b"ENCODING", b"b"]), b"$6\r\nembstr\r\n".to_vec()),
        (resp(&[b"EVAL", b"return redis.call('exists', KEYS[1])", b"1", b"b"]), b":1\r\n".to_vec()),
        // requests over 8 KiB, framed in chunks: a held key in the first
        // chunk refuses the whole request at its end; other keys pass
        (resp(&[b"APPEND", b"held1", &[b'y'; 9000]]), held.clone()),
        (resp(&[b"GET", b"held1"]), b"$1\r\nv\r\n".to_vec()),
        (resp(&[b"APPEND", b"long", &[b'y'; 9000]]), b":9000\r\n".to_vec()),
        (resp(&[b"STRLEN", b"long"]), b":9000\r\n".to_vec()),
    ];
    check_cases(&cases, false)?;
    let out = live.detach()?;
    ensure!(
        out.iter().any(|l| l.contains("key is held by the KFlex offload (key positions of")),
        "kflex-load did not state the rule: {out:?}"
    );
    ensure!(
        out.iter().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["held_refused", "12"]),
        "held_refused is not 12: {out:?}"
    );
    Ok(())
}

/// Two redis-benchmark processes, pinned to the two CPUs, SET and GET the
/// same 200 keys through the offload at once (bucket locks on both CPUs);
/// both finish without an error, and afterwards every key reads back as a
/// miss or as one of the two processes' whole values (redis-benchmark 7.0
/// makes one value per run: 64 bytes from one, 100 from the other), never
/// a mix of both.
pub fn two_cpus_same_keys() -> Result<()> {
    let mut live = Live::new()?;
    let spawn = |cpu, size| {
        spawn_benchmark(cpu, &["-n", "20000", "-r", "200", "-d", size, "-c", "4", "-P", "4"])
    };
    let loads = [spawn("0", "64")?, spawn("1", "100")?];
    for l in loads {
        benchmark_done(l)?;
    }
    let reqs: Vec<Vec<u8>> =
        (0..200).map(|i| resp(&[b"GET", format!("key:{i:012}").as_bytes()])).collect();
    let got = exchange(PORT, &reqs, false)?;
    let mut values = std::collections::BTreeSet::new();
    for (r, g) in reqs.iter().zip(&got) {
        if g == b"$-1\r\n" {
            continue;
        }
        ensure!(whole_bulk(g, 64) || whole_bulk(g, 100), "{}: {}", show(r), show(g));
        values.insert(g.clone());
    }
    let hits = got.iter().filter(|g| g.as_slice() != b"$-1\r\n").count();
    ensure!(hits > 100, "only {hits} of 200 keys were set");
    // at most one value of each length: anything else mixes the two writers
    let lens: std::collections::BTreeSet<usize> = values.iter().map(|v| v.len()).collect();
    ensure!(
        lens.len() == values.len(),
        "{} different values of {} lengths from two writers (torn values?)",
        values.len(),
        lens.len()
    );
    let out = live.detach()?;
    println!(
        "{hits} of 200 keys hold a whole value, {} distinct\n{}",
        values.len(),
        out.join("\n")
    );
    Ok(())
}

/// Receive processing on redis-server's CPU while the stream programs also
/// run there in process context (strparser's worker, the backlog in
/// `release_sock()`): as `make bench-redis` sets it up, clients in a
/// namespace on CPU 0 reach redis-server on CPU 1 over a veth whose receive
/// side (GRO, threaded NAPI pinned to CPU 1, RPS) runs on CPU 1. After
/// 20,000 SETs through `redis-cli --pipe`, 16 connections SET and GET
/// 64-byte values one at a time and 16 deep, and 1 KiB values one at a time,
/// twice. Every reply must be the right one: a softirq
/// running another connection's program in the middle of a run on the same
/// CPU (they share the per-CPU scratch) answered "ERR value too large" or
/// bytes redis-benchmark could not parse (without patch 0025).
pub fn receive_on_the_server_cpu() -> Result<()> {
    let veth = VethNs::new(14)?;
    sh("ethtool", &["-K", &veth.outer, "gro", "on"])?;
    sh("ip", &["netns", "exec", &veth.ns, "ethtool", "-K", &veth.inner, "gro", "on"])?;
    std::fs::write(format!("/sys/class/net/{}/threaded", veth.outer), "1")?;
    std::fs::write(format!("/sys/class/net/{}/queues/rx-0/rps_cpus", veth.outer), "2")?;
    let napi = sh("pgrep", &["-f", &format!("napi/{}", veth.outer)])?;
    for pid in napi.split_whitespace() {
        sh("taskset", &["-pc", "1", pid])?;
    }
    let mut live = Live::new()?;
    sh("taskset", &["-apc", "1", &live.server.0.id().to_string()])?;
    let port = PORT.to_string();
    // 20,000 pipelined SETs first, as the benchmark's preload
    let preload = format!(
        "awk 'BEGIN {{ for (i = 0; i < 20000; i++) printf \"SET key:%012d %064d\\r\\n\", i, i }}' \
         | timeout 300 redis-cli -h {} -p {port} --pipe",
        veth.outer_ip
    );
    let out = sh("ip", &["netns", "exec", &veth.ns, "bash", "-c", &preload])?;
    ensure!(out.contains("errors: 0, replies: 20000"), "preload: {out}");
    let configs = [["-d", "64", "-P", "1"], ["-d", "64", "-P", "16"], ["-d", "1024", "-P", "1"]];
    // twice: without the fix one pass showed the bug about every other time
    for args in configs.iter().chain(configs.iter()) {
        let load = spawn_benchmark_from(
            Some(&veth.ns),
            &veth.outer_ip,
            "0",
            &[&["-n", "20000", "-r", "2000", "-c", "16"][..], &args[..]].concat(),
        )?;
        let text = benchmark_done(load).with_context(|| format!("redis-benchmark {args:?}"))?;
        println!("{args:?}\n{}", text.trim());
    }
    let reqs: Vec<Vec<u8>> =
        (0..100).map(|i| resp(&[b"GET", format!("key:{i:012}").as_bytes()])).collect();
    for (r, g) in reqs.iter().zip(exchange(PORT, &reqs, false)?) {
        ensure!(g == b"$-1\r\n" || whole_bulk(&g, 1024), "{}: {}", show(r), show(&g));
    }
    let out = live.detach()?;
    println!("{}", out.join("\n"));
    Ok(())
}
