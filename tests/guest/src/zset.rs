// SPDX-License-Identifier: GPL-2.0

//! The Redis sorted-set offload (`kflex-load --kredis`, `bpf/redis.bpf.c`
//! with `bpf/ds/zset.h`) in front of a real redis-server, with a second
//! redis-server alone as the oracle: the same requests must get the same
//! reply bytes from both, except where the offload documents its own
//! errors, and the offloaded server never holds the sorted sets.

use anyhow::{ensure, Result};
use kflex_load::rng::Rng;

use crate::{redis::*, util::*};

/// A score for the random mix: mostly small (ties, so that members decide
/// the order), sometimes near +/-2^53, sometimes zero-padded or signed.
fn score(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => format!("{}", (1i64 << 53) - rng.below(3) as i64),
        1 => format!("-{}", (1i64 << 53) - rng.below(3) as i64),
        2 => format!("{:012}", rng.below(1000)),
        3 => format!("+{}", rng.below(5)),
        _ => format!("{}", rng.below(9) as i64 - 4),
    }
}

/// A member: short names, prefixes of each other, binary bytes.
fn member(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => vec![b'a'; rng.below(3) as usize],
        1 => b"a\0".to_vec(),
        2 => (0..1 + rng.below(12)).map(|_| rng.below(256) as u8).collect(),
        _ => format!("m{}", rng.below(30)).into_bytes(),
    }
}

/// One random request of the mix on sorted set `key`.
fn request(rng: &mut Rng, key: &[u8], pure: bool) -> Vec<u8> {
    let pick = if pure { rng.below(6) } else { rng.below(9) };
    match pick {
        0 if rng.below(4) == 0 => {
            // INCR on members of their own, small steps: sums stay
            // integers within 2^53, where Redis's doubles are exact too
            let m = format!("inc{}", rng.below(4));
            let by = format!("{}", rng.below(7) as i64 - 3);
            resp(&[b"ZADD", key, b"INCR", by.as_bytes(), m.as_bytes()])
        }
        0 | 1 => {
            let opts: &[&[&[u8]]] =
                &[&[], &[], &[], &[b"NX"], &[b"xx"], &[b"GT", b"CH"], &[b"lt"], &[b"CH"]];
            let opts = opts[rng.below(opts.len() as u64) as usize];
            let pairs = 1 + rng.below(4);
            let mut args: Vec<Vec<u8>> = vec![b"ZADD".to_vec(), key.to_vec()];
            args.extend(opts.iter().map(|o| o.to_vec()));
            for _ in 0..pairs {
                args.push(score(rng).into_bytes());
                args.push(member(rng));
            }
            resp(&args.iter().map(|a| &a[..]).collect::<Vec<_>>())
        }
        2 => {
            let mut args: Vec<Vec<u8>> = vec![b"ZREM".to_vec(), key.to_vec()];
            for _ in 0..1 + rng.below(3) {
                args.push(member(rng));
            }
            resp(&args.iter().map(|a| &a[..]).collect::<Vec<_>>())
        }
        3 => resp(&[b"ZSCORE", key, &member(rng)]),
        4 => resp(&[b"zcard", key]),
        5 => {
            let idx = |rng: &mut Rng| format!("{}", rng.below(16) as i64 - 8);
            let (a, b) = (idx(rng), idx(rng));
            if rng.below(2) == 0 {
                resp(&[b"ZRANGE", key, a.as_bytes(), b.as_bytes(), b"WITHSCORES"])
            } else {
                resp(&[b"ZRANGE", key, a.as_bytes(), b.as_bytes()])
            }
        }
        6 => resp(&[b"INCR", format!("ctr:{}", rng.below(5)).as_bytes()]),
        7 => resp(&[b"SET", format!("s:{}", rng.below(5)).as_bytes(), b"v"]),
        _ => resp(&[b"PING"]),
    }
}

