// SPDX-License-Identifier: GPL-2.0

//! Just enough RESP2 for `kflex-load` to read redis-server's `COMMAND`
//! table: a reply parser and the key positions (first key, last key, step)
//! of every command that has keys.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None`: the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None`: the null array.
    Array(Option<Vec<Value>>),
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
        b'$' => {
            let n = number()?;
            if n < 0 {
                Value::Bulk(None)
            } else {
                let n = n as usize;
                if buf.len() < at + n + 2 {
                    return Ok(None);
                }
                if &buf[at + n..at + n + 2] != b"\r\n" {
                    bail!("a RESP bulk string without its CRLF");
                }
                let b = buf[at..at + n].to_vec();
                at += n + 2;
                Value::Bulk(Some(b))
            }
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                Value::Array(None)
            } else {
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
                Value::Array(Some(items))
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

/// The commands of a `COMMAND` reply that have keys (first key > 0), names
/// in lowercase. Container commands' subcommands (`OBJECT ENCODING`, …) and
/// key positions that only key specifications describe (`EVAL`, `XREAD`, …,
/// first key 0) are not included.
pub fn key_specs(reply: &Value) -> Result<Vec<KeySpec>> {
    let Value::Array(Some(cmds)) = reply else {
        bail!("COMMAND did not answer an array: {reply:?}");
    };
    let mut out = Vec::new();
    for c in cmds {
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
        if *first > 0 {
            out.push(KeySpec {
                name: String::from_utf8_lossy(name).to_lowercase(),
                first: *first as i32,
                last: *last as i32,
                step: step as i32,
            });
        }
    }
    Ok(out)
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
        // name, arity, flags, first, last, step, ACL categories, tips, key
        // specs, subcommands: as redis-server 7.0 answers
        format!(
            "*10\r\n${}\r\n{name}\r\n:-2\r\n*1\r\n+write\r\n:{first}\r\n:{last}\r\n:{step}\r\n\
             *1\r\n+@string\r\n*0\r\n*1\r\n*2\r\n$5\r\nflags\r\n*0\r\n*0\r\n",
            name.len()
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
}
