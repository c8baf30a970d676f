// SPDX-License-Identifier: GPL-2.0

//! What the running kernel says about KFlex (`/sys/kernel/kflex/status`).

use std::{fs, io, path::Path};

use anyhow::{bail, Result};

/// Path of the status file written by the built-in KFlex glue.
pub const STATUS_PATH: &str = "/sys/kernel/kflex/status";

/// State of KFlex in the running kernel.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// The kernel was built without `CONFIG_KFLEX`.
    NotBuilt,
    /// `CONFIG_KFLEX=m` and `kflex.ko` is not loaded.
    Absent,
    /// The component is registered.
    Active { version: String, builtin: bool },
}

impl Status {
    /// Parses the content of the status file.
    pub fn parse(text: &str) -> Result<Status> {
        let mut words = text.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("absent"), None, None, None) => Ok(Status::Absent),
            (Some("active"), Some(v), Some(kind @ ("built-in" | "module")), None) => {
                Ok(Status::Active { version: v.to_owned(), builtin: kind == "built-in" })
            }
            _ => bail!("unexpected content of {STATUS_PATH}: {:?}", text.trim()),
        }
    }

    /// Reads the status from `path` (normally [`STATUS_PATH`]).
    pub fn read_from(path: &Path) -> Result<Status> {
        match fs::read_to_string(path) {
            Ok(text) => Status::parse(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Status::NotBuilt),
            Err(e) => bail!("cannot read {}: {e}", path.display()),
        }
    }

    /// Fails with advice unless KFlex is active.
    pub fn require_active(&self) -> Result<()> {
        match self {
            Status::Active { .. } => Ok(()),
            Status::Absent => bail!(
                "KFlex is not enabled in the running kernel (CONFIG_KFLEX=m but kflex.ko is not \
                 loaded); load it with `insmod kflex.ko` (or `modprobe kflex`) and retry"
            ),
            Status::NotBuilt => bail!(
                "this kernel has no KFlex ({STATUS_PATH} is missing); boot a kernel built with \
                 CONFIG_KFLEX=y or =m (see README.md)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_states() {
        assert_eq!(Status::parse("absent\n").unwrap(), Status::Absent);
        assert_eq!(
            Status::parse("active 0.1.0 built-in\n").unwrap(),
            Status::Active { version: "0.1.0".into(), builtin: true }
        );
        assert_eq!(
            Status::parse("active 0.1.0 module\n").unwrap(),
            Status::Active { version: "0.1.0".into(), builtin: false }
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(Status::parse("").is_err());
        assert!(Status::parse("active").is_err());
        assert!(Status::parse("active 1 sideways").is_err());
        assert!(Status::parse("absent now").is_err());
    }

    #[test]
    fn missing_file_means_not_built() {
        let s = Status::read_from(Path::new("/nonexistent/kflex/status")).unwrap();
        assert_eq!(s, Status::NotBuilt);
        let err = s.require_active().unwrap_err().to_string();
        assert!(err.contains("CONFIG_KFLEX"), "{err}");
    }

    #[test]
    fn absent_advises_insmod() {
        let err = Status::Absent.require_active().unwrap_err().to_string();
        assert!(err.contains("insmod kflex.ko"), "{err}");
    }
}