/// A seeded random mix of the owned commands (ZADD with every option, ZREM,
/// ZCARD, ZSCORE, ZRANGE with and without scores, negative indices; ties
/// ordered by member bytes, prefixes and NUL bytes) and other commands,
/// pipelined in random batches on several connections, against the offload
/// and against redis-server alone: identical reply bytes, from the kernel
/// on pure connections and through EVAL on mixed ones, also in RESP3 (after
/// `HELLO 3`; and back to RESP2 with `HELLO 2`). Then redis-server behind
/// the offload holds none of the sets.
pub fn differential() -> Result<()> {
    let mut live = Live::with("--kredis")?;
    let mut rng = Rng::new(0x2a5e_7001);
    let mut total = 0usize;
    for conn in 0..12 {
        let pure = conn % 3 == 0;
        let mut reqs: Vec<Vec<u8>> = (0..60 + rng.below(140))
            .map(|_| {
                let key = format!("z:{}", rng.below(6));
                request(&mut rng, key.as_bytes(), pure)
            })
            .collect();
        // RESP3 on three connections (one of them otherwise pure): scores
        // come back as doubles, WITHSCORES as pairs
        if conn % 4 == 1 {
            reqs.insert(0, resp(&[b"HELLO", b"3"]));
            if conn == 5 {
                reqs.insert(reqs.len() / 2, resp(&[b"HELLO", b"2"]));
            }
        }
        same_replies(conn, &reqs, &mut rng)?;
        total += reqs.len();
    }
    // RESP3 through EVAL, spelled out: a double, pairs, a null
    let r3 = [
        resp(&[b"HELLO", b"3"]),
        resp(&[b"ZADD", b"r3", b"5", b"a"]),
        resp(&[b"ZSCORE", b"r3", b"a"]),
        resp(&[b"ZRANGE", b"r3", b"0", b"-1", b"WITHSCORES"]),
        resp(&[b"ZADD", b"r3", b"INCR", b"-7", b"a"]),
        resp(&[b"ZSCORE", b"r3", b"b"]),
    ];
    let got = exchange(PORT, &r3, false)?;
    let want: [&[u8]; 5] =
        [b":1\r\n", b",5\r\n", b"*1\r\n*2\r\n$1\r\na\r\n,5\r\n", b",-2\r\n", b"_\r\n"];
    for (i, w) in want.iter().enumerate() {
        ensure!(
            got[i + 1] == *w,
            "RESP3 {}: got {} want {}",
            show(&r3[i + 1]),
            show(&got[i + 1]),
            show(w)
        );
    }
    // the whole sets agree too
    for k in 0..6 {
        let key = format!("z:{k}");
        let req = resp(&[b"ZRANGE", key.as_bytes(), b"0", b"-1", b"WITHSCORES"]);
        let (ra, rb) = (
            exchange(PORT, std::slice::from_ref(&req), false)?,
            exchange(ORACLE, std::slice::from_ref(&req), false)?,
        );
        ensure!(ra == rb, "{key}: offload {} oracle {}", show(&ra[0]), show(&rb[0]));
    }
    let keys = exchange(PORT, &[resp(&[b"KEYS", b"z:*"])], false)?;
    ensure!(keys[0] == b"*0\r\n", "redis-server behind the offload holds {}", show(&keys[0]));
    let out = live.detach()?;
    println!("differential: {total} requests on 12 connections, 0 mismatches");
    println!("{}", out.join("\n"));
    Ok(())
}

