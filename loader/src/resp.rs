// SPDX-License-Identifier: GPL-2.0

//! Just enough RESP for `kflex-load` to read redis-server's `COMMAND`
//! table: a reply parser (RESP2, and RESP3's types for clients that switch
//! with `HELLO 3`) and the key positions (first key, last key, step) of
//! every command that has keys.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// A RESP2 or RESP3 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None`: the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None`: the null array.
    Array(Option<Vec<Value>>),
    /// RESP3: `_`.
    Null,
    /// RESP3: `,` (its text, as sent).
    Double(String),
    /// RESP3: `#t` or `#f`.
    Bool(bool),
    /// RESP3: `(` (its digits).
    BigNumber(String),
    /// RESP3: `=` and `!` (verbatim string, blob error): the bytes.
    Blob(Vec<u8>),
    /// RESP3: `%` (keys and values, alternating), `~` and `>`.
    Aggregate(u8, Vec<Value>),
}

/// Parses one reply from the front of `buf`: `Ok(None)` while it is
/// incomplete, else the reply and the bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..eol]).context("a RESP line that is not UTF-8")?;
    let mut at = eol + 2;
    let number = || -> Result<i64> {
        line.parse().with_context(|| format!("a RESP length or integer {line:?}"))
    };
    let v = match kind {
        b'+' => Value::Simple(line.to_string()),
        b'-' => Value::Error(line.to_string()),
        b':' => Value::Int(number()?),
        b'_' if line.is_empty() => Value::Null,
        b',' => Value::Double(line.to_string()),
        b'#' => match line {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => bail!("a RESP3 boolean {line:?}"),
        },
        b'(' => Value::BigNumber(line.to_string()),
        b'$' | b'=' | b'!' => {
            let n = number()?;
            if n < 0 && kind == b'$' {
                Value::Bulk(None)
            } else {
                let n = usize::try_from(n).context("a negative RESP3 blob length")?;
                if buf.len().saturating_sub(at) < n.saturating_add(2) {
                    return Ok(None);
                }
                if &buf[at + n..at + n + 2] != b"\r\n" {
                    bail!("a RESP bulk string without its CRLF");
                }
                let b = buf[at..at + n].to_vec();
                at += n + 2;
                if kind == b'$' {
                    Value::Bulk(Some(b))
                } else {
                    Value::Blob(b)
                }
            }
        }
        b'*' | b'%' | b'~' | b'>' => {
            let n = number()?;
            if n < 0 && kind == b'*' {
                Value::Array(None)
            } else {
                let n = if kind == b'%' { 2 * n } else { n };
                if n < 0 {
                    bail!("a RESP3 aggregate of {n} elements");
                }
                let mut items = Vec::new();
                for _ in 0..n {
                    match parse(&buf[at..])? {
                        Some((v, used)) => {
                            items.push(v);
                            at += used;
                        }
                        None => return Ok(None),
                    }
                }
                if kind == b'*' {
                    Value::Array(Some(items))
                } else {
                    Value::Aggregate(kind, items)
                }
            }
        }
        k => bail!("a RESP reply starting with {:?}", k as char),
    };
    Ok(Some((v, at)))
}

/// Key positions of one command, as `COMMAND` gives them (argument 0 is the
/// command name; a negative `last` counts from the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub name: String,
    pub first: i32,
    pub last: i32,
    pub step: i32,
}

/// The commands of a `COMMAND` reply that have keys, names in lowercase,
/// with positions that cover every key, erring on the side of more:
/// - a command whose keys move with its arguments (flag `movablekeys`:
///   `EVAL`, `ZUNIONSTORE`, `XREAD`, `SORT`, …) gets every argument after
///   its name (`1, -1, 1`);
/// - a container command with a subcommand that has keys (`OBJECT
///   ENCODING`, `XINFO STREAM`, `MEMORY USAGE`, …) gets every argument
///   after the subcommand (`2, -1, 1`);
/// - others keep `COMMAND`'s first, last and step; commands without keys
///   are left out.
pub fn key_specs(reply: &Value) -> Result<Vec<KeySpec>> {
    let Value::Array(Some(cmds)) = reply else {
        bail!("COMMAND did not answer an array: {reply:?}");
    };
    let mut out = Vec::new();
    for c in cmds {
        let (name, pos, subs) = entry_keys(c)?;
        let mut sub_keys = false;
        for sub in subs {
            sub_keys |= entry_keys(sub)?.1.is_some();
        }
        let (first, last, step) = match pos {
            Some(p) => p,
            None if sub_keys => (2, -1, 1),
            None => continue,
        };
        out.push(KeySpec { name, first, last, step });
    }
    Ok(out)
}

