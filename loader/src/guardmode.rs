// SPDX-License-Identifier: GPL-2.0

//! The guard mode of programs loaded from now on: the sysctl
//! `kernel.kflex_guard_mode` (root only; it applies to programs loaded
//! after it is written, a loaded program keeps its mode).
//!
//! One policy for everyone who changes it (kflex-bench, the guard
//! benchmark, the guest tests): [`GuardMode::set`] returns a [`ModeGuard`]
//! that puts back the mode that was in effect before when it is dropped.
//! Guards nest: set the mode for a whole run, and inside it another mode
//! for one load; each drop restores what its own `set` replaced.

use std::{fmt, path::Path};

use anyhow::{bail, Context, Result};

/// Path of the sysctl.
pub const SYSCTL: &str = "/proc/sys/kernel/kflex_guard_mode";

/// A value of `kernel.kflex_guard_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GuardMode {
    /// 0, the default: a guard before every heap access the verifier
    /// cannot vouch for, with range-analysis elision.
    Full,
    /// 1, the paper's performance mode: no guards on heap loads (a program
    /// can then read any kernel memory; stores stay guarded). The kernel
    /// refuses it when locked down for confidentiality.
    Performance,
    /// 2: no access guards at all; the kernel logs a warning and taints
    /// itself. Measurement only.
    Unguarded,
    /// 3: a guard before every access, no elision. Measurement only.
    AllGuards,
}

impl GuardMode {
    /// Every mode, by sysctl value.
    pub const ALL: [GuardMode; 4] =
        [GuardMode::Full, GuardMode::Performance, GuardMode::Unguarded, GuardMode::AllGuards];

    /// The sysctl value.
    pub fn value(self) -> u32 {
        match self {
            GuardMode::Full => 0,
            GuardMode::Performance => 1,
            GuardMode::Unguarded => 2,
            GuardMode::AllGuards => 3,
        }
    }

    /// The mode of a sysctl value.
    pub fn from_value(v: u32) -> Option<GuardMode> {
        GuardMode::ALL.into_iter().find(|m| m.value() == v)
    }

    /// Name of the mode, as the documentation spells it.
    pub fn name(self) -> &'static str {
        match self {
            GuardMode::Full => "full",
            GuardMode::Performance => "performance",
            GuardMode::Unguarded => "unguarded",
            GuardMode::AllGuards => "all-guards",
        }
    }

    /// The mode in effect, `None` when the kernel has no such sysctl (no
    /// KFlex, or a KFlex without guard modes: programs get mode 0).
    pub fn current() -> Result<Option<GuardMode>> {
        current_at(Path::new(SYSCTL))
    }

    /// Makes this the mode of programs loaded from now on; the returned
    /// guard restores the previous mode when dropped. Without the sysctl,
    /// mode 0 is what programs get anyway, so setting it succeeds (and the
    /// guard does nothing); any other mode is an error.
    pub fn set(self) -> Result<ModeGuard> {
        set_at(Path::new(SYSCTL), self)
    }

    /// The modes the kernel accepts now (mode 0 always; the others when
    /// the sysctl exists and takes them: mode 1 is refused under lockdown).
    /// Needs root to find more than mode 0.
    pub fn offered() -> Vec<GuardMode> {
        offered_at(Path::new(SYSCTL))
    }
}

impl fmt::Display for GuardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.value(), self.name())
    }
}

/// Restores the guard mode that [`GuardMode::set`] replaced, when dropped.
#[must_use = "the previous guard mode is restored when the guard is dropped"]
#[derive(Debug)]
pub struct ModeGuard {
    path: &'static Path,
    /// The mode before `set`; `None` when there was no sysctl.
    previous: Option<GuardMode>,
}

impl ModeGuard {
    /// The mode this guard restores.
    pub fn previous(&self) -> Option<GuardMode> {
        self.previous
    }
}