/// The offload's own answers: integer scores only (a fraction, an exponent,
/// an infinity, 2^53 + 1), Redis's errors for what is not a number and for
/// bad option mixes, ZRANGE's other forms refused, members over 248 bytes
/// refused, a ZRANGE reply over 3968 bytes refused, a request over 8 KiB
/// refused whole, Redis's own errors where Redis gives them (before the
/// offload's, in Redis's order), other commands on a held set refused, an emptied set
/// gone; all pipelined in one write, then again behind a passed request
/// (the replies through EVAL).
pub fn own_errors_and_limits() -> Result<()> {
    let _live = Live::with("--kredis")?;
    let only_int = b"-ERR only integer scores within +/-2^53 are offloaded by KFlex\r\n".to_vec();
    let held = b"-ERR key is held by the KFlex offload\r\n".to_vec();
    let long = vec![b'q'; 249];
    let ok_long = vec![b'r'; 248];
    let mut cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (resp(&[b"ZADD", b"e", b"1.5", b"a"]), only_int.clone()),
        (resp(&[b"ZADD", b"e", b"1e3", b"a"]), only_int.clone()),
        (resp(&[b"ZADD", b"e", b"-inf", b"a"]), only_int.clone()),
        (resp(&[b"ZADD", b"e", b"9007199254740993", b"a"]), only_int.clone()),
        (resp(&[b"ZADD", b"e", b"0x10", b"a"]), only_int.clone()),
        (resp(&[b"ZADD", b"e", b"-0", b"a"]), only_int.clone()),
        (resp(&[b"ZADD", b"e", b"abc", b"a"]), b"-ERR value is not a valid float\r\n".to_vec()),
        (resp(&[b"ZADD", b"e", b"1", b"a", b"2"]), b"-ERR syntax error\r\n".to_vec()),
        (
            resp(&[b"ZADD", b"e", b"NX", b"XX", b"1", b"a"]),
            b"-ERR XX and NX options at the same time are not compatible\r\n".to_vec(),
        ),
        (resp(&[b"ZADD", b"e"]), b"-ERR wrong number of arguments for 'zadd' command\r\n".to_vec()),
        (resp(&[b"ZCARD", b"e"]), b":0\r\n".to_vec()),
        (
            resp(&[b"ZADD", b"e", b"1", &long]),
            b"-ERR member too long for the KFlex offload\r\n".to_vec(),
        ),
        (resp(&[b"ZADD", b"e", b"1", &ok_long, b"-3", b"b"]), b":2\r\n".to_vec()),
        (
            resp(&[b"ZRANGE", b"e", b"0", b"-1"]),
            [b"*2\r\n$1\r\nb\r\n$248\r\n".to_vec(), ok_long.clone(), b"\r\n".to_vec()].concat(),
        ),
        (
            resp(&[b"ZRANGE", b"e", b"0", b"1", b"BYSCORE"]),
            b"-ERR ZRANGE option not supported by the KFlex offload\r\n".to_vec(),
        ),
        (
            resp(&[b"ZRANGE", b"e", b"x", b"1"]),
            b"-ERR value is not an integer or out of range\r\n".to_vec(),
        ),
        (resp(&[b"ZINCRBY", b"e", b"1", b"b"]), held.clone()),
        (resp(&[b"TYPE", b"e"]), held.clone()),
        (resp(&[b"ZREM", b"e", b"b", &ok_long, b"nope"]), b":2\r\n".to_vec()),
        // emptied: the key is gone, for the offload and for the rule
        (resp(&[b"ZCARD", b"e"]), b":0\r\n".to_vec()),
        (resp(&[b"ZSCORE", b"e", b"b"]), b"$-1\r\n".to_vec()),
        (resp(&[b"TYPE", b"e"]), b"+none\r\n".to_vec()),
        (b"ZADD inl 5 five\r\n".to_vec(), b":1\r\n".to_vec()),
        (b"ZSCORE inl five\r\n".to_vec(), b"$1\r\n5\r\n".to_vec()),
        // GET and SET belong to redis-server here
        (resp(&[b"SET", b"plain", b"v"]), b"+OK\r\n".to_vec()),
        (resp(&[b"GET", b"plain"]), b"$1\r\nv\r\n".to_vec()),
    ];
    // a set whose whole range is more than a reply may hold
    let mut add: Vec<Vec<u8>> = vec![b"ZADD".to_vec(), b"big".to_vec()];
    for i in 0..150 {
        add.push(format!("{i}").into_bytes());
        add.push(format!("member-{i:020}").into_bytes());
    }
    cases.push((resp(&add.iter().map(|a| &a[..]).collect::<Vec<_>>()), b":150\r\n".to_vec()));
    cases.push((
        resp(&[b"ZRANGE", b"big", b"0", b"-1", b"WITHSCORES"]),
        b"-ERR ZRANGE reply too large for the KFlex offload (3968 bytes at most)\r\n".to_vec(),
    ));
    cases.push((
        resp(&[b"ZRANGE", b"big", b"-1", b"-1"]),
        b"*1\r\n$27\r\nmember-00000000000000000149\r\n".to_vec(),
    ));
    // a request over 8 KiB is framed in chunks and refused whole
    let mut huge: Vec<Vec<u8>> = vec![b"ZADD".to_vec(), b"huge".to_vec()];
    for i in 0..400 {
        huge.push(format!("{i}").into_bytes());
        huge.push(format!("member-{i:020}").into_bytes());
    }
    cases.push((
        resp(&huge.iter().map(|a| &a[..]).collect::<Vec<_>>()),
        b"-ERR request too large for the KFlex offload\r\n".to_vec(),
    ));
    cases.push((resp(&[b"ZCARD", b"huge"]), b":0\r\n".to_vec()));
    check_cases(&cases, false)?;
    // Redis's own errors, checked before the offload's: the same bytes as
    // redis-server alone
    let theirs: Vec<Vec<u8>> = vec![
        resp(&[b"ZADD", b"o", b"1.5", b"a", b"x", b"b"]),
        resp(&[b"ZADD", b"o", b"1", &long, b"x", b"b"]),
        resp(&[b"ZADD", b"o", b"1e", b"a"]),
        resp(&[b"ZADD", b"o", b"1-2", b"a"]),
        resp(&[b"ZADD", b"o", b" 1", b"a"]),
        resp(&[b"ZADD", b"o", b"nan", b"a"]),
        resp(&[b"ZADD", b"o", b"INCR", b"1", b"a", b"2", b"b"]),
        resp(&[b"ZADD", b"o", b"GT", b"LT", b"1", b"a"]),
        resp(&[b"ZRANGE", b"o", b"0", b"1", b"REV", b"foo"]),
        resp(&[b"ZRANGE", b"o", b"0", b"1", b"LIMIT", b"0"]),
        resp(&[b"ZRANGE", b"o", b"0", b"1", b"LIMIT", b"0", b"1"]),
        resp(&[b"ZRANGE", b"o", b"0", b"1", b"BYLEX", b"WITHSCORES"]),
        resp(&[b"ZRANGE", b"o", b"01", b"1"]),
        resp(&[b"ZRANGE", b"o", b"0", b"99999999999999999999"]),
        resp(&[b"ZCARD", b"o", b"x"]),
        resp(&[b"ZSCORE", b"o"]),
        resp(&[b"ZREM", b"o"]),
    ];
    same_replies(0, &theirs, &mut Rng::new(7))?;
    // the same through EVAL, behind a passed request
    let mut behind = vec![(resp(&[b"PING"]), b"+PONG\r\n".to_vec())];
    behind.extend(cases.iter().filter(|c| !c.0.starts_with(b"ZADD inl")).cloned().map(
        |(req, want)| {
            // the second time round the sets exist already
            let req_s = String::from_utf8_lossy(&req).into_owned();
            let want = if req_s.contains("ZADD\r\n$3\r\nbig") { b":0\r\n".to_vec() } else { want };
            (req, want)
        },
    ));
    check_cases(&behind, false)?;
    Ok(())
}

