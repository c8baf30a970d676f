// SPDX-License-Identifier: GPL-2.0

//! `kflex-load heap-stats`: every KFlex heap on the system with its
//! statistics, from `/proc/kflex/heaps` (one line per heap of `name value`
//! pairs, written by the kernel glue). The one parser of that file: the
//! guest tests read heap statistics through it too. Its line splitter,
//! [`parse_lines`], also reads `/proc/kflex/progs` (`progstats`).

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};

/// Path of the kernel's heap list.
pub const HEAPS_PATH: &str = "/proc/kflex/heaps";

/// One heap: its statistics in the kernel's order, plus its map name.
#[derive(Debug, Clone, PartialEq)]
pub struct Heap {
    pub name: String,
    pub fields: Vec<(String, u64)>,
}

impl Heap {
    /// A field's value (0 if the kernel did not report it).
    pub fn get(&self, key: &str) -> u64 {
        self.try_get(key).unwrap_or(0)
    }

    /// A field's value, `None` if the kernel did not report it.
    pub fn try_get(&self, key: &str) -> Option<u64> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Bytes allocated in size classes.
    pub fn class_bytes(&self) -> u64 {
        self.fields.iter().filter(|(k, _)| k.starts_with("class")).map(|(_, v)| v).sum()
    }
}

/// Splits the text of a KFlex list file (`/proc/kflex/heaps`,
/// `/proc/kflex/progs`, named `path` in errors): one line per object,
/// `id <id>` followed by `<name> <value>` pairs. `value` turns the text of
/// field `name` into a value, `None` if it is not a number where one is due.
pub fn parse_lines<T>(
    path: &str,
    text: &str,
    mut value: impl FnMut(&str, &str) -> Option<T>,
) -> Result<Vec<Vec<(String, T)>>> {
    let mut objects = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !words.len().is_multiple_of(2) || words.first() != Some(&"id") {
            bail!("{path} line {}: unexpected format: {line:?}", n + 1);
        }
        let fields = words
            .chunks(2)
            .map(|p| match value(p[0], p[1]) {
                Some(v) => Ok((p[0].to_string(), v)),
                None => bail!("{path} line {}: bad number {:?} for {}", n + 1, p[1], p[0]),
            })
            .collect::<Result<Vec<_>>>()?;
        objects.push(fields);
    }
    Ok(objects)
}

/// Parses the content of [`HEAPS_PATH`].
pub fn parse(text: &str) -> Result<Vec<Heap>> {
    let lines = parse_lines(HEAPS_PATH, text, |_, v| v.parse().ok())?;
    Ok(lines.into_iter().map(|fields| Heap { name: String::new(), fields }).collect())
}

/// Reads and parses [`HEAPS_PATH`] (map names are left empty).
pub fn read() -> Result<Vec<Heap>> {
    let text = std::fs::read_to_string(HEAPS_PATH)
        .with_context(|| format!("reading {HEAPS_PATH} (needs root on most systems)"))?;
    parse(&text)
}

/// The statistics of the heap whose map has id `id`, if it exists.
pub fn find(id: u32) -> Result<Option<Heap>> {
    Ok(read()?.into_iter().find(|h| h.try_get("id") == Some(u64::from(id))))
}

/// Human-readable size: 64K, 4G, 1.5M.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// The table printed by `kflex-load heap-stats`.
pub fn table(heaps: &[Heap]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6} {:<16} {:>7} {:>9} {:>8} {:>9} {:>9} {:>10} {:>10} {:>7} {:>16} {:>8}",
        "id",
        "name",
        "size",
        "populated",
        "reserve",
        "allocated",
        "large",
        "allocs",
        "frees",
        "failed",
        "refused f/m/d",
        "corrupt"
    );
    for h in heaps {
        let refused = format!(
            "{}/{}/{}",
            h.get("refused_foreign"),
            h.get("refused_misaligned"),
            h.get("refused_double")
        );
        let _ = writeln!(
            out,
            "{:>6} {:<16} {:>7} {:>9} {:>8} {:>9} {:>9} {:>10} {:>10} {:>7} {:>16} {:>8}",
            h.get("id"),
            if h.name.is_empty() { "-" } else { &h.name },
            human(h.get("size")),
            human(h.get("pages_populated") * 4096),
            human(h.get("pages_reserve") * 4096),
            human(h.class_bytes()),
            human(h.get("large_bytes")),
            h.get("allocs"),
            h.get("frees"),
            h.get("failed_allocs"),
            refused,
            h.get("corrupt_links")
        );
    }
    if heaps.is_empty() {
        out.push_str("(no KFlex heaps)\n");
    }
    out
}

/// The `--json` output: an array with one object per heap.
pub fn json(heaps: &[Heap]) -> String {
    let list: Vec<serde_json::Value> = heaps
        .iter()
        .map(|h| {
            let mut m = serde_json::Map::new();
            m.insert("name".into(), h.name.clone().into());
            for (k, v) in &h.fields {
                m.insert(k.clone(), (*v).into());
            }
            m.insert("allocated_bytes".into(), h.class_bytes().into());
            serde_json::Value::Object(m)
        })
        .collect();
    serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "id 7 size 65536 pages_populated 16 pages_user 0 pages_reserve 3 \
        class16_bytes 160 class32_bytes 64 large_bytes 8192 allocs 12 frees 2 failed_allocs 1 \
        refused_foreign 2 refused_misaligned 1 refused_double 4 corrupt_links 0 meta_bytes 100";

    #[test]
    fn parses_kernel_lines() {
        let heaps = parse(&format!("{LINE}\n{LINE}\n")).unwrap();
        assert_eq!(heaps.len(), 2);
        assert_eq!(heaps[0].get("id"), 7);
        assert_eq!(heaps[0].get("size"), 65536);
        assert_eq!(heaps[0].class_bytes(), 224);
        assert_eq!(heaps[0].get("missing"), 0);
        assert_eq!(heaps[0].try_get("missing"), None);
        assert_eq!(heaps[0].try_get("corrupt_links"), Some(0));
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse("id 1 size").is_err());
        assert!(parse("size 1 id 2").is_err());
        assert!(parse("id x").is_err());
    }

    #[test]
    fn formats_table_and_json() {
        let mut heaps = parse(LINE).unwrap();
        heaps[0].name = "heap".into();
        let t = table(&heaps);
        assert!(t.contains("heap") && t.contains("64K") && t.contains("2/1/4"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&json(&heaps)).unwrap();
        assert_eq!(j[0]["id"], 7);
        assert_eq!(j[0]["allocated_bytes"], 224);
        assert_eq!(j[0]["name"], "heap");
        assert!(table(&[]).contains("no KFlex heaps"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(65536), "64K");
        assert_eq!(human(256 << 30), "256G");
        assert_eq!(human(1536 << 10), "1.5M");
        assert_eq!(human(100), "100");
    }
}
