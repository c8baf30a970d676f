// SPDX-License-Identifier: GPL-2.0

//! `kflex-load prog-stats`: every loaded KFlex program with its cancellation
//! counters, from `/proc/kflex/progs` (one line per program of `name value`
//! pairs, written by the kernel glue; values are numbers except `name`,
//! `last_cause` and `last_at`). The one parser of that file: the guest tests
//! and the offloads' detach report read it through here too.

use std::fmt::Write as _;

use anyhow::{Context, Result};

/// Path of the kernel's program list.
pub const PROGS_PATH: &str = "/proc/kflex/progs";

/// The causes of a cancellation, in the kernel's order.
pub const CAUSES: [&str; 6] =
    ["budget", "fault", "deadlock", "lock_budget", "lock_table_full", "forced"];

/// What a cancellation releases besides heap locks, by kind (fields
/// `released_<kind>`).
pub const RELEASED: [&str; 8] =
    ["task", "cgroup", "cpumask", "obj", "sock", "ringbuf", "dynptr", "iter"];

/// Fields whose values are text.
const TEXT_FIELDS: [&str; 3] = ["name", "last_cause", "last_at"];

/// One program: its fields in the kernel's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Prog {
    pub fields: Vec<(String, String)>,
}

impl Prog {
    /// A numeric field (0 if the kernel did not report it).
    pub fn get(&self, key: &str) -> u64 {
        self.text(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// A field as the kernel wrote it.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The program's name (`-` if none).
    pub fn name(&self) -> &str {
        self.text("name").filter(|n| !n.is_empty()).unwrap_or("-")
    }

    /// Objects its cancellations released (every `released_<kind>`).
    pub fn objects_released(&self) -> u64 {
        RELEASED.iter().map(|k| self.get(&format!("released_{k}"))).sum()
    }

    /// The verdict of a cancelled run, as the signed value the kernel prints.
    pub fn verdict(&self) -> i64 {
        self.text("verdict").and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

/// Parses the content of [`PROGS_PATH`].
pub fn parse(text: &str) -> Result<Vec<Prog>> {
    let lines = crate::heapstats::parse_lines(PROGS_PATH, text, |k, v| {
        let numeric = !TEXT_FIELDS.contains(&k);
        let number = v.parse::<i64>().is_ok() || v.parse::<u64>().is_ok();
        (!numeric || number).then(|| v.to_string())
    })?;
    Ok(lines.into_iter().map(|fields| Prog { fields }).collect())
}

/// Reads and parses [`PROGS_PATH`].
pub fn read() -> Result<Vec<Prog>> {
    let text = std::fs::read_to_string(PROGS_PATH).with_context(|| {
        format!("reading {PROGS_PATH} (needs a KFlex kernel with program records, and root on most systems)")
    })?;
    parse(&text)
}

/// The record of the program with id `id`, if it is loaded.
pub fn find(id: u32) -> Result<Option<Prog>> {
    Ok(read()?.into_iter().find(|p| p.get("id") == u64::from(id)))
}

/// The table printed by `kflex-load prog-stats`.
pub fn table(progs: &[Prog]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>6} {:<16} {:>5} {:>6} {:>8} {:>9}",
        "id", "name", "heap", "points", "verdict", "cancelled"
    );
    for c in CAUSES {
        let _ = write!(out, " {:>w$}", c, w = c.len().max(6));
    }
    let _ = writeln!(
        out,
        " {:>8} {:>7} {:>6} {:>12} {:>10} {:>10}  last",
        "released", "objects", "leaked", "fault_zeroed", "min_ran_us", "max_ran_us"
    );
    for p in progs {
        let _ = write!(
            out,
            "{:>6} {:<16} {:>5} {:>6} {:>8} {:>9}",
            p.get("id"),
            p.name(),
            p.get("heap"),
            p.get("points"),
            format!("{}{}", p.verdict(), if p.get("verdict_overridden") == 1 { "*" } else { "" }),
            p.get("cancelled")
        );
        for c in CAUSES {
            let _ = write!(out, " {:>w$}", p.get(c), w = c.len().max(6));
        }
        let last = match p.text("last_cause") {
            Some("none") | None => "-".to_string(),
            Some(c) => format!("{c} at {}", p.text("last_at").unwrap_or("?")),
        };
        let _ = writeln!(
            out,
            " {:>8} {:>7} {:>6} {:>12} {:>10} {:>10}  {last}",
            p.get("locks_released"),
            p.objects_released(),
            p.get("leaked_locks"),
            p.get("fault_zeroed"),
            p.get("min_ran_us"),
            p.get("max_ran_us"),
        );
    }
    if progs.is_empty() {
        out.push_str("(no KFlex programs loaded)\n");
    } else if progs.iter().any(|p| p.get("verdict_overridden") == 1) {
        out.push_str("* the program's own kflex_cancel_verdict\n");
    }
    out
}

/// The `--json` output: an array with one object per program.
pub fn json(progs: &[Prog]) -> String {
    let list: Vec<serde_json::Value> = progs.iter().map(to_json).collect();
    serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into())
}

fn to_json(p: &Prog) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in &p.fields {
        let value = if TEXT_FIELDS.contains(&k.as_str()) {
            v.clone().into()
        } else if let Ok(n) = v.parse::<u64>() {
            n.into()
        } else {
            v.parse::<i64>().map(Into::into).unwrap_or_else(|_| v.clone().into())
        };
        m.insert(k.clone(), value);
    }
    serde_json::Value::Object(m)
}