/// redis-benchmark's ZADD test and redis-cli through the offload: no error
/// line, the set holds what redis-benchmark added (ZCARD equals the
/// distinct members, each read back with ZSCORE), ZPOPMIN on it is refused
/// as a held key.
pub fn real_clients() -> Result<()> {
    let mut live = Live::with("--kredis")?;
    let port = PORT.to_string();
    let bench = sh(
        "redis-benchmark",
        &["-p", &port, "-t", "zadd", "-n", "6000", "-r", "1000", "-c", "4", "-P", "8", "--csv"],
    )?;
    ensure!(
        bench.contains("\"ZADD\"") && !bench.to_lowercase().contains("error"),
        "redis-benchmark: {bench}"
    );
    let card = sh("redis-cli", &["-p", &port, "ZCARD", "myzset"])?;
    let card: u64 = card.trim().parse().unwrap_or(0);
    ensure!(card > 500 && card <= 1000, "ZCARD myzset after redis-benchmark: {card}");
    // the whole set, 60 at a time (a reply holds at most 3968 bytes)
    let all = whole_set("myzset", card, 60)?;
    ensure!(all.len() as u64 == card, "ZRANGE has {} of {card}", all.len());
    for w in all.windows(2) {
        ensure!((w[0].1, &w[0].0) < (w[1].1, &w[1].0), "out of order: {:?} then {:?}", w[0], w[1]);
    }
    for (m, score) in all.iter().take(50) {
        let s = sh("redis-cli", &["-p", &port, "ZSCORE", "myzset", m])?;
        ensure!(s.trim() == score.to_string(), "ZSCORE myzset {m}: {s:?}, ZRANGE says {score}");
    }
    let pop = exchange(PORT, &[resp(&[b"ZPOPMIN", b"myzset"])], false)?;
    ensure!(pop[0] == b"-ERR key is held by the KFlex offload\r\n", "ZPOPMIN: {}", show(&pop[0]));
    let out = live.detach()?;
    println!("{}\n{}", bench.trim(), out.join("\n"));
    Ok(())
}