/// First key, last key (negative: from the end), step.
type Positions = (i32, i32, i32);

/// The lowercase name of one `COMMAND` entry, its key positions (first,
/// last, step; `None` when it has none; `movablekeys` widens them to every
/// argument after the name) and its subcommands' entries.
fn entry_keys(c: &Value) -> Result<(String, Option<Positions>, &[Value])> {
    let Value::Array(Some(f)) = c else {
        bail!("a COMMAND entry that is not an array: {c:?}");
    };
    let (Some(Value::Bulk(Some(name))), Some(Value::Int(first)), Some(Value::Int(last))) =
        (f.first(), f.get(3), f.get(4))
    else {
        bail!("a COMMAND entry without name and key positions: {c:?}");
    };
    let step = match f.get(5) {
        Some(Value::Int(s)) => *s,
        _ => 1,
    };
    let movable = match f.get(2) {
        Some(Value::Array(Some(flags))) => flags.iter().any(|fl| {
            matches!(fl, Value::Simple(x) if x.eq_ignore_ascii_case("movablekeys"))
                || matches!(fl, Value::Bulk(Some(x)) if x.eq_ignore_ascii_case(b"movablekeys"))
        }),
        _ => false,
    };
    let name = String::from_utf8_lossy(name).to_lowercase();
    let pos = if movable {
        Some((1, -1, 1))
    } else if *first > 0 {
        Some((*first as i32, *last as i32, step as i32))
    } else {
        None
    };
    let subs = match f.get(9) {
        Some(Value::Array(Some(subs))) => subs.as_slice(),
        _ => &[],
    };
    Ok((name, pos, subs))
}