impl Drop for ModeGuard {
    fn drop(&mut self) {
        if let Some(m) = self.previous {
            if let Err(e) = write(self.path, m) {
                eprintln!("warning: could not restore the guard mode: {e:#}");
            }
        }
    }
}

fn write(path: &Path, m: GuardMode) -> Result<()> {
    std::fs::write(path, format!("{}\n", m.value()))
        .with_context(|| format!("setting {} to {m}", path.display()))
}

fn current_at(path: &Path) -> Result<Option<GuardMode>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let v = text.trim();
    match v.parse().ok().and_then(GuardMode::from_value) {
        Some(m) => Ok(Some(m)),
        None => bail!("{}: unknown guard mode {v:?}", path.display()),
    }
}

fn set_at(path: &'static Path, m: GuardMode) -> Result<ModeGuard> {
    let previous = current_at(path)?;
    if previous.is_none() {
        if m == GuardMode::Full {
            return Ok(ModeGuard { path, previous });
        }
        bail!("cannot select guard mode {m}: this kernel has no {}", path.display());
    }
    write(path, m)?;
    Ok(ModeGuard { path, previous })
}

fn offered_at(path: &'static Path) -> Vec<GuardMode> {
    let mut modes = vec![GuardMode::Full];
    for m in &GuardMode::ALL[1..] {
        if set_at(path, *m).is_ok() {
            modes.push(*m);
        }
    }
    modes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysctl stand-in in a temporary file, leaked (`ModeGuard` keeps a
    /// `&'static Path`).
    fn sysctl(name: &str, content: Option<&str>) -> &'static Path {
        let dir = std::env::temp_dir().join(format!(
            "kflex-guardmode-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        if let Some(c) = content {
            std::fs::write(&path, c).unwrap();
        }
        Box::leak(path.into_boxed_path())
    }

    #[test]
    fn values_and_names() {
        for (v, m) in GuardMode::ALL.into_iter().enumerate() {
            assert_eq!(m.value(), v as u32);
            assert_eq!(GuardMode::from_value(v as u32), Some(m));
        }
        assert_eq!(GuardMode::from_value(4), None);
        assert_eq!(GuardMode::Performance.to_string(), "1 (performance)");
        assert_eq!(GuardMode::AllGuards.name(), "all-guards");
    }

    #[test]
    fn guards_restore_the_previous_mode_and_nest() {
        let p = sysctl("nest", Some("2\n"));
        assert_eq!(current_at(p).unwrap(), Some(GuardMode::Unguarded));
        {
            let outer = set_at(p, GuardMode::Full).unwrap();
            assert_eq!(outer.previous(), Some(GuardMode::Unguarded));
            assert_eq!(current_at(p).unwrap(), Some(GuardMode::Full));
            {
                let _inner = set_at(p, GuardMode::AllGuards).unwrap();
                assert_eq!(current_at(p).unwrap(), Some(GuardMode::AllGuards));
            }
            assert_eq!(current_at(p).unwrap(), Some(GuardMode::Full));
        }
        assert_eq!(current_at(p).unwrap(), Some(GuardMode::Unguarded));
        assert_eq!(offered_at(p), GuardMode::ALL.to_vec());
        assert_eq!(current_at(p).unwrap(), Some(GuardMode::Unguarded));
    }

    #[test]
    fn without_the_sysctl_only_mode_0() {
        let p = sysctl("absent", None);
        assert_eq!(current_at(p).unwrap(), None);
        drop(set_at(p, GuardMode::Full).unwrap());
        assert!(!p.exists());
        let e = set_at(p, GuardMode::Performance).unwrap_err().to_string();
        assert!(e.contains("1 (performance)"), "{e}");
        assert_eq!(offered_at(p), vec![GuardMode::Full]);
    }

    #[test]
    fn garbage_is_an_error() {
        let p = sysctl("garbage", Some("seven"));
        assert!(current_at(p).is_err());
        assert!(set_at(p, GuardMode::Full).is_err());
    }
}