/// The whole of sorted set `key` through the offload, `step` members (with
/// scores) per ZRANGE: (member, score) in order.
fn whole_set(key: &str, card: u64, step: u64) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for from in (0..card).step_by(step as usize) {
        let (a, b) = (from.to_string(), (from + step - 1).to_string());
        let part =
            sh("redis-cli", &["-p", &PORT.to_string(), "ZRANGE", key, &a, &b, "WITHSCORES"])?;
        let lines: Vec<&str> = part.lines().collect();
        ensure!(lines.len().is_multiple_of(2), "ZRANGE {key} {a} {b}: {part:?}");
        for pair in lines.chunks(2) {
            let Ok(score) = pair[1].parse::<i64>() else {
                anyhow::bail!("ZRANGE {key} {a} {b}: score {:?}", pair[1]);
            };
            out.push((pair[0].to_string(), score));
        }
    }
    Ok(out)
}

/// Two redis-benchmark processes, pinned to the two CPUs, ZADD random
/// members with random scores to the same set at once (its heap lock and
/// the member table's bucket locks contended from both CPUs, taken in
/// global subprograms: the case patch 0027 fixed). Both finish without an
/// error; afterwards the skiplist and the member table agree: ZRANGE walks
/// ZCARD members in (score, member) order and every member's ZSCORE is the
/// score ZRANGE shows.
pub fn two_cpus_same_set() -> Result<()> {
    let mut live = Live::with("--kredis")?;
    let port = PORT.to_string();
    let spawn = |cpu: &str| {
        std::process::Command::new("taskset")
            .args(["-c", cpu, "timeout", "-s", "KILL", "300", "redis-benchmark"])
            .args(["-p", &port, "-t", "zadd", "-n", "15000", "-r", "800", "-c", "4", "-P", "4"])
            .arg("--csv")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
    };
    let loads = [spawn("0")?, spawn("1")?];
    for l in loads {
        let out = l.wait_with_output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success() && text.contains("\"ZADD\"") && !text.contains("rror"),
            "redis-benchmark: {:?}: {text}",
            out.status
        );
    }
    let card: u64 = sh("redis-cli", &["-p", &port, "ZCARD", "myzset"])?.trim().parse()?;
    ensure!(card > 400 && card <= 800, "ZCARD myzset: {card}");
    let all = whole_set("myzset", card, 50)?;
    ensure!(all.len() as u64 == card, "ZRANGE walked {} of {card}", all.len());
    for w in all.windows(2) {
        ensure!((w[0].1, &w[0].0) < (w[1].1, &w[1].0), "out of order: {:?} then {:?}", w[0], w[1]);
    }
    for (m, score) in &all {
        let s = sh("redis-cli", &["-p", &port, "ZSCORE", "myzset", m])?;
        ensure!(s.trim() == score.to_string(), "ZSCORE myzset {m}: {s:?}, ZRANGE says {score}");
    }
    let out = live.detach()?;
    ensure!(
        out.iter().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["lock_timeouts", "0"]),
        "{out:?}"
    );
    println!("two CPUs: {card} members, ordered, scores agree\n{}", out.join("\n"));
    Ok(())
}