/// Sends `COMMAND` to the redis-server at `addr` and returns the key
/// positions of its commands.
pub fn command_table(addr: SocketAddr) -> Result<Vec<KeySpec>> {
    let t = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&addr, t)
        .with_context(|| format!("connecting to redis-server at {addr}"))?;
    s.set_read_timeout(Some(t))?;
    s.write_all(b"*1\r\n$7\r\nCOMMAND\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = s.read(&mut chunk).context("reading the COMMAND reply")?;
        if n == 0 {
            bail!("redis-server at {addr} closed the connection before answering COMMAND");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((v, _)) = parse(&buf)? {
            if let Value::Error(e) = &v {
                bail!("redis-server at {addr} refused COMMAND: {e}");
            }
            return key_specs(&v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, first: i64, last: i64, step: i64) -> String {
        entry_with(name, "+write\r\n", first, last, step, &[])
    }

    /// One entry: name, arity, flags, first, last, step, ACL categories,
    /// tips, key specs, subcommands, as redis-server 7.0 answers.
    fn entry_with(
        name: &str,
        flags: &str,
        first: i64,
        last: i64,
        step: i64,
        subs: &[String],
    ) -> String {
        let nflags = flags.matches("\r\n").count();
        format!(
            "*10\r\n${}\r\n{name}\r\n:-2\r\n*{nflags}\r\n{flags}:{first}\r\n:{last}\r\n:{step}\r\n\
             *1\r\n+@string\r\n*0\r\n*1\r\n*2\r\n$5\r\nflags\r\n*0\r\n*{}\r\n{}",
            name.len(),
            subs.len(),
            subs.concat()
        )
    }

    #[test]
    fn parses_every_kind() {
        let (v, n) =
            parse(b"*5\r\n+OK\r\n-ERR x\r\n:-3\r\n$3\r\na\r\n\r\n$-1\r\nrest").unwrap().unwrap();
        assert_eq!(n, 36);
        assert_eq!(
            v,
            Value::Array(Some(vec![
                Value::Simple("OK".into()),
                Value::Error("ERR x".into()),
                Value::Int(-3),
                Value::Bulk(Some(b"a\r\n".to_vec())),
                Value::Bulk(None),
            ]))
        );
        assert_eq!(parse(b"*-1\r\n").unwrap().unwrap().0, Value::Array(None));
    }

    #[test]
    fn parses_resp3() {
        let text = b"*7\r\n_\r\n,1.5\r\n#t\r\n(12345678901234567890\r\n=7\r\ntxt:abc\r\n\
                     %1\r\n+id\r\n:4\r\n~1\r\n!3\r\nERR\r\n";
        let (v, n) = parse(text).unwrap().unwrap();
        assert_eq!(n, text.len());
        assert_eq!(
            v,
            Value::Array(Some(vec![
                Value::Null,
                Value::Double("1.5".into()),
                Value::Bool(true),
                Value::BigNumber("12345678901234567890".into()),
                Value::Blob(b"txt:abc".to_vec()),
                Value::Aggregate(b'%', vec![Value::Simple("id".into()), Value::Int(4)]),
                Value::Aggregate(b'~', vec![Value::Blob(b"ERR".to_vec())]),
            ]))
        );
        assert_eq!(parse(b"%2\r\n+a\r\n:1\r\n+b\r\n").unwrap(), None);
        assert!(parse(b"#x\r\n").is_err());
        assert!(parse(b"=-1\r\n").is_err());
    }

    #[test]
    fn incomplete_and_malformed() {
        for part in [&b""[..], b"*2\r\n", b"*2\r\n:1\r\n", b"$5\r\nab", b"+O"] {
            assert_eq!(parse(part).unwrap(), None, "{part:?}");
        }
        assert!(parse(b"$2\r\nabcd\r\n").is_err());
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
    }

    #[test]
    fn key_positions_of_a_command_reply() {
        let text = format!(
            "*4\r\n{}{}{}{}",
            entry("get", 1, 1, 1),
            entry("MSET", 1, -1, 2),
            entry("ping", 0, 0, 0),
            entry("eval", 0, 0, 0)
        );
        let (v, n) = parse(text.as_bytes()).unwrap().unwrap();
        assert_eq!(n, text.len());
        assert_eq!(
            key_specs(&v).unwrap(),
            vec![
                KeySpec { name: "get".into(), first: 1, last: 1, step: 1 },
                KeySpec { name: "mset".into(), first: 1, last: -1, step: 2 },
            ]
        );
        assert!(key_specs(&Value::Int(1)).is_err());
        assert!(key_specs(&Value::Array(Some(vec![Value::Int(1)]))).is_err());
    }

    #[test]
    fn moving_keys_and_subcommands_widen_to_every_argument() {
        let text = format!(
            "*5\r\n{}{}{}{}{}",
            entry_with("eval", "+noscript\r\n+movablekeys\r\n", 0, 0, 0, &[]),
            entry_with("zunionstore", "+movablekeys\r\n", 1, 1, 1, &[]),
            entry_with(
                "object",
                "",
                0,
                0,
                0,
                &[entry("object|help", 0, 0, 0), entry("object|encoding", 2, 2, 1)]
            ),
            entry_with("config", "", 0, 0, 0, &[entry("config|get", 0, 0, 0)]),
            entry("strlen", 1, 1, 1),
        );
        let (v, _) = parse(text.as_bytes()).unwrap().unwrap();
        let k = |name: &str, first, last, step| KeySpec { name: name.into(), first, last, step };
        assert_eq!(
            key_specs(&v).unwrap(),
            vec![
                k("eval", 1, -1, 1),
                k("zunionstore", 1, -1, 1),
                k("object", 2, -1, 1),
                k("strlen", 1, 1, 1)
            ]
        );
    }
}