/// One line for an offload's detach report: the program's cancellations by
/// cause, or that it had none.
pub fn summary(p: &Prog) -> String {
    let by: Vec<String> =
        CAUSES.iter().filter(|c| p.get(c) > 0).map(|c| format!("{c} {}", p.get(c))).collect();
    let mut s = format!("{} (id {}): {} cancelled runs", p.name(), p.get("id"), p.get("cancelled"));
    if !by.is_empty() {
        let _ = write!(s, " ({})", by.join(", "));
    }
    for k in ["locks_released", "leaked_locks", "bad_unlocks", "fault_zeroed"] {
        if p.get(k) > 0 {
            let _ = write!(s, ", {k} {}", p.get(k));
        }
    }
    for k in RELEASED {
        let n = p.get(&format!("released_{k}"));
        if n > 0 {
            let _ = write!(s, ", released {n} {k}");
        }
    }
    s
}

/// The detach report of an offload: one [`summary`] line per program id
/// (best effort: a kernel without program records gets one line saying so).
pub fn report(ids: &[u32]) -> Vec<String> {
    match read() {
        Ok(progs) => ids
            .iter()
            .filter_map(|&id| progs.iter().find(|p| p.get("id") == u64::from(id)))
            .map(summary)
            .collect(),
        Err(e) => vec![format!("cancellation counters unavailable: {e:#}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "id 12 name kmc_xdp heap 7 points 3 verdict 2 verdict_overridden 0 \
        cancelled 5 budget 4 fault 1 deadlock 0 lock_budget 0 lock_table_full 0 forced 0 \
        locks_released 2 leaked_locks 0 bad_unlocks 0 fault_zeroed 0 callback_exits 0 \
        released_task 1 released_cgroup 0 released_cpumask 0 released_obj 2 released_sock 0 \
        released_ringbuf 0 released_dynptr 0 rcu_unlocks 1 preempt_enables 0 \
        min_ran_us 10012 max_ran_us 10980 last_cause fault last_at kmc_xdp+0x4c/0x310";

    #[test]
    fn parses_kernel_lines() {
        let progs =
            parse(&format!("{LINE}\n{}\n", LINE.replace("verdict 2 ", "verdict -125 "))).unwrap();
        assert_eq!(progs.len(), 2);
        assert_eq!(progs[0].get("id"), 12);
        assert_eq!(progs[0].name(), "kmc_xdp");
        assert_eq!(progs[0].get("budget"), 4);
        assert_eq!(progs[0].verdict(), 2);
        assert_eq!(progs[1].verdict(), -125);
        assert_eq!(progs[0].text("last_at"), Some("kmc_xdp+0x4c/0x310"));
        assert_eq!(progs[0].get("missing"), 0);
        assert_eq!(progs[0].objects_released(), 3);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse("id 1 name").is_err());
        assert!(parse("name x id 2").is_err());
        assert!(parse("id 1 budget many").is_err());
    }

    #[test]
    fn formats_table_json_and_summary() {
        let progs = parse(LINE).unwrap();
        let t = table(&progs);
        assert!(t.contains("kmc_xdp") && t.contains("fault at kmc_xdp+0x4c"), "{t}");
        assert!(!t.contains('*'), "{t}");
        let over = parse(&LINE.replace("verdict_overridden 0", "verdict_overridden 1")).unwrap();
        assert!(table(&over).contains("2*"));
        let j: serde_json::Value = serde_json::from_str(&json(&progs)).unwrap();
        assert_eq!(j[0]["id"], 12);
        assert_eq!(j[0]["name"], "kmc_xdp");
        assert_eq!(j[0]["max_ran_us"], 10980);
        let j: serde_json::Value =
            serde_json::from_str(&json(&parse(&LINE.replace("verdict 2", "verdict -1")).unwrap()))
                .unwrap();
        assert_eq!(j[0]["verdict"], -1);
        assert_eq!(
            summary(&progs[0]),
            "kmc_xdp (id 12): 5 cancelled runs (budget 4, fault 1), locks_released 2, \
             released 1 task, released 2 obj"
        );
        assert!(table(&[]).contains("no KFlex programs"));
    }
}
