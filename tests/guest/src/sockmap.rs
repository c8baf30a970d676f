// SPDX-License-Identifier: GPL-2.0

//! The sockmap message-bounds patch (`linux/patches/0014-*`): a stream
//! parser reads its message from offset 0 and a stream verdict may answer
//! it with a reply of another length (`tests/bpf/strp_test.bpf.c`).
//! Pipelined requests of different lengths, in one write and split at
//! every kind of boundary, get their replies in order and byte for byte;
//! the requests the verdict passes reach the server unchanged and in order.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, MapFlags,
};

use crate::util::*;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/strp_test.skel.rs"));
}
use skel::*;

/// The socket cookie of `s` (what `bpf_get_socket_cookie()` returns).
fn cookie(s: &impl AsRawFd) -> Result<u64> {
    let mut v = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for the call; the kernel writes at
    // most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    ensure!(r == 0, "getsockopt(SO_COOKIE): {}", std::io::Error::last_os_error());
    Ok(v)
}

/// What the verdict answers to `line` (without its '\n'); `None`: passed
/// ('p') or dropped ('d').
fn reply(line: &str) -> Option<String> {
    match line.as_bytes().first() {
        Some(b'p' | b'd') => None,
        Some(b'#') => Some("ok\n".into()),
        _ => Some(format!("echo {line} {}\n", line.len())),
    }
}

/// Lines of every length class: 1 byte, short, long (up to 199 bytes),
/// the three kinds interleaved.
fn lines(n: usize, seed: u64) -> Vec<String> {
    let mut rng = kflex_load::rng::Rng::new(seed);
    (0..n)
        .map(|i| {
            let len = match rng.below(4) {
                0 => 1,
                1 => 2 + rng.below(10) as usize,
                2 => 20 + rng.below(60) as usize,
                _ => 150 + rng.below(50) as usize,
            };
            let first = ["p", "#", "x", "d"][rng.below(4) as usize];
            let body: String = (1..len).map(|j| (b'a' + ((i + j) % 26) as u8) as char).collect();
            format!("{first}{body}")
        })
        .collect()
}

/// Reads exactly `want` bytes from `s` (10 s at most).
fn read_exact_timeout(s: &mut TcpStream, want: usize, what: &str) -> Result<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::with_capacity(want);
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    while got.len() < want {
        ensure!(
            Instant::now() < deadline,
            "{what}: {} of {want} bytes after 10 s: {:?}",
            got.len(),
            String::from_utf8_lossy(&got[got.len().saturating_sub(200)..])
        );
        match s.read(&mut buf) {
            Ok(0) => anyhow::bail!("{what}: connection closed after {} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e).context(what.to_string()),
        }
    }
    Ok(got)
}

