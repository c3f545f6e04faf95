//! `log = { file | dir, max_size, keep, timestamps }`: where a program's
//! instances write their lines (SPEC 15), validated. The files themselves
//! are `crate::logfile`'s.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// `max_size` when the table does not say.
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// `keep` when the table does not say.
pub const DEFAULT_KEEP: u32 = 5;
/// The most rotated files kept (`f.1` .. `f.KEEP`).
pub const MAX_KEEP: u32 = 1000;

/// One program's log files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSpec {
    pub target: LogTarget,
    /// Rotate before a line would take the file past this many bytes; 0
    /// never rotates (for logrotate and `brood ctl reopen`).
    pub max_size: u64,
    /// Rotated files kept; 0 truncates the file instead.
    pub keep: u32,
    /// An RFC 3339 UTC time before every line.
    pub timestamps: bool,
}

/// `file` (with `{n}` for the instance number) or `dir` (`DIR/NAME.N.log`),
/// both already made absolute or relative to the config file's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    File(PathBuf),
    Dir(PathBuf),
}

impl LogSpec {
    /// Instance `n`'s file.
    pub fn path(&self, name: &str, n: u64) -> PathBuf {
        match &self.target {
            LogTarget::Dir(dir) => dir.join(format!("{name}.{n}.log")),
            LogTarget::File(file) => {
                let bytes = file.as_os_str().as_bytes();
                if !bytes.windows(3).any(|w| w == b"{n}") {
                    return file.clone();
                }
                let number = n.to_string();
                let mut out = Vec::with_capacity(bytes.len() + number.len());
                let mut rest = bytes;
                while let Some(i) = rest.windows(3).position(|w| w == b"{n}") {
                    out.extend_from_slice(&rest[..i]);
                    out.extend_from_slice(number.as_bytes());
                    rest = &rest[i + 3..];
                }
                out.extend_from_slice(rest);
                PathBuf::from(OsString::from_vec(out))
            }
        }
    }
}

/// A path from the config, relative to the config file's directory.
pub fn config_relative(dir: &Path, path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        p
    } else {
        dir.join(p)
    }
}

/// A size: a number of bytes, or a number with a unit: `B`, `KiB`, `MiB`,
/// `GiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000, as the SI
/// says; `K`, `M` and `G` alone are refused as ambiguous). Fractions are
/// allowed (`1.5MiB`) and rounded down to a byte.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "invalid size '{}' (use e.g. 512KiB, 10MiB, 1GiB)",
            super::shown_text(text)
        )
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size '{}': unknown unit '{}' (use B, KiB, MiB, GiB, KB, MB or GB)",
                super::shown_text(text),
                super::shown_text(other)
            ))
        }
    };
    let bytes = value * scale as f64;
    // 1 PiB: larger is a typo, and stays far from u64's end.
    if !bytes.is_finite() || bytes > (1u64 << 50) as f64 {
        return Err(format!("invalid size '{}': too large", super::shown_text(text)));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("10 MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "-1", "10M", "10k", "MiB", "1.2.3KiB", "1e3", "9999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_per_instance() {
        let spec = |target| LogSpec {
            target,
            max_size: DEFAULT_MAX_SIZE,
            keep: DEFAULT_KEEP,
            timestamps: false,
        };
        let dir = spec(LogTarget::Dir("/srv/log".into()));
        assert_eq!(dir.path("web", 2), Path::new("/srv/log/web.2.log"));
        let file = spec(LogTarget::File("/srv/log/web.{n}.{n}.log".into()));
        assert_eq!(file.path("web", 12), Path::new("/srv/log/web.12.12.log"));
        let shared = spec(LogTarget::File("/srv/all.log".into()));
        assert_eq!(shared.path("web", 3), Path::new("/srv/all.log"));
    }
}
