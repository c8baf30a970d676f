// SPDX-License-Identifier: GPL-2.0

//! Results of `kflex-bench`, their table (in the style of Google Benchmark)
//! and JSON.
//!
//! Inside a TCG guest all timings are emulated: only ratios between variants
//! measured in the same run mean anything, so every result names the
//! baseline its ratio is computed against.

use std::fmt::Write as _;

/// One measured benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct Result {
    /// `group/case/variant`.
    pub name: String,
    /// Median time per operation.
    pub ns_per_op: f64,
    /// Operations per repetition.
    pub ops: u64,
    /// Name of the result the ratio is computed against (same run).
    pub baseline: Option<String>,
}

impl Result {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        if self.ns_per_op > 0.0 {
            1e9 / self.ns_per_op
        } else {
            0.0
        }
    }
}

/// `reps` repetitions of `n` variants after one warm-up repetition, going
/// round the variants in each so that drift in the guest hits them alike:
/// `sample(i)` measures variant `i` once. Returns the medians, in order.
pub fn interleaved(
    n: usize,
    reps: usize,
    mut sample: impl FnMut(usize) -> anyhow::Result<f64>,
) -> anyhow::Result<Vec<f64>> {
    let mut samples = vec![Vec::with_capacity(reps); n];
    for rep in 0..=reps {
        for (i, s) in samples.iter_mut().enumerate() {
            let t = sample(i)?;
            if rep > 0 {
                s.push(t);
            }
        }
    }
    Ok(samples.iter_mut().map(|s| median(s)).collect())
}

/// Median of `v` (which must not be empty; 0 if it is).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Ratio of `r` to its baseline among `all`: time / baseline time.
pub fn ratio(r: &Result, all: &[Result]) -> Option<f64> {
    let b = all.iter().find(|b| Some(&b.name) == r.baseline.as_ref())?;
    (b.ns_per_op > 0.0).then(|| r.ns_per_op / b.ns_per_op)
}

/// The results as a table.
pub fn table(results: &[Result]) -> String {
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(9).max(9);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$} {:>12} {:>14} {:>10}  baseline",
        "Benchmark", "ns/op", "ops/s", "ratio"
    );
    let _ = writeln!(out, "{}", "-".repeat(width + 50));
    for r in results {
        let (ratio, base) = match ratio(r, results) {
            Some(x) => (format!("{x:.2}x"), r.baseline.clone().unwrap_or_default()),
            None => ("-".into(), String::new()),
        };
        let _ = writeln!(
            out,
            "{:<width$} {:>12.1} {:>14.0} {:>10}  {}",
            r.name,
            r.ns_per_op,
            r.ops_per_sec(),
            ratio,
            base
        );
    }
    out
}

/// The results as JSON (an object with a `benchmarks` array).
pub fn json(results: &[Result], context: serde_json::Value) -> String {
    let list: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "ns_per_op": r.ns_per_op,
                "ops_per_sec": r.ops_per_sec(),
                "ops": r.ops,
                "baseline": r.baseline,
                "ratio": ratio(r, results),
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "context": context, "benchmarks": list }))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, ns: f64, base: Option<&str>) -> Result {
        Result { name: name.into(), ns_per_op: ns, ops: 10, baseline: base.map(Into::into) }
    }

    #[test]
    fn interleaved_goes_round_and_drops_the_warm_up() {
        let mut calls = Vec::new();
        let m = interleaved(2, 3, |i| {
            calls.push(i);
            Ok((calls.len() * 10 + i) as f64)
        })
        .unwrap();
        assert_eq!(calls, [0, 1, 0, 1, 0, 1, 0, 1]);
        // Variant 0 saw 10 (warm-up), 30, 50, 70; variant 1: 21, 41, 61, 81.
        assert_eq!(m, [50.0, 61.0]);
        assert!(interleaved(1, 1, |_| anyhow::bail!("no")).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn ratios_and_output() {
        let all = vec![r("a/kflex", 100.0, None), r("a/arena", 250.0, Some("a/kflex"))];
        assert_eq!(ratio(&all[1], &all), Some(2.5));
        assert_eq!(ratio(&all[0], &all), None);
        let t = table(&all);
        assert!(t.contains("2.50x") && t.contains("a/arena"), "{t}");
        assert_eq!(all[0].ops_per_sec(), 1e7);
        let j: serde_json::Value =
            serde_json::from_str(&json(&all, serde_json::json!({"run": 1}))).unwrap();
        assert_eq!(j["benchmarks"][1]["ratio"], 2.5);
        assert_eq!(j["context"]["run"], 1);
    }
}
