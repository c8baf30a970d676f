// SPDX-License-Identifier: GPL-2.0

//! The guard table: per structure and operation, the heap accesses the
//! guard pass decided on and how many guards it elided (from the kernel
//! log, guard mode 0), next to Table 3 of the KFlex paper.

use std::{collections::HashMap, fmt::Write as _};

use anyhow::{ensure, Context, Result};

use super::{Structure, OPS};

/// Per program name: (heap accesses decided, guards elided).
pub type Counts = HashMap<String, (u32, u32)>;

/// The guard pass's counts per program, from the kernel log: the last
/// `kflex: prog=<name> range_analysis_call=<N> elided=<M>` line of each.
pub fn from_kernel_log() -> Result<Counts> {
    let out = std::process::Command::new("dmesg").output().context("running dmesg")?;
    ensure!(out.status.success(), "dmesg failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// [`from_kernel_log`] of a log's text.
pub fn parse(log: &str) -> Counts {
    let mut m = HashMap::new();
    for line in log.lines() {
        let Some(rest) = line.split("kflex: prog=").nth(1) else { continue };
        let mut w = rest.split_whitespace();
        let (Some(name), Some(n), Some(e)) = (w.next(), w.next(), w.next()) else { continue };
        let n = n.strip_prefix("range_analysis_call=").and_then(|x| x.parse().ok());
        let e = e.strip_prefix("elided=").and_then(|x| x.parse().ok());
        if let (Some(n), Some(e)) = (n, e) {
            m.insert(name.to_string(), (n, e));
        }
    }
    m
}

/// One row of the guard table.
#[derive(Debug, Clone)]
pub struct GuardRow {
    pub structure: Structure,
    pub op: &'static str,
    pub ours: Option<(u32, u32)>,
    pub paper: Option<(u32, u32)>,
}

/// The rows of structure `s`, one per operation.
pub fn rows(s: Structure, log: &Counts) -> Vec<GuardRow> {
    OPS.iter()
        .enumerate()
        .map(|(i, op)| GuardRow {
            structure: s,
            op,
            ours: log.get(&format!("{}_{op}", s.prefix())).copied(),
            paper: s.paper().map(|p| p[i]),
        })
        .collect()
}

fn fmt_pair(p: Option<(u32, u32)>) -> String {
    p.map_or("-".into(), |(n, e)| format!("{n}/{e}"))
}

/// The table as printed.
pub fn table(rows: &[GuardRow]) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "Guards (KFlex heap, guard mode 0): heap accesses decided / guards elided");
    let _ = writeln!(
        out,
        "{:<10} {:<7} {:>10} {:>8} {:>8}  {:>10}",
        "structure", "op", "ours", "guards", "elided%", "paper"
    );
    for r in rows {
        let (g, pct) = match r.ours {
            Some((n, e)) if n > 0 => {
                ((n - e).to_string(), format!("{:.0}%", 100.0 * e as f64 / n as f64))
            }
            Some((n, e)) => ((n - e).to_string(), "-".into()),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<7} {:>10} {:>8} {:>8}  {:>10}",
            r.structure.name(),
            r.op,
            fmt_pair(r.ours),
            g,
            pct,
            fmt_pair(r.paper)
        );
    }
    out
}

/// The rows in the JSON output.
pub fn json(rows: &[GuardRow]) -> serde_json::Value {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "structure": r.structure.name(),
                "op": r.op,
                "accesses": r.ours.map(|o| o.0),
                "elided": r.ours.map(|o| o.1),
                "paper_guards": r.paper.map(|p| p.0),
                "paper_elided": r.paper.map(|p| p.1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_lines_parse() {
        let log = "[    1.0] kflex: prog=list_update range_analysis_call=15 elided=15\n\
                   [    2.0] other line\n\
                   [    3.0] kflex: prog=list_update range_analysis_call=9 elided=2\n\
                   [    4.0] kflex: prog=rbt_lookup range_analysis_call=13 elided=x\n";
        let m = parse(log);
        assert_eq!(m.get("list_update"), Some(&(9, 2)));
        assert_eq!(m.get("rbt_lookup"), None);
        let rows = rows(Structure::List, &m);
        assert_eq!(rows[0].ours, Some((9, 2)));
        assert_eq!(rows[0].paper, Some((4, 4)));
        assert_eq!(rows[1].ours, None);
        let t = table(&rows);
        assert!(t.contains("9/2") && t.contains("4/4") && t.contains("22%"), "{t}");
    }
}