/// Lines through the stream parser and verdict: first a fixed sequence that
/// mixes passed lines the server reads late with answered ones, then 200
/// lines (answered, passed or dropped) pipelined in one write, then 200 more
/// written in pieces cut at random places (inside lines, at line ends,
/// several lines per piece). The client gets every answered line's reply in
/// order; the server gets exactly the passed lines; nothing more arrives on
/// either side; taken out of the sockhash, the server socket has nothing
/// left unread (SIOCINQ 0).
pub fn pipelined_replies_of_other_lengths() -> Result<()> {
    let skel = StrpTestSkelBuilder::default().open(skel_storage())?.load()?;
    let map_fd = skel.maps.socks.as_fd().as_raw_fd();
    skel.progs.strp_parse.attach_sockmap(map_fd).context("attaching the parser")?;
    skel.progs.strp_verdict.attach_sockmap(map_fd).context("attaching the verdict")?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    let key = cookie(&server)?;
    let fd = server.as_raw_fd() as u64;
    skel.maps.socks.update(&key.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)?;

    // The sequence that used to hang (patch 0015): a passed line the
    // server has not read yet, an answered line, the server reads, then a
    // line whose arrival must still wake the parser.
    let pause = || std::thread::sleep(Duration::from_millis(100));
    client.write_all(b"pAAA\n")?;
    pause();
    client.write_all(b"x\n")?;
    ensure!(read_exact_timeout(&mut client, 9, "client")? == b"echo x 1\n", "first reply");
    ensure!(read_exact_timeout(&mut server, 5, "server")? == b"pAAA\n", "passed line");
    pause();
    client.write_all(b"#\n")?;
    ensure!(read_exact_timeout(&mut client, 3, "client")? == b"ok\n", "reply after the read");

    let mut rng = kflex_load::rng::Rng::new(7);
    for (round, seed) in [(0, 1u64), (1, 2)] {
        let lines = lines(200, seed);
        let stream: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let want: String = lines.iter().filter_map(|l| reply(l)).collect();
        let passed: String =
            lines.iter().filter(|l| l.starts_with('p')).map(|l| format!("{l}\n")).collect();
        let bytes = stream.as_bytes();
        if round == 0 {
            client.write_all(bytes)?;
        } else {
            let mut at = 0;
            while at < bytes.len() {
                let n = (1 + rng.below(300) as usize).min(bytes.len() - at);
                client.write_all(&bytes[at..at + n])?;
                client.flush()?;
                at += n;
                std::thread::sleep(Duration::from_millis(rng.below(3)));
            }
        }
        // The server reads while the client does, as a server would: a
        // passed message waits in the socket's queue until it fits in its
        // receive buffer, and the kernel's later replies wait behind it.
        let (replies, at_server) = std::thread::scope(|scope| {
            let (srv, n) = (&mut server, passed.len());
            let reader = scope.spawn(move || read_exact_timeout(srv, n, "server"));
            let replies = read_exact_timeout(&mut client, want.len(), "client");
            (replies, reader.join().map_err(|_| anyhow::anyhow!("server reader panicked")))
        });
        let bss = skel.maps.bss_data.as_deref().context("no .bss")?;
        let n_passed = lines.iter().filter(|l| l.starts_with('p')).count();
        let counts = format!(
            "round {round}: verdict answered {} passed {} failed {} (cumulative); this round {} \
             lines, {n_passed} to pass",
            bss.answered,
            bss.passed,
            bss.failed,
            lines.len()
        );
        let got = replies.context(counts)?;
        ensure!(
            got == want.as_bytes(),
            "round {round}: replies differ at byte {}",
            got.iter().zip(want.as_bytes()).position(|(a, b)| a != b).unwrap_or(0)
        );
        ensure!(at_server?? == passed.as_bytes(), "round {round}: passed lines differ");
    }
    // nothing else on either side
    for (s, what) in [(&mut client, "client"), (&mut server, "server")] {
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            r => anyhow::bail!("{what}: unexpected read {r:?}"),
        }
    }
    // Out of the sockhash the socket is plain TCP again, and every byte it
    // received has been read exactly once: SIOCINQ is 0. (A dropped message
    // used to be counted as read twice, patch 0021: copied_seq ran ahead of
    // rcv_nxt, SIOCINQ came out negative, and a parser waiting for the rest
    // of a message was not woken.)
    skel.maps.socks.delete(&key.to_ne_bytes())?;
    let mut inq: libc::c_int = -1;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid.
    let r = unsafe { libc::ioctl(server.as_raw_fd(), libc::FIONREAD, &mut inq) };
    ensure!(r == 0, "FIONREAD: {}", std::io::Error::last_os_error());
    ensure!(inq == 0, "the server socket reports {inq} unread bytes after the test (want 0)");
    let bss = skel.maps.bss_data.as_deref().context("no .bss")?;
    ensure!(bss.failed == 0, "the verdict failed {} times", bss.failed);
    ensure!(bss.dropped > 0, "no line was dropped");
    println!(
        "answered {} lines in the kernel, passed {}, dropped {}",
        bss.answered, bss.passed, bss.dropped
    );
    Ok(())
}
