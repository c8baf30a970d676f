// SPDX-License-Identifier: GPL-2.0

//! Cancellation from user space: the sysctls `kernel.kflex_budget_us` (the
//! budget of one run), `kernel.kflex_cancel_points` (1 = the upstream
//! may_goto counter, measurement only) and `kernel.kflex_fault_mode` (0 = a
//! heap fault cancels the run, 1 = it reads 0 / drops the store; read at
//! load), all for root, and the counters of `/sys/kernel/kflex/cancel`.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context, Result};

/// `kernel.kflex_budget_us`: the budget of one run in µs (100 to 10^6).
pub const BUDGET_SYSCTL: &str = "/proc/sys/kernel/kflex_budget_us";
/// `kernel.kflex_cancel_points`: 0 = points, 1 = the upstream counter.
pub const POINTS_SYSCTL: &str = "/proc/sys/kernel/kflex_cancel_points";
/// `kernel.kflex_fault_mode`: 0 = heap faults cancel, 1 = read 0 / drop.
pub const FAULT_SYSCTL: &str = "/proc/sys/kernel/kflex_fault_mode";
/// The counters since boot.
pub const COUNTERS_PATH: &str = "/sys/kernel/kflex/cancel";

/// A sysctl set to a value until the guard is dropped, which writes back
/// the value it replaced.
#[must_use = "the previous value is restored when the guard is dropped"]
#[derive(Debug)]
pub struct SysctlGuard {
    path: &'static str,
    previous: String,
}

impl SysctlGuard {
    /// Writes `value` to the sysctl at `path`.
    pub fn set(path: &'static str, value: impl ToString) -> Result<SysctlGuard> {
        let previous = std::fs::read_to_string(path)
            .with_context(|| format!("reading {path} (a KFlex kernel with cancellation points?)"))?
            .trim()
            .to_owned();
        let value = value.to_string();
        std::fs::write(path, &value).with_context(|| format!("setting {path} to {value}"))?;
        Ok(SysctlGuard { path, previous })
    }

    /// The run budget, in µs.
    pub fn budget_us(us: u64) -> Result<SysctlGuard> {
        SysctlGuard::set(BUDGET_SYSCTL, us)
    }

    /// Heap faults of programs loaded from now on cancel the run (`true`)
    /// or read 0 / drop the store.
    pub fn faults_cancel(on: bool) -> Result<SysctlGuard> {
        SysctlGuard::set(FAULT_SYSCTL, if on { 0 } else { 1 })
    }

    /// Cancellation points on (`true`) or the upstream counter.
    pub fn points(on: bool) -> Result<SysctlGuard> {
        SysctlGuard::set(POINTS_SYSCTL, if on { 0 } else { 1 })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.path, &self.previous) {
            eprintln!("warning: could not restore {} to {}: {e}", self.path, self.previous);
        }
    }
}

/// Parses the counters' text: one `name value` per line.
pub fn parse_counters(text: &str) -> Result<BTreeMap<String, u64>> {
    let mut m = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some((k, v)) = line.split_once(' ') else {
            bail!("bad counter line {line:?}");
        };
        let v = v.trim().parse().with_context(|| format!("bad counter line {line:?}"))?;
        if m.insert(k.to_owned(), v).is_some() {
            bail!("counter {k} twice");
        }
    }
    Ok(m)
}

/// The counters of `/sys/kernel/kflex/cancel`.
pub fn counters() -> Result<BTreeMap<String, u64>> {
    let p = Path::new(COUNTERS_PATH);
    parse_counters(&std::fs::read_to_string(p).with_context(|| format!("reading {COUNTERS_PATH}"))?)
}

/// Counter `name` of `/sys/kernel/kflex/cancel`.
pub fn counter(name: &str) -> Result<u64> {
    counters()?.get(name).copied().with_context(|| format!("{COUNTERS_PATH}: no counter {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse() {
        let m = parse_counters("polls 12\ncancelled_budget 3\ncallback_exits 0\n").unwrap();
        assert_eq!(m["polls"], 12);
        assert_eq!(m["cancelled_budget"], 3);
        assert_eq!(m.len(), 3);
        assert!(parse_counters("polls\n").is_err());
        assert!(parse_counters("polls x\n").is_err());
        assert!(parse_counters("polls 1\npolls 2\n").is_err());
        assert!(parse_counters("").unwrap().is_empty());
    }
}
